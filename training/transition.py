"""Label transition matrices: estimation, forward correction and safe label correction.

Glossary: ``K`` classes; ``probs`` (N, K) softmax outputs; ``labels`` (N,) int class indices;
``T`` (K, K) with ``T[i, j] = P(noisy label j | true class i)``, rows summing to 1.
"""

from __future__ import annotations

import numpy as np
import torch

from labelaudit import dawid_skene
from labelaudit.audited import MIN_ANSWERS, AuditedRate
from labelaudit.audited import error_rate as audited_rate
from labelaudit.deconvolve import MAX_CLASSES, cell_errors, error_rates, labeler_tables
from labelaudit.schemas.model_card import LabelerErrorRate
from labelaudit.training.items import NO_CHECK, pooled

EPS = 1e-8


def estimate_transition(probs: torch.Tensor, true_labels: torch.Tensor, k: int, fallback: torch.Tensor | None = None):
    """GLC / FasTEN estimator: ``T[i, :]`` = mean of ``probs`` over samples whose true label is ``i``.

    ``probs`` (N, K) come from a model of the *noisy* labels, evaluated on trusted samples. A class with
    no trusted sample keeps its row from ``fallback`` (the previous estimate), or the identity row.
    Returns (K, K), no gradient.
    """
    probs = probs.detach().float()
    sums = torch.zeros(k, k, device=probs.device).index_add_(0, true_labels, probs)
    counts = torch.bincount(true_labels, minlength=k).float()
    base = fallback if fallback is not None else torch.eye(k, device=probs.device)
    present = counts > 0
    t = base.clone().to(probs.device)
    t[present] = sums[present] / counts[present, None]
    return t


