"""Fixtures shared across packages: a real (tiny) model trained and exported from real data, and a real
PostgreSQL (scripts/postgres.sh) behind the ``store_url`` fixture (the stream and report tests)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from labelaudit.ports import free_port
from tests.databases import new_database
from tests.stream.streamkit import run_script
from tests.trainkit import TASK_A_PREPROCESS, one_torch_thread, train_raw_classifier_a


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

    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    with one_torch_thread():
        runs = tmp_path_factory.mktemp("runs")
        result = train(
            tiny_data / "task_b.jsonl", init=None, out=runs, cfg=TrainConfig(method="ce", epochs=1, device="cpu")
        )
        repo = tmp_path_factory.mktemp("repo")
        export_model(
            result.checkpoint, manifest=tiny_data / "task_b.jsonl", repo=repo, parity_images=200, min_images=200
        )
    return repo


@pytest.fixture(scope="session")
def postgres_url() -> str:
    # Directly under /tmp, not pytest's 0700 tmp tree: as root the server runs as the postgres user.
    where = tempfile.mkdtemp(prefix="labelaudit-pg-")
    port = free_port()
    run_script("scripts/postgres.sh", "start", where, str(port))
    yield run_script("scripts/postgres.sh", "url", where).strip()
    run_script("scripts/postgres.sh", "stop", where)
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, to stop and start mid-test: ``{"dir", "port", "url"}``."""
    where = tempfile.mkdtemp(prefix="labelaudit-pg-own-")  # under /tmp: as root it runs as the postgres user
    port = str(free_port())
    run_script("scripts/postgres.sh", "start", where, port)
    yield {"dir": where, "port": port, "url": run_script("scripts/postgres.sh", "url", where).strip()}
    run_script("scripts/postgres.sh", "stop", where)
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """Each test gets an empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return new_database(request.getfixturevalue("postgres_url"))


# -- classifier A as teams have it: a torchvision or a timm network, trained a moment on task A ---------


@pytest.fixture(scope="session")
def classifier_a_file(tiny_data, tmp_path_factory):
    """``classifier_a_file("torchvision" | "timm")``: the weights file (cached for the session)."""

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            with one_torch_thread():
                made[family] = train_raw_classifier_a(
                    family, tiny_data / "task_a.jsonl", tmp_path_factory.mktemp(f"classifier-a-{family}")
                )
        return made[family]

    return make


@pytest.fixture(scope="session")
def resnet_repo(tiny_data, classifier_a_file, tmp_path_factory) -> Path:
    """A Triton repository holding a torchvision ResNet-18 fine-tuned on task B with FasTEN from a
    classifier A loaded through ``torchvision:resnet18=a.pth``, exported for real."""

    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    weights = classifier_a_file("torchvision")
    with one_torch_thread():
        result = train(
            tiny_data / "task_b.jsonl",
            init=f"torchvision:resnet18={weights}",
            out=tmp_path_factory.mktemp("resnet-run"),
            preprocess=TASK_A_PREPROCESS,
            cfg=TrainConfig(method="fasten", epochs=1, device="cpu"),
        )
        repo = tmp_path_factory.mktemp("resnet-repo")
        export_model(
            result.checkpoint, manifest=tiny_data / "task_b.jsonl", repo=repo, parity_images=200, min_images=200
        )
    return repo
