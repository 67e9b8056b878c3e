"""Intervals for a proportion, shared by the report (``serving/report``) and the model card (``training``).

Glossary: ``k`` successes (here: wrong or disagreeing labels) of ``n`` trials (labels).
"""

from __future__ import annotations

import math

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