def forward_corrected_nll(clean_probs: torch.Tensor, t: torch.Tensor, noisy_labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-log((Tᵀ p)[y])``: the clean prediction pushed through the noise. (B, K) -> (B,).

    ``(Tᵀ p)[j] = Σ_i p[i] T[i, j]``, i.e. ``p @ T`` row-wise: the model's probability that a labeler
    would write ``j``. ``t`` is one (K, K) matrix for all samples, or (B, K, K), one per sample (each
    sample's labeler's matrix).
    """
    if t.ndim == 3:
        noisy_probs = torch.einsum("bi,bij->bj", clean_probs, t)  # (B, K)
    else:
        noisy_probs = clean_probs @ t  # (B, K)
    picked = noisy_probs.gather(1, noisy_labels[:, None]).squeeze(1)
    return -torch.log(picked.clamp_min(EPS))


def mixed_forward_nll(
    clean_probs: torch.Tensor,
    t_a: torch.Tensor,
    labels_a: torch.Tensor,
    t_b: torch.Tensor,
    labels_b: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Per-sample annot-mix loss (Herde et al., ECAI 2024) for images mixed ``lam : 1 - lam``:
    ``lam · -log((T_aᵀ p)[y_a]) + (1 - lam) · -log((T_bᵀ p)[y_b])``, each label pushed through its own
    labeler's matrix. ``clean_probs`` (B, K) of the mixed images; ``t_a``, ``t_b`` (B, K, K) or (K, K);
    labels (B,). At ``lam = 1`` it is ``forward_corrected_nll(p, t_a, labels_a)``. (B,)"""
    loss = lam * forward_corrected_nll(clean_probs, t_a, labels_a)
    if lam < 1.0:
        loss = loss + (1.0 - lam) * forward_corrected_nll(clean_probs, t_b, labels_b)
    return loss


def correct_labels(clean_probs: torch.Tensor, original_labels: torch.Tensor, rho: float) -> torch.Tensor:
    """FasTEN's safe correction: the clean head's argmax where its confidence is at least ``rho``,
    else the ORIGINAL label. Always computed from the original label, so a correction never sticks
    and corrections cannot build on each other. (B, K), (B,) -> (B,)."""
    confidence, predicted = clean_probs.max(dim=1)
    return torch.where(confidence >= rho, predicted, original_labels)


def labeler_transition_matrices(
    posterior: np.ndarray,
    labels: np.ndarray,
    labeler_ids: np.ndarray,
    k: int,
    *,
    em_steps: int = 0,
    items: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per labeler: ``T_l[i, j] = Σ_n q[n, i] [label_n = j] / Σ_n q[n, i]`` over that labeler's items.

    ``posterior`` (N, K) is the best estimate of each item's true class (the model's probabilities, or
    a one-hot of the checked label for trusted items), so this works with a single label per item. With
    ``em_steps`` 0, ``q`` is that posterior; otherwise Dawid-Skene EM refines it: ``q[n, i] ∝ posterior[n, i]
    · T_l[i, label_n]`` (what the label says about the truth, given the labeler's habits), then ``T_l`` again,
    ``em_steps`` times. Without it a careful labeler's matrix inherits the model's own mistakes. ``items``
    (N,): rows that are labels of one image share an index, and the E step reads all of the image's labels
    (``training.items.pooled``). A true class the labeler never (softly) saw gets a uniform row. Returns
    matrices and item counts.
    """
    names, which = np.unique(np.asarray(labeler_ids).astype(str), return_inverse=True)
    onehot = np.eye(k)[labels]  # (N, K)
    rows_of = [which == h for h in range(len(names))]
    q = posterior
    for step in range(em_steps + 1):
        t = np.stack([_m_step(q[mine], onehot[mine], k) for mine in rows_of])  # (L, K, K)
        if step < em_steps:
            likelihood = t[which, :, labels]  # (N, K): T_l[i, ȳ]
            if items is not None:
                likelihood = pooled(torch.from_numpy(likelihood), torch.from_numpy(items)).numpy()
            q = posterior * likelihood
            q = q / np.maximum(q.sum(1, keepdims=True), EPS)
    return (
        {str(n): t[h] for h, n in enumerate(names)},
        {str(n): int(mine.sum()) for n, mine in zip(names, rows_of, strict=True)},
    )


def _m_step(q: np.ndarray, given: np.ndarray, k: int) -> np.ndarray:
    """One labeler's matrix from its rows' posteriors ``q`` (n, K) and one-hot labels ``given`` (n, K)."""
    joint = q.T @ given  # (K true, K given)
    mass = joint.sum(1, keepdims=True)
    return np.where(mass > EPS, joint / np.maximum(mass, EPS), 1.0 / k)


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Confident learning's per-class threshold: mean ``probs[:, c]`` over items labeled ``c``. (K,)

    A class with no held-out item falls back to ``1/K``.
    """
    out = np.full(k, 1.0 / k)
    for c in range(k):
        mine = labels == c
        if mine.any():
            out[c] = float(probs[mine, c].mean())
    return out


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j]``: how many items of class ``i`` the model labels ``j``. (N,), (N,) -> (K, K) int."""
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out


def labeler_error_rates(
    predicted: np.ndarray,
    labels: np.ndarray,
    labeler_ids: np.ndarray,
    confusion: np.ndarray,
    items: np.ndarray | None = None,
    checked: np.ndarray | None = None,
) -> dict[str, LabelerErrorRate]:
    """Each labeler's error rate on its training rows: its disagreement with the model's label less the
    model's measured mistakes (``labelaudit.deconvolve``). (N,) predicted and given labels, labeler ids;
    ``confusion`` (K, K) counts on held-out rows. With ``checked`` (N,) (the checked label of the row's image
    from a QA pass, ``NO_CHECK`` where none), a labeler with at least ``audited.MIN_ANSWERS`` checked labels
    gets its rate from those checks instead, the model's guess narrowing the interval (``labelaudit.audited``:
    the checks see the mistakes the model shares; they must be a random sample of its images). With ``items``
    (N,) (images with several labels), a labeler whose rate the labels of those images identify (Dawid–Skene
    over them alone, ``labelaudit.dawid_skene``) gets that rate before either: it does not share the model's
    blind spot either, and reads every shared image."""
    k = confusion.shape[0]
    if k > MAX_CLASSES:  # the deconvolution's cost grows as K^3: the card leaves the rates out
        return {}
    rows = [(str(a), int(p), int(y), 1) for a, p, y in zip(labeler_ids, predicted, labels, strict=True)]
    tables = labeler_tables(rows, list(range(k)))
    rates = error_rates(tables, confusion)
    out = {
        a: LabelerErrorRate(
            rate=round(r.rate, 4),
            low=round(r.low, 4),
            high=round(r.high, 4),
            disagreement=round(1 - float(np.trace(tables[a][:, :k])) / tables[a].sum(), 4),
        )
        for a, r in sorted(rates.items())
    }
    if checked is not None:
        for a, found in _checked_rates(tables, predicted, labels, labeler_ids, confusion, checked).items():
            update = {"rate": round(found.rate, 4), "low": round(found.low, 4), "high": round(found.high, 4)}
            out[a] = out[a].model_copy(update=update | {"source": "audit", "answers": found.answers})
    if items is not None:
        shared = dawid_skene.estimate(labels, labeler_ids, items, k)
        for a, rate, low, high in zip(shared.labelers, shared.error, shared.low, shared.high, strict=True):
            if a in out and np.isfinite(rate):
                update = {"rate": round(float(rate), 4), "low": round(float(low), 4), "high": round(float(high), 4)}
                out[a] = out[a].model_copy(update=update | {"source": "agreement", "answers": None})
    return out


def _checked_rates(
    tables: dict[str, np.ndarray],
    predicted: np.ndarray,
    labels: np.ndarray,
    labeler_ids: np.ndarray,
    confusion: np.ndarray,
    checked: np.ndarray,
) -> dict[str, AuditedRate]:
    """Per labeler with enough checked labels: its rate from the checks, the model's cell errors as predictor.
    ``tables``: each labeler's (model's label, its label) counts, as ``labeler_error_rates`` built them."""
    out = {}
    for a, table in sorted(tables.items()):
        seen = (labeler_ids == a) & (checked != NO_CHECK)
        if seen.sum() < MIN_ANSWERS:  # too few checks to say anything: no EM for the predictor
            continue
        agreed, differed = np.zeros_like(table), np.zeros_like(table)
        same = seen & (checked == labels)
        np.add.at(agreed, (predicted[same], labels[same]), 1)
        np.add.at(differed, (predicted[seen & ~same], labels[seen & ~same]), 1)
        found = audited_rate(table, agreed, differed, cell_errors(table, confusion))
        if found is not None:
            out[a] = found
    return out
