"""Semi-supervised task B: unlabeled manifest rows, the EMA teacher's consistency loss, and the rows a
labeler-aware posterior doubts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import UNLABELED, read_manifest
from labelaudit.training.methods.crowd import label_posterior
from labelaudit.training.train import TrainConfig, Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


def with_unlabeled(tiny_data: Path, tmp_path: Path, every: int = 3) -> Path:
    """Task B's manifest with every ``every``-th untrusted training row's label removed."""
    out = tmp_path / "task_b_unlabeled.jsonl"
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    untrusted = [r for r in rows if r["split"] == "train" and not r["trusted"]]
    for r in untrusted[::every]:
        del r["label"], r["labeler_id"]
    out.write_text("\n".join(json.dumps({**r, "image": str(tiny_data / r["image"])}) for r in rows) + "\n")
    (tmp_path / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    return out


def test_a_manifest_takes_unlabeled_training_rows_and_only_those(tiny_data, tmp_path):
    manifest = read_manifest(with_unlabeled(tiny_data, tmp_path))
    unlabeled = manifest.labels == UNLABELED
    assert unlabeled.sum() > 50 and (manifest.splits[unlabeled] == "train").all()
    assert not manifest.trusted[unlabeled].any() and (manifest.labeler_ids[unlabeled] == "").all()
    assert [r.label for r in manifest.records if r.label is None]  # round trip
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": "v", "image": "x.png", "split": "val"}) + "\n")
    with pytest.raises(ManifestError, match="only untrusted train rows may come without a label"):
        read_manifest(bad)


def test_unlabeled_rows_never_reach_a_supervised_loss_and_do_reach_the_teacher(tiny_data, tmp_path, monkeypatch):
    from labelaudit.training.methods.crowd import CrowdForward
    from labelaudit.training.semi import EmaTeacher

    manifest = with_unlabeled(tiny_data, tmp_path)
    unlabeled = set(np.flatnonzero(read_manifest(manifest).labels == UNLABELED).tolist())
    supervised, consistency = set(), set()
    crowd_loss, semi_loss = CrowdForward.loss, EmaTeacher.loss

    def spy_crowd(self, batch):
        supervised.update(batch.trusted.tolist() + batch.untrusted.tolist())
        return crowd_loss(self, batch)

    def spy_semi(self, batch):
        consistency.update(batch.unlabeled.tolist())
        return semi_loss(self, batch)

    monkeypatch.setattr(CrowdForward, "loss", spy_crowd)
    monkeypatch.setattr(EmaTeacher, "loss", spy_semi)
    cfg = TrainConfig(method="crowd", epochs=2, device="cpu", unlabeled_weight=1.0, pseudo_threshold=0.0)
    result = train(manifest, init=None, out=tmp_path / "run", cfg=cfg)
    assert supervised and not supervised & unlabeled
    assert consistency & unlabeled  # the unlabeled images were trained on, without a label
    assert all(np.isfinite(h.train_loss) for h in result.meta.metrics.history)
    assert [h.pseudo_labeled_fraction for h in result.meta.metrics.history] == [1.0, 1.0]  # threshold 0: every row


def test_the_teacher_is_a_moving_average_and_gets_no_gradient(tiny_data):
    from labelaudit.training.loader import TensorImages
    from labelaudit.training.networks import TwoHeadNet
    from labelaudit.training.train import SilentReporter, TaskData

    n, k = 16, 10
    data = TaskData(
        images=TensorImages(torch.randn(n, 1, 8, 8)),
        labels=torch.zeros(n, dtype=torch.int64),
        is_trusted=torch.zeros(n, dtype=torch.bool),
        k=k,
        train_rows=np.arange(8),
        trusted_rows=np.empty(0, int),
        untrusted_rows=np.arange(8),
        unlabeled_rows=np.arange(8, 16),
        val_rows=np.empty(0, int),
        test_rows=np.empty(0, int),
        labeler_ids=np.array(["a"] * n),
    )
    cfg = TrainConfig(device="cpu", augment="none", unlabeled_weight=1.0, ema_decay=0.9, pseudo_threshold=0.0)
    trainer = Trainer(cfg, TwoHeadNet("cnn_small", k, 1), data, SilentReporter())
    teacher = trainer.semi.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in trainer.net.parameters():
            p.add_(1.0)
    trainer.semi.update()
    for t, t0, s in zip(teacher.parameters(), before, trainer.net.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)


def test_the_label_posterior_weighs_the_network_against_the_labelers_matrix():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    t = torch.tensor([[0.9, 0.1], [0.4, 0.6]]).repeat(2, 1, 1)  # this labeler writes 1 for class 1 only 60%
    labels = torch.tensor([1, 1])
    got = label_posterior(probs, t, labels)
    # item 0: 0.3 * 0.6 / (0.7 * 0.1 + 0.3 * 0.6) = 0.72; item 1: 0.8 * 0.6 / (0.2 * 0.1 + 0.8 * 0.6) = 0.96
    torch.testing.assert_close(got, torch.tensor([0.18 / 0.25, 0.48 / 0.50]))


@pytest.mark.parametrize(
    ("pool", "unlabeled_in", "doubted_in"),
    [("unlabeled+doubted", True, True), ("unlabeled", True, False), ("doubted", False, True)],
)
def test_semi_pool_chooses_which_rows_train_without_their_label(tiny_data, pool, unlabeled_in, doubted_in):
    """The pool is the unlabeled images, crowd's doubted rows, or both: the run with and without the unlabeled
    images that the benchmark compares."""
    from types import SimpleNamespace

    from labelaudit.training.semi import EmaTeacher

    teacher = EmaTeacher.__new__(EmaTeacher)  # the pool alone: no network needed
    teacher.cfg = TrainConfig(semi_pool=pool)
    teacher.trainer = SimpleNamespace(data=SimpleNamespace(unlabeled_rows=np.array([7, 8, 9])))
    teacher.refresh_pool(SimpleNamespace(doubted_rows=lambda: np.array([1, 2])))
    assert set(teacher.pool.tolist()) == ({7, 8, 9} if unlabeled_in else set()) | ({1, 2} if doubted_in else set())


def test_an_unknown_semi_pool_is_refused_before_training(tiny_data, tmp_path):
    with pytest.raises(
        ValueError, match=r"semi_pool='everything' \(choose from unlabeled\+doubted, unlabeled, doubted\)"
    ):
        train(tiny_data / "task_b.jsonl", init=None, out=tmp_path, cfg=TrainConfig(semi_pool="everything"))


def test_the_strong_views_forward_leaves_batchnorms_running_statistics_alone():
    """The consistency loss's extra pass on strongly augmented images normalises with its own batch but must
    not set the running statistics the exported model uses; the supervised pass still does."""
    from labelaudit.training.networks import TwoHeadNet, running_stats_frozen

    net = TwoHeadNet("cnn_small", 3, 1).train()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    before = [m.running_mean.clone() for m in norms]
    with running_stats_frozen(net):
        net(torch.randn(8, 1, 28, 28) * 3 + 2)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert all(m.momentum == 0.1 for m in norms)  # restored
    net(torch.randn(8, 1, 28, 28) * 3 + 2)
    assert not all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
