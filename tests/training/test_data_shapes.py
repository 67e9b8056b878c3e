"""Manifests whose only labels are the trusted ones, or that have no label at all: the methods that model the
labelers' noise refuse them saying why (they used to train zero steps and save an untrained network), ``auto``
trains ``ce``, and a student round learns the images without a label from the teacher."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from labelaudit.errors import ManifestError
from labelaudit.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _variant(tiny_data: Path, out: Path, *, keep_unlabeled: bool, keep_trusted: bool = True) -> Path:
    """task B with every labeler's label gone: those rows become images without a label (or are dropped)."""
    lines = []
    for line in (tiny_data / "task_b.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["image"] = str((tiny_data / row["image"]).resolve())
        if row["split"] == "train" and not (row["trusted"] and keep_trusted):
            if not keep_unlabeled:
                continue
            row = {k: v for k, v in row.items() if k not in ("label", "labeler_id", "trusted")}
        lines.append(json.dumps(row))
    path = out / "task_b.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("method", ["glc", "fasten", "crowd", "crowdmix"])
def test_methods_that_model_the_labelers_refuse_trusted_labels_alone(tiny_data, tmp_path, method):
    manifest = _variant(tiny_data, tmp_path, keep_unlabeled=True)
    with pytest.raises(ManifestError, match=f"every labeled training row is trusted; {method} models the labelers"):
        train(manifest, init=None, out=tmp_path / "run", cfg=TrainConfig(method=method, epochs=1, device="cpu"))


def test_auto_trains_ce_on_trusted_labels_and_a_student_learns_the_unlabeled_images(tiny_data, tmp_path, note_recorder):
    manifest = _variant(tiny_data, tmp_path, keep_unlabeled=True)
    cfg = TrainConfig(method="auto", epochs=1, device="cpu", student_rounds=1, student_threshold=0.0)
    result = train(manifest, init=None, out=tmp_path / "run", cfg=cfg, reporter=note_recorder)

    assert result.meta.method == "ce"
    assert result.meta.config["method_choice"].endswith("no noise to model -> ce")
    assert len(result.history) == 2  # the first round's epoch and the student's
    assert all(h.train_loss == h.train_loss for h in result.history)  # trained (a loss, not NaN)
    unlabeled = sum("label" not in json.loads(line) for line in manifest.read_text().splitlines())
    assert f"student round 1: {unlabeled} of {unlabeled} unlabeled rows (target >= 0.0) train" in note_recorder.notes


def test_a_student_round_needs_rows_beside_the_trusted_ones(tiny_data, tmp_path):
    manifest = _variant(tiny_data, tmp_path, keep_unlabeled=False)
    with pytest.raises(ManifestError, match="student_rounds needs rows to train the student on"):
        train(manifest, init=None, out=tmp_path / "r", cfg=TrainConfig(method="ce", student_rounds=1, device="cpu"))


def test_a_student_round_whose_every_row_is_held_to_a_bar_of_1_is_refused_before_training(tiny_data, tmp_path):
    """Trusted and unlabeled rows only, the unlabeled ones kept out (bar 1): nothing for the student but the trusted
    set, said before the first round trains; with the trusted rows as the student's rows it runs."""
    manifest = _variant(tiny_data, tmp_path, keep_unlabeled=True)
    cfg = TrainConfig(method="ce", epochs=1, device="cpu", student_rounds=1, student_unlabeled_threshold=1.0)
    with pytest.raises(ManifestError, match=r"would train on no row: its unlabeled rows \(bar 1.0\) are held"):
        train(manifest, init=None, out=tmp_path / "refused", cfg=cfg)
    assert not (tmp_path / "refused").exists()  # refused before anything trained
    rows = train(manifest, init=None, out=tmp_path / "rows", cfg=replace(cfg, student_trusted="rows"))
    assert len(rows.history) == 2


def test_a_manifest_without_labeled_training_rows_is_refused(tiny_data, tmp_path):
    manifest = _variant(tiny_data, tmp_path, keep_unlabeled=True, keep_trusted=False)
    with pytest.raises(ManifestError, match="no labeled training rows"):
        train(manifest, init=None, out=tmp_path / "run", cfg=TrainConfig(method="ce", epochs=1, device="cpu"))
