"""``crowd``: forward correction through each labeler's own transition matrix, estimated by EM.

Our method for streams where every label carries a ``labeler_id`` (docs/methods.md). FasTEN's single
``T̂`` mixes every labeler's noise into one matrix, and its per-iteration estimate rests on the trusted
set alone (a handful of images per class at 1%). Here each labeler with enough items gets a matrix
``T_l`` (the rest share a pooled one), re-estimated at the start of every epoch from ALL that labeler's
items by a few Dawid-Skene EM steps, with the network's clean-head probabilities as the prior:

- E: ``q_n(i) ∝ p(i | x_n) · T_l[i, ȳ_n]``, the posterior of item ``n``'s true class given its label;
- M: ``T_l[i, j] ∝ Σ_n q_n(i) [ȳ_n = j]`` (plus a small pseudo-count).

The loss is FasTEN's clean loss with the labeler's matrix: half cross-entropy on the whole trusted set
every iteration, half ``-log((T_lᵀ p)[ȳ])`` on the untrusted batch. Without a trusted set (two labelers with
enough rows needed, ``labelers_suffice``) the untrusted term is the whole loss. A spammer's ``T_l`` becomes
uniform, so its labels stop pulling; a confuser's shows its swapped pairs and is undone by them. Labels
are never rewritten, so nothing can cascade.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.items import pooled, row_items, with_checks
from labelaudit.training.methods.base import Batch, Method, StepStats, trusted_share
from labelaudit.training.methods.fasten import POOLED_GROUP, labeler_groups
from labelaudit.training.mixup import Mixup
from labelaudit.training.transition import forward_corrected_nll, mixed_forward_nll

EM_STEPS = 5
PSEUDO_COUNT = 1e-3


def em_transitions(
    probs: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    start: torch.Tensor,
    steps: int = EM_STEPS,
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dawid-Skene EM for per-group transition matrices with a fixed prior.

    ``probs`` (N, K) the model's clean probabilities; ``labels`` (N,) the given labels; ``groups`` (N,)
    each row's group in [0, H); ``start`` (H, K, K) the previous estimate; ``items`` (N,) rows that label
    one image share an index (the E step reads all its labels), None: one label per image. Returns (H, K, K).
    """
    h_count, k, _ = start.shape
    probs, t = probs.double(), start.double()
    onehot = F.one_hot(labels, k).double()  # (N, K)
    for _ in range(steps):
        q = probs * pooled(t[groups, :, labels], items)  # (N, K): p(i|x) Π T[i, ȳ] over the image's labels
        q = q / q.sum(1, keepdim=True).clamp_min(1e-12)
        joint = torch.zeros(h_count, k, k, dtype=torch.float64, device=probs.device)
        joint.index_add_(0, groups, q[:, :, None] * onehot[:, None, :])  # (H, K true, K given)
        joint += PSEUDO_COUNT
        t = joint / joint.sum(2, keepdim=True)
    return t.float()


def class_posterior(
    probs: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, items: torch.Tensor | None = None
) -> torch.Tensor:
    """Each item's true class given the network and what its labeler said: ``q(i) ∝ p(i) T[i, ȳ]``, from the
    network's ``probs`` (N, K) and each row's labeler matrix ``t`` (N, K, K); with ``items`` (N,), every
    label of the row's image: ``q(i) ∝ p(i) Π_a T_a[i, ȳ_a]``. (N, K) float64, rows summing to 1."""
    idx = torch.arange(len(labels), device=labels.device)
    q = probs.double() * pooled(t[idx, :, labels].double(), items)  # (N, K): p(i) T[i, ȳ_n]
    return q / q.sum(1, keepdim=True).clamp_min(1e-12)


