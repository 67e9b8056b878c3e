"""The disagreement policy: when does the model disagree with a human label strongly enough to ask for
a relabel? One implementation, used by the HTTP audit route, the Kafka consumer and the benchmarks.

Rule (confident learning's per-class thresholds, from the model card): a human label ``y`` is flagged
when the model's probability of ``y`` is below ``thresholds[y]`` (the mean probability the model gives
class ``y`` on held-out images labeled ``y``) and the model's own top class, which is not ``y``, has at
least ``min_confidence``. The score, ``max_prob - p[y]`` in [0, 1], ranks the relabel queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    predicted: int
    disagrees: bool
    score: float
    label_probability: float


@dataclass(frozen=True)
class DisagreementPolicy:
    thresholds: tuple[float, ...]  # (K,) per human-label class
    min_confidence: float = 0.5
    name: str = "per-class-threshold-v1"

    def judge_batch(self, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``probs`` (N, K), ``labels`` (N,) -> (disagrees (N,) bool, score (N,) float)."""
        t = np.asarray(self.thresholds)
        label_p = probs[np.arange(len(labels)), labels]
        predicted = probs.argmax(1)
        disagrees = (label_p < t[labels]) & (predicted != labels) & (probs.max(1) >= self.min_confidence)
        return disagrees, probs.max(1) - label_p

    def judge(self, probs: np.ndarray, label: int) -> Verdict:
        """One image: ``probs`` (K,)."""
        disagrees, score = self.judge_batch(probs[None], np.array([label]))
        return Verdict(int(probs.argmax()), bool(disagrees[0]), float(score[0]), float(probs[label]))
