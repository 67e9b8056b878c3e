"""A labeler's error rate from the random audit sample's answers, with the model as a predictor of which labels
are wrong: prediction-powered inference (Angelopoulos et al., Science 2023; the power-tuned PPI++ of
Angelopoulos, Duchi and Zrnic, 2023).

Why: with one label per item the model-deconvolved rate (``deconvolve.py``) reads low for a labeler whose
mistakes the model shares (it errs on the images the model finds hard, toward the model's own guess), and
nothing in the labels shows it. The answers to the audit sample's requests (items drawn at random by their
ids, ``relabel.in_audit_sample``, answered by a second person) do show it: on those items the answer says
whether the label was right. Their share of mismatches alone is unbiased but, at a QA budget of a few dozen
answers per labeler, has a wide interval. PPI uses every label and the answers together:

    rate = λ · mean over all the labeler's labels of f  +  mean over the answered ones of (e − λ f)

with ``e`` 1 where the answer differs from the label, ``f`` the model's chance that the label is wrong (its cell
of the deconvolution, ``deconvolve.cell_errors``, or, without the model's confusion, 1 where the label differs
from the model's label). The second term is the rectifier: the mean of what the model misses or adds, measured
where a person looked, so the rate stays unbiased however wrong ``f`` is (the sample is random); ``f`` only
narrows the interval, by as much as it tracks ``e``. ``λ`` in [0, 1] is PPI++'s variance-minimising weight
``cov(e, f) / ((1 + n/N) var(f))`` over the answered labels (0: the answers' mismatch share alone). Interval:
normal, ``λ² var(f)/N + var(e − λ f)/n``, clipped to [0, 1]; where the answers all agree or all differ with the
labels there is no spread to measure, and the interval is the Wilson interval of the answers alone.

The answer is taken as the truth: a reviewer who errs at rate ``r`` reads every labeler up to ``r`` high (a
mismatch is either's mistake). Glossary: ``N`` the labeler's labels, ``n`` those with an answer; a cell is
one (model's label, human label) pair of the labeler's, as in ``deconvolve.labeler_tables``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from labelaudit.intervals import Z95, wilson

MIN_ANSWERS = 20  # answers on a labeler's labels before they say anything about its rate


@dataclass(frozen=True)
class AuditedRate:
    rate: float
    low: float
    high: float
    answers: int  # the labeler's labels with an answer
    weight: float  # λ: how much the model's predictor carried (0: the answers alone)


def error_rate(labels: np.ndarray, agreed: np.ndarray, differed: np.ndarray, f: np.ndarray) -> AuditedRate | None:
    """One labeler's rate, over its cells (any shape, the same for all four; a cell is a (model's label, human
    label) pair, say): ``labels`` all its labels' counts; ``agreed`` and ``differed`` those whose answer gave
    the same label, and another; ``f`` the model's chance that a label in the cell is wrong. None with fewer
    than ``MIN_ANSWERS`` answers."""
    labels, agreed, differed, f = (np.asarray(x, dtype=float) for x in (labels, agreed, differed, f))
    big_n, n = labels.sum(), agreed.sum() + differed.sum()
    if n < MIN_ANSWERS or big_n == 0:
        return None
    f_all = float((labels * f).sum() / big_n)
    var_all = float((labels * (f - f_all) ** 2).sum() / big_n)
    w = np.concatenate([agreed.ravel(), differed.ravel()])  # the answered labels, as weighted points (e, f)
    e = np.concatenate([np.zeros(agreed.size), np.ones(differed.size)])
    fs = np.concatenate([f.ravel(), f.ravel()])
    mean_e, mean_f = float((w * e).sum() / n), float((w * fs).sum() / n)
    var_f = float((w * (fs - mean_f) ** 2).sum() / (n - 1))
    cov = float((w * (e - mean_e) * (fs - mean_f)).sum() / (n - 1))
    k = int(differed.sum())
    if k in (0, int(n)) or var_f <= 0:
        low, high = wilson(k, int(n)) or (0.0, 1.0)
        return AuditedRate(mean_e, low, high, int(n), 0.0)
    lam = float(np.clip(cov / ((1 + n / big_n) * var_f), 0.0, 1.0))
    d = e - lam * fs
    mean_d = float((w * d).sum() / n)
    var_d = float((w * (d - mean_d) ** 2).sum() / (n - 1))
    rate = lam * f_all + mean_d
    se = float(np.sqrt(lam**2 * var_all / big_n + var_d / n))
    low, high = np.clip([rate - Z95 * se, rate + Z95 * se], 0.0, 1.0)
    rate = float(np.clip(rate, 0.0, 1.0))
    return AuditedRate(rate, min(float(low), rate), max(float(high), rate), int(n), lam)


def above_pool(rates: dict[str, tuple[float, float, float]], volume: dict[str, int]) -> dict[str, float]:
    """One-sided p-value per labeler in ``rates`` (labeler -> its audit estimate's rate, low, high): is its error
    rate above the others' pooled rate? The reference is the volume-weighted rate (``volume``: the labeler's
    labels) of the OTHER labelers in ``rates``, as ``agreement.above_pool`` does with identified labelers; the
    statistic's standard error adds the labeler's and the weighted others' (each from its 95% interval: the
    answers are independent draws, one labeler's from another's). A labeler with no other is not tested."""
    ids = [a for a in rates if volume.get(a, 0) > 0]
    rate = np.array([rates[a][0] for a in ids])
    se = np.array([(rates[a][2] - rates[a][1]) / (2 * Z95) for a in ids])
    v = np.array([volume[a] for a in ids], dtype=float)
    out = {}
    for i, a in enumerate(ids):
        others = np.arange(len(ids)) != i
        if not others.any():
            continue
        w = v[others] / v[others].sum()
        stat = rate[i] - (w * rate[others]).sum()
        sd = float(np.sqrt(se[i] ** 2 + (w**2 * se[others] ** 2).sum()))
        out[a] = float(norm.sf(stat / sd)) if sd > 0 else float(stat <= 0)
    return out
