"""A second round of training (``student_rounds``): Noisy Student with the labelers' matrices as the guide.

The first round (any method) leaves a network that is better than its labels: on issue 17's protocol
(40% labeler noise) ``crowd``'s network is right about 85% of its training images where the labels are
right 60% of the time, and the posterior that also reads each label through its labeler's habits is right
86% of the time (90% for the 91% of rows where it is at least 0.7 sure). Training again, from classifier A's
weights, on those beliefs instead of the raw labels is a cleaner task; the images without a label join in
with the first network's predictions as their targets. This is self-training (Noisy Student, Xie et al.,
CVPR 2020: the student is trained with noise, here the augmentation policy and mixup, on the teacher's
soft targets) with DivideMix's label refinement (the target of a labeled image is its posterior, not its
label).

The targets, from the teacher (the network as the first round left it, eval mode, no augmentation):

- a labeled row: its class posterior ``q(i) ∝ p(i | x) T_l[i, ȳ]``, where ``T_l`` is its labeler's transition
  matrix, fitted by Dawid-Skene EM over the labeler's rows with the teacher as the prior (labelers with fewer
  than ``min_labeler_items`` rows share one matrix);
- an unlabeled row: the teacher's ``p(· | x)``; its (absent) label is never read;
- a trusted row: its checked label, as in every method.

Rows whose target's largest probability is below ``student_threshold`` are left out of the round, and labeled
rows also where it is below ``student_labeled_threshold`` (when that is the stricter): a labeled row's target
is its label read through its labeler's habits, and where that posterior is unsure the label may be an error
the teacher shares (issue 17's probes: the instance-dependent labeler's posteriors were right less often than
the teacher alone), while an unlabeled row's target carries no label to mislead it; unlabeled rows also
where it is below ``student_unlabeled_threshold`` (when that is the stricter): an unlabeled row's target is the
teacher's guess alone, with no label to confirm it, and a stream may bring far more such images than labels. The
loss is
``-Σ_i target_i log p(i | x̃)`` on the mixed batch, the targets mixed like the images, and the trusted rows
enter it one of two ways (``student_trusted``):

- ``half``: ``crowdmix``'s shape, half cross-entropy on the whole trusted set (unmixed) every step, half the
  soft term. The first round needs that anchor (its matrices and its network start from nothing better);
- ``rows``: the trusted rows join the student's rows with their checked labels as one-hot targets, seen once
  an epoch and mixed like any row. The student's other targets are already the first round's best beliefs,
  and a few dozen images fitted every step pull a network towards themselves (issue 17's probes: a student
  given every row's true class came closer to the oracle with ``rows``; with the real targets the whole
  protocol runs put it ahead on two seeds of three and behind on one, docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.training.items import NO_CHECK, row_items, with_checks
from labelaudit.training.methods.base import Batch, Method, StepStats, trusted_share
from labelaudit.training.methods.crowd import class_posterior, posterior_term
from labelaudit.training.methods.fasten import POOLED_GROUP, labeler_groups
from labelaudit.training.mixup import Mixup
from labelaudit.training.semi import EmaTeacher
from labelaudit.training.transition import labeler_transition_matrices

if TYPE_CHECKING:
    from labelaudit.schemas.model_card import EpochMetrics
    from labelaudit.training.config import TrainConfig
    from labelaudit.training.train import Trainer

STUDENT_EM_STEPS = 50  # Dawid-Skene steps behind the targets' labeler matrices


@torch.no_grad()
def teacher_targets(
    trainer: Trainer, teacher: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """The rows a student round trains on (untrusted and unlabeled, in that order) and their targets
    (len(rows), K). ``teacher``: the untrusted and the unlabeled rows' probabilities, when they come from
    elsewhere (``crossfit_probabilities``); by default ``trainer``'s network as it stands predicts them."""
    data, cfg = trainer.data, trainer.cfg
    rows_l, rows_x = data.untrusted_rows, data.unlabeled_rows
    labels = data.labels[torch.as_tensor(rows_l, device=data.labels.device)]
    if teacher is None:
        empty = torch.empty(0, data.k, device=trainer.device)
        teacher = (trainer.predict(rows_l), trainer.predict(rows_x) if len(rows_x) else empty)
    probs, p_x = teacher  # (N_l, K), (N_x, K)
    if len(rows_l) == 0:  # trusted labels only: the student learns the unlabeled rows from the teacher
        return rows_x.astype(np.int64), p_x
    groups = set(labeler_groups(data.labeler_ids, rows_l, cfg.min_labeler_items))
    group_of = np.array([g if g in groups else POOLED_GROUP for g in data.labeler_ids[rows_l].astype(str)])
    probs = with_checks(probs, data.items, rows_l)  # an image's checked label is its truth
    image = None if data.items is None else data.items.of_row[rows_l]  # rows labeling one image read together
    matrices, _ = labeler_transition_matrices(
        probs.double().cpu().numpy(), labels.cpu().numpy(), group_of, data.k, em_steps=STUDENT_EM_STEPS, items=image
    )
    names = sorted(matrices)
    head = torch.as_tensor(np.searchsorted(names, group_of), device=probs.device)  # each row's matrix
    t = torch.as_tensor(np.stack([matrices[g] for g in names]), device=probs.device)[head]  # (N_l, K, K)
    q = class_posterior(probs, t, labels, row_items(data.items, rows_l, probs.device)).float()
    if data.items is not None:  # one row per image (its target already reads all its labels), none checked
        keep = np.isin(rows_l, data.items.rows_first(rows_l)) & (data.items.checked[rows_l] == NO_CHECK)
        rows_l, q = rows_l[keep], q[torch.as_tensor(keep, device=q.device)]
    return np.concatenate([rows_l, rows_x]).astype(np.int64), torch.cat([q, p_x])