def label_posterior(probs: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``q_n(ȳ_n)``: the posterior that item ``n``'s given label is its true class,
    ``p(ȳ) T[ȳ, ȳ] / Σ_i p(i) T[i, ȳ]``. (N,)"""
    return class_posterior(probs, t, labels)[torch.arange(len(labels), device=labels.device), labels].float()


def sharpen(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """``q^(1/temperature)``, rows renormalised (DivideMix's label refinement). (N, K) -> (N, K) float32."""
    q = q.clamp_min(1e-12) ** (1.0 / temperature)
    return (q / q.sum(1, keepdim=True)).float()


def sharpened_posterior(probs: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The class posterior, sharpened: the targets of ``posterior_weight``, with the labeler's matrix as the
    guide. ``probs`` (N, K), ``t`` (N, K, K), ``labels`` (N,) -> (N, K), rows summing to 1."""
    return sharpen(class_posterior(probs, t, labels), temperature)


def posterior_term(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of the network's ``logits`` (B, K) to fixed ``targets`` (B, K). (B,)"""
    return -(targets * torch.log_softmax(logits, 1)).sum(1)


TRIM_RAMP = 0.2  # trim_fraction: the share of the epochs over which the left-out share rises from 0 to its value


def small_loss_mean(losses: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of ``losses`` (B,) without the largest ``floor(fraction · B)`` of them (the small-loss trick of
    Co-teaching, Han et al., NeurIPS 2018: a wrong label the network has not fitted yet costs more than a
    right one, so the largest losses hold most of the wrong labels). Scalar; at least one loss is kept."""
    keep = max(1, len(losses) - int(fraction * len(losses)))
    return (losses if keep == len(losses) else torch.topk(losses, keep, largest=False).values).mean()


def initial_transitions(heads: int, k: int, device, diagonal: float = 0.5) -> torch.Tensor:
    """A start that trusts labels half the time: (H, K, K)."""
    t = torch.full((k, k), (1 - diagonal) / (k - 1), device=device)
    t.fill_diagonal_(diagonal)
    return t.repeat(heads, 1, 1)


class CrowdForward(Method):
    name = "crowd"
    needs_trusted = True
    needs_noisy_labels = True
    labelers_suffice = True  # the matrices come from EM over the labelers' rows, the trusted set is only a loss term
    settings = frozenset(
        {"posterior_weight", "posterior_temperature", "trim_fraction", "trusted_per_step", "trusted_weight"}
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        groups = labeler_groups(self.data.labeler_ids, self.data.untrusted_rows, self.cfg.min_labeler_items)
        index = {g: h for h, g in enumerate(groups)}
        device = self.data.labels.device
        self.groups = groups
        self.head_of_row = torch.as_tensor(
            [index.get(str(lid), index[POOLED_GROUP]) for lid in self.data.labeler_ids], device=device
        )
        self.t = initial_transitions(len(groups), self.data.k, device)  # (H, K, K)
        self.items = row_items(self.data.items, self.data.untrusted_rows, device)  # labels of one image
        self.doubted = np.empty(0, dtype=np.int64)
        self.targets = torch.zeros(len(self.data.labels), self.data.k, device=device)  # (N, K) posterior targets
        self.epoch = 0  # the current epoch, from 1 (trim_fraction's ramp)

    def refresh_transitions(self) -> None:
        """The E and M steps over every untrusted item, with the current network as the prior; and the
        items whose label the resulting posterior doubts."""
        rows = self.data.untrusted_rows
        rows_t = torch.as_tensor(rows, device=self.t.device)
        probs = with_checks(self.trainer.predict(rows), self.data.items, rows)  # a checked label is the truth
        labels, heads = self.data.labels[rows_t], self.head_of_row[rows_t]
        self.t = em_transitions(probs, labels, heads, self.t, items=self.items)
        q = class_posterior(probs, self.t[heads], labels, self.items)  # (N, K), once for both uses
        belief = q[torch.arange(len(rows), device=q.device), labels]  # (N,): q_n(ȳ_n)
        self.doubted = rows[(belief < self.cfg.doubt_threshold).cpu().numpy()]
        if self.cfg.posterior_weight > 0:
            self.targets[rows_t] = sharpen(q, self.cfg.posterior_temperature)

    def doubted_rows(self) -> np.ndarray:
        """Untrusted rows whose label has posterior below ``doubt_threshold`` given the network and the
        labeler's matrix (as of this epoch's EM)."""
        return self.doubted

    def rows(self) -> np.ndarray:
        return self.data.untrusted_rows

    def trusted_batch(self, rng: np.random.Generator) -> np.ndarray:
        return self.trusted_cycle(rng)  # the whole trusted set every step, up to trusted_per_step rows

    def start_epoch(self) -> None:
        self.epoch += 1
        self.refresh_transitions()  # once per epoch, before its first batch

    def trim_now(self) -> float:
        """This epoch's share of the largest untrusted losses left out: none in the first epoch, rising
        linearly to ``trim_fraction`` over the first ``TRIM_RAMP`` of the epochs (Co-teaching's schedule:
        early on the network has fitted no label, so the large losses are the hard images, not the wrong
        labels)."""
        ramp = max(1.0, TRIM_RAMP * self.cfg.epochs)
        return self.cfg.trim_fraction * min(1.0, (self.epoch - 1) / ramp)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows_t, rows_u = batch.trusted, batch.untrusted
        x = self.trainer.inputs(batch)  # (B_t + B_u, C, H, W), trusted first
        logits = self.trainer.model(x).float()
        y_t = self.data.labels[rows_t]
        rows_u_t = torch.as_tensor(rows_u, device=self.t.device)
        p_u = torch.softmax(logits[len(rows_t) :], 1)
        corrected = forward_corrected_nll(p_u, self.t[self.head_of_row[rows_u_t]], self.data.labels[rows_u_t])
        loss = self.combined(logits, y_t, corrected, lambda: self.targets[rows_u_t])
        return loss, StepStats(loss=loss.item(), seen=len(rows_u))

    def combined(
        self,
        logits: torch.Tensor,
        y_t: torch.Tensor,
        untrusted: torch.Tensor,
        targets: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The loss from the batch's ``logits`` (B_t + B_u, K), trusted rows first, their labels ``y_t``, and
        the untrusted rows' per-image losses ``untrusted`` (B_u,): blended toward the posterior ``targets()``
        (B_u, K) with ``posterior_weight``, the largest left out (``trim_fraction``), and the trusted rows' share
        (``trusted_weight``)."""
        n_t, w = len(y_t), self.cfg.posterior_weight
        if w > 0:  # toward the labeler-aware posterior, fixed for the epoch
            untrusted = (1 - w) * untrusted + w * posterior_term(logits[n_t:], targets())
        untrusted = small_loss_mean(untrusted, self.trim_now())
        return trusted_share(logits[:n_t], y_t, untrusted, self.cfg.trusted_weight)

    def transition(self) -> np.ndarray | None:
        """The labelers' matrices pooled by their item counts. (K, K)"""
        rows = torch.as_tensor(self.data.untrusted_rows, device=self.t.device)
        weights = torch.bincount(self.head_of_row[rows], minlength=len(self.groups)).float()
        return torch.einsum("h,hij->ij", weights / weights.sum().clamp_min(1), self.t).cpu().numpy()

    def labeler_transitions(self) -> dict[str, np.ndarray]:
        return {g: self.t[h].cpu().numpy() for h, g in enumerate(self.groups) if g != POOLED_GROUP}


class CrowdMix(CrowdForward):
    """``crowdmix``: ``crowd`` with mixup through the labelers' matrices (annot-mix, Herde et al., ECAI 2024).

    Each untrusted batch is mixed with a shuffled copy of itself, ``x̃ = λ x_a + (1 - λ) x_b`` with
    ``λ ~ Beta(α, α)`` per batch (``mixup_alpha``), and the loss takes both labels, each through its own
    labeler's EM matrix: ``λ · -log((T_aᵀ p(x̃))[ȳ_a]) + (1 - λ) · -log((T_bᵀ p(x̃))[ȳ_b])``. The trusted
    rows keep plain cross-entropy on unmixed images, as in ``crowd``. Mixing keeps the network from
    memorising single wrong labels late in training, which is where ``crowd`` (like ``ce``) decays.
    """

    name = "crowdmix"
    settings = CrowdForward.settings | {"mixup_alpha"}

    def __init__(self, trainer):
        super().__init__(trainer)
        self.mixup = Mixup(self.cfg.mixup_alpha, np.random.default_rng([self.cfg.seed, 7919]))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows_t, rows_u = batch.trusted, batch.untrusted
        n_t = len(rows_t)
        logits, lam, partner = self.mixup.logits(self.trainer, batch)
        rows_u_t = torch.as_tensor(rows_u, device=self.t.device)
        t_u, y_u = self.t[self.head_of_row[rows_u_t]], self.data.labels[rows_u_t]  # (B_u, K, K), (B_u,)
        p_u = torch.softmax(logits[n_t:], 1)
        mixed = mixed_forward_nll(p_u, t_u, y_u, t_u[partner], y_u[partner], lam)
        # the mixed image's posterior target: the two posteriors mixed like the images
        loss = self.combined(
            logits, self.data.labels[rows_t], mixed, lambda: self.mixup.mix(self.targets[rows_u_t], lam, partner)
        )
        return loss, StepStats(loss=loss.item(), seen=len(rows_u))
