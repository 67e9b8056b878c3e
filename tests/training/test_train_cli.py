"""``labelaudit train`` as a user runs it: defaults in --help, progress lines when the output is a file,
one decoding of the images, held-out images in manifests of their own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import read_manifest, with_held_out

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "labelaudit", *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def test_help_shows_every_training_default():
    out = cli("train", "--help").stdout
    for option, default in (
        ("--method", "auto"),
        ("--epochs", "10"),
        ("--batch-size", "128"),
        ("--lr", "0.05"),
        ("--seed", "0"),
        ("--device", "auto"),
        ("--precision", "auto"),
        ("--augment", "shift-flip"),
    ):
        assert re.search(rf"{option}\b[^\[]*\[default: {re.escape(default)}\]", out), option  # its own default


def _split_files(tiny_data: Path, folder: Path) -> tuple[Path, Path, Path]:
    """task B split in three manifests (train, val, test), images by absolute path."""
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    folder.mkdir()
    files = {}
    for split in ("train", "val", "test"):
        mine = [
            r | {"image": str((tiny_data / r["image"]).resolve()), "split": "train"}
            for r in rows
            if r["split"] == split
        ]
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in mine))
    (folder / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    return files["train"], files["val"], files["test"]


def test_piped_output_gets_progress_lines_held_out_manifests_count_and_images_decode_once(tiny_data, tmp_path):
    train, val, test = _split_files(tiny_data, tmp_path / "data")
    run = cli(
        "train",
        "--manifest",
        str(train),
        "--val-manifest",
        str(val),
        "--test-manifest",
        str(test),
        "--method",
        "fasten",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"fasten epoch 1/2: val 0\.\d+ +trusted", run.stdout), run.stdout  # a line per epoch, as it ends
    assert re.search(r"fasten epoch 2/2: val", run.stdout)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["val_acc"] is not None and metrics["test_acc"] is not None
    caches = list((tmp_path / "data" / ".labelaudit-cache").glob("pixels-*.npy"))
    assert len(caches) == 1, caches  # the scratch run's mean/std pass and the training share one cache


def test_held_out_manifests_join_under_their_split_and_name_their_own_lines(tiny_data, tmp_path):
    train, val, test = _split_files(tiny_data, tmp_path / "data")
    joined = with_held_out(read_manifest(train), val=val, test=test)

    assert (joined.splits == "val").sum() == len(read_manifest(val)) and (joined.splits == "test").sum() > 0
    assert all(Path(p).is_absolute() for p in joined.images[joined.splits != "train"])
    with pytest.raises(ManifestError, match=r"train\.jsonl:1: item_id .* already in"):
        with_held_out(read_manifest(train), val=train)
    bad = tmp_path / "data" / "bad.jsonl"
    first = json.loads(val.read_text().splitlines()[0])
    bad.write_text(json.dumps(first | {"item_id": "new", "label": "cot"}) + "\n")
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1: unknown label 'cot'"):
        with_held_out(read_manifest(train), val=bad)
