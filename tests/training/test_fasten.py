"""FasTEN's label correction inside the real method (never flips a trusted label, never cascades) and
GLC's batch loss, on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelaudit.training.loader import TensorImages
from labelaudit.training.methods import FasTEN, GoldLossCorrection
from labelaudit.training.methods.base import Batch
from labelaudit.training.methods.fasten import stratified_halves
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.train import SilentReporter, TaskData, TrainConfig, Trainer
from labelaudit.training.transition import estimate_transition, forward_corrected_nll

K = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _task(x: torch.Tensor, labels: np.ndarray, trusted_rows: np.ndarray, k: int = K) -> TaskData:
    n = len(labels)
    is_trusted = np.zeros(n, dtype=bool)
    is_trusted[trusted_rows] = True
    rows = np.arange(n)
    return TaskData(
        images=TensorImages(x),
        labels=torch.as_tensor(labels, dtype=torch.int64),
        is_trusted=torch.as_tensor(is_trusted),
        k=k,
        train_rows=rows,
        trusted_rows=np.asarray(trusted_rows),
        untrusted_rows=rows[~is_trusted],
        val_rows=np.empty(0, dtype=np.int64),
        test_rows=np.empty(0, dtype=np.int64),
        labeler_ids=np.array(["qa" if t else "labeler-1" for t in is_trusted]),
    )


def _trainer(net: nn.Module, data: TaskData, **overrides) -> Trainer:
    settings = dict(device="cpu", augment="none", batch_size=16, epochs=1, seed=0) | overrides
    cfg = TrainConfig(**settings)
    return Trainer(cfg, net, data, SilentReporter())


def _random_task(n: int = 60, trusted_per_class: int = 3, seed: int = 0) -> TaskData:
    """(n, 1, 8, 8) noise images (cnn_small pools adaptively; small keeps CPU runs fast); the first
    K * trusted_per_class rows are trusted, class-balanced."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=n)
    trusted = np.arange(K * trusted_per_class)
    labels[trusted] = np.tile(np.arange(K), trusted_per_class)
    x = torch.from_numpy(rng.normal(size=(n, 1, 8, 8)).astype(np.float32))
    return _task(x, labels, trusted)


class ScriptedNet(nn.Module):
    """A two-head net whose logits are set per row by the test: image ``i`` is filled with the value ``i``."""

    def __init__(self, n: int, k: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # something for the loss to have a gradient towards
        self.clean = torch.zeros(n, k)
        self.noisy = torch.zeros(n, k)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0].round().long()

    def forward(self, x: torch.Tensor, both: bool = False, detach_first: int = 0):
        rows = self._rows(x)
        if not both:
            return self.clean[rows] * self.scale
        return self.clean[rows] * self.scale, self.noisy[rows] * self.scale


def _scripted_method(labels: list[int], trusted_rows: list[int], k: int = 3, rho: float = 0.8, **overrides):
    n = len(labels)
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    net = ScriptedNet(n, k)
    method = FasTEN(_trainer(net, _task(x, np.array(labels), np.array(trusted_rows), k), rho=rho, **overrides))
    return method, net


def _confident(towards: int, k: int = 3) -> torch.Tensor:
    logits = torch.zeros(k)
    logits[towards] = 10.0  # softmax confidence ~0.9999
    return logits


# -- FasTEN ----------------------------------------------------------------------------------------


def test_fasten_correction_never_flips_trusted_labels_and_always_starts_from_the_original():
    torch.manual_seed(0)
    data = _random_task()
    net = TwoHeadNet("cnn_small", K, 1)
    trainer = _trainer(net, data, rho=0.3)
    method = FasTEN(trainer)
    labels_before = data.labels.clone()
    trusted = torch.as_tensor(data.trusted_rows)
    seen_clean: list[torch.Tensor] = []
    net.clean_head.register_forward_hook(lambda _m, _i, out: seen_clean.append(out.detach()))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    corrected_total = kept_total = 0

    for _epoch in range(3):
        for batch in method.batches(rng):
            assert not np.isin(batch.untrusted, data.trusted_rows).any()
            loss, stats = method.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

            torch.testing.assert_close(method.original, labels_before)
            torch.testing.assert_close(data.labels, labels_before)
            torch.testing.assert_close(method.assigned[trusted], labels_before[trusted])
            # this visit's correction: the clean head's argmax where confident, else the ORIGINAL label
            probs_u = torch.softmax(seen_clean[-1][len(batch.trusted) :], 1)
            confidence, predicted = probs_u.max(1)
            rows_u = torch.as_tensor(batch.untrusted)
            expected = torch.where(confidence >= 0.3, predicted, labels_before[rows_u])
            torch.testing.assert_close(method.assigned[rows_u], expected)
            assert stats.corrected == int((expected != labels_before[rows_u]).sum())
            corrected_total += stats.corrected
            kept_total += int((expected == labels_before[rows_u]).sum())

    assert corrected_total > 0 and kept_total > 0  # both branches were exercised


