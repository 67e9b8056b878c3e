"""Labelers' error rates from the images with several labels (labelaudit.dawid_skene): full matrices per labeler,
so two labelers who mix up the same look-alike classes are not read as careful, as the one-coin fit reads them."""

from __future__ import annotations

import itertools

import numpy as np

from labelaudit import agreement, dawid_skene

K = 6
LOOK_ALIKE = ((0, 1), (2, 3))
POOL = {  # labeler -> (how it errs, how often)
    "careful": ("any", 0.08),
    "sloppy": ("any", 0.4),
    "confuser-1": ("look-alike", 0.45),
    "confuser-2": ("look-alike", 0.45),
    "spammer": ("any", (K - 1) / K),
}


def _labels(seed: int = 0, images: int = 1_200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every image labeled by three labelers of ``POOL`` drawn at random: (image, labeler, label, truth) rows."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, images)
    partner = np.arange(K)
    for a, b in LOOK_ALIKE:
        partner[a], partner[b] = b, a
    rows = []
    for image in range(images):
        for name in rng.choice(list(POOL), 3, replace=False):
            how, p = POOL[name]
            t = truth[image]
            wrong = rng.random() < p
            said = (t + rng.integers(1, K)) % K if how == "any" else partner[t]
            rows.append((image, name, int(said) if wrong else int(t), int(t)))
    image, who, label, true = map(np.array, zip(*rows, strict=True))
    return image, who, label, true


def _realised(who: np.ndarray, label: np.ndarray, true: np.ndarray, labelers: list[str]) -> np.ndarray:
    return np.array([float((label[who == a] != true[who == a]).mean()) for a in labelers])


def test_intervals_cover_the_realised_rates_and_the_one_coin_fit_misreads_look_alike_confusers():
    covered, errors, one_coin_errors = [], [], []
    for seed in range(4):
        image, who, label, true = _labels(seed, images=800)
        est = dawid_skene.estimate(label, who, image, K, bootstrap=50)
        assert est.labelers == sorted(POOL)
        realised = _realised(who, label, true, est.labelers)
        covered += list((est.low <= realised) & (realised <= est.high))
        errors += list(np.abs(est.error - realised))

        shared = []  # the same labels as the one-coin fit reads them: agreements of every two labelers
        for a, b in itertools.combinations(est.labelers, 2):
            said_a = dict(zip(image[who == a], label[who == a], strict=True))
            said_b = dict(zip(image[who == b], label[who == b], strict=True))
            both = said_a.keys() & said_b.keys()
            shared.append((a, b, sum(said_a[i] == said_b[i] for i in both), len(both)))
        one_coin_errors += list(np.abs(agreement.estimate(shared, K).error - realised))
    assert sum(covered) >= 18, f"95% intervals covered {sum(covered)} of 20 realised rates"
    assert np.mean(errors) < 0.03 and max(errors) < 0.08
    assert np.mean(errors) < np.mean(one_coin_errors) - 0.01, (np.mean(errors), np.mean(one_coin_errors))


def test_images_with_one_label_say_nothing():
    image, who, label, _ = _labels(images=400)
    alone = np.arange(1_000, 1_300)  # 300 more images, one label each, all "wrong"
    more = dawid_skene.estimate(
        np.r_[label, np.full(300, 5)], np.r_[who, np.full(300, "careful")], np.r_[image, alone], K, bootstrap=20
    )
    base = dawid_skene.estimate(label, who, image, K, bootstrap=20)
    np.testing.assert_allclose(more.error, base.error)
    np.testing.assert_allclose(more.shared, base.shared)


def test_a_labeler_outside_a_triangle_of_shared_images_is_not_identified():
    image, who, label, _ = _labels(images=400)
    # 60 more images labeled by "careful" and "late" alone: one pair cannot split late's errors from careful's
    extra = np.repeat(np.arange(1_000, 1_060), 2)
    est = dawid_skene.estimate(
        np.r_[label, np.zeros(120, dtype=int)],
        np.r_[who, np.tile(["careful", "late"], 60)],
        np.r_[image, extra],
        K,
        bootstrap=20,
    )
    rates = dict(zip(est.labelers, est.error, strict=True))
    assert np.isnan(rates["late"]) and np.isnan(est.low[est.labelers.index("late")])
    assert all(np.isfinite(rates[a]) for a in POOL)


def test_images_with_the_same_labels_fit_once_with_their_count():
    """The store hands the report each distinct set of labels with how many items carry it: the EM on those
    counts is the EM on the images one by one, and a resampled count can only come from images that exist."""
    image, who, label, _ = _labels(images=600)
    patterns = dawid_skene.patterns_of(label, who, image)
    assert len(patterns) < 600 and sum(n for _, n in patterns) == 600
    one_by_one = [(p, 1) for p, n in patterns for _ in range(n)]
    grouped = dawid_skene.from_patterns(patterns, K, bootstrap=20)
    single = dawid_skene.from_patterns(one_by_one, K, bootstrap=20)
    np.testing.assert_allclose(grouped.error, single.error, atol=1e-9)
    np.testing.assert_allclose(grouped.shared, single.shared)
    assert np.all(grouped.low <= grouped.error) and np.all(grouped.error <= grouped.high)
    # a pattern of one label is no evidence
    assert dawid_skene.from_patterns([((("careful", 0),), 50)], K).labelers == []
