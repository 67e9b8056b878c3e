"""Student rounds (training.student): the teacher's targets read each label through its labeler's matrix,
unlabeled rows get the teacher's predictions and never their label, unsure rows sit out, and the loss is the
hand-computed one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelaudit.imaging.manifest import UNLABELED
from labelaudit.training.loader import TensorImages
from labelaudit.training.methods import METHODS
from labelaudit.training.methods.base import Batch
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.student import Student, crossfit_probabilities, teacher_targets
from labelaudit.training.train import SilentReporter, TaskData, TrainConfig, Trainer, train

from .test_semi import with_unlabeled

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _task(truth: np.ndarray, labels: np.ndarray, labeler_ids: np.ndarray, trusted: int) -> TaskData:
    n = len(truth)
    rows = np.arange(n)
    is_trusted = rows < trusted
    unlabeled = labels == UNLABELED
    return TaskData(
        images=TensorImages(torch.from_numpy(np.random.default_rng(0).normal(size=(n, 1, 12, 12)).astype(np.float32))),
        labels=torch.as_tensor(labels),
        is_trusted=torch.as_tensor(is_trusted),
        k=K,
        train_rows=rows[~unlabeled],
        trusted_rows=rows[is_trusted],
        untrusted_rows=rows[~is_trusted & ~unlabeled],
        unlabeled_rows=rows[unlabeled],
        val_rows=np.empty(0, dtype=np.int64),
        test_rows=np.empty(0, dtype=np.int64),
        labeler_ids=labeler_ids,
    )


def _trainer(data: TaskData, **cfg) -> Trainer:
    torch.manual_seed(0)
    cfg = {"device": "cpu", "augment": "none", "batch_size": 8, "epochs": 1, "seed": 0, "min_labeler_items": 20} | cfg
    cfg = TrainConfig(**cfg)
    return Trainer(cfg, TwoHeadNet("cnn_small", K, 1), data, SilentReporter())


def _crowd(n_per: int = 400, seed: int = 0):
    """8 trusted rows, then a careful labeler, a spammer and a labeler with 3 items (pooled), then 40
    unlabeled rows; a teacher that puts 0.55 on the true class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, size=8 + 2 * n_per + 3 + 40)
    labels = truth.copy()
    ids = np.array(["qa"] * 8 + ["careful"] * n_per + ["spammer"] * n_per + ["rare"] * 3 + [""] * 40)
    spam = ids == "spammer"
    labels[spam] = rng.integers(0, K, size=spam.sum())
    labels[-40:] = UNLABELED
    probs = torch.full((len(truth), K), 0.45 / (K - 1)).scatter_(1, torch.as_tensor(truth)[:, None], 0.55)
    return truth, labels, ids, probs


def test_teacher_targets_read_labels_through_their_labelers_matrix_and_unlabeled_rows_through_the_teacher(
    monkeypatch,
):
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    trainer = _trainer(data)
    asked: list[np.ndarray] = []

    def predict(rows, batch=512):
        asked.append(rows)
        return probs[rows]

    monkeypatch.setattr(trainer, "predict", predict)

    rows, targets = teacher_targets(trainer)

    np.testing.assert_array_equal(rows, np.concatenate([data.untrusted_rows, data.unlabeled_rows]))
    assert targets.shape == (len(rows), K)
    torch.testing.assert_close(targets.sum(1), torch.ones(len(rows)))
    place = {int(r): i for i, r in enumerate(rows)}
    careful = [place[r] for r in np.flatnonzero(ids == "careful")]
    spammer = [place[r] for r in np.flatnonzero(ids == "spammer")]
    unlabeled = [place[r] for r in data.unlabeled_rows]
    # a careful labeler's label decides: its matrix is near the identity, so the posterior follows the label
    assert (targets[careful].argmax(1).numpy() == labels[ids == "careful"]).all()
    assert targets[careful].max(1).values.min() > 0.9
    # a spammer's label says (almost) nothing: the posterior stays near the teacher's belief (its matrix is
    # near uniform, up to what 400 labels can tell)
    assert float((targets[spammer] - probs[ids == "spammer"]).abs().mean()) < 0.06
    assert (targets[spammer].argmax(1).numpy() == truth[ids == "spammer"]).mean() > 0.9
    # unlabeled rows: the teacher's prediction, whatever their (absent) label
    torch.testing.assert_close(targets[unlabeled], probs[data.unlabeled_rows])
    assert set(np.concatenate(asked).tolist()) == set(rows.tolist())  # trusted rows are never predicted


