"""The transition-matrix maths: estimation, forward correction, safe correction, per-labeler matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from labelaudit.training.transition import (
    correct_labels,
    estimate_transition,
    forward_corrected_nll,
    labeler_transition_matrices,
    per_class_thresholds,
)

# A 3-class noise process used in the hand-computed examples.
T3 = torch.tensor(
    [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.3, 0.6],
    ],
    dtype=torch.float64,
)


@st.composite
def row_stochastic(draw, k: int) -> np.ndarray:
    """A (K, K) matrix with positive rows summing to 1."""
    raw = draw(hnp.arrays(np.float64, (k, k), elements=st.floats(0.01, 1.0)))
    return raw / raw.sum(1, keepdims=True)


@st.composite
def probability_rows(draw, max_rows: int = 12, max_k: int = 6) -> np.ndarray:
    """(B, K) rows of a softmax: non-negative, summing to 1."""
    b = draw(st.integers(1, max_rows))
    k = draw(st.integers(2, max_k))
    raw = draw(hnp.arrays(np.float64, (b, k), elements=st.floats(0.0, 1.0)))
    raw = raw + 1e-3  # no all-zero row
    return raw / raw.sum(1, keepdims=True)


# -- estimate_transition ---------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_estimate_transition_is_the_class_mean_of_the_probabilities(data):
    k = data.draw(st.integers(2, 6))
    t = data.draw(row_stochastic(k))
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=40)))
    probs = torch.from_numpy(t[labels]).float()  # every sample of class i predicts exactly T[i]

    got = estimate_transition(probs, torch.from_numpy(labels), k).numpy()

    present = np.bincount(labels, minlength=k) > 0
    np.testing.assert_allclose(got[present], t[present], atol=1e-6)
    np.testing.assert_array_equal(got[~present], np.eye(k)[~present])  # absent class: the identity row


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
def test_estimate_transition_recovers_a_known_t_from_one_hot_noisy_labels(n):
    """One-hot samples of noisy labels drawn from T: the error shrinks like 1/sqrt(N per class)."""
    rng = np.random.default_rng(n)
    t = np.array(
        [
            [0.6, 0.2, 0.1, 0.1],
            [0.0, 0.9, 0.1, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.05, 0.05, 0.3, 0.6],
        ]
    )
    k = len(t)
    true = rng.integers(0, k, size=n)
    noisy = _draw_noisy(t, true, rng)
    probs = torch.from_numpy(np.eye(k)[noisy]).float()

    got = estimate_transition(probs, torch.from_numpy(true), k).numpy()

    per_class = np.bincount(true, minlength=k).min()
    tolerance = 5 * math.sqrt(0.25 / per_class)  # five standard errors of the worst-case Bernoulli mean
    assert np.abs(got - t).max() < tolerance
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def _draw_noisy(t: np.ndarray, true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample noisy[n] ~ T[true[n]] for many n at once (inverse CDF)."""
    cdf = np.cumsum(t, axis=1)[true]  # (N, K)
    u = rng.random(len(true))[:, None]
    return np.minimum((u > cdf).sum(1), t.shape[1] - 1)