def crossfit_probabilities(
    trainer: Trainer, make_method: Callable[[Trainer], Method], folds: int
) -> tuple[torch.Tensor, torch.Tensor, list[EpochMetrics]]:
    """Teacher probabilities no row's own label shaped (``student_crossfit``): the untrusted rows are split
    into ``folds`` random folds; for each, a network is trained from classifier A by ``make_method`` on the
    other folds (the trusted rows always in) and predicts the fold, and every fold's network predicts the
    unlabeled rows (averaged). Returns those (N_untrusted, K) and (N_unlabeled, K) probabilities and the
    folds' epochs. A network trained on a row's label partly memorises it, wrong or right; its belief about
    that row then repeats the label, and reading the label again through the labeler's matrix counts the
    same evidence twice. A network that never saw the label gives the posterior two independent views."""
    data = trainer.data
    rows_l, rows_x = data.untrusted_rows, data.unlabeled_rows
    # folds by image: no fold's network has seen another label of an image it predicts
    image = np.arange(len(rows_l))
    if data.items is not None:
        image = np.unique(data.items.of_row[rows_l], return_inverse=True)[1]
    fold_of_image = np.random.default_rng([trainer.cfg.seed, 7919]).permutation(image.max(initial=-1) + 1) % folds
    fold_of = fold_of_image[image]
    probs_l = torch.zeros(len(rows_l), data.k, device=trainer.device)
    probs_x = torch.zeros(len(rows_x), data.k, device=trainer.device)
    history: list[EpochMetrics] = []
    try:
        for fold in range(folds):
            held = rows_l[fold_of == fold]
            trainer.data = replace(
                data, untrusted_rows=rows_l[fold_of != fold], train_rows=np.setdiff1d(data.train_rows, held)
            )
            trainer.restart_from_init()
            if trainer.semi is not None:
                trainer.semi = EmaTeacher(trainer)  # its averaged weights start again from classifier A's
            method = make_method(trainer)
            method.prepare()
            history += trainer.fit(method, phase=f"{trainer.cfg.method} fold {fold + 1}/{folds}")
            probs_l[torch.as_tensor(fold_of == fold, device=trainer.device)] = trainer.predict(held)
            if len(rows_x):
                probs_x += trainer.predict(rows_x) / folds
    finally:
        trainer.data = data
    return probs_l, probs_x, history


def student_bars(cfg: TrainConfig) -> dict[str, float]:
    """The top target probability a row needs to train in a student round, by kind: labeled, unlabeled."""
    return {
        "labeled": max(cfg.student_threshold, cfg.student_labeled_threshold),
        "unlabeled": max(cfg.student_threshold, cfg.student_unlabeled_threshold),
    }