def test_rows_whose_target_is_unsure_sit_the_round_out():
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    targets = probs[rows].clone()
    targets[:5] = 1.0 / K  # five rows nobody is sure about
    student = Student(_trainer(data, student_threshold=0.5), rows, targets)
    np.testing.assert_array_equal(student.rows(), rows[5:])
    assert not student.threshold_waived
    assert set(student.trusted_batch(np.random.default_rng(0)).tolist()) == set(data.trusted_rows.tolist())


@pytest.mark.parametrize("kind", ["labeled", "unlabeled"])
@pytest.mark.parametrize("threshold", [0.7, 0.3])
def test_a_threshold_for_one_kind_of_row_holds_it_to_a_stricter_bar_than_the_other(kind, threshold):
    """``student_labeled_threshold`` and ``student_unlabeled_threshold``: the other kind's bar stays
    ``student_threshold``; one below it changes nothing."""
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    targets = probs[rows].clone()  # every target's top is 0.55
    targets[:3] = targets[-4:] = torch.tensor([0.8, 0.1, 0.05, 0.05])  # three labeled and four unlabeled sure ones
    targets[3:5] = targets[-6:-4] = 1.0 / K  # two of each nobody is sure about
    student = Student(_trainer(data, student_threshold=0.5, **{f"student_{kind}_threshold": threshold}), rows, targets)
    n_l = len(data.untrusted_rows)
    kept = {"labeled": np.concatenate([rows[:3], rows[5:n_l]]), "unlabeled": np.concatenate([rows[n_l:-6], rows[-4:]])}
    bars = {"labeled": 0.5, "unlabeled": 0.5}
    if threshold > 0.55:  # only the sure ones clear it
        kept[kind], bars[kind] = (rows[:3] if kind == "labeled" else rows[-4:]), threshold
    np.testing.assert_array_equal(student.rows(), np.concatenate([kept["labeled"], kept["unlabeled"]]))
    assert student.describe_kept() == (
        f"{len(kept['labeled'])} of {n_l} labeled rows (target >= {bars['labeled']}), "
        f"{len(kept['unlabeled'])} of {len(data.unlabeled_rows)} unlabeled rows (target >= {bars['unlabeled']}) train"
    )


def test_when_no_target_reaches_the_threshold_every_row_trains_rather_than_none():
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, student_threshold=0.9), rows, probs[rows])  # the teacher says 0.55 at most
    assert student.threshold_waived
    np.testing.assert_array_equal(student.rows(), rows)
    assert (
        student.describe_kept()
        == "no row's target reaches its bar (labeled >= 0.9 or unlabeled >= 0.9), so every row trains"
    )


@pytest.mark.parametrize("weight", [0.5, 0.1])
def test_student_loss_is_the_trusted_share_of_ce_and_the_rest_soft_ce_to_the_mixed_targets(weight):
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, mixup_alpha=1.0, trusted_weight=weight), rows, probs[rows])
    lam, partner = 0.3, torch.tensor([2, 0, 1])
    student.mixup.draw = lambda n, device: (lam, partner)
    rows_u = np.array([data.untrusted_rows[0], data.untrusted_rows[-1], data.unlabeled_rows[0]])
    rows_t = data.trusted_rows
    student.trainer.net.eval()  # deterministic logits to compare against

    loss, _ = student.loss(Batch(untrusted=rows_u, trusted=rows_t))

    with torch.no_grad():
        x_t, x_u = data.images.x[rows_t], data.images.x[rows_u]
        logits = student.trainer.net(torch.cat([x_t, lam * x_u + (1 - lam) * x_u[partner]]))
        ce = F.cross_entropy(logits[: len(rows_t)], data.labels[rows_t])
        q = probs[rows_u]
        target = lam * q + (1 - lam) * q[partner]
        soft = -(target * torch.log_softmax(logits[len(rows_t) :], 1)).sum(1).mean()
    torch.testing.assert_close(loss.detach(), weight * ce + (1 - weight) * soft, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(ce, soft)  # the case does tell the shares apart


def test_without_a_trusted_set_the_loss_is_the_soft_ce_alone():
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=0)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, mixup_alpha=0.0), rows, probs[rows])
    student.trainer.net.eval()
    rows_u = data.untrusted_rows[:4]

    loss, _ = student.loss(Batch(untrusted=rows_u, trusted=student.trusted_batch(np.random.default_rng(0))))

    with torch.no_grad():
        logits = student.trainer.net(data.images.x[rows_u])
        expected = -(probs[rows_u] * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_trusted_rows_as_rows_join_the_students_rows_with_their_checked_labels_and_no_trusted_half():
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, mixup_alpha=1.0, student_trusted="rows"), rows, probs[rows])
    np.testing.assert_array_equal(student.rows(), np.concatenate([rows, data.trusted_rows]))
    assert len(student.trusted_batch(np.random.default_rng(0))) == 0
    assert student.describe_kept().endswith(", the 8 trusted rows (their checked labels) train")
    lam, partner = 0.3, torch.tensor([1, 2, 0])
    student.mixup.draw = lambda n, device: (lam, partner)
    rows_u = np.array([data.trusted_rows[0], data.untrusted_rows[0], data.unlabeled_rows[0]])
    student.trainer.net.eval()

    loss, _ = student.loss(Batch(untrusted=rows_u, trusted=student.trusted_batch(np.random.default_rng(0))))

    with torch.no_grad():
        x_u = data.images.x[rows_u]
        logits = student.trainer.net(lam * x_u + (1 - lam) * x_u[partner])
        q = probs[rows_u].clone()
        q[0] = F.one_hot(torch.as_tensor(labels[rows_u[0]]), K).float()  # the trusted row: its checked label
        target = lam * q + (1 - lam) * q[partner]
        expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()  # no trusted half
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_trusted_rows_as_rows_without_a_trusted_set_change_nothing():
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=0)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, student_trusted="rows"), rows, probs[rows])
    np.testing.assert_array_equal(student.rows(), rows)
    assert "trusted" not in student.describe_kept()


