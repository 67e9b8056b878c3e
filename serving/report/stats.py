"""The report's statistics: Wilson score intervals, the one-sided exact binomial test, Holm–Bonferroni.

Glossary: ``k`` successes (here: disagreeing labels) of ``n`` trials (labels); ``p0`` the rate under the
null hypothesis; ``alpha`` the family-wise error rate.
"""

from __future__ import annotations

import math

from scipy.stats import binomtest

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion ``k / n``; None when ``n`` is 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point at 0 or n,
    which matters for a labeler with a handful of labels.
    """
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); rounding would leave a hair above (below).
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def binomial_greater(k: int, n: int, p0: float) -> float:
    """P-value of the one-sided exact binomial test H0: rate <= p0 against H1: rate > p0."""
    return float(binomtest(k, n, min(max(p0, 0.0), 1.0), alternative="greater").pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order: reject where adjusted <= alpha.

    With m tests sorted ascending, the i-th (from 0) is multiplied by (m - i), then made monotone.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