def test_estimate_transition_keeps_the_fallback_row_for_a_class_without_samples():
    k = 3
    fallback = T3.float()
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 2, 2])  # class 1 is absent

    got = estimate_transition(probs, labels, k, fallback=fallback)

    torch.testing.assert_close(got[0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(got[1], fallback[1])
    torch.testing.assert_close(got[2], torch.tensor([0.2, 0.2, 0.6]))
    torch.testing.assert_close(fallback, T3.float())  # the fallback itself is not modified


def test_estimate_transition_has_no_gradient_and_an_empty_batch_gives_the_identity():
    logits = torch.randn(4, 3, requires_grad=True)
    got = estimate_transition(torch.softmax(logits, 1), torch.tensor([0, 1, 2, 0]), 3)
    assert not got.requires_grad

    empty = estimate_transition(torch.empty(0, 3), torch.empty(0, dtype=torch.int64), 3)
    torch.testing.assert_close(empty, torch.eye(3))


# -- forward_corrected_nll -------------------------------------------------------------------------


def test_forward_corrected_nll_by_hand():
    p = torch.tensor([[0.7, 0.2, 0.1]] * 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    # (p @ T)[y] = sum_i p_i T[i, y]
    # y=0: 0.7*0.8 + 0.2*0.2 + 0.1*0.1 = 0.61
    # y=1: 0.7*0.1 + 0.2*0.7 + 0.1*0.3 = 0.24
    # y=2: 0.7*0.1 + 0.2*0.1 + 0.1*0.6 = 0.15
    expected = torch.tensor([-math.log(0.61), -math.log(0.24), -math.log(0.15)], dtype=torch.float64)

    got = forward_corrected_nll(p, T3, y)

    assert got.shape == (3,)
    torch.testing.assert_close(got, expected)
    assert got[1].item() == pytest.approx(1.4271163556401458)


@settings(max_examples=50, deadline=None)
@given(probability_rows(), st.data())
def test_forward_corrected_nll_with_the_identity_is_cross_entropy(p, data):
    b, k = p.shape
    y = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))
    probs = torch.from_numpy(p)

    got = forward_corrected_nll(probs, torch.eye(k, dtype=torch.float64), y)

    expected = F.nll_loss(torch.log(probs.clamp_min(1e-8)), y, reduction="none")
    torch.testing.assert_close(got, expected)


@settings(max_examples=50, deadline=None)
@given(probability_rows(max_k=5), st.data())
def test_forward_corrected_nll_is_minus_log_of_the_noisy_probability(p, data):
    b, k = p.shape
    t = data.draw(row_stochastic(k))
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))

    got = forward_corrected_nll(torch.from_numpy(p), torch.from_numpy(t), torch.from_numpy(y)).numpy()

    noisy = np.einsum("bi,ij->bj", p, t)
    expected = -np.log(noisy[np.arange(b), y])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert (got >= 0).all()


def test_forward_corrected_nll_gradient_reaches_the_probabilities():
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1])

    forward_corrected_nll(p, T3, y).sum().backward()

    # d/dp_i of -log(sum_j p_j T[j, y]) = -T[i, y] / 0.24
    expected = -T3[:, 1] / 0.24
    torch.testing.assert_close(p.grad[0], expected)


def test_forward_corrected_nll_gradient_reaches_the_logits_and_stays_finite_at_zero_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    forward_corrected_nll(torch.softmax(logits, 1), T3.float(), torch.tensor([2])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0

    zero = forward_corrected_nll(torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([1]))
    assert torch.isfinite(zero).all() and zero.item() == pytest.approx(-math.log(1e-8))


# -- correct_labels --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(probability_rows(), st.floats(0.0, 1.0), st.data())
def test_correct_labels_takes_the_argmax_only_when_confident(p, rho, data):
    b, k = p.shape
    original = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))
    probs = torch.from_numpy(p)
    before = original.clone()

    got = correct_labels(probs, original, rho)

    torch.testing.assert_close(original, before)  # the originals are never modified
    confidence = probs.max(1).values
    for row in range(b):
        if confidence[row] >= rho:
            assert probs[row, got[row]] == confidence[row]  # an argmax (ties: any of them)
        else:
            assert got[row] == original[row]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_correct_labels_from_the_original_never_depends_on_earlier_corrections(data):
    b = data.draw(st.integers(1, 10))
    k = data.draw(st.integers(2, 5))
    rho = data.draw(st.floats(0.3, 1.0))
    original = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))
    visits = [
        torch.from_numpy(data.draw(hnp.arrays(np.float64, (b, k), elements=st.floats(0.001, 1.0))))
        for _ in range(data.draw(st.integers(1, 5)))
    ]
    visits = [v / v.sum(1, keepdim=True) for v in visits]

    # The FasTEN loop: each visit recomputes from the ORIGINAL labels.
    assigned = original.clone()
    for probs in visits:
        assigned = correct_labels(probs, original, rho)

    torch.testing.assert_close(assigned, correct_labels(visits[-1], original, rho))
    unconfident = visits[-1].max(1).values < rho
    torch.testing.assert_close(assigned[unconfident], original[unconfident])


def test_correct_labels_corrects_at_exactly_rho():
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]])
    assert correct_labels(probs, torch.tensor([0, 1, 1]), 0.75).tolist() == [1, 1, 0]


