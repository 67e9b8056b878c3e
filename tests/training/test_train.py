"""The training run on real (tiny) Fashion-MNIST data: reproducible for a seed, reports what it must,
and gates the export against its starting point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labelaudit.training.checkpoint import load_checkpoint
from labelaudit.training.train import TrainConfig, _gate, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def classifier_a(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("a")
    return train(
        tiny / "task_a.jsonl", init=None, out=out, cfg=TrainConfig(method="ce", epochs=1, device="cpu")
    ).checkpoint


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)[0].state_dict()


def test_same_seed_same_weights_other_seed_other_weights(tiny, classifier_a, tmp_path):
    runs = {}
    for name, seed in (("first", 7), ("again", 7), ("other", 8)):
        cfg = TrainConfig(method="fasten", epochs=1, seed=seed, device="cpu")
        runs[name] = _weights(train(tiny / "task_b.jsonl", init=classifier_a, out=tmp_path / name, cfg=cfg).checkpoint)
    for key, value in runs["first"].items():
        torch.testing.assert_close(runs["again"][key], value, rtol=0, atol=0)
    assert any(not torch.equal(runs["other"][k], v) for k, v in runs["first"].items() if v.is_floating_point())


@pytest.mark.parametrize("method", ["ce", "glc", "fasten", "crowd", "crowdmix", "mentormix"])
def test_every_method_reports_accuracy_and_transition_matrix_each_epoch(tiny, classifier_a, tmp_path, method):
    result = train(
        tiny / "task_b.jsonl", init=classifier_a, out=tmp_path, cfg=TrainConfig(method=method, epochs=2, device="cpu")
    )
    meta = result.meta
    assert [h.epoch for h in meta.metrics.history] == [1, 2]
    for h in meta.metrics.history:
        assert h.val_acc is not None and 0 <= h.trusted_acc <= 1
        t = np.array(h.transition_matrix)
        assert t.shape == (10, 10)
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-3)
    assert meta.metrics.initial_trusted_acc is not None  # classifier A measured for the gate
    assert set(meta.labeler_transition_matrices) == {
        "labeler-1",
        "labeler-2",
        "labeler-3",
        "labeler-4",
        "labeler-5",
        "qa",
    }
    assert len(meta.disagreement_thresholds) == 10 and meta.thresholds_source == "val split"
    confusion = np.array(meta.confusion)  # (true, model's label) on the val split: the report deconvolves by it
    val_acc = np.trace(confusion) / confusion.sum()
    assert confusion.shape == (10, 10) and val_acc == pytest.approx(meta.metrics.val_acc, abs=1e-6)
    errors = meta.labeler_error_rates  # the card's per-labeler error rates, one label per training item
    assert set(errors) == {f"labeler-{i}" for i in range(1, 6)}
    assert all(0 <= e.low <= e.rate <= e.high <= 1 for e in errors.values())
    assert errors["labeler-5"].rate > errors["labeler-1"].rate  # the spammer reads worse than the reliable one
    assert (tmp_path / "metrics.json").is_file()


def test_the_gate_refuses_a_model_worse_than_its_start():
    assert not _gate(0.8, 0.7, "a.pt").passed
    assert _gate(0.8, 0.8, "a.pt").passed
    assert _gate(None, 0.1, "scratch").passed  # nothing to compare a scratch model against
    assert "WORSE" in _gate(0.8, 0.7, "a.pt").reason


def test_glc_refuses_a_manifest_without_trusted_rows(tiny, tmp_path):
    from labelaudit.errors import ManifestError

    with pytest.raises(ManifestError, match="no trusted training rows"):
        train(tiny / "task_a.jsonl", init=None, out=tmp_path, cfg=TrainConfig(method="glc", epochs=1, device="cpu"))


@pytest.mark.parametrize("method", ["fasten", "crowd", "crowdmix"])
def test_the_mixed_precision_path_trains_like_fp32_and_exports(tiny, classifier_a, tmp_path, method):
    """bf16 autocast and channels_last (what CUDA runs by default), taken on CPU: the losses follow the
    float32 run's up to bf16 rounding, the weights stay float32, and the checkpoint exports with ONNX
    parity like any other."""
    from labelaudit.training.export import export_model

    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(method=method, epochs=2, device="cpu", precision=precision, per_labeler=method == "fasten")
        runs[precision] = train(tiny / "task_b.jsonl", init=classifier_a, out=tmp_path / precision, cfg=cfg)
    losses = {p: np.array([h.train_loss for h in r.meta.metrics.history]) for p, r in runs.items()}
    assert np.isfinite(losses["bf16"]).all()
    assert not np.array_equal(losses["bf16"], losses["fp32"])  # autocast really ran: bf16 rounds differently
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)
    assert abs(runs["bf16"].meta.metrics.val_acc - runs["fp32"].meta.metrics.val_acc) <= 0.05
    net, _ = load_checkpoint(runs["bf16"].checkpoint)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    exported = export_model(
        runs["bf16"].checkpoint,
        manifest=tiny / "task_b.jsonl",
        repo=tmp_path / "repo",
        parity_images=200,
        min_images=200,
    )
    assert exported.parity.argmax_agreement == 1.0