def test_fasten_falls_back_to_the_original_label_not_to_an_earlier_correction():
    labels = [0, 1, 2, 0, 0, 1, 2]
    method, net = _scripted_method(labels, trusted_rows=[0, 1, 2])
    batch = Batch(untrusted=np.array([3, 4, 5, 6]), trusted=np.array([0, 1, 2]))
    original = torch.tensor(labels)

    # visit 1: confident towards class 2 everywhere, trusted rows included
    net.clean[:] = _confident(2)
    method.loss(batch)
    assert method.assigned.tolist() == [0, 1, 2, 2, 2, 2, 2]

    # visit 2: unconfident; rows 3-5 go back to their ORIGINAL labels, not to the correction
    net.clean[:] = torch.tensor([1.0, 0.5, 0.0])
    method.loss(batch)
    assert method.assigned.tolist() == labels

    # visit 3: confident towards class 1 on rows 3 and 4 only
    net.clean[3] = _confident(1)
    net.clean[4] = _confident(1)
    method.loss(batch)
    assert method.assigned.tolist() == [0, 1, 2, 1, 1, 1, 2]
    torch.testing.assert_close(method.original, original)


def test_fasten_trains_on_the_label_from_the_previous_visit():
    """The loss of visit 2 uses visit 1's correction; computed by hand from the scripted logits."""
    labels = [0, 1, 2, 0, 1]
    method, net = _scripted_method(labels, trusted_rows=[0, 1, 2], rho=0.8)
    batch = Batch(untrusted=np.array([3, 4]), trusted=np.array([0, 1, 2]))
    net.noisy[:3] = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.5, 0.0, 1.5]])
    net.noisy[3:] = torch.tensor([[0.3, 0.2, 0.1], [0.0, 1.0, -1.0]])
    net.clean[:3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    net.clean[3] = _confident(2)  # corrected to 2 at the first visit
    net.clean[4] = torch.tensor([0.2, 0.1, 0.0])  # stays at its original label 1

    method.loss(batch)  # visit 1 trains on the original labels and sets ŷ = [2, 1]
    assert method.assigned[3:].tolist() == [2, 1]
    loss, _ = method.loss(batch)  # visit 2 trains on ŷ

    y_t, y_hat = torch.tensor([0, 1, 2]), torch.tensor([2, 1])
    clean_t, clean_u, noisy_t, noisy_u = net.clean[:3], net.clean[3:], net.noisy[:3], net.noisy[3:]
    t_hat = torch.softmax(noisy_t, 1)  # one trusted sample per class: T̂[i] is its noisy softmax
    p_u = torch.softmax(clean_u, 1)
    corrected_nll = -torch.log((p_u @ t_hat)[torch.arange(2), y_hat])
    expected = (
        0.5 * F.cross_entropy(clean_t, y_t)
        + 0.5 * corrected_nll.mean()
        + method.cfg.noisy_weight * F.cross_entropy(noisy_u, y_hat)
    )
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(method.t_hat[0], t_hat)  # (H=1, K, K)


@pytest.mark.parametrize("trains_features", [True, False])
def test_fasten_trusted_rows_train_the_features_only_when_asked(trains_features):
    """``trusted_trains_features=False``: the trusted rows' losses reach the heads, never the feature
    extractor, so ``T̂`` is read off images the features were not fitted to (docs/methods.md)."""
    torch.manual_seed(0)
    data = _random_task()
    net = TwoHeadNet("cnn_small", K, 1).eval()  # BatchNorm on running statistics: rows stay independent
    method = FasTEN(_trainer(net, data, trusted_trains_features=trains_features))
    grads: list[torch.Tensor] = []

    def keep_grad(_module, _inputs, out):
        out.register_hook(grads.append)  # returns None: the output stays as it is

    net.features.register_forward_hook(keep_grad)
    batch = next(method.batches(np.random.default_rng(0)))
    n_t = len(batch.trusted)
    loss, _ = method.loss(batch)
    loss.backward()

    trusted_grad, untrusted_grad = grads[0][:n_t], grads[0][n_t:]
    assert untrusted_grad.abs().sum() > 0
    assert (trusted_grad.abs().sum() > 0) == trains_features
    # the heads still learn from the trusted rows: their gradient differs from the untrusted rows' alone
    with_trusted = net.clean_head.weight.grad.clone()
    net.zero_grad()
    method.cfg.trusted_trains_features = True
    f = net.features(method.trainer.inputs(batch, part="untrusted"))
    p_u = torch.softmax(net.clean_head(f), 1)
    y_hat = method.assigned[torch.as_tensor(batch.untrusted)]
    (0.5 * forward_corrected_nll(p_u, method.t_hat[0], y_hat).mean()).backward()
    assert not torch.allclose(with_trusted, net.clean_head.weight.grad)


def test_fasten_transition_is_the_mean_of_the_per_iteration_estimates_then_resets():
    method, net = _scripted_method([0, 1, 2, 0, 1], trusted_rows=[0, 1, 2])
    batch = Batch(untrusted=np.array([3, 4]), trusted=np.array([0, 1, 2]))
    assert method.transition().tolist() == np.eye(3).tolist()  # before any step: the identity

    estimates = []
    for scale in (1.0, 3.0):
        net.noisy[:3] = scale * torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.5, 0.0, 1.5]])
        method.loss(batch)
        estimates.append(torch.softmax(net.noisy[:3], 1).numpy())

    got = method.transition()
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, np.mean(estimates, axis=0), atol=1e-6)
    np.testing.assert_allclose(method.transition(), estimates[-1], atol=1e-6)  # reset: the latest T̂


