"""The report's statistics: Wilson intervals against published values and their invariants, the exact
binomial test against its definition, Holm–Bonferroni on a worked example, and the consensus weight."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelaudit.serving.report.aggregate import model_weight
from labelaudit.serving.report.stats import fisher_greater, holm, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_matches_published_values(k, n, low, high):
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_of_nothing_is_none():
    assert wilson(0, 0) is None


@given(st.integers(1, 100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_holds_the_estimate_inside_zero_one_and_is_symmetric(kn):
    k, n = kn
    low, high = wilson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    mirror_low, mirror_high = wilson(n - k, n)
    assert low == pytest.approx(1 - mirror_high, abs=1e-12) and high == pytest.approx(1 - mirror_low, abs=1e-12)


def fisher_tail(k: int, n: int, k_pool: int, n_pool: int) -> float:
    """The definition: P(X >= k), X the labeler's share of all k + k_pool wrong labels drawn without
    replacement, in exact integer arithmetic."""
    total, wrong = n + n_pool, k + k_pool
    hits = sum(math.comb(wrong, x) * math.comb(total - wrong, n - x) for x in range(k, min(n, wrong) + 1))
    return hits / math.comb(total, n)


@given(
    st.integers(1, 40).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(1, 40).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_fisher_greater_is_the_hypergeometric_upper_tail(kn, pool):
    (k, n), (k_pool, n_pool) = kn, pool
    assert fisher_greater(k, n, k_pool, n_pool) == pytest.approx(fisher_tail(k, n, k_pool, n_pool), rel=1e-6, abs=1e-12)


def test_fisher_greater_counts_the_pools_own_uncertainty():
    assert fisher_greater(400, 1000, 0, 3) > 0.2  # a pool of three labels says little
    assert fisher_greater(400, 1000, 0, 300) < 1e-30
    assert fisher_greater(0, 0, 1, 2) == 1.0 and fisher_greater(1, 2, 0, 0) == 1.0


def test_holm_worked_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_model_weight_is_crowdlabs_with_equal_weights():
    assert model_weight(1.0, 10) == pytest.approx(1.0)  # labelers who always agree: the model is one more vote
    assert model_weight(5 / 8, 4) == pytest.approx(2.0)
    assert model_weight(0.1, 10) == 10.0  # no better than chance: the model decides
    assert model_weight(None, 10) == 1.0


def _no_agreement():
    from labelaudit.agreement import estimate

    return estimate([], 10)  # nobody shares items: every labeler takes the Fisher exact path


def test_step_down_flags_noisy_labelers_a_spammer_hides():
    from labelaudit.serving.report.build import step_down

    # labeler -> (wrong labels, labels). Against all the others (the spammer included, 0.335) the 15%
    # labeler looks fine; against the two 5% labelers it is far above.
    stats = {"good1": (50, 1000), "good2": (55, 1000), "noisy": (150, 1000), "spam": (900, 1000)}
    got = step_down(stats, _no_agreement(), alpha=0.05)
    assert got.flagged == {"spam": 1, "noisy": 2}
    assert got.rounds == 3  # the third round tests good1 and good2 against each other and flags nobody
    assert got.adjusted["good1"] > 0.05 and got.adjusted["good2"] > 0.05
    assert set(got.test.values()) == {"Fisher exact"}


def test_step_down_flags_nobody_in_an_even_crew():
    from labelaudit.serving.report.build import step_down

    stats = {f"l{i}": (100 + i, 1000) for i in range(6)}
    got = step_down(stats, _no_agreement(), alpha=0.05)
    assert got.flagged == {} and got.rounds == 1 and len(got.p) == 6


def test_step_down_never_tests_labels_without_an_id_but_pools_them():
    from labelaudit.serving.report.build import UNKNOWN_LABELER, step_down

    # The unknown labels are all wrong: they raise the pool's rate, and are never flagged themselves.
    stats = {"a": (30, 300), "b": (30, 300), UNKNOWN_LABELER: (300, 300)}
    got = step_down(stats, _no_agreement(), alpha=0.05)
    assert UNKNOWN_LABELER not in got.p and got.flagged == {}
    # a against b and the unknown labels: 30 of 300 vs 330 of 600
    assert got.p["a"] == pytest.approx(fisher_tail(30, 300, 330, 600))


def test_step_down_does_not_flag_against_a_pool_of_a_few_labels():
    from labelaudit.serving.report.build import step_down

    # After the noisy ones leave, "good" (25% wrong) faces only "tiny" (0 of 3): not evidence against it.
    stats = {"good": (250, 1000), "noisy": (450, 1000), "spam": (900, 1000), "tiny": (0, 3)}
    got = step_down(stats, _no_agreement(), alpha=0.05)
    assert "good" not in got.flagged and set(got.flagged) == {"noisy", "spam"}


def test_step_down_needs_a_real_pool_not_a_few_trusted_checks():
    from labelaudit.serving.report.build import step_down

    # The demo's night: five crowd labelers, a QA lead's 50 checks of trusted items (which the model was
    # trained on: 0 disagreements) and 3 test calls. Once the four noisy ones are out, the best crowd
    # labeler would face 53 labels (1% of the night): not a pool, so it is not tested again.
    night = {
        "l1": (455, 1485),
        "l2": (554, 990),
        "l3": (470, 990),
        "l4": (400, 990),
        "l5": (449, 495),
        "qa": (0, 50),
        "curl": (0, 3),
    }
    got = step_down(night, _no_agreement(), alpha=0.05)
    assert set(got.flagged) == {"l2", "l3", "l4", "l5"}
    # A QA team that checks at scale is a pool: against 2,000 clean labels l1's 31% is significant.
    got = step_down(night | {"qa": (0, 2000)}, _no_agreement(), alpha=0.05)
    assert "l1" in got.flagged
