"""The crowd method: EM recovers each labeler's transition matrix, the loss is the hand-computed one,
and labels are never rewritten."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelaudit.training.loader import TensorImages
from labelaudit.training.methods.base import Batch
from labelaudit.training.methods.crowd import (
    CrowdForward,
    CrowdMix,
    em_transitions,
    initial_transitions,
    sharpened_posterior,
    small_loss_mean,
)
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.train import SilentReporter, TaskData, TrainConfig, Trainer, _check_config
from labelaudit.training.transition import mixed_forward_nll

K = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _noisy_labels(truth: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(len(t), p=t[y]) for y in truth])


def test_em_recovers_each_groups_transition_matrix():
    rng = np.random.default_rng(0)
    n = 6_000
    truth = rng.integers(0, K, size=n)
    reliable = np.full((K, K), 0.05 / 3) + np.eye(K) * (0.95 - 0.05 / 3)
    swapper = np.eye(K)[[1, 0, 2, 3]] * 0.7 + np.eye(K) * 0.3  # classes 0 and 1 swapped 70% of the time
    spammer = np.full((K, K), 1 / K)
    groups = rng.integers(0, 3, size=n)
    labels = np.empty(n, dtype=np.int64)
    for g, t in enumerate((reliable, swapper, spammer)):
        labels[groups == g] = _noisy_labels(truth[groups == g], t, rng)
    # a decent but imperfect network: 80% of its mass on the true class
    probs = torch.full((n, K), 0.2 / (K - 1)).scatter_(1, torch.as_tensor(truth)[:, None], 0.8)

    t = em_transitions(
        probs, torch.as_tensor(labels), torch.as_tensor(groups), initial_transitions(3, K, "cpu"), steps=30
    ).numpy()

    np.testing.assert_allclose(t.sum(2), 1.0, atol=1e-5)
    for got, want in zip(t, (reliable, swapper, spammer), strict=True):
        np.testing.assert_allclose(got, want, atol=0.06)


def _task(n: int = 48, trusted: int = 8, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=n)
    is_trusted = np.zeros(n, dtype=bool)
    is_trusted[:trusted] = True
    rows = np.arange(n)
    return TaskData(
        images=TensorImages(torch.from_numpy(rng.normal(size=(n, 1, 12, 12)).astype(np.float32))),
        labels=torch.as_tensor(labels),
        is_trusted=torch.as_tensor(is_trusted),
        k=K,
        train_rows=rows,
        trusted_rows=rows[is_trusted],
        untrusted_rows=rows[~is_trusted],
        val_rows=np.empty(0, dtype=np.int64),
        test_rows=np.empty(0, dtype=np.int64),
        labeler_ids=np.array(["qa"] * trusted + ["ann", "bob"] * ((n - trusted) // 2)),
    )


def _method(data: TaskData, kind: type[CrowdForward] = CrowdForward, **cfg) -> CrowdForward:
    torch.manual_seed(0)
    base = dict(device="cpu", augment="none", batch_size=8, epochs=1, seed=0, min_labeler_items=5)
    cfg = TrainConfig(**(base | cfg))
    return kind(Trainer(cfg, TwoHeadNet("cnn_small", K, 1), data, SilentReporter()))


def test_crowd_loss_is_half_trusted_ce_and_half_per_labeler_forward_correction():
    data = _task()
    method = _method(data)
    assert method.groups == ["ann", "bob", "*"]
    method.t = torch.stack([torch.eye(K), torch.full((K, K), 0.1).fill_diagonal_(0.7), torch.eye(K)])
    rows_u, rows_t = np.array([8, 9, 10]), data.trusted_rows
    method.trainer.net.eval()  # deterministic logits to compare against

    loss, _ = method.loss(Batch(untrusted=rows_u, trusted=rows_t))

    with torch.no_grad():
        logits = method.trainer.net(data.images.x[np.concatenate([rows_t, rows_u])])
        ce = F.cross_entropy(logits[: len(rows_t)], data.labels[rows_t])
        p = torch.softmax(logits[len(rows_t) :], 1)
        t_rows = [method.t[0], method.t[1], method.t[0]]  # ann, bob, ann
        nll = [-torch.log(p[i] @ t_rows[i][:, data.labels[r]]) for i, r in enumerate(rows_u)]
        expected = 0.5 * ce + 0.5 * torch.stack(nll).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [CrowdForward, CrowdMix])
def test_without_a_trusted_set_the_loss_is_the_labelers_forward_correction_alone(kind):
    data = _task(trusted=0)
    method = _method(data, kind, mixup_alpha=0.0)
    method.t = torch.stack([torch.eye(K), torch.full((K, K), 0.1).fill_diagonal_(0.7), torch.eye(K)])
    rows_u = np.array([0, 1, 2])
    method.trainer.net.eval()

    loss, _ = method.loss(Batch(untrusted=rows_u, trusted=data.trusted_rows))

    with torch.no_grad():
        p = torch.softmax(method.trainer.net(data.images.x[rows_u]), 1)
        t_rows = [method.t[0], method.t[1], method.t[0]]  # ann, bob, ann
        expected = torch.stack([-torch.log(p[i] @ t_rows[i][:, data.labels[r]]) for i, r in enumerate(rows_u)]).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_crowd_never_rewrites_labels_and_refreshes_row_stochastic_matrices():
    data = _task()
    method = _method(data)
    before = data.labels.clone()
    rng = np.random.default_rng(0)
    for _ in range(2):
        method.start_epoch()  # the EM refresh, as Trainer.fit calls it before each epoch's batches
        for batch in method.batches(rng):
            assert np.array_equal(batch.trusted, data.trusted_rows)
            method.loss(batch)[0].backward()
    torch.testing.assert_close(data.labels, before)
    np.testing.assert_allclose(method.t.sum(2).numpy(), 1.0, atol=1e-5)
    assert not torch.allclose(method.t, initial_transitions(3, K, "cpu"))  # EM moved it
    assert method.transition().shape == (K, K)
    assert set(method.labeler_transitions()) == {"ann", "bob"}


def test_the_mixed_loss_takes_each_label_through_its_own_matrix():
    p = torch.tensor([[0.8, 0.2]])
    t_a, t_b = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.eye(2)
    got = mixed_forward_nll(p, t_a, torch.tensor([1]), t_b, torch.tensor([0]), 0.3)
    # (T_aᵀ p)[1] = 0.8 * 0.1 + 0.2 * 0.8 = 0.24; (T_bᵀ p)[0] = 0.8
    torch.testing.assert_close(got, torch.tensor([0.3 * -np.log(0.24) + 0.7 * -np.log(0.8)], dtype=torch.float32))


def test_crowdmix_without_mixing_is_crowd():
    data = _task()
    crowd, mix = _method(data), _method(data, CrowdMix, mixup_alpha=0.0)
    for m in (crowd, mix):
        m.t = torch.stack([torch.eye(K), torch.full((K, K), 0.1).fill_diagonal_(0.7), torch.eye(K)])
        m.trainer.net.eval()
    batch = dict(untrusted=np.array([8, 9, 10, 11]), trusted=data.trusted_rows)
    torch.testing.assert_close(mix.loss(Batch(**batch))[0], crowd.loss(Batch(**batch))[0])


def test_crowdmix_feeds_the_network_mixed_untrusted_images_and_clean_trusted_ones():
    data = _task()
    method = _method(data, CrowdMix, mixup_alpha=1.0)
    seen = []
    method.trainer.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    rows_u, rows_t = np.array([8, 9, 10, 11]), data.trusted_rows
    draw = np.random.default_rng([0, 7919])  # the method's own stream, replayed
    lam, partner = draw.beta(1.0, 1.0), draw.permutation(len(rows_u))

    method.loss(Batch(untrusted=rows_u, trusted=rows_t))

    x = data.images.x
    torch.testing.assert_close(seen[0][: len(rows_t)], x[rows_t])
    expected = lam * x[rows_u] + (1 - lam) * x[rows_u[partner]]
    torch.testing.assert_close(seen[0][len(rows_t) :], expected.float(), rtol=1e-5, atol=1e-6)
    assert 0 < lam < 1 and not np.array_equal(partner, np.arange(len(rows_u)))


def test_the_sharpened_posterior_by_hand():
    """p = (0.6, 0.4), the labeler said 1 and says 1 for a true 0 a quarter of the time, for a true 1 always:
    q ∝ (0.6 * 0.25, 0.4 * 1) = (0.15, 0.4) -> (0.273, 0.727); sharpened at T = 0.5: ∝ (0.0744, 0.529)."""
    t = torch.tensor([[[0.75, 0.25], [0.0, 1.0]]])
    q = sharpened_posterior(torch.tensor([[0.6, 0.4]]), t, torch.tensor([1]), temperature=0.5)
    plain = sharpened_posterior(torch.tensor([[0.6, 0.4]]), t, torch.tensor([1]), temperature=1.0)
    torch.testing.assert_close(plain, torch.tensor([[0.15 / 0.55, 0.4 / 0.55]]))
    a, b = (0.15 / 0.55) ** 2, (0.4 / 0.55) ** 2
    torch.testing.assert_close(q, torch.tensor([[a / (a + b), b / (a + b)]]))


@pytest.mark.parametrize("kind", [CrowdForward, CrowdMix])
def test_the_posterior_term_blends_in_cross_entropy_to_the_epochs_targets(kind):
    """posterior_weight w: the untrusted term is (1 - w) * the method's own + w * CE(p, q); at w = 0 it is the
    method unchanged, and the targets are refreshed with the matrices at the start of each epoch."""
    data = _task()
    batch = dict(untrusted=np.array([8, 9, 10, 11]), trusted=data.trusted_rows)
    losses = {}
    for w in (0.0, 1.0):
        m = _method(data, kind, mixup_alpha=0.0, posterior_weight=w)
        m.start_epoch()
        m.trainer.net.eval()
        losses[w] = m.loss(Batch(**batch))[0]
        if w:
            assert torch.allclose(m.targets[8:].sum(1), torch.ones(len(data.labels) - 8))  # every untrusted row
            with torch.no_grad():
                logits = m.trainer.net(data.images.x[np.concatenate([data.trusted_rows, batch["untrusted"]])])
                ce = F.cross_entropy(logits[:8], data.labels[data.trusted_rows])
                soft = -(m.targets[batch["untrusted"]] * torch.log_softmax(logits[8:], 1)).sum(1).mean()
            torch.testing.assert_close(losses[w], 0.5 * ce + 0.5 * soft, rtol=1e-5, atol=1e-6)
    plain = _method(data, kind, mixup_alpha=0.0)
    plain.start_epoch()
    plain.trainer.net.eval()
    torch.testing.assert_close(losses[0.0], plain.loss(Batch(**batch))[0])


def test_small_loss_mean_leaves_out_the_largest_losses():
    losses = torch.tensor([0.5, 4.0, 1.0, 3.0, 2.0])
    assert small_loss_mean(losses, 0.0).item() == pytest.approx(2.1)
    assert small_loss_mean(losses, 0.4).item() == pytest.approx((0.5 + 1.0 + 2.0) / 3)  # 4.0 and 3.0 left out
    assert small_loss_mean(losses, 0.3).item() == pytest.approx((0.5 + 1.0 + 2.0 + 3.0) / 4)  # floor(1.5) = 1
    assert small_loss_mean(losses[:1], 0.9).item() == pytest.approx(0.5)  # one loss is always kept


def test_trimming_starts_at_nothing_and_reaches_its_fraction_over_a_fifth_of_the_epochs():
    method = _method(_task(), CrowdMix, trim_fraction=0.3, epochs=10)  # ramp: 2 epochs
    shares = []
    for _ in range(4):
        method.start_epoch()
        shares.append(method.trim_now())
    assert shares == pytest.approx([0.0, 0.15, 0.3, 0.3])


def _by_hand(method: CrowdForward, data: TaskData, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The trusted rows' cross-entropy and each untrusted row's forward-corrected NLL, computed by hand with
    fixed matrices (ann's the identity, bob's 0.7 on the diagonal), the network in eval mode."""
    method.t = torch.stack([torch.eye(K), torch.full((K, K), 0.1).fill_diagonal_(0.7), torch.eye(K)])
    method.trainer.net.eval()
    n_t = len(batch.trusted)
    with torch.no_grad():
        logits = method.trainer.net(data.images.x[np.concatenate([batch.trusted, batch.untrusted])])
        ce = F.cross_entropy(logits[:n_t], data.labels[batch.trusted])
        p = torch.softmax(logits[n_t:], 1)
        t_rows = [method.t[i % 2] for i in range(len(batch.untrusted))]  # ann, bob, ...
        nll = torch.stack([-torch.log(p[i] @ t_rows[i][:, data.labels[r]]) for i, r in enumerate(batch.untrusted)])
    return ce, nll