def test_fasten_keeps_the_previous_row_for_a_class_missing_from_the_trusted_batch():
    method, net = _scripted_method([0, 1, 2, 0, 1], trusted_rows=[0, 1, 2])
    net.noisy[:3] = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.5, 0.0, 1.5]])
    method.loss(Batch(untrusted=np.array([3, 4]), trusted=np.array([0, 1, 2])))
    first = method.t_hat[0].clone()

    net.noisy[0] = torch.tensor([0.0, 0.0, 5.0])
    method.loss(Batch(untrusted=np.array([3, 4]), trusted=np.array([0])))  # only class 0 present

    torch.testing.assert_close(method.t_hat[0, 1:], first[1:])
    torch.testing.assert_close(method.t_hat[0, 0], torch.softmax(net.noisy[0], 0))


def test_stratified_halves_split_every_class_evenly_and_lose_nothing():
    rows = np.arange(100, 131)
    labels = np.array([0] * 10 + [1] * 11 + [2] * 10)
    first, second = stratified_halves(rows, labels, np.random.default_rng(0))
    assert sorted(np.concatenate([first, second]).tolist()) == rows.tolist()
    for c in range(3):
        a, b = (np.isin(half, rows[labels == c]).sum() for half in (first, second))
        assert abs(int(a) - int(b)) <= 1


def test_fasten_held_out_estimate_reads_t_hat_off_the_half_the_cross_entropy_does_not_fit():
    labels = [0, 1, 2, 0, 1, 2, 0, 1]  # rows 0-5 trusted (two per class), 6 and 7 untrusted
    method, net = _scripted_method(labels, trusted_rows=[0, 1, 2, 3, 4, 5], held_out_estimate=True)
    rng = np.random.default_rng(0)
    halves = []
    for _ in range(2):
        method.start_epoch()
        halves.append((method._fit.copy(), method._estimate.copy()))
    assert sorted(np.concatenate(halves[0]).tolist()) == [0, 1, 2, 3, 4, 5]
    assert set(halves[0][0]) == set(halves[1][1])  # the halves swap roles every epoch
    fit, estimate = halves[1]
    batch = Batch(untrusted=np.array([6, 7]), trusted=method.trusted_batch(rng))
    net.noisy[estimate] = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 4.0]])[labels_of(estimate, labels)]
    net.clean[fit] = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])[labels_of(fit, labels)]

    first = method.loss(batch)[0].item()
    expected = torch.softmax(torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 4.0]]), 1)
    torch.testing.assert_close(method.t_hat[0], expected)  # every row from the estimating half only
    net.noisy[fit] = torch.full((len(fit), 3), 9.0) * torch.eye(3)[[2, 0, 1]]  # the fitting half's noisy view...
    net.clean[estimate] = torch.tensor([-9.0, 9.0, 9.0])  # ...and the estimating half's clean logits: unseen
    method.assigned = method.original.clone()
    assert method.loss(batch)[0].item() == pytest.approx(first, rel=1e-6)
    torch.testing.assert_close(method.t_hat[0], expected)


