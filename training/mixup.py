"""Mixup's draws (Zhang et al., ICLR 2018): one weight ``λ ~ Beta(α, α)`` per batch and a partner for each
row, from a random stream of the method's own (so that mixing never shifts the batch plans)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from labelaudit.training.methods.base import Batch
    from labelaudit.training.train import Trainer


class Mixup:
    def __init__(self, alpha: float, rng: np.random.Generator):
        """``alpha`` 0: no mixing (``λ`` = 1; partners are still drawn, so the stream is the same)."""
        self.alpha, self.rng = alpha, rng

    def weight(self) -> float:
        return float(self.rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0

    def draw(self, n: int, device: torch.device | str) -> tuple[float, torch.Tensor]:
        """``λ`` and a permutation of the batch's ``n`` rows: row ``i`` is mixed with row ``partner[i]``."""
        lam = self.weight()
        return lam, torch.as_tensor(self.rng.permutation(n), device=device)

    @staticmethod
    def mix(values: torch.Tensor, lam: float, partner: torch.Tensor) -> torch.Tensor:
        """``λ · values + (1 − λ) · values[partner]``: images (B, C, H, W) or targets (B, K) alike."""
        return lam * values + (1.0 - lam) * values[partner]

    def logits(self, trainer: Trainer, batch: Batch) -> tuple[torch.Tensor, float, torch.Tensor]:
        """The network's logits (B_t + B_u, K) on ``batch`` with its untrusted rows mixed (the trusted rows
        first, unmixed), with the draw's ``λ`` and partners (indices into the untrusted rows)."""
        n_t = len(batch.trusted)
        x = trainer.inputs(batch)  # (B_t + B_u, C, H, W), trusted first
        lam, partner = self.draw(len(batch.untrusted), x.device)
        x = torch.cat([x[:n_t], self.mix(x[n_t:], lam, partner)])
        if trainer.autocast:
            x = x.contiguous(memory_format=torch.channels_last)
        return trainer.model(x).float(), lam, partner
