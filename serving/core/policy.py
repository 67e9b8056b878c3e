"""The disagreement policy: when does the model disagree with a human label strongly enough to ask for
a relabel? One implementation, used by the HTTP audit route, the Kafka consumer and the benchmarks.

Rule (confident learning's confident joint, with the per-class thresholds ``t`` from the model card,
``t[k]`` = the mean probability the model gives class ``k`` on held-out images labeled ``k``): the
model's *confident class* is the most probable class among those whose probability reaches their own
threshold (``p[j] >= t[j]``). A human label ``y`` is flagged when a confident class exists, differs from
``y``, and has at least ``min_confidence``. The score, ``p[confident] - p[y]`` in [0, 1], ranks the
relabel queue. An image with no confident class is never flagged: the model does not know enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from labelaudit.schemas.model_card import ModelCard


@dataclass(frozen=True)
class Verdict:
    predicted: int  # the confident class, or the argmax when there is none
    disagrees: bool
    score: float
    label_probability: float


@dataclass(frozen=True)
class DisagreementPolicy:
    thresholds: tuple[float, ...]  # (K,) per class
    min_confidence: float = 0.0
    name: str = "confident-joint-v1"

    def judge_batch(
        self, probs: np.ndarray, labels: np.ndarray, labeler_ids: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``probs`` (N, K), ``labels`` (N,) -> (disagrees (N,) bool, score (N,), predicted (N,) int). The
        labelers do not matter to this policy."""
        t = np.asarray(self.thresholds)
        above = probs >= t[None, :]  # (N, K)
        masked = np.where(above, probs, -1.0)
        confident = masked.argmax(1)
        has_confident = above.any(1)
        predicted = np.where(has_confident, confident, probs.argmax(1))
        rows = np.arange(len(labels))
        label_p, predicted_p = probs[rows, labels], probs[rows, predicted]
        disagrees = has_confident & (predicted != labels) & (predicted_p >= self.min_confidence)
        return disagrees, np.clip(predicted_p - label_p, 0.0, 1.0), predicted

    def judge(self, probs: np.ndarray, label: int) -> Verdict:
        """One image: ``probs`` (K,)."""
        disagrees, score, predicted = self.judge_batch(probs[None], np.array([label]))
        return Verdict(int(predicted[0]), bool(disagrees[0]), float(score[0]), float(probs[label]))


@dataclass(frozen=True)
class LabelerPosteriorPolicy:
    """``labeler-posterior-v1``: flag a label the posterior says is more likely wrong than right.

    Each labeler's matrix ``T_l[i, j]`` = P(labeler says j | true class i) comes from the model card
    (``labeler_transition_matrices``); a labeler without one gets ``pooled``. The posterior of item ``n``'s
    true class is ``q_n(i) ∝ p_n(i) · T_l[i, ȳ_n]`` (the model's probabilities as the prior, the labeler's
    habits as the likelihood of what it said), and the label is flagged where ``q_n(ȳ_n) < 1/2``. A careful
    labeler's label survives a doubtful model; a spammer's does not survive a confident one; a confuser's
    swap of a known pair is flagged more readily than an unheard-of confusion. Score: ``1 - q_n(ȳ_n)``.
    """

    matrices: dict[str, np.ndarray]  # labeler_id -> (K, K)
    pooled: np.ndarray  # (K, K), for labelers without their own matrix
    name: str = "labeler-posterior-v1"

    @classmethod
    def from_matrices(cls, matrices: Mapping[str, npt.ArrayLike], counts: Mapping[str, int]) -> LabelerPosteriorPolicy:
        """Labeler matrices with each labeler's item count; the pooled one weighs them by those counts."""
        arrays = {a: np.asarray(t, dtype=float) for a, t in matrices.items()}
        weights = np.array([max(1, counts.get(a, 0)) for a in arrays], dtype=float)
        pooled = np.einsum("h,hij->ij", weights / weights.sum(), np.stack(list(arrays.values())))
        return cls(arrays, pooled)

    @classmethod
    def from_card(cls, card: ModelCard) -> LabelerPosteriorPolicy:
        """The card's labeler matrices, pooled by their training items."""
        if not card.labeler_transition_matrices:
            raise ValueError(
                "labeler-posterior-v1 needs the labelers' matrices in the model card, and this card has "
                "none (a model trained without labeler ids): use confident-joint-v1"
            )
        return cls.from_matrices(card.labeler_transition_matrices, card.labeler_counts)

    def posterior(self, probs: np.ndarray, labels: np.ndarray, labeler_ids: Sequence[str]) -> np.ndarray:
        """``q`` (N, K): each item's true class given the model's ``probs`` (N, K) and its label (N,)."""
        columns = np.stack([self.matrices.get(a, self.pooled)[:, y] for a, y in zip(labeler_ids, labels, strict=True)])
        q = probs * columns  # (N, K): p(i) T[i, ȳ]
        posterior: np.ndarray = q / np.maximum(q.sum(1, keepdims=True), 1e-12)
        return posterior

    def judge_batch(
        self, probs: np.ndarray, labels: np.ndarray, labeler_ids: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``probs`` (N, K), ``labels`` (N,), one labeler id per item -> (disagrees (N,), score (N,), predicted (N,))."""
        q = self.posterior(probs, labels, labeler_ids or [""] * len(labels))
        right = q[np.arange(len(labels)), labels]
        return right < 0.5, 1.0 - right, q.argmax(1)


Policy = DisagreementPolicy | LabelerPosteriorPolicy


def policy_for(card: ModelCard, name: str) -> Policy:
    """The policy called ``name`` (``Settings.audit_policy``), built from the served model's card; ``auto``:
    labeler-posterior-v1 where the card has the labelers' matrices (it finds more wrong labels, more
    precisely: bench/results/label_errors.json), else confident-joint-v1."""
    if name == "auto":
        name = LabelerPosteriorPolicy.name if card.labeler_transition_matrices else DisagreementPolicy.name
    if name == LabelerPosteriorPolicy.name:
        return LabelerPosteriorPolicy.from_card(card)
    return DisagreementPolicy(thresholds=tuple(card.disagreement_thresholds))
