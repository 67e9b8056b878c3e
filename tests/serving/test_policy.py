"""The disagreement policy on hand-made probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelaudit.serving.core.policy import DisagreementPolicy, LabelerPosteriorPolicy

POLICY = DisagreementPolicy(thresholds=(0.6, 0.3, 0.5))


def test_flags_a_label_when_another_class_is_confidently_above_its_threshold():
    verdict = POLICY.judge(np.array([0.1, 0.2, 0.7]), label=0)
    assert verdict.disagrees and verdict.predicted == 2
    assert abs(verdict.score - 0.6) < 1e-9
    assert verdict.label_probability == 0.1


def test_no_flag_when_the_label_is_the_confident_class_or_nothing_is_confident():
    assert not POLICY.judge(np.array([0.65, 0.1, 0.25]), label=0).disagrees
    nothing_confident = POLICY.judge(np.array([0.45, 0.1, 0.45]), label=1)  # 0.45 < 0.6 and < 0.5
    assert not nothing_confident.disagrees and nothing_confident.predicted == 0  # falls back to argmax


def test_the_confident_class_is_the_most_probable_among_those_above_their_thresholds():
    # class 1 passes its low threshold (0.3) and is more probable than class 0, which misses 0.6
    verdict = POLICY.judge(np.array([0.55, 0.35, 0.10]), label=2)
    assert verdict.disagrees and verdict.predicted == 1


def test_min_confidence_holds_back_weak_disagreements():
    strict = DisagreementPolicy(thresholds=(0.6, 0.3, 0.5), min_confidence=0.5)
    assert POLICY.judge(np.array([0.55, 0.35, 0.10]), label=2).disagrees
    assert not strict.judge(np.array([0.55, 0.35, 0.10]), label=2).disagrees


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_batch_equals_one_by_one_and_scores_stay_in_range(k, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=20)
    labels = rng.integers(0, k, size=20)
    policy = DisagreementPolicy(thresholds=tuple(rng.uniform(0.05, 0.9, size=k)))
    flags, scores, predicted = policy.judge_batch(probs, labels)
    for i in range(20):
        v = policy.judge(probs[i], int(labels[i]))
        assert (v.disagrees, v.predicted) == (bool(flags[i]), int(predicted[i]))
        assert abs(v.score - scores[i]) < 1e-12
    assert ((0 <= scores) & (scores <= 1)).all()
    assert not (flags & (predicted == labels)).any()  # agreeing with the label is never a flag


# -- labeler-posterior-v1 --------------------------------------------------------------------------


def test_the_posterior_weighs_the_model_against_the_labelers_habits():
    """K = 2, the model says class 1 with p = 0.7 while the label says 0. A careful labeler (right 95%):
    q(0) = 0.3 * 0.95 / (0.3 * 0.95 + 0.7 * 0.05) = 0.89, kept. A coin-flipper (right 50%):
    q(0) = 0.3 * 0.5 / (0.3 * 0.5 + 0.7 * 0.5) = 0.3, flagged with score 0.7."""
    careful = np.array([[0.95, 0.05], [0.05, 0.95]])
    coin = np.full((2, 2), 0.5)
    policy = LabelerPosteriorPolicy({"careful": careful, "coin": coin}, pooled=coin)
    probs = np.array([[0.3, 0.7], [0.3, 0.7], [0.3, 0.7]])
    flags, scores, predicted = policy.judge_batch(probs, np.array([0, 0, 0]), ["careful", "coin", "stranger"])
    assert flags.tolist() == [False, True, True]  # a labeler the card does not know gets the pooled matrix
    np.testing.assert_allclose(scores, [1 - 0.285 / 0.32, 0.7, 0.7], atol=1e-9)
    assert predicted.tolist() == [0, 1, 1]


def test_a_confusers_known_swap_is_doubted_more_than_an_unheard_of_confusion():
    """The labeler swaps classes 0 and 1 half the time and never confuses 2: its label 0 on an image the
    model puts at 0.5 / 0.5 between 1 and 2 points to 1, not 2."""
    t = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) * 0.98 + 0.02 / 3
    policy = LabelerPosteriorPolicy({"swapper": t}, pooled=np.eye(3))
    q = policy.posterior(np.array([[0.1, 0.45, 0.45]]), np.array([0]), ["swapper"])
    assert q[0, 1] > 10 * q[0, 2] and q[0].sum() == pytest.approx(1.0)
