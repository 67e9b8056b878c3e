"""Labelers' error rates from one label per item: their disagreement with the model, with the model's own
measured mistakes taken out.

Why: a labeler's disagreement rate with the model counts the model's errors too (a labeler who is right
90% of the time disagrees with an 80%-accurate model about 30% of the time). The model card carries the
model's confusion on clean held-out images, ``C[i, k]`` = P(model says k | true class i) (``confusion``,
counts). If the labeler and the model err independently given the true class, the labeler's table of
(model's label k, human label j) counts is ``O[k, j] = N Σ_i π_i C[i, k] T[i, j]`` with ``π`` the class
mix of its items and ``T[i, j]`` = P(labeler says j | true class i): the model is an annotator of known
confusion, and Dawid–Skene's EM recovers ``π`` and ``T`` (the latent being each item's true class); the
error rate is ``1 - Σ_i π_i T[i, i]``. The E and M steps need only matrix products over the table:

- ``D = Cᵀ diag(π) T`` (K_pred, K_label), the modelled table; ``W = O / D``;
- ``N = diag(π) T ⊙ (C W)`` (K_true, K_label), the expected joint counts of (true class, human label);
- ``π ∝ N 1``, ``T ∝ N`` row by row (plus a small pseudo-count).

Interval: a bootstrap that resamples both the labeler's table (multinomial) and each row of the model's
confusion (the held-out set is finite too), 95% basic (reflected) interval.

Where independence fails the estimate is low: a labeler who errs on the images the model also finds hard,
toward the class the model also picks, looks like the model agreeing with a right label. Agreement
between labelers on shared items (``agreement.py``) does not share that blind spot and takes precedence
where a labeler shares enough items.

Glossary: ``K`` the model's classes (rows of ``C``, true classes); human labels may include classes the
model does not know (always wrong), so tables are (K, K + extra).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 400
ITERATIONS = 200
PSEUDO_COUNT = 1e-3
START_DIAGONAL = 0.7  # labelers start better than chance: fixes EM's class permutation
SEED = 20261202  # fixed: the same store gives the same report
MAX_WORK = 4e9  # bootstrap replicates x K^3 x iterations; fewer replicates for very many classes
MAX_CLASSES = 100  # the EM costs K^3 per step: above this the report keeps the disagreement rate and says so


@dataclass(frozen=True)
class ErrorRate:
    rate: float
    low: float
    high: float


def _prepare_confusion(counts: np.ndarray) -> np.ndarray:
    """(..., K, K) counts -> row-stochastic, with one pseudo-count spread over each row (no zero cells:
    a confusion never seen on a finite held-out set is rare, not impossible)."""
    k = counts.shape[-1]
    counts = counts + 1.0 / k
    return counts / counts.sum(-1, keepdims=True)


def _em(tables: np.ndarray, confusion: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for each labeler's (π, T) with the model's confusion fixed: (π (B, K), T (B, K, J), the expected
    (true class, human label) counts (B, K, J) of the last E step)."""
    b, k, j = tables.shape
    pi = np.full((b, k), 1.0 / k)
    t = np.full((b, k, j), (1 - START_DIAGONAL) / max(1, j - 1))
    t[:, np.arange(k), np.arange(k)] = START_DIAGONAL
    joint = np.zeros_like(t)
    for _ in range(iterations):
        modelled = np.einsum("bik,bi,bij->bkj", confusion, pi, t)  # (B, K_pred, J)
        w = np.divide(tables, modelled, out=np.zeros_like(tables), where=modelled > 0)
        joint = pi[:, :, None] * t * (confusion @ w)  # (B, K_true, J): expected (true, human) counts
        pi = joint.sum(2) / np.maximum(joint.sum((1, 2))[:, None], 1e-300)
        smoothed = joint + PSEUDO_COUNT
        t = smoothed / smoothed.sum(2, keepdims=True)
    return pi, t, joint


