"""Labelers' error rates from how often they agree with each other, without the model.

Why: a model shares the mistakes of a labeler who errs on the images that are hard for the model too
(the recipe's "instance" labeler), so disagreement with the model understates that labeler. Other
people's labels on the same items do not share them.

Model (the one-coin Dawid–Skene model): labeler ``j`` gives the true class with probability ``q_j`` and,
when wrong, any other of the ``K`` classes alike. Two labelers then agree on an item with probability
``1/K + (K-1)/K * u_i * u_j``, where ``u_j = (K q_j - 1) / (K - 1)`` is the labeler's skill. So the
moments ``m_ij = (K * agree_ij - 1) / (K - 1)`` form a rank-one matrix ``u u^T`` off the diagonal,
fitted here by weighted least squares (weights: shared items); the error rate is ``1 - q_j``. The input
is the pair table the store aggregates (``agree_ij`` of ``n_ij`` shared items), never the records.

A labeler's rate is *identified* when it shares at least ``MIN_PAIRS`` items with two other labelers who
share ``MIN_PAIRS`` items with each other (a triangle: one pair alone cannot split ``u_i u_j``).
Uncertainty: a parametric bootstrap of the pair table (``agree_ij ~ Binomial(n_ij, observed rate)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

MIN_PAIRS = 30
BOOTSTRAP = 400
SEED = 20261121  # fixed: the same store gives the same report, in SQLite and PostgreSQL alike


@dataclass(frozen=True)
class Estimates:
    labelers: list[str]
    error: np.ndarray  # (L,) estimated error rate, NaN where not identified
    low: np.ndarray  # (L,) 2.5% bootstrap quantile
    high: np.ndarray  # (L,) 97.5% bootstrap quantile
    shared: np.ndarray  # (L,) items this labeler shares with another labeler (pairs it is in)
    replicates: np.ndarray  # (B, L) bootstrap error rates


def pair_tables(pairs: list[tuple[str, str, int, int]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(a, b, agree, n) rows -> labelers, agree (L, L), n (L, L), symmetric with a zero diagonal."""
    labelers = sorted({a for a, b, _, _ in pairs} | {b for a, b, _, _ in pairs})
    index = {a: i for i, a in enumerate(labelers)}
    agree, n = np.zeros((len(labelers),) * 2), np.zeros((len(labelers),) * 2)
    for a, b, k, m in pairs:
        i, j = index[a], index[b]
        agree[i, j] += k
        agree[j, i] += k
        n[i, j] += m
        n[j, i] += m
    return labelers, agree, n


def identified(n: np.ndarray) -> np.ndarray:
    """(L,) bool: the labeler is in a triangle of labelers sharing at least MIN_PAIRS items pairwise."""
    strong = (n >= MIN_PAIRS).astype(float)
    np.fill_diagonal(strong, 0)
    return np.diag(strong @ strong @ strong) > 0


def fit_skill(moments: np.ndarray, weights: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Weighted rank-one fit of the off-diagonal moments: (B, L, L), (L, L) -> u (B, L).

    Coordinate descent: each ``u_i`` is the weighted least-squares solution given the others.
    """
    b, labelers, _ = moments.shape
    w = weights * (1 - np.eye(labelers))
    u = np.full((b, labelers), 0.5)  # start every labeler better than chance; fixes the sign of u
    for _ in range(iterations):
        for i in range(labelers):
            denom = (w[i] * u**2).sum(1)
            u[:, i] = np.where(denom > 0, (w[i] * moments[:, i, :] * u).sum(1) / np.maximum(denom, 1e-12), u[:, i])
    return u


def _errors(agree: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
    """(..., L, L) agreement counts -> (..., L) error rates."""
    moments = (k * np.divide(agree, n, out=np.zeros_like(agree, dtype=float), where=n > 0) - 1) / (k - 1)
    u = fit_skill(moments.reshape(-1, *n.shape), n)
    return np.clip((k - 1) * (1 - u) / k, 0.0, 1.0)


def estimate(pairs: list[tuple[str, str, int, int]], k: int, *, bootstrap: int = BOOTSTRAP) -> Estimates:
    """Error rate per labeler from the pair table, with a 95% bootstrap interval; NaN where not identified."""
    labelers, agree, n = pair_tables(pairs)
    if not labelers:
        empty = np.zeros(0)
        return Estimates([], empty, empty, empty, empty, np.zeros((bootstrap, 0)))
    rng = np.random.default_rng(SEED)
    # Small enough for memory at any number of labelers: B x L x L floats stay under ~10^7.
    b = int(max(20, min(bootstrap, 10_000_000 // len(labelers) ** 2)))
    rate = np.divide(agree, n, out=np.zeros_like(agree), where=n > 0)
    upper = np.triu(rng.binomial(n.astype(np.int64), rate, size=(b, *n.shape)), 1)
    replicates = _errors(upper + upper.transpose(0, 2, 1), n, k)
    error = _errors(agree[None], n, k)[0]
    ok = identified(n)
    nan = np.where(ok, 0.0, np.nan)
    return Estimates(
        labelers,
        error + nan,
        np.quantile(replicates, 0.025, axis=0) + nan,
        np.quantile(replicates, 0.975, axis=0) + nan,
        n.sum(1),
        replicates,
    )


def above_pool(est: Estimates, volume: dict[str, int]) -> dict[str, float]:
    """One-sided p-value per identified labeler of the pool: is its error rate above the others' pooled rate?

    The pool is the labelers in ``volume`` (labeler -> its labels in the window); others are neither
    tested nor part of anyone's reference. The statistic is ``error_l - sum_j v_j error_j / sum_j v_j`` over
    the other identified labelers of the pool; the p-value is the normal tail of the statistic over its
    bootstrap standard error.
    """
    ok = ~np.isnan(est.error)
    v = np.array([volume.get(a, 0) for a in est.labelers], dtype=float)
    out = {}
    for i in np.flatnonzero(ok & (v > 0)):
        others = ok & (np.arange(len(ok)) != i) & (v > 0)
        if not others.any():
            continue
        w = v[others] / v[others].sum()
        stat = est.error[i] - (est.error[others] * w).sum()
        boot = est.replicates[:, i] - (est.replicates[:, others] * w).sum(1)
        se = boot.std()
        out[est.labelers[i]] = float(norm.sf(stat / se)) if se > 0 else float(stat <= 0)
    return out
