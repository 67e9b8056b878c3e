"""``mentormix``: MentorMix (Jiang, Huang, Liu, Yang; ICML 2020, "Beyond Synthetic Noise"), for teams with
no trusted set at all: every row is trained on, trusted or not, and no transition matrix is estimated.

Per batch:

1. ``ℓ_i = CE(f(x_i), y_i)`` without gradient; MentorNet's data-driven curriculum in its simplest
   (predefined) form keeps the examples whose loss is at most ``τ``, an exponential moving average of the
   batch's ``γ``-quantile of losses (``mentormix_gamma``): ``v_i = [ℓ_i ≤ τ]``. During the burn-in
   (``mentormix_burn_in``, a fraction of the epochs) every example counts: ``v ≡ 1``.
2. Each example draws a partner ``j`` from the batch with probability ``∝ v_j`` (one that looks clean).
3. ``λ ~ Beta(α, α)`` per batch (``mixup_alpha``), then per example ``λ_i = v_i · max(λ, 1 − λ) +
   (1 − v_i) · min(λ, 1 − λ)``: a clean-looking example dominates its mix, a doubtful one is mostly its
   partner.
4. ``x̃_i = λ_i x_i + (1 − λ_i) x_j``; the loss ``λ_i CE(f(x̃_i), y_i) + (1 − λ_i) CE(f(x̃_i), y_j)``.

The paper's second reweighting of the mixed losses (for very high noise) is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method, StepStats

QUANTILE_DECAY = 0.9  # the moving average of the loss quantile, per step


def mentor_weights(losses: torch.Tensor, threshold: float) -> torch.Tensor:
    """``v_i = 1`` where the example's loss is at most ``threshold``, else 0. (B,) -> (B,) float."""
    return (losses <= threshold).float()


def mix_weights(lam: float, v: torch.Tensor) -> torch.Tensor:
    """Per-example mixing weights: ``v · max(λ, 1 − λ) + (1 − v) · min(λ, 1 − λ)``. (B,) -> (B,)."""
    return v * max(lam, 1.0 - lam) + (1.0 - v) * min(lam, 1.0 - lam)


def draw_partners(v: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """For each example, a partner index drawn with probability ``∝ v`` (uniform when no ``v`` is set)."""
    weights = v.detach().cpu().double().numpy()
    p = weights / weights.sum() if weights.sum() > 0 else None
    return rng.choice(len(weights), size=len(weights), p=p)


class MentorMix(Method):
    name = "mentormix"
    needs_trusted = False
    settings = frozenset({"mentormix_gamma", "mentormix_burn_in", "mixup_alpha"})

    def __init__(self, trainer):
        super().__init__(trainer)
        self.rng = np.random.default_rng([self.cfg.seed, 1299709])  # its own stream: batch plans stay put
        self.threshold: float | None = None  # τ, the moving average of the γ-quantile
        self.epoch = 0
        self.kept: list[float] = []  # share of v = 1 per step, for the epoch's report

    def start_epoch(self) -> None:
        self.epoch += 1
        self.kept = []

    def burning_in(self) -> bool:
        return self.epoch <= self.cfg.mentormix_burn_in * self.cfg.epochs

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        x, y = self.trainer.inputs(batch), self.data.labels[batch.untrusted]  # (B, C, H, W), (B,)
        with torch.no_grad():
            losses = F.cross_entropy(self.trainer.model(x).float(), y, reduction="none")  # (B,)
            quantile = float(torch.quantile(losses, self.cfg.mentormix_gamma))
            self.threshold = (
                quantile
                if self.threshold is None
                else QUANTILE_DECAY * self.threshold + (1 - QUANTILE_DECAY) * quantile
            )
            v = torch.ones_like(losses) if self.burning_in() else mentor_weights(losses, self.threshold)
        self.kept.append(float(v.mean()))
        alpha = self.cfg.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha)) if alpha > 0 else 1.0
        partner = torch.as_tensor(draw_partners(v, self.rng), device=x.device)
        w = mix_weights(lam, v).to(x.dtype)  # (B,)
        mixed = w.view(-1, 1, 1, 1) * x + (1 - w.view(-1, 1, 1, 1)) * x[partner]
        if self.trainer.autocast:
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        logits = self.trainer.model(mixed).float()
        per_example = w.float() * F.cross_entropy(logits, y, reduction="none") + (1 - w.float()) * F.cross_entropy(
            logits, y[partner], reduction="none"
        )
        loss = per_example.mean()
        return loss, StepStats(loss=loss.item(), seen=len(y))
