"""Semi-supervised task B (seed 004): the images without a label, and the labeled ones the method doubts,
trained by consistency with an EMA teacher (FixMatch's weak/strong views, Mean Teacher's averaged weights).

A stream has far more images than labels. Every step, the method's labeled batch is joined by as many
rows drawn from the pool (``data.unlabeled_rows`` and ``method.doubted_rows()``). The teacher, an
exponential moving average of the network's weights (``ema_decay``; its BatchNorm statistics copied),
looks at a weakly augmented view; where its clean-head confidence reaches ``pseudo_threshold``, its argmax
is the target for the network on a strongly augmented view. The loss, weighted ``unlabeled_weight``, is
added to the method's. The teacher is never back-propagated; the trusted rows always keep their labels,
and no unlabeled row ever reaches a supervised loss (they live in ``Batch.unlabeled`` only).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method
from labelaudit.training.networks import running_stats_frozen

if TYPE_CHECKING:
    from labelaudit.training.train import Trainer


class EmaTeacher:
    """The consistency loss and its teacher, for one ``Trainer``."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.teacher = copy.deepcopy(trainer.net).eval()
        self.teacher.requires_grad_(False)
        self.rng = np.random.default_rng([self.cfg.seed, trainer.ranks.rank, 15485863])
        self.pool = np.empty(0, dtype=np.int64)
        self.confident: list[float] = []  # share of pool rows above the threshold, per step

    def refresh_pool(self, method: Method) -> None:
        """The rows trained without their label this epoch: the unlabeled images, the doubted ones, or both
        (``semi_pool``)."""
        parts = self.cfg.semi_pool.split("+")
        unlabeled = self.trainer.data.unlabeled_rows if "unlabeled" in parts else np.empty(0, dtype=np.int64)
        doubted = method.doubted_rows() if "doubted" in parts else np.empty(0, dtype=np.int64)
        self.pool = np.union1d(unlabeled, doubted).astype(np.int64)

    def attach(self, batch: Batch) -> Batch:
        """``batch`` with as many pool rows as it has untrusted ones (none when the pool is empty)."""
        if len(self.pool):
            batch.unlabeled = self.rng.choice(
                self.pool, size=len(batch.untrusted), replace=len(self.pool) < len(batch.untrusted)
            )
        return batch

    def loss(self, batch: Batch) -> torch.Tensor:
        """``unlabeled_weight · mean(mask · CE(student(strong), argmax teacher(weak)))`` over the batch's
        pool rows; 0 when it has none."""
        if len(batch.unlabeled) == 0:
            return torch.zeros((), device=self.trainer.device)
        with torch.no_grad():
            weak = self.trainer.inputs(batch, part="unlabeled")
            p_teacher = torch.softmax(self.teacher(weak).float(), 1)  # (B_x, K)
            confidence, target = p_teacher.max(1)
            mask = (confidence >= self.cfg.pseudo_threshold).float()
        self.confident.append(float(mask.mean()))
        with running_stats_frozen(self.trainer.net):
            logits = self.trainer.model(self.trainer.inputs(batch, part="unlabeled", strong=True)).float()
        return self.cfg.unlabeled_weight * (F.cross_entropy(logits, target, reduction="none") * mask).mean()

    def end_epoch(self) -> float | None:
        """The epoch's mean share of pool rows above the threshold (None without pool rows); starts afresh."""
        share = float(np.mean(self.confident)) if self.confident else None
        self.confident = []
        return share

    @torch.no_grad()
    def update(self) -> None:
        """After each optimizer step: ``teacher ← d · teacher + (1 − d) · network``; buffers copied."""
        d = self.cfg.ema_decay
        for t, s in zip(self.teacher.parameters(), self.trainer.net.parameters(), strict=True):
            t.mul_(d).add_(s.detach(), alpha=1 - d)
        for t, s in zip(self.teacher.buffers(), self.trainer.net.buffers(), strict=True):
            t.copy_(s)
