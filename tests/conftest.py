"""Fixtures shared across packages: a real (tiny) model trained and exported from real data."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Task A/B at the smallest size (Debian's Fashion-MNIST, 40% labeler noise)."""
    from labelaudit.training.datasets import fashion_mnist

    out = tmp_path_factory.mktemp("tiny-data")
    fashion_mnist.build(out, noise=0.4, seed=5, per_task=600, val_size=100, test_size=200)
    return out


@pytest.fixture(scope="session")
def model_repo(tiny_data, tmp_path_factory) -> Path:
    """A Triton model repository holding ``labelaudit/1``: CE for one epoch on task B, exported for real."""
    import torch

    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = tmp_path_factory.mktemp("runs")
        result = train(
            tiny_data / "task_b.jsonl", init=None, out=runs, cfg=TrainConfig(method="ce", epochs=1, device="cpu")
        )
        repo = tmp_path_factory.mktemp("repo")
        export_model(
            result.checkpoint, manifest=tiny_data / "task_b.jsonl", repo=repo, parity_images=200, min_images=200
        )
    finally:
        torch.set_num_threads(threads)
    return repo