def fit(tables: np.ndarray, confusion: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """EM for each labeler's (π, T) with the model's confusion fixed.

    ``tables`` (B, K, J) counts of (model's label, human label), J >= K (columns past K: labels outside the
    model's classes); ``confusion`` (B, K, K) row-stochastic. Returns (B,) error rates.
    """
    k = tables.shape[1]
    _, _, joint = _em(tables, confusion, iterations)
    total = np.maximum(joint.sum((1, 2)), 1e-300)
    return 1.0 - np.trace(joint[:, :, :k], axis1=1, axis2=2) / total


def cell_errors(table: np.ndarray, confusion: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """(K, J): for each cell of one labeler's table, the chance that its label is wrong given the model's label
    ``k`` and the human label ``j``, under the fitted (π, T): ``1 − π_j C[j, k] T[j, j] / Σ_i π_i C[i, k] T[i, j]``
    (1 for labels outside the model's classes). Its mean over the labeler's labels is ``fit``'s error rate.
    ``table`` (K, J) counts; ``confusion`` (K, K) counts of (true class, model's label) on held-out images."""
    table = np.asarray(table, dtype=float)
    c = _prepare_confusion(np.asarray(confusion, dtype=float))
    k = c.shape[0]
    pi, t, _ = _em(table[None], c[None], iterations)
    modelled = np.einsum("ik,i,ij->kj", c, pi[0], t[0])  # (K_pred, J)
    right = (pi[0][:, None] * np.diagonal(t[0])[:, None] * c).T  # (K_pred, K): π_j C[j, k] T[j, j] at [k, j]
    out = np.ones_like(table)
    out[:, :k] = 1.0 - np.divide(right, modelled[:, :k], out=np.zeros_like(right), where=modelled[:, :k] > 0)
    return np.clip(out, 0.0, 1.0)


def error_rates(
    tables: dict[str, np.ndarray], confusion: np.ndarray, *, bootstrap: int = BOOTSTRAP, seed: int = SEED
) -> dict[str, ErrorRate]:
    """Per labeler: its error rate from its (model's label, human label) table, with a 95% interval.

    ``tables``: labeler -> (K, J) counts; ``confusion``: (K, K) counts of (true class, model's label) on
    clean held-out images. Labelers with no labels are left out.
    """
    confusion = np.asarray(confusion, dtype=float)
    k = confusion.shape[0]
    rng = np.random.default_rng(seed)
    replicates = int(max(20, min(bootstrap, MAX_WORK / (k**3 * ITERATIONS * max(1, len(tables))))))
    rows = confusion.sum(1).astype(np.int64)
    row_p = np.divide(confusion, rows[:, None], out=np.full_like(confusion, 1.0 / k), where=rows[:, None] > 0)
    boot_c = np.stack([rng.multinomial(rows, row_p) for _ in range(replicates)]).astype(float)  # (B, K, K)
    point_c, boot_c = _prepare_confusion(confusion)[None], _prepare_confusion(boot_c)
    out = {}
    for labeler, table in tables.items():
        table = np.asarray(table, dtype=float)
        n = int(table.sum())
        if n == 0:
            continue
        # Each labeler's own random stream: its interval must not depend on which labelers came before it in
        # ``tables`` (SQLite and PostgreSQL return them in different orders) or on who else labeled.
        own = np.random.default_rng([seed, zlib.crc32(str(labeler).encode())])
        resampled = own.multinomial(n, (table / n).ravel(), size=replicates).reshape(replicates, *table.shape)
        rate = float(fit(table[None], point_c)[0])
        boot = fit(resampled.astype(float), boot_c)
        # The basic (reflected) interval: the deconvolution's bootstrap spread is skewed away from the point
        # estimate (resampling noise reads as labeler error), and reflecting it corrects that direction.
        low, high = np.clip(2 * rate - np.quantile(boot, [0.975, 0.025]), 0.0, 1.0)
        out[labeler] = ErrorRate(rate=rate, low=min(float(low), rate), high=max(float(high), rate))
    return out


def wrong_chances(cells: Sequence[tuple[Hashable, Hashable, float]], confusion: ModelConfusion) -> np.ndarray:
    """One labeler's (model's label, human label, labels) cells -> (len(cells),) each cell's chance that its
    label is wrong (``cell_errors`` on the labeler's table; 1 for human labels outside the model's classes, and
    1 where the label differs from a model label outside them)."""
    index = {c: i for i, c in enumerate(confusion.classes)}
    table = labeler_tables([("", p, h, n) for p, h, n in cells], confusion.classes).get("")
    if table is None:  # no cell with a model label the card knows
        return np.array([float(p != h) for p, h, _ in cells])
    extra = sorted({h for _, h, _ in cells} - index.keys(), key=str)
    column = index | {c: len(index) + i for i, c in enumerate(extra)}
    f = cell_errors(table, confusion.counts)
    return np.array([f[index[p], column[h]] if p in index else float(p != h) for p, h, _ in cells])


@dataclass(frozen=True)
class ModelConfusion:
    """The served model's confusion from its card: ``counts`` (K, K) of (true class, model's label)."""

    classes: list[str]
    counts: np.ndarray
    source: str  # which images, for the report's notes


def labeler_tables(
    cells: Iterable[tuple[str, Hashable, Hashable, float]], classes: Sequence[Hashable]
) -> dict[str, np.ndarray]:
    """(labeler, model's label, human label, labels) rows -> labeler -> (K, J) counts in ``classes``' order,
    human labels outside ``classes`` in extra columns (J >= K, sorted). Rows whose model label is not in
    ``classes`` (another model's) are left out."""
    cells = list(cells)
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({human for _, _, human, _ in cells} - index.keys(), key=str)
    column = index | {c: len(classes) + i for i, c in enumerate(extra)}
    tables: dict[str, np.ndarray] = {}
    for labeler, predicted, human, n in cells:
        if predicted in index:
            table = tables.setdefault(labeler, np.zeros((len(classes), len(column))))
            table[index[predicted], column[human]] += n
    return tables