def test_crossfit_teacher_predicts_every_row_with_a_network_that_never_trained_on_it(monkeypatch):
    truth, labels, ids, _ = _crowd(n_per=30)
    data = _task(truth, labels, ids, trusted=8)
    trainer = _trainer(data, epochs=2)
    trained: list[set[int]] = []  # each fold's training rows
    outputs: list[tuple[set[int], torch.Tensor]] = []  # what each network predicted, and its answer
    restarts: list[int] = []
    fit, predict, restart = Trainer.fit, Trainer.predict, Trainer.restart_from_init

    def spy_fit(self, method, *, phase):
        trained.append(set(method.rows().tolist()) | set(method.trusted_batch(np.random.default_rng(0)).tolist()))
        return fit(self, method, phase=phase)

    def spy_predict(self, rows, batch=512):
        out = predict(self, rows, batch)
        outputs.append((set(rows.tolist()), out))
        return out

    monkeypatch.setattr(Trainer, "fit", spy_fit)
    monkeypatch.setattr(Trainer, "predict", spy_predict)
    monkeypatch.setattr(Trainer, "restart_from_init", lambda self: (restarts.append(1), restart(self))[1])

    probs_l, probs_x, history = crossfit_probabilities(trainer, METHODS["ce"], folds=3)

    assert trainer.data is data  # the full task again afterwards
    assert len(trained) == 3 and restarts == [1, 1, 1] and len(history) == 3 * 2
    untrusted, unlabeled = set(data.untrusted_rows.tolist()), set(data.unlabeled_rows.tolist())
    fold_outputs = [(rows, out) for rows, out in outputs if rows and rows <= untrusted]  # not the epochs' accuracy
    held = [rows for rows, _ in fold_outputs]
    assert len(held) == 3 and set().union(*held) == untrusted and sum(len(h) for h in held) == len(untrusted)
    for fold, rows in enumerate(held):
        assert not rows & trained[fold]  # the network that predicts a fold never saw its rows
        assert set(data.trusted_rows.tolist()) <= trained[fold]  # the trusted rows train every fold
        assert trained[fold] & unlabeled == set()  # and the unlabeled rows none (ce has no unlabeled loss)
    assert probs_l.shape == (len(untrusted), K) and probs_x.shape == (len(unlabeled), K)
    torch.testing.assert_close(probs_l.sum(1), torch.ones(len(untrusted)))
    place = {int(r): i for i, r in enumerate(data.untrusted_rows)}
    for rows, out in fold_outputs:
        order = sorted(rows, key=lambda r: place[r])
        torch.testing.assert_close(probs_l[[place[r] for r in order]], out)
    on_unlabeled = [out for rows, out in outputs if rows == unlabeled]
    torch.testing.assert_close(probs_x, torch.stack(on_unlabeled).mean(0))


def test_crossfit_needs_two_folds_or_none(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="student_crossfit"):
        train(tiny_data / "task_b.jsonl", init=None, out=tmp_path, cfg=TrainConfig(student_crossfit=1))


def test_crossfit_without_a_student_round_is_refused(tiny_data, tmp_path):
    cfg = TrainConfig(method="crowd", epochs=1, device="cpu", student_crossfit=2)
    with pytest.raises(ValueError, match="needs student_rounds >= 1"):
        train(tiny_data / "task_b.jsonl", init=None, out=tmp_path, cfg=cfg)


