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

from dataclasses import dataclass

import numpy as np


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

    def judge_batch(self, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``probs`` (N, K), ``labels`` (N,) -> (disagrees (N,) bool, score (N,), predicted (N,) int)."""
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