@pytest.mark.parametrize("kind", [CrowdForward, CrowdMix])
def test_a_trimmed_batch_loses_its_largest_untrusted_losses_and_keeps_the_trusted_half(kind):
    data = _task()
    batch = Batch(untrusted=np.array([8, 9, 10, 11, 12, 13, 14, 15]), trusted=data.trusted_rows)
    method = _method(data, kind, mixup_alpha=0.0, trim_fraction=0.25, epochs=1)  # ramp: 1 epoch
    method.epoch = 2  # past the ramp: a quarter of the batch left out
    ce, nll = _by_hand(method, data, batch)

    loss, _ = method.loss(batch)

    kept = torch.sort(nll).values[:6]  # the two largest of eight left out
    torch.testing.assert_close(loss.detach(), 0.5 * ce + 0.5 * kept.mean(), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(kept.mean(), nll.mean())  # the case does tell trimmed from untrimmed


@pytest.mark.parametrize("weight", [0.1, 0.0])
def test_trusted_weight_is_the_trusted_rows_share_of_the_loss(weight):
    data = _task()
    batch = Batch(untrusted=np.array([8, 9, 10, 11]), trusted=data.trusted_rows)
    method = _method(data, CrowdForward, trusted_weight=weight, epochs=1)
    ce, nll = _by_hand(method, data, batch)

    loss, _ = method.loss(batch)

    torch.testing.assert_close(loss.detach(), weight * ce + (1 - weight) * nll.mean(), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(ce, nll.mean())  # the case does tell the shares apart


def test_trim_fraction_must_leave_something():
    with pytest.raises(ValueError, match="trim_fraction"):
        _check_config(TrainConfig(trim_fraction=1.0))