class Student(Method):
    """One student round over ``rows`` with their ``targets`` (N_rows, K) (``teacher_targets``)."""

    name = "student"

    def __init__(self, trainer: Trainer, rows: np.ndarray, targets: torch.Tensor):
        super().__init__(trainer)
        labeled = ~np.isin(rows, self.data.unlabeled_rows)  # the untrusted rows, targets from their labels
        cfg = self.cfg
        self.bars = student_bars(cfg)
        bar = np.where(labeled, self.bars["labeled"], self.bars["unlabeled"])
        keep = targets.max(1).values.cpu().numpy() >= bar
        # A weak teacher, unsure everywhere: every row rather than none, except the kinds held to a bar of 1 (an
        # explicit "only certain targets", such as no unlabeled rows at all: never waived).
        self.threshold_waived = not keep.any()
        if self.threshold_waived:
            keep = bar < 1
        self.counts = {"labeled": (int((keep & labeled).sum()), int(labeled.sum()))}
        self.counts["unlabeled"] = (int((keep & ~labeled).sum()), int((~labeled).sum()))
        self.kept = rows[keep]
        self.targets = torch.zeros(len(self.data.labels), self.data.k, device=targets.device)  # (N, K) by row
        self.targets[torch.as_tensor(rows, device=targets.device)] = targets
        self.trusted_as_rows = cfg.student_trusted == "rows" and len(self.data.trusted_rows) > 0
        if not len(self.kept) and not self.trusted_as_rows:
            raise ValueError(
                f"student round: no row can train: {self._below()}, and a bar of 1 is never waived; lower "
                "student_labeled_threshold or student_unlabeled_threshold, or train the trusted rows as rows "
                "(student_trusted=rows)"
            )
        if self.trusted_as_rows:  # their checked labels, one-hot, among the other rows' targets
            trusted = torch.as_tensor(self.data.trusted_rows, device=targets.device)
            checked = self.data.labels[torch.as_tensor(self.data.trusted_rows, device=self.data.labels.device)]
            self.targets[trusted] = F.one_hot(checked.to(targets.device), self.data.k).float()
            self.kept = np.concatenate([self.kept, self.data.trusted_rows])
        self.mixup = Mixup(self.cfg.mixup_alpha, np.random.default_rng([self.cfg.seed, 104729]))

    def describe_kept(self) -> str:
        """Which rows train, for the run's output: ``4277 of 4950 labeled rows (target >= 0.8), ...``."""
        kinds = {kind: counts for kind, counts in self.counts.items() if counts[1]}
        trusted = (
            [f"the {len(self.data.trusted_rows)} trusted rows (their checked labels)"] if self.trusted_as_rows else []
        )
        if self.threshold_waived:  # every row of the kinds whose bar is below 1
            waived = [kind for kind, (kept, _) in kinds.items() if kept]
            who = ["every row"] if len(waived) == len(kinds) else [f"every {kind} row" for kind in waived]
            who += trusted
            verb = "trains" if len(who) == 1 and who[0].startswith("every") else "train"
            return f"{self._below()}, so {' and '.join(who)} {verb}"
        parts = [f"{kept} of {n} {kind} rows (target >= {self.bars[kind]})" for kind, (kept, n) in kinds.items()]
        return ", ".join(parts + trusted) + " train"

    def _below(self) -> str:
        below = " or ".join(f"{kind} >= {self.bars[kind]}" for kind, (_, n) in self.counts.items() if n)
        return f"no row's target reaches its bar ({below})"

    def rows(self) -> np.ndarray:
        """The labeled and unlabeled rows whose target is sure enough (their targets, not their labels)."""
        return self.kept

    def trusted_batch(self, rng: np.random.Generator) -> np.ndarray:
        """``student_trusted="half"``: the whole trusted set every step (up to ``trusted_per_step`` rows, cycling);
        ``"rows"``: none (they are among the rows)."""
        return np.empty(0, dtype=np.int64) if self.trusted_as_rows else self.trusted_cycle(rng)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        rows_t, rows_u = batch.trusted, batch.untrusted
        n_t = len(rows_t)
        logits, lam, partner = self.mixup.logits(self.trainer, batch)
        q = self.targets[torch.as_tensor(rows_u, device=self.targets.device)]
        soft = posterior_term(logits[n_t:], self.mixup.mix(q, lam, partner)).mean()
        loss = trusted_share(logits[:n_t], self.data.labels[rows_t], soft, self.cfg.trusted_weight)
        return loss, StepStats(loss=loss.item(), seen=len(rows_u))