def test_correct_labels_falls_back_to_the_original_not_to_an_earlier_correction():
    original = torch.tensor([0, 1])
    confident = torch.tensor([[0.05, 0.05, 0.9], [0.1, 0.85, 0.05]])
    unsure = torch.tensor([[0.4, 0.3, 0.3], [0.5, 0.3, 0.2]])

    first = correct_labels(confident, original, 0.8)
    second = correct_labels(unsure, original, 0.8)
    chained = correct_labels(unsure, first, 0.8)  # what a cascading implementation would do

    assert first.tolist() == [2, 1]
    assert second.tolist() == [0, 1]
    assert chained.tolist() == [2, 1]  # shows the difference the ORIGINAL labels make


# -- labeler_transition_matrices -------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_labeler_matrices_with_one_hot_truth_are_the_empirical_confusion_matrices(data):
    k = data.draw(st.integers(2, 5))
    n = data.draw(st.integers(1, 60))
    ints = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
    truth, labels = np.array(data.draw(ints)), np.array(data.draw(ints))
    labeler_ids = np.array(data.draw(st.lists(st.sampled_from(["ann", "bob", "cy"]), min_size=n, max_size=n)))

    matrices, counts = labeler_transition_matrices(np.eye(k)[truth], labels, labeler_ids, k)

    assert set(matrices) == set(counts) == set(labeler_ids.tolist())
    for labeler, m in matrices.items():
        mine = labeler_ids == labeler
        assert counts[labeler] == mine.sum()
        assert m.shape == (k, k)
        np.testing.assert_allclose(m.sum(1), 1.0)
        confusion = np.zeros((k, k))
        np.add.at(confusion, (truth[mine], labels[mine]), 1)
        for i in range(k):
            if confusion[i].sum() > 0:
                np.testing.assert_allclose(m[i], confusion[i] / confusion[i].sum())
            else:
                np.testing.assert_allclose(m[i], np.full(k, 1.0 / k))  # an unseen true class


def test_labeler_matrices_by_hand_with_a_soft_posterior():
    posterior = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 1, 1, 2])
    ids = np.array(["a", "a", "a", "b"])

    matrices, counts = labeler_transition_matrices(posterior, labels, ids, 3)

    assert counts == {"a": 3, "b": 1}
    # labeler a: true-class-0 mass 1.5 (1 on label 0, 0.5 on label 1); class-1 mass 1.5, all on label 1
    np.testing.assert_allclose(matrices["a"][0], [1 / 1.5, 0.5 / 1.5, 0.0])
    np.testing.assert_allclose(matrices["a"][1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(matrices["a"][2], [1 / 3] * 3)
    np.testing.assert_allclose(matrices["b"], [[1 / 3] * 3, [1 / 3] * 3, [0.0, 0.0, 1.0]])


# -- per_class_thresholds --------------------------------------------------------------------------


def test_per_class_thresholds_by_hand_with_the_one_over_k_fallback():
    probs = np.array(
        [
            [0.9, 0.05, 0.05, 0.0],
            [0.5, 0.3, 0.2, 0.0],
            [0.2, 0.6, 0.2, 0.0],
            [0.1, 0.2, 0.7, 0.0],
            [0.3, 0.3, 0.4, 0.0],
        ]
    )
    labels = np.array([0, 0, 1, 2, 2])  # class 3 has no held-out item

    got = per_class_thresholds(probs, labels, 4)

    np.testing.assert_allclose(got, [(0.9 + 0.5) / 2, 0.6, (0.7 + 0.4) / 2, 0.25])


def test_em_steps_take_the_models_own_mistakes_out_of_a_careful_labelers_matrix():
    """A labeler right 95% of the time, a calibrated model right 60% of the time (0.6 on its guess, the rest
    spread): the soft counts read the labeler as right 40% of the time; Dawid-Skene EM gives back 95%."""
    rng = np.random.default_rng(0)
    k, n = 4, 4_000
    truth = rng.integers(k, size=n)
    labels = np.where(rng.random(n) < 0.95, truth, (truth + rng.integers(1, k, size=n)) % k)
    guess = np.where(rng.random(n) < 0.6, truth, (truth + rng.integers(1, k, size=n)) % k)
    posterior = np.full((n, k), 0.4 / (k - 1))
    posterior[np.arange(n), guess] = 0.6
    ids = np.array(["careful"] * n)
    soft, _ = labeler_transition_matrices(posterior, labels, ids, k)
    refined, _ = labeler_transition_matrices(posterior, labels, ids, k, em_steps=200)
    assert np.diag(soft["careful"]).mean() == pytest.approx(0.4, abs=0.03)
    assert np.diag(refined["careful"]).mean() == pytest.approx(0.95, abs=0.03)
