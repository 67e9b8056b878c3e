"""Mixup's draws (Zhang et al., ICLR 2018): one weight ``λ ~ Beta(α, α)`` per batch and a partner for each
row, from a random stream of the method's own (so that mixing never shifts the batch plans)."""

from __future__ import annotations

import numpy as np
import torch


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
