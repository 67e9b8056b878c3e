"""``torchrun --nproc-per-node 2 -m labelaudit train`` (gloo, CPU) trains what one process trains with the
same global batch, and rank 0 alone writes.

Tolerance: PyTorch has no SyncBatchNorm on CPU, so each of the two processes normalises over its half of
the batch and the runs are not bit for bit the same: clean accuracies within 0.05 and the epoch's mean
training loss within 5% of one process's, and the same predicted class on at least 90% of the test
images. On CUDA, SyncBatchNorm makes the statistics
global.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelaudit.training.distributed import Ranks
from tests.trainkit import one_torch_thread

pytestmark = pytest.mark.slow

ACC_TOLERANCE = 0.05
LOSS_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    """Task A/B with 2,000 images each: at the tiny size (600) a run barely leaves chance and two honest
    runs already differ by more than the tolerance."""
    from labelaudit.training.datasets import fashion_mnist

    out = tmp_path_factory.mktemp("ddp-data")
    fashion_mnist.build(out, noise=0.4, seed=5, per_task=2000, val_size=300, test_size=500)
    return out


@pytest.fixture(scope="module")
def classifier_a(ddp_data, tmp_path_factory) -> Path:
    from labelaudit.training.train import TrainConfig, train

    with one_torch_thread():
        out = tmp_path_factory.mktemp("ddp-a")
        return train(
            ddp_data / "task_a.jsonl", init=None, out=out, cfg=TrainConfig(method="ce", epochs=6, device="cpu")
        ).checkpoint


def _train(data: Path, init: Path, out: Path, method: str, processes: int) -> dict:
    args = [
        "-m",
        "labelaudit",
        "train",
        "--manifest",
        str(data / "task_b.jsonl"),
        "--init",
        str(init),
        "--method",
        method,
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--augment",
        "none",
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    if processes > 1:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", f"--nproc-per-node={processes}", *args]
    else:
        command = [sys.executable, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("method", ["fasten", "crowd"])
def test_two_gloo_processes_train_what_one_process_trains(method, ddp_data, classifier_a, tmp_path):
    one = _train(ddp_data, classifier_a, tmp_path / "one", method, 1)
    two = _train(ddp_data, classifier_a, tmp_path / "two", method, 2)

    assert one["metrics"]["val_acc"] > 0.5  # a model that learned: agreeing near chance would prove little
    for key in ("val_acc", "test_acc", "trusted_acc"):
        assert abs(two["metrics"][key] - one["metrics"][key]) <= ACC_TOLERANCE, (key, one["metrics"], two["metrics"])
    for a, b in zip(one["metrics"]["history"], two["metrics"]["history"], strict=True):
        assert abs(b["train_loss"] - a["train_loss"]) <= LOSS_TOLERANCE * a["train_loss"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoint.pt", "metrics.json"]
    saved = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert saved["meta"]["config"]["processes"] == 2
    same = (_test_predictions(tmp_path / "one", ddp_data) == _test_predictions(tmp_path / "two", ddp_data)).mean()
    assert same >= 0.9, f"the two models predict the same class on {same:.0%} of the test images"


def _test_predictions(run: Path, data: Path) -> np.ndarray:
    """The checkpoint's predicted class for each test image of task B. (N_test,)"""
    from labelaudit.imaging.manifest import load_pixels, read_manifest
    from labelaudit.imaging.preprocess import normalize
    from labelaudit.training.checkpoint import load_checkpoint

    net, meta = load_checkpoint(run / "checkpoint.pt")
    manifest = read_manifest(data / "task_b.jsonl", classes=meta.classes)
    rows = np.flatnonzero(manifest.mask(split="test"))
    x = normalize(np.asarray(load_pixels(manifest, meta.preprocess))[rows], meta.preprocess)
    with torch.no_grad():
        return net(torch.from_numpy(x)).argmax(1).numpy()


def test_a_rank_s_shard_is_its_slice_and_the_slices_cover_the_rows():
    rows = np.arange(11)
    slices = [Ranks(rank=r, world=3).shard(rows) for r in range(3)]
    assert np.array_equal(np.concatenate(slices), rows)
    assert [len(s) for s in slices] == [4, 4, 3]
    assert np.array_equal(Ranks().shard(rows), rows)  # one process: everything
