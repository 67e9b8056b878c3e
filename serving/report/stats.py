"""The report's statistics: Wilson score intervals, the one-sided Fisher exact test, Holm–Bonferroni.

Glossary: ``k`` successes (here: disagreeing labels) of ``n`` trials (labels); ``p0`` the rate under the
null hypothesis; ``alpha`` the family-wise error rate.
"""

from __future__ import annotations

import math

from scipy.stats import hypergeom

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion ``k / n``; None when ``n`` is 0. (``k`` may be a rate times
    ``n``: an estimated count.)

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


def fisher_greater(k: int, n: int, k_pool: int, n_pool: int) -> float:
    """P-value of the one-sided Fisher exact test: is ``k / n`` above the pool's ``k_pool / n_pool``?

    Conditional on the total ``k + k_pool``, ``k`` is hypergeometric; the p-value is its upper tail. Unlike
    the binomial test against ``k_pool / n_pool`` it counts the pool's own sampling error, which matters
    when the pool is small (a step-down test's last rounds): 400 of 1,000 against 0 of 3 is not evidence.
    """
    if n == 0 or n_pool == 0:
        return 1.0
    return float(hypergeom.sf(k - 1, n + n_pool, k + k_pool, n))


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
