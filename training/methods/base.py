"""What a method is: a batch plan (row indices) and a loss over the batch's images, which the trainer
loads for each planned batch (``training.loader``) and puts on the device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.transition import estimate_transition

if TYPE_CHECKING:
    from labelaudit.training.train import TaskData, Trainer


def _no_rows() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


@dataclass
class Batch:
    """One iteration: manifest rows, trusted, untrusted and (semi-supervised) unlabeled, and once loaded
    ``x`` (B_t + B_u + B_x, C, H, W), the normalised images on the device in that order (``Trainer.inputs``
    gives the parts, augmented)."""

    untrusted: np.ndarray
    trusted: np.ndarray = field(default_factory=_no_rows)
    unlabeled: np.ndarray = field(default_factory=_no_rows)  # no supervised loss ever reads these rows
    x: torch.Tensor | None = None

    @property
    def rows(self) -> np.ndarray:
        """The rows in the order their images are loaded: trusted, untrusted, unlabeled."""
        parts = [p for p in (self.trusted, self.untrusted, self.unlabeled) if len(p)]
        return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else self.untrusted)


def labelers_with_matrices(labeler_ids: np.ndarray, rows: np.ndarray, min_items: int) -> list[str]:
    """The labelers with at least ``min_items`` of ``rows`` (indices into ``labeler_ids``, (N,) str, '' for a
    label without one): each gets its own transition matrix (``crowd``, the student's targets) or noisy head
    (FasTEN's ``--per-labeler``); the rest share one."""
    ids, counts = np.unique(labeler_ids[rows].astype(str), return_counts=True)
    return [str(i) for i, c in zip(ids, counts, strict=True) if i and c >= min_items]


def trusted_share(
    logits_t: torch.Tensor, labels_t: torch.Tensor, untrusted_loss: torch.Tensor, weight: float
) -> torch.Tensor:
    """``weight`` · cross-entropy on the trusted rows' ``logits_t`` (B_t, K) + (1 − ``weight``) ·
    ``untrusted_loss`` (a scalar): the split the trusted-set methods share (``trusted_weight``). With no
    trusted rows (``crowd`` on its labelers alone, a student round without a trusted set) the untrusted loss
    is the whole loss."""
    if len(labels_t) == 0:
        return untrusted_loss
    return weight * F.cross_entropy(logits_t, labels_t) + (1 - weight) * untrusted_loss


@dataclass
class StepStats:
    loss: float
    corrected: int = 0  # untrusted labels replaced by a correction in this step
    seen: int = 0


class Method:
    """Base: shuffled batches over ``rows()``, each with ``trusted_batch()``. Subclasses define ``loss``."""

    name = "base"
    needs_trusted = False  # refuses a manifest without trusted training rows...
    labelers_suffice = False  # ...unless two labelers have enough rows for a matrix each (``crowd``'s EM)
    needs_noisy_labels = False  # models the labelers' noise: refuses a manifest whose only labels are trusted ones
    trains_noisy_head = False  # False: the noisy head gets no gradient (and no DDP synchronisation)
    settings: frozenset[str] = frozenset()  # the TrainConfig fields only this method (of all methods) reads

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.data: TaskData = trainer.data
        self.cfg = trainer.cfg
        self._trusted_queue = np.empty(0, dtype=np.int64)  # trusted_cycle's rows left in its current pass

    def prepare(self) -> None:
        """Work before the main epochs (GLC's first training run)."""

    def start_epoch(self) -> None:
        """Work at the start of every epoch, before its batches are planned (``crowd``'s EM)."""

    def rows(self) -> np.ndarray:
        """The rows an epoch runs through in shuffled batches (``Batch.untrusted``)."""
        return self.data.train_rows

    def trusted_batch(self, rng: np.random.Generator) -> np.ndarray:
        """The trusted rows that go with every batch; none by default."""
        return np.empty(0, dtype=np.int64)

    def trusted_cycle(self, rng: np.random.Generator) -> np.ndarray:
        """The whole trusted set where it holds at most ``trusted_per_step`` rows (or that is 0); else the next
        ``trusted_per_step`` rows of a shuffled pass through it, a new pass when one runs out, so that every
        trusted row weighs the same over a pass and a step costs the same however large the set grows."""
        rows, cap = self.data.trusted_rows, self.cfg.trusted_per_step
        if cap <= 0 or len(rows) <= cap:
            return rows
        queue = self._trusted_queue
        while len(queue) < cap:
            queue = np.concatenate([queue, rng.permutation(rows)])
        self._trusted_queue = queue[cap:]
        return queue[:cap]

    def batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        rows = rng.permutation(self.rows())
        for start in range(0, len(rows), self.cfg.batch_size):
            yield Batch(untrusted=rows[start : start + self.cfg.batch_size], trusted=self.trusted_batch(rng))

    def steps_per_epoch(self) -> int:
        return -(-len(self.rows()) // self.cfg.batch_size)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        raise NotImplementedError

    def end_epoch(self) -> float | None:
        """Called after each epoch; returns the share of corrected labels, where the method corrects."""
        return None

    @torch.no_grad()
    def doubted_rows(self) -> np.ndarray:
        """Labeled rows whose label the method doubts, trained like unlabeled ones by the semi-supervised
        option; none by default (``crowd``: its labeler-aware posterior)."""
        return np.empty(0, dtype=np.int64)

    def transition(self) -> np.ndarray | None:
        """The current estimate of T. Default: GLC's estimator with the clean head on the trusted set,
        which for a model fitted to noisy labels shows the noise it has learned."""
        if len(self.data.trusted_rows) == 0:
            return None
        probs = self.trainer.predict(self.data.trusted_rows)
        labels = self.data.labels[self.data.trusted_rows]
        return estimate_transition(probs, labels, self.data.k).cpu().numpy()
