"""The simulated labelers: severity solving, determinism, and that each kind errs the way it says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelaudit.training.datasets import labelers as lab

K = 10
PAIRED = sorted(c for pair in lab.CONFUSED_PAIRS for c in pair)


def _population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random true labels, hardness in [0, 1], a nearest other class, and a labeler assignment."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=n)
    hardness = rng.random(n)
    confusable = (labels + rng.integers(1, K, size=n)) % K
    return labels, hardness, confusable, lab.assign_labelers(n, rng)


# -- solve_severity --------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([0.2, 0.4, 0.5, 0.6]), st.integers(0, 2**32 - 1), st.integers(500, 3000))
def test_solve_severity_hits_the_requested_expected_noise(noise, seed, n):
    labels, hardness, _, assignment = _population(n, seed)

    s = lab.solve_severity(noise, labels, hardness, assignment, K)

    assert 0.0 <= s <= lab.MAX_SEVERITY
    assert lab.expected_noise(s, labels, hardness, assignment, K) == pytest.approx(noise, abs=1e-6)


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.75, 1.0])
def test_solve_severity_refuses_noise_the_pool_cannot_produce(noise):
    # The spammer alone puts the floor at 0.1 * 0.9 = 0.09; at s = 1.5 the pool tops out near 0.62.
    labels, hardness, _, assignment = _population(5_000, 0)
    with pytest.raises(ValueError, match="outside what this labeler pool can produce"):
        lab.solve_severity(noise, labels, hardness, assignment, K)


def test_expected_noise_grows_with_severity():
    labels, hardness, _, assignment = _population(2_000, 3)
    curve = [lab.expected_noise(s, labels, hardness, assignment, K) for s in np.linspace(0, 1, 21)]
    assert all(b >= a for a, b in zip(curve, curve[1:], strict=False))
    assert curve[0] == pytest.approx(0.1 * 0.9, abs=0.01)  # the spammer's share of wrong labels


# -- assign_labelers -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 100, 9_999])
def test_assign_labelers_covers_every_item_in_proportion_to_the_shares(n):
    assignment = lab.assign_labelers(n, np.random.default_rng(0))
    assert assignment.shape == (n,)
    counts = np.bincount(assignment, minlength=len(lab.POOL))
    expected = np.array([p.share for p in lab.POOL]) * n
    assert counts.sum() == n
    assert (np.abs(counts - expected) <= len(lab.POOL)).all()


# -- simulate_labels -------------------------------------------------------------------------------


def _simulate(seed: int, s: float, population) -> np.ndarray:
    labels, hardness, confusable, assignment = population
    return lab.simulate_labels(labels, hardness, confusable, assignment, s, K, np.random.default_rng(seed))


def test_simulate_labels_is_deterministic_for_a_seed():
    population = _population(5_000, 1)
    a, b, c = _simulate(7, 0.5, population), _simulate(7, 0.5, population), _simulate(8, 0.5, population)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.dtype.kind == "i" and a.min() >= 0 and a.max() < K


@pytest.mark.parametrize("noise", [0.2, 0.4])
def test_empirical_noise_is_close_to_the_expected_one(noise):
    population = _population(40_000, 2)
    labels, hardness, _, assignment = population
    s = lab.solve_severity(noise, labels, hardness, assignment, K)

    noisy = _simulate(0, s, population)

    # 40,000 Bernoulli draws: the standard error is at most 0.0025
    assert (noisy != labels).mean() == pytest.approx(noise, abs=0.01)


def test_each_labeler_errs_at_its_own_rate_reliable_least_spammer_most():
    population = _population(40_000, 4)
    labels, hardness, _, assignment = population
    s = lab.solve_severity(0.4, labels, hardness, assignment, K)
    noisy = _simulate(1, s, population)

    rates = {p.kind: (noisy != labels)[assignment == j].mean() for j, p in enumerate(lab.POOL)}

    assert min(rates, key=rates.get) == "reliable"
    assert max(rates, key=rates.get) == "spammer"
    for j, p in enumerate(lab.POOL):
        mine = assignment == j
        expected = lab.flip_probability(p.kind, s, labels[mine], hardness[mine], K).mean()
        assert rates[p.kind] == pytest.approx(expected, abs=0.02), p.kind


def test_the_confuser_only_swaps_within_the_confused_pairs():
    population = _population(20_000, 5)
    labels, _, _, assignment = population
    noisy = _simulate(2, 0.5, population)
    confuser = assignment == [p.kind for p in lab.POOL].index("confuser")

    wrong = confuser & (noisy != labels)
    assert wrong.any()
    assert np.isin(labels[wrong], PAIRED).all()
    pairs = {tuple(sorted(p)) for p in lab.CONFUSED_PAIRS}
    assert {tuple(sorted(p)) for p in zip(labels[wrong], noisy[wrong], strict=True)} <= pairs
    unpaired = confuser & ~np.isin(labels, PAIRED)
    assert unpaired.any() and (noisy[unpaired] == labels[unpaired]).all()


def test_the_instance_labeler_errs_towards_the_nearest_class_on_hard_images():
    population = _population(20_000, 6)
    labels, hardness, confusable, assignment = population
    noisy = _simulate(3, 0.3, population)
    instance = assignment == [p.kind for p in lab.POOL].index("instance")

    wrong = instance & (noisy != labels)
    np.testing.assert_array_equal(noisy[wrong], confusable[wrong])
    assert hardness[wrong].mean() > hardness[instance & ~wrong].mean()


def test_severity_zero_leaves_only_the_spammer_wrong():
    population = _population(5_000, 7)
    labels, _, _, assignment = population
    noisy = _simulate(4, 0.0, population)
    spammer = assignment == [p.kind for p in lab.POOL].index("spammer")
    np.testing.assert_array_equal(noisy[~spammer], labels[~spammer])


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["reliable", "sloppy", "spammer", "instance", "confuser"]), st.integers(0, 2**32 - 1))
def test_wrong_label_never_returns_the_true_label(kind, seed):
    rng = np.random.default_rng(seed)
    # the confuser errs only on paired classes (flip_probability is 0 elsewhere)
    labels = rng.choice(PAIRED, size=200) if kind == "confuser" else rng.integers(0, K, size=200)
    confusable = (labels + rng.integers(1, K, size=200)) % K

    wrong = lab.wrong_label(kind, labels, confusable, K, rng)

    assert wrong.shape == labels.shape
    assert (wrong != labels).all()
    assert ((wrong >= 0) & (wrong < K)).all()


def test_flip_probability_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown labeler kind"):
        lab.flip_probability("oracle", 0.5, np.zeros(3, dtype=int), np.zeros(3), K)
