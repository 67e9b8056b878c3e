"""MentorMix: the curriculum weights, the per-example mixing weights and the partners against hand-computed
values; and a run on a manifest with no trusted rows at all (what it is for), which the methods that need
a trusted set refuse clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelaudit.errors import ManifestError
from labelaudit.training.methods.mentormix import draw_partners, mentor_weights, mix_weights
from labelaudit.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_examples_at_or_below_the_threshold_count_as_clean():
    v = mentor_weights(torch.tensor([0.1, 0.5, 0.9, 2.0]), threshold=0.5)
    assert v.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_a_clean_example_dominates_its_mix_and_a_doubtful_one_is_mostly_its_partner():
    w = mix_weights(0.3, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w, torch.tensor([0.7, 0.3]))  # max(λ, 1-λ) and min(λ, 1-λ)


def test_partners_are_drawn_only_among_clean_looking_examples():
    rng = np.random.default_rng(0)
    picks = draw_partners(torch.tensor([0.0, 1.0, 0.0, 1.0]), rng)
    assert set(picks.tolist()) <= {1, 3} and len(picks) == 4
    assert len(set(draw_partners(torch.zeros(50), rng).tolist())) > 10  # none clean: uniform


def test_mentormix_trains_without_any_trusted_row(tiny_data, tmp_path):
    # task A's manifest has no trusted rows: what a team without a hand-checked set has
    cfg = TrainConfig(method="mentormix", epochs=2, device="cpu", mentormix_burn_in=0.5)
    result = train(tiny_data / "task_a.jsonl", init=None, out=tmp_path, cfg=cfg)
    history = result.meta.metrics.history
    assert [h.epoch for h in history] == [1, 2] and all(np.isfinite(h.train_loss) for h in history)
    assert result.meta.metrics.val_acc is not None


@pytest.mark.parametrize("method", ["glc", "fasten", "crowd", "crowdmix"])
def test_methods_that_need_a_trusted_set_refuse_a_manifest_without_one(tiny_data, tmp_path, method):
    # task A: no trusted rows and no labeler ids, so not even crowd's labelers can stand in
    with pytest.raises(ManifestError, match="no trusted training rows"):
        train(
            tiny_data / "task_a.jsonl", init=None, out=tmp_path, cfg=TrainConfig(method=method, epochs=1, device="cpu")
        )


def _without_trusted_rows(manifest: Path) -> Path:
    """``manifest`` with its trusted rows dropped, beside it (its image paths are relative)."""
    out = manifest.with_name(f"{manifest.stem}-no-trusted.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows if not r.get("trusted")))
    return out


@pytest.mark.parametrize("method", ["crowd", "crowdmix"])
def test_crowd_fits_its_labelers_matrices_without_a_trusted_set(tiny_data, tmp_path, method):
    manifest = _without_trusted_rows(tiny_data / "task_b.jsonl")
    cfg = TrainConfig(method=method, epochs=2, device="cpu", min_labeler_items=20, student_rounds=1)
    result = train(manifest, init=None, out=tmp_path / "run", cfg=cfg)
    history = result.meta.metrics.history
    assert len(history) == 4 and all(np.isfinite(h.train_loss) for h in history)  # two rounds of two epochs
    assert len(result.meta.labeler_transition_matrices) >= 2

    few = TrainConfig(method=method, epochs=1, device="cpu", min_labeler_items=10_000)  # no labeler has a matrix
    with pytest.raises(ManifestError, match="no trusted training rows.*two labelers"):
        train(manifest, init=None, out=tmp_path / "few", cfg=few)