def labels_of(rows: np.ndarray, labels: list[int]) -> list[int]:
    return [labels[r] for r in rows]


def test_fasten_batches_are_class_balanced_and_cover_every_untrusted_row_once():
    data = _random_task(n=60, trusted_per_class=5)
    method = FasTEN(_trainer(TwoHeadNet("cnn_small", K, 1), data, trusted_per_class=2))
    rng = np.random.default_rng(1)

    batches = list(method.batches(rng))

    assert len(batches) == method.steps_per_epoch() == -(-len(data.untrusted_rows) // 16)
    np.testing.assert_array_equal(np.sort(np.concatenate([b.untrusted for b in batches])), data.untrusted_rows)
    for b in batches:
        assert np.isin(b.trusted, data.trusted_rows).all()
        assert np.bincount(data.labels[b.trusted].numpy(), minlength=K).tolist() == [2] * K


def test_fasten_fit_reports_a_row_stochastic_transition_each_epoch():
    torch.manual_seed(0)
    data = _random_task(n=48)
    trainer = _trainer(TwoHeadNet("cnn_small", K, 1), data, epochs=2, rho=0.3)
    method = FasTEN(trainer)

    history = trainer.fit(method, phase="test")

    assert len(history) == 2
    for m in history:
        t = np.array(m.transition_matrix)
        assert t.shape == (K, K) and (t >= 0).all()
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-3)  # rounded to 4 decimals per entry
        assert 0.0 <= m.corrected_fraction <= 1.0
    torch.testing.assert_close(method.assigned[data.trusted_rows], data.labels[data.trusted_rows])


# -- GLC -------------------------------------------------------------------------------------------


def test_glc_loss_is_cross_entropy_on_trusted_rows_and_forward_corrected_on_the_rest():
    torch.manual_seed(0)
    data = _random_task(n=20, trusted_per_class=2)
    net = TwoHeadNet("cnn_small", K, 1).eval()
    method = GoldLossCorrection(_trainer(net, data))
    c = torch.tensor(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.2, 0.6, 0.1, 0.1],
            [0.0, 0.3, 0.6, 0.1],
            [0.25, 0.25, 0.25, 0.25],
        ]
    )
    method.c = c
    rows = np.array([0, 9, 3, 15, 12, 5])  # trusted: 0, 3, 5; untrusted: 9, 12, 15
    assert data.is_trusted[rows].tolist() == [True, False, True, False, False, True]

    loss, stats = method.loss(Batch(untrusted=rows))

    with torch.no_grad():
        logits = net(data.images.x[rows]).double()
    p = torch.softmax(logits, 1).numpy()
    y = data.labels[rows].numpy()
    per_row = [
        -np.log(p[i, y[i]]) if data.is_trusted[r] else -np.log(p[i] @ c.double().numpy()[:, y[i]])
        for i, r in enumerate(rows)
    ]
    assert loss.item() == pytest.approx(np.mean(per_row), rel=1e-5)
    assert stats.seen == len(rows)
    assert method.transition().tolist() == c.tolist()


def test_glc_prepare_estimates_c_on_the_trusted_set_and_restarts_from_the_initial_weights():
    torch.manual_seed(0)
    data = _random_task(n=40)
    net = TwoHeadNet("cnn_small", K, 1)
    trainer = _trainer(net, data)
    initial = {name: value.clone() for name, value in net.state_dict().items()}
    method = GoldLossCorrection(trainer)
    assert method.transition() is None

    method.prepare()

    c = method.transition()
    assert c.shape == (K, K)
    np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-5)
    for name, value in trainer.net.state_dict().items():
        torch.testing.assert_close(value, initial[name], msg=f"{name} was not restored")
    # C is the estimator applied to the phase-1 network; it is not the identity it would be untrained
    assert not np.allclose(c, estimate_transition(torch.eye(K), torch.arange(K), K).numpy())
