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
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method, StepStats
from labelaudit.training.transition import correct_labels, estimate_transition, forward_corrected_nll


class FasTEN(Method):
    name = "fasten"
    needs_trusted = True

    def __init__(self, trainer):
        super().__init__(trainer)
        k, device = self.data.k, self.data.labels.device
        self.original = self.data.labels.clone()  # never modified
        self.assigned = self.data.labels.clone()  # ŷ for the next visit; only untrusted rows change
        self.t_hat = torch.eye(k, device=device)
        self._t_sum = torch.zeros(k, k, device=device)
        self._t_count = 0

    # -- batches ---------------------------------------------------------------------------------
    def _trusted_batch(self, rng: np.random.Generator) -> np.ndarray:
        rows = self.data.trusted_rows
        per_class = self.cfg.trusted_per_class
        if per_class <= 0:
            return rows  # the whole trusted set, every iteration
        labels = self.data.labels[rows].cpu().numpy()
        picks = []
        for c in np.unique(labels):
            mine = rows[labels == c]
            picks.append(rng.choice(mine, size=per_class, replace=len(mine) < per_class))
        return np.concatenate(picks)

    def batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        rows = rng.permutation(self.data.untrusted_rows)
        for start in range(0, len(rows), self.cfg.batch_size):
            yield Batch(untrusted=rows[start : start + self.cfg.batch_size], trusted=self._trusted_batch(rng))

    def steps_per_epoch(self) -> int:
        return -(-len(self.data.untrusted_rows) // self.cfg.batch_size)

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows_t, rows_u = batch.trusted, batch.untrusted
        n_t = len(rows_t)
        x = torch.cat([self.trainer.inputs(rows_t), self.trainer.inputs(rows_u)])
        clean, noisy = self.trainer.net.forward_both(x)  # (B_t + B_u, K) each
        clean_t, clean_u = clean[:n_t].float(), clean[n_t:].float()
        noisy_t, noisy_u = noisy[:n_t].float(), noisy[n_t:].float()
        y_t = self.data.labels[rows_t]
        y_hat = self.assigned[rows_u]

        with torch.no_grad():
            self.t_hat = estimate_transition(torch.softmax(noisy_t, 1), y_t, self.data.k, fallback=self.t_hat)
            self._t_sum += self.t_hat
            self._t_count += 1

        p_u = torch.softmax(clean_u, 1)
        loss_clean = 0.5 * F.cross_entropy(clean_t, y_t) + 0.5 * forward_corrected_nll(p_u, self.t_hat, y_hat).mean()
        loss_noisy = F.cross_entropy(noisy_u, y_hat)
        loss = loss_clean + self.cfg.noisy_weight * loss_noisy

        with torch.no_grad():  # the label this sample will be trained on at its next visit
            rows_u_t = torch.as_tensor(rows_u, device=self.assigned.device)
            new = correct_labels(p_u.detach(), self.original[rows_u_t], self.cfg.rho)
            self.assigned[rows_u_t] = new
        changed = int((new != self.original[rows_u_t]).sum())
        return loss, StepStats(loss=loss.item(), corrected=changed, seen=len(rows_u))

    def end_epoch(self) -> float | None:
        rows = torch.as_tensor(self.data.untrusted_rows, device=self.assigned.device)
        return float((self.assigned[rows] != self.original[rows]).float().mean())

    def transition(self) -> np.ndarray | None:
        """The epoch's mean of the per-iteration estimates."""
        if self._t_count == 0:
            return self.t_hat.cpu().numpy()
        mean = (self._t_sum / self._t_count).cpu().numpy()
        self._t_sum.zero_()
        self._t_count = 0
        return mean