@pytest.mark.slow
def test_a_student_round_trains_again_from_classifier_a_on_every_row_it_keeps(tiny_data, tmp_path, monkeypatch):
    from labelaudit.training import student as student_module

    manifest = with_unlabeled(tiny_data, tmp_path)
    a = train(tiny_data / "task_a.jsonl", init=None, out=tmp_path / "a", cfg=TrainConfig(method="ce", epochs=1))
    seen: set[int] = set()
    restarts: list[int] = []
    loss = student_module.Student.loss

    def spy(self, batch):
        seen.update(batch.untrusted.tolist())
        return loss(self, batch)

    monkeypatch.setattr(student_module.Student, "loss", spy)
    restart = Trainer.restart_from_init
    monkeypatch.setattr(Trainer, "restart_from_init", lambda self: (restarts.append(1), restart(self))[1])
    cfg = TrainConfig(method="crowd", epochs=2, device="cpu", student_rounds=1, student_threshold=0.0)

    result = train(manifest, init=a.checkpoint, out=tmp_path / "b", cfg=cfg)

    history = result.meta.metrics.history
    assert [h.epoch for h in history] == [1, 2, 1, 2]  # the method's epochs, then the student's
    assert restarts == [1]
    task = result.meta
    assert task.config["student_rounds"] == 1
    from labelaudit.imaging.manifest import read_manifest

    m = read_manifest(manifest)
    untrusted_or_unlabeled = np.flatnonzero((m.splits == "train") & ~m.trusted)
    assert seen == set(untrusted_or_unlabeled.tolist())  # threshold 0: every labeled and unlabeled row


@pytest.mark.slow
def test_a_crossfit_student_round_trains_one_network_per_fold_then_the_student(tiny_data, tmp_path):
    cfg = TrainConfig(method="crowd", epochs=1, device="cpu", student_rounds=1, student_crossfit=2)

    result = train(tiny_data / "task_b.jsonl", init=None, out=tmp_path / "b", cfg=cfg)

    assert [h.epoch for h in result.meta.metrics.history] == [1, 1, 1]  # fold 1, fold 2, the student
    assert result.meta.config["student_crossfit"] == 2
    assert result.meta.metrics.test_acc is not None


@pytest.fixture
def teachers(monkeypatch) -> list[dict]:
    """The weights of the network each student round takes its targets from, one dict per round."""
    from labelaudit.training import train as train_module

    seen: list[dict] = []
    targets = train_module.teacher_targets

    def spy(trainer, teacher=None):
        seen.append({k: v.detach().clone() for k, v in trainer.net.state_dict().items()})
        return targets(trainer, teacher)

    monkeypatch.setattr(train_module, "teacher_targets", spy)
    return seen


def test_a_saved_first_round_is_the_student_rounds_teacher_and_is_not_trained_again(tiny_data, tmp_path, teachers):
    from labelaudit.training.checkpoint import load_checkpoint

    manifest = tiny_data / "task_b.jsonl"
    base = {"method": "crowd", "epochs": 1, "device": "cpu", "augment": "none", "min_labeler_items": 20}
    first = train(manifest, init=None, out=tmp_path / "first", cfg=TrainConfig(**base))
    saved = load_checkpoint(first.checkpoint)[0].state_dict()
    cfg = TrainConfig(**base, student_rounds=1, seed=1, teacher=str(first.checkpoint))

    result = train(manifest, init=None, out=tmp_path / "student", cfg=cfg)

    assert [h.epoch for h in result.meta.metrics.history] == [1]  # the student's epoch alone
    assert len(teachers) == 1
    for name, value in saved.items():
        if not name.startswith("noisy_head."):
            torch.testing.assert_close(teachers[0][name], value, msg=name)
    assert result.meta.config["teacher"] == str(first.checkpoint)


def test_a_teacher_from_another_manifest_or_without_a_student_round_is_refused(tiny_data, tmp_path):
    base = {"method": "crowd", "epochs": 1, "device": "cpu", "min_labeler_items": 20}
    first = train(tiny_data / "task_b.jsonl", init=None, out=tmp_path / "first", cfg=TrainConfig(**base))
    other = tiny_data / "task_b_but_one.jsonl"  # beside the images it names
    other.write_text("".join(tiny_data.joinpath("task_b.jsonl").read_text().splitlines(keepends=True)[:-1]))
    teacher = str(first.checkpoint)
    with pytest.raises(ValueError, match="was trained on another manifest"):
        train(other, init=None, out=tmp_path / "o", cfg=TrainConfig(**base, student_rounds=1, teacher=teacher))
    with pytest.raises(ValueError, match="needs student_rounds >= 1"):
        train(tiny_data / "task_b.jsonl", init=None, out=tmp_path / "n", cfg=TrainConfig(**base, teacher=teacher))
    both = TrainConfig(**base, student_rounds=1, student_crossfit=2, teacher=teacher)
    with pytest.raises(ValueError, match="give one"):
        train(tiny_data / "task_b.jsonl", init=None, out=tmp_path / "b", cfg=both)


