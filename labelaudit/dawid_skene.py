"""Labelers' error rates from the images that carry several labels, by Dawid–Skene's EM over those labels alone.

Why not the model: a model shares the mistakes of a labeler who errs on the images that are hard for the model
too (the recipe's "instance" labeler), so disagreement with the model understates that labeler. Other people's
labels on the same images do not share them. Why not ``agreement`` (one coin per labeler, fitted to pair
agreement rates): a labeler who errs between two look-alike classes, as two others also do, agrees with them
more than the one-coin model allows, so its rate reads low and a careful labeler's high. Dawid–Skene
(Applied Statistics, 1979) gives each labeler a full matrix ``T_a[i, j]`` = P(says j | true class i) and each
image a posterior over its true class; on issue 17's benchmark (10% of the images with three labels) its rates
came within 0.02 of the truth on average where the one-coin fit's were 0.06 off (docs/methods.md).

The EM, over the images with at least two labels (labels as class indices, ``K`` classes):

- E step: ``q_n(i) ∝ π_i Π_{labels (a, j) of n} T_a[i, j]``, in log space;
- M step: ``T_a[i, j] ∝ Σ_{labels (a, j)} q_n(i) + PRIOR_STRENGTH · coin_a[i, j]`` (plus a tiny pseudo-count),
  where ``coin_a`` is the labeler's one-coin matrix (its current accuracy on the diagonal, the rest spread
  evenly): a Dirichlet prior that keeps a class the labeler rarely saw near its overall accuracy, so that a
  full matrix shows only where its labels show one (in development probes on simulated look-alike confusers:
  0.014 mean error against 0.020 without it; 0.021 against 0.022 on issue 17's recipe); ``π = mean_n q_n``.

It starts from the images' vote shares (majority voting, softened) and stops when no labeler's rate moves by
more than ``TOLERANCE`` in a step. A labeler's error rate is ``1 - mean over its labels of q_n(its label)``, which at EM's
fixed point is ``1 - Σ_i π_a,i T_a[i, i]`` with ``π_a`` its images' class mix. It is *identified* where the
labeler is in a triangle of labelers who share at least ``agreement.MIN_PAIRS`` images pairwise (as
``agreement``); elsewhere NaN. Interval: a bootstrap over the shared images (95%, percentile).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from labelaudit.agreement import Estimates, identified

BOOTSTRAP = 100
ITERATIONS = 200
TOLERANCE = 1e-6
BOOTSTRAP_TOLERANCE = 1e-4  # a replicate's rates move by far less than the interval's width by then
PSEUDO_COUNT = 0.01
PRIOR_STRENGTH = 2.0  # pseudo-labels per true class of a labeler, spread as its one-coin matrix
SEED = 20261205  # fixed: the same labels give the same rates and intervals


Pattern = tuple[tuple[str, int], ...]  # one image's labels: (labeler, class index) pairs, in any order


def _fit(
    image: np.ndarray,
    labeler: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    n_labelers: int,
    k: int,
    start: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """EM over the rows (label ``label`` by ``labeler`` of image ``image``, each (R,) int, images numbered from
    0), each image counted ``weight`` (n_images,) times: images with the same labels share one posterior, so a
    distinct set of labels is fitted once however many images carry it. Returns each image's posterior
    (n_images, K) and each labeler's error rate (n_labelers,), NaN for a labeler without weighted rows.
    ``start``: the images' first posteriors (default: their vote shares)."""
    if start is None:
        votes = np.zeros((len(weight), k))
        np.add.at(votes, (image, label), 1.0)
        start = (votes + 0.1) / (votes + 0.1).sum(1, keepdims=True)
    q, n_images = start, len(start)
    classes = np.arange(k)
    # flat cells for one bincount each step (no loop over classes): (R, K) cells of (labeler, said, true class) and
    # of (image, true class)
    said_true = ((labeler * k + label)[:, None] * k + classes).ravel()
    image_true = (image[:, None] * k + classes).ravel()
    row_weight = weight[image]
    rows = np.bincount(labeler, weights=row_weight, minlength=n_labelers)

    def errors(q: np.ndarray) -> np.ndarray:  # (L,): 1 - weighted mean over the labeler's rows of q_n(its label)
        right = np.bincount(labeler, weights=row_weight * q[image, label], minlength=n_labelers)
        return np.where(rows > 0, 1.0 - right / np.maximum(rows, 1e-12), np.nan)

    error = errors(q)
    for _ in range(ITERATIONS):
        # M step. (L, K true, K said): the posteriors summed by (labeler, label said), shrunk toward the labeler's
        # one-coin matrix (its accuracy on the diagonal, the rest spread evenly): a full matrix where its labels
        # show one, a coin where a class has few of them
        weighted = (q[image] * row_weight[:, None]).ravel()
        tally = np.bincount(said_true, weights=weighted, minlength=n_labelers * k * k).astype(float, copy=False)
        accuracy = np.nan_to_num(1.0 - error)[:, None, None]
        coin = accuracy * np.eye(k) + (1.0 - accuracy) / max(k - 1, 1) * (1.0 - np.eye(k))
        counts = PSEUDO_COUNT + tally.reshape(n_labelers, k, k).transpose(0, 2, 1) + PRIOR_STRENGTH * coin
        log_t = np.log(counts / counts.sum(2, keepdims=True))
        # E step: every image's posterior from the class mix and each of its labels
        evidence = log_t[labeler, :, label]  # (R, K): log T_a[i, j] of each row
        mix = (weight[:, None] * q).sum(0) / weight.sum()
        log_q = np.log(np.maximum(mix, 1e-12)) + np.bincount(
            image_true, weights=evidence.ravel(), minlength=n_images * k
        ).reshape(n_images, k)
        q = np.exp(log_q - log_q.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        before, error = error, errors(q)
        if np.nanmax(np.abs(error - before)) < tolerance:  # the rates, not every posterior, settle
            break
    return q, error


def from_patterns(patterns: Sequence[tuple[Pattern, int]], k: int, *, bootstrap: int = BOOTSTRAP) -> Estimates:
    """Error rate per labeler from the images' label patterns: each distinct set of labels an image carries
    (``(labeler, class index)`` pairs, at most one per labeler) with how many images carry it. A pattern of
    fewer than two labels says nothing and is left out. 95% interval: the images resampled with replacement,
    which for patterns is a multinomial draw of their counts; NaN where the labeler is not identified.
    This is the form a store can aggregate (one row per pattern, not per image: the nightly report's)."""
    patterns = [(tuple(p), int(n)) for p, n in patterns if len(p) > 1 and n > 0]
    names = sorted({a for p, _ in patterns for a, _ in p})
    if not names:
        empty = np.zeros(0)
        return Estimates([], empty, empty, empty, empty, np.zeros((bootstrap, 0)))
    index = {a: i for i, a in enumerate(names)}
    image = np.repeat(np.arange(len(patterns)), [len(p) for p, _ in patterns])
    labeler = np.array([index[a] for p, _ in patterns for a, _ in p], dtype=np.int64)
    label = np.array([y for p, _ in patterns for _, y in p], dtype=np.int64)
    count = np.array([n for _, n in patterns], dtype=float)
    n_labelers = len(names)
    posterior, error = _fit(image, labeler, label, count, n_labelers, k)

    member = np.zeros((len(patterns), n_labelers))
    member[image, labeler] = 1.0
    pairs = member.T @ (member * count[:, None])  # (L, L) images each two labelers share
    np.fill_diagonal(pairs, 0)

    rng = np.random.default_rng(SEED)
    replicates = np.full((bootstrap, n_labelers), np.nan)
    total = int(count.sum())
    for b in range(bootstrap):
        drawn = rng.multinomial(total, count / total).astype(float)
        # each pattern starts from its posterior in the fit above: a few steps, not a whole run, per replicate
        replicates[b] = _fit(image, labeler, label, drawn, n_labelers, k, posterior, BOOTSTRAP_TOLERANCE)[1]
    nan = np.where(identified(pairs), 0.0, np.nan)
    with warnings.catch_warnings():  # a labeler absent from a replicate: NaN there, left out of its quantiles
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(replicates, [0.025, 0.975], axis=0)
    return Estimates(names, error + nan, low + nan, high + nan, pairs.sum(1), replicates)


def patterns_of(labels: np.ndarray, labeler_ids: np.ndarray, items: np.ndarray) -> list[tuple[Pattern, int]]:
    """Rows (``labels`` (N,) class indices, ``labeler_ids`` (N,), ``items`` (N,) the image each row labels) ->
    the images' label patterns with their counts (``from_patterns``' input)."""
    labels, who = np.asarray(labels, dtype=np.int64), np.asarray(labeler_ids).astype(str)
    order = np.argsort(np.asarray(items), kind="stable")
    _, first = np.unique(np.asarray(items)[order], return_index=True)
    found: Counter[Pattern] = Counter()
    for rows in np.split(order, first[1:]):
        found[tuple(sorted(zip(who[rows].tolist(), labels[rows].tolist(), strict=True)))] += 1
    return list(found.items())


def estimate(
    labels: np.ndarray, labeler_ids: np.ndarray, items: np.ndarray, k: int, *, bootstrap: int = BOOTSTRAP
) -> Estimates:
    """Error rate per labeler from every image's labels (rows: ``labels`` (N,) class indices in [0, K),
    ``labeler_ids`` (N,), ``items`` (N,) the image each row labels), with a 95% bootstrap interval; NaN where
    the labeler is not identified. Images with one label say nothing here and are left out."""
    return from_patterns(patterns_of(labels, labeler_ids, items), k, bootstrap=bootstrap)
