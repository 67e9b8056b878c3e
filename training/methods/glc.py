"""Gold Loss Correction (Hendrycks et al., NeurIPS 2018), as published (METHODS.md):

1. train on the untrusted data alone with plain cross-entropy;
2. estimate ``C`` on the trusted set with that network (eval mode, no augmentation);
3. start again from the same initial weights;
4. train on trusted and untrusted rows shuffled together: cross-entropy on trusted rows, the
   forward-corrected loss ``-log((Cᵀ p)[ȳ])`` on untrusted rows, ``C`` fixed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method, StepStats
from labelaudit.training.transition import estimate_transition, forward_corrected_nll


class _UntrustedOnly(Method):
    """GLC's first phase: plain cross-entropy on the untrusted rows only."""

    name = "glc-phase1"

    def rows(self) -> np.ndarray:
        return self.data.untrusted_rows

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        x, y = self.trainer.inputs(batch), self.data.labels[batch.untrusted]
        loss = F.cross_entropy(self.trainer.model(x), y)
        return loss, StepStats(loss=loss.item(), seen=len(y))


class GoldLossCorrection(Method):
    name = "glc"
    needs_trusted = True
    needs_noisy_labels = True

    def __init__(self, trainer):
        super().__init__(trainer)
        self.c: torch.Tensor | None = None

    def prepare(self) -> None:
        self.trainer.fit(_UntrustedOnly(self.trainer), phase="glc: untrusted only")
        with torch.no_grad():
            probs = self.trainer.predict(self.data.trusted_rows)
            self.c = estimate_transition(probs, self.data.labels[self.data.trusted_rows], self.data.k)
        self.trainer.restart_from_init()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows = batch.untrusted
        x, y = self.trainer.inputs(batch), self.data.labels[rows]
        trusted = self.data.is_trusted[rows]
        logits = self.trainer.model(x)
        per_sample = torch.where(
            trusted,
            F.cross_entropy(logits, y, reduction="none"),
            forward_corrected_nll(torch.softmax(logits.float(), 1), self.c, y),
        )
        loss = per_sample.mean()
        return loss, StepStats(loss=loss.item(), seen=len(y))

    def transition(self) -> np.ndarray | None:
        return None if self.c is None else self.c.cpu().numpy()