def test_a_student_run_saves_its_first_round_for_later_student_settings(tiny_data, tmp_path, teachers):
    from labelaudit.training.checkpoint import load_checkpoint

    manifest = tiny_data / "task_b.jsonl"
    base = {"method": "crowd", "epochs": 1, "device": "cpu", "augment": "none", "min_labeler_items": 20}

    result = train(manifest, init=None, out=tmp_path / "run", cfg=TrainConfig(**base, student_rounds=1))

    first_path = tmp_path / "run" / "checkpoint.first_round.pt"
    saved, meta = load_checkpoint(first_path)
    for name, value in saved.state_dict().items():  # the very network the student's targets came from
        torch.testing.assert_close(teachers[0][name], value, msg=name)
    assert meta.config["student_rounds"] == 0 and [h.epoch for h in meta.metrics.history] == [1]
    assert meta.data_version == result.meta.data_version
    assert [h.epoch for h in result.meta.metrics.history] == [1, 1]  # the final checkpoint: both rounds
    # other student settings start from it, and a run that trains no first round saves none
    again = TrainConfig(**base, student_rounds=1, student_trusted="rows", teacher=str(first_path))
    student = train(manifest, init=None, out=tmp_path / "rows", cfg=again)
    assert [h.epoch for h in student.meta.metrics.history] == [1]
    plain = train(manifest, init=None, out=tmp_path / "plain", cfg=TrainConfig(**base))
    assert not list((tmp_path / "rows").glob("*first_round*")) and not list(
        plain.checkpoint.parent.glob("*first_round*")
    )


def test_a_trusted_set_larger_than_a_step_is_cycled_through_a_fixed_number_of_rows():
    """crowd's and the student's trusted term: the whole set every step while it fits ``trusted_per_step`` (the
    rng untouched, so runs with small sets are what they were); a larger set gives that many rows per step, each
    row once per pass through it."""
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for cap in (0, 8, 128):
        whole = METHODS["crowd"](_trainer(data, method="crowd", trusted_per_step=cap))
        np.testing.assert_array_equal(whole.trusted_batch(rng), data.trusted_rows)
    assert rng.bit_generator.state == state

    crowd = METHODS["crowd"](_trainer(data, method="crowd", trusted_per_step=3))
    steps = [crowd.trusted_batch(rng) for _ in range(8)]  # 24 rows: three passes over the 8
    assert all(len(step) == 3 for step in steps)
    assert np.bincount(np.concatenate(steps), minlength=8).tolist() == [3] * 8
    assert len({tuple(s) for s in steps}) > 1

    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, trusted_per_step=3), rows, probs[rows].clone())
    assert [len(student.trusted_batch(rng)) for _ in range(3)] == [3, 3, 3]


def test_a_bar_of_1_is_never_waived():
    """No target reaches its bar: the labeled rows (bar 0.9) all train, the unlabeled ones held to 1 stay out; with
    every kind at 1 no row trains, and the round says so instead of training the trusted set alone."""
    truth, labels, ids, probs = _crowd()
    data = _task(truth, labels, ids, trusted=8)
    rows = np.concatenate([data.untrusted_rows, data.unlabeled_rows])
    student = Student(_trainer(data, student_threshold=0.9, student_unlabeled_threshold=1.0), rows, probs[rows])
    assert student.threshold_waived
    np.testing.assert_array_equal(student.rows(), data.untrusted_rows)
    assert student.describe_kept() == (
        "no row's target reaches its bar (labeled >= 0.9 or unlabeled >= 1.0), so every labeled row trains"
    )
    with pytest.raises(ValueError, match=r"no row can train: .*\(labeled >= 1.0 or unlabeled >= 1.0\)"):
        Student(_trainer(data, student_threshold=1.0), rows, probs[rows])
    as_rows = Student(_trainer(data, student_threshold=1.0, student_trusted="rows"), rows, probs[rows])
    np.testing.assert_array_equal(as_rows.rows(), data.trusted_rows)
    assert as_rows.describe_kept() == (
        "no row's target reaches its bar (labeled >= 1.0 or unlabeled >= 1.0), so the 8 trusted rows (their checked "
        "labels) train"
    )
