"""The report's statistics: Wilson score intervals (``labelaudit.intervals``), the one-sided Fisher exact test,
Holm–Bonferroni.

Glossary: ``k`` successes (here: disagreeing labels) of ``n`` trials (labels); ``p0`` the rate under the
null hypothesis; ``alpha`` the family-wise error rate.
"""

from __future__ import annotations

from scipy.stats import hypergeom

from labelaudit.intervals import Z95, wilson

__all__ = ["Z95", "fisher_greater", "holm", "wilson"]


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
