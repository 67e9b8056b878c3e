"""FasTEN (Kye, Choi, Yi, Chang; ECCV 2022), as set down in METHODS.md.

One feature extractor, two heads. Every iteration:

- the trusted batch (class-balanced; by default the whole trusted set) goes through the noisy head and
  gives ``T̂[i, :]`` = mean noisy-head softmax over trusted samples of class ``i`` (no gradient);
- clean head: cross-entropy on trusted samples, averaged half and half with the forward-corrected
  loss ``-log((T̂ᵀ p)[ŷ])`` on untrusted samples;
- noisy head: cross-entropy on untrusted samples against ``ŷ``, weighted ``λ``;
- ``ŷ`` is the label computed at the sample's previous visit (one epoch of lag; the original label on
  the first): the clean head's argmax if its confidence is at least ``ρ``, else the ORIGINAL label.

Choices where the paper leaves room (docs/methods.md): the trusted and untrusted samples share one
forward pass (one backward per iteration, BatchNorm sees both); the "half and half" is an equal
weighting of the two means; a class missing from a trusted batch keeps its previous ``T̂`` row.

Option ``held_out_estimate`` (the fix the literature points to for ``T̂`` read off images the network has
memorised): every epoch the trusted set is split in two class-stratified halves that swap roles from one
epoch to the next; the clean loss's cross-entropy sees one half, ``T̂`` is estimated on the other, whose
images get no gradient that epoch.

Our extension (``TrainConfig.per_labeler``): one noisy head per labeler with enough items (the rest
share a pooled head), so ``T̂_l`` is estimated per labeler every iteration from the same trusted batch
and each untrusted sample is corrected through its own labeler's matrix. A spammer's ``T̂_l`` tends to
uniform, which makes its labels carry no gradient; a confuser's shows its swapped pairs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method, StepStats, labelers_with_matrices
from labelaudit.training.networks import running_stats_frozen
from labelaudit.training.transition import correct_labels, estimate_transition, forward_corrected_nll

POOLED_GROUP = "*"


def labeler_groups(labeler_ids: np.ndarray, untrusted_rows: np.ndarray, min_items: int) -> list[str]:
    """Noisy-head (or matrix) groups: every labeler with at least ``min_items`` untrusted items, then the pool."""
    return labelers_with_matrices(labeler_ids, untrusted_rows, min_items) + [POOLED_GROUP]


class FasTEN(Method):
    name = "fasten"
    needs_trusted = True
    needs_noisy_labels = True
    trains_noisy_head = True
    settings = frozenset(
        {
            "trusted_per_class",
            "rho",
            "noisy_weight",
            "trusted_trains_features",
            "held_out_estimate",
            "per_labeler",
            "consistency_weight",
            "pseudo_threshold",
        }
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        k, device = self.data.k, self.data.labels.device
        groups = self.data.noisy_groups
        self.heads = len(groups)
        index = {g: h for h, g in enumerate(groups)}
        pooled = index[POOLED_GROUP] if POOLED_GROUP in index else 0
        self.head_of_row = torch.as_tensor(
            [index.get(str(lid), pooled) for lid in self.data.labeler_ids], device=device
        )
        self.original = self.data.labels.clone()  # never modified
        self.assigned = self.data.labels.clone()  # ŷ for the next visit; only untrusted rows change
        self.t_hat = torch.eye(k, device=device).repeat(self.heads, 1, 1)  # (H, K, K)
        self._t_sum = torch.zeros(self.heads, k, k, device=device)
        self._t_count = 0
        # held_out_estimate: this epoch's halves of the trusted set (fit: cross-entropy, estimate: T̂)
        self._fit, self._estimate = self.data.trusted_rows, self.data.trusted_rows
        self._halves: tuple[np.ndarray, np.ndarray] | None = None
        self._epoch = 0

    # -- batches ---------------------------------------------------------------------------------
    def rows(self) -> np.ndarray:
        return self.data.untrusted_rows

    def start_epoch(self) -> None:
        self._epoch += 1
        if not self.cfg.held_out_estimate:
            return
        if self._halves is None:
            self._halves = stratified_halves(
                self.data.trusted_rows,
                self.data.labels[self.data.trusted_rows].cpu().numpy(),
                np.random.default_rng([self.cfg.seed, 104729]),
            )
        first, second = self._halves
        self._fit, self._estimate = (first, second) if self._epoch % 2 else (second, first)

    def trusted_batch(self, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.held_out_estimate:
            return self._per_class(self.data.trusted_rows, rng)
        return np.concatenate([self._per_class(self._fit, rng), self._per_class(self._estimate, rng)])

    def _per_class(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        per_class = self.cfg.trusted_per_class
        if per_class <= 0:
            return rows  # the whole set, every iteration
        labels = self.data.labels[rows].cpu().numpy()
        picks = []
        for c in np.unique(labels):
            mine = rows[labels == c]
            picks.append(rng.choice(mine, size=per_class, replace=len(mine) < per_class))
        return np.concatenate(picks)

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows_t, rows_u = batch.trusted, batch.untrusted
        n_t = len(rows_t)
        x = self.trainer.inputs(batch)  # (B_t + B_u, C, H, W), trusted first
        detach = 0 if self.cfg.trusted_trains_features else n_t
        clean, noisy = self.trainer.model(x, both=True, detach_first=detach)  # (B_t + B_u, K), (B_t + B_u, H * K)
        noisy = noisy.float().view(len(x), self.heads, self.data.k)  # (B, H, K)
        clean_t, clean_u = clean[:n_t].float(), clean[n_t:].float()
        noisy_t, noisy_u = noisy[:n_t], noisy[n_t:]
        y_t = self.data.labels[rows_t]
        # Which trusted rows the cross-entropy fits and which estimate T̂: all of them both ways, or
        # (held_out_estimate) this epoch's two halves.
        fit = torch.as_tensor(
            ~np.isin(rows_t, self._estimate) if self.cfg.held_out_estimate else np.ones(n_t, bool), device=y_t.device
        )
        est = ~fit if self.cfg.held_out_estimate else fit
        rows_u_t = torch.as_tensor(rows_u, device=self.assigned.device)
        y_hat = self.assigned[rows_u_t]
        head_u = self.head_of_row[rows_u_t]

        with torch.no_grad():  # every head's T̂ from the same trusted batch
            p_noisy_t = torch.softmax(noisy_t[est], 2)
            self.t_hat = torch.stack(
                [
                    estimate_transition(p_noisy_t[:, h], y_t[est], self.data.k, fallback=self.t_hat[h])
                    for h in range(self.heads)
                ]
            )
            self._t_sum += self.t_hat
            self._t_count += 1

        p_u = torch.softmax(clean_u, 1)
        t_u = self.t_hat[head_u] if self.heads > 1 else self.t_hat[0]  # (B_u, K, K) or (K, K)
        loss_clean = 0.5 * F.cross_entropy(clean_t[fit], y_t[fit]) + 0.5 * forward_corrected_nll(p_u, t_u, y_hat).mean()
        own_noisy_u = noisy_u[torch.arange(len(rows_u), device=noisy_u.device), head_u]  # (B_u, K)
        loss_noisy = F.cross_entropy(own_noisy_u, y_hat)
        loss = loss_clean + self.cfg.noisy_weight * loss_noisy
        if self.cfg.consistency_weight > 0:
            loss = loss + self.cfg.consistency_weight * self._consistency(batch, p_u.detach())

        with torch.no_grad():  # the label this sample will be trained on at its next visit
            new = correct_labels(p_u.detach(), self.original[rows_u_t], self.cfg.rho)
            corrected_rows, corrected = self.trainer.ranks.gather_pairs(rows_u_t, new)  # every rank's batch slice
            self.assigned[corrected_rows] = corrected
        changed = int((new != self.original[rows_u_t]).sum())
        return loss, StepStats(loss=loss.item(), corrected=changed, seen=len(rows_u))

    def _consistency(self, batch: Batch, p_weak: torch.Tensor) -> torch.Tensor:
        """FixMatch on the untrusted images, labels ignored (seed 004): the weak view's confident
        prediction is the target for a strongly augmented view. (B_u, K) -> scalar."""
        confidence, target = p_weak.max(1)
        mask = (confidence >= self.cfg.pseudo_threshold).float()
        with running_stats_frozen(self.trainer.net):
            logits = self.trainer.model(self.trainer.inputs(batch, part="untrusted", strong=True)).float()
        return (F.cross_entropy(logits, target, reduction="none") * mask).mean()

    def end_epoch(self) -> float | None:
        rows = torch.as_tensor(self.data.untrusted_rows, device=self.assigned.device)
        return float((self.assigned[rows] != self.original[rows]).float().mean())

    def transition(self) -> np.ndarray | None:
        """The epoch's mean of the per-iteration estimates, pooled over heads by their items. (K, K)"""
        per_head = self.t_hat if self._t_count == 0 else self._t_sum / self._t_count  # (H, K, K)
        self.last_per_head = per_head.cpu().numpy()
        self._t_sum.zero_()
        self._t_count = 0
        rows = torch.as_tensor(self.data.untrusted_rows, device=self.head_of_row.device)
        weights = torch.bincount(self.head_of_row[rows], minlength=self.heads).float()
        weights = weights / weights.sum().clamp_min(1)
        return torch.einsum("h,hij->ij", weights, per_head).cpu().numpy()


def stratified_halves(rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split in two halves with each class divided between them as evenly as it goes (an odd
    one out goes to either half at random, so the halves stay the same size on average). (N,) -> two."""
    first, second = [], []
    for c in np.unique(labels):
        mine = rng.permutation(rows[labels == c])
        cut = len(mine) // 2 + (len(mine) % 2 and rng.random() < 0.5)
        first.append(mine[:cut])
        second.append(mine[cut:])
    return np.concatenate(first), np.concatenate(second)
