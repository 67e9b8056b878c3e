"""Fine-tune classifier A on task B's noisy labels with a noise-robust method. Reads top to bottom:

config -> classifier A (a checkpoint, or a torchvision/timm network from the user's weights) -> data
(the manifest's labels in memory; images through the loader, at the model card's preprocessing) ->
network (A's backbone, task B's classes mapped onto A's by name, or scratch) -> the method's epochs, each
reporting clean held-out accuracy, trusted accuracy, the estimated transition matrix and where the time
went (loader vs step) -> final numbers (thresholds for the audit, per-labeler matrices, the export
gate) -> checkpoint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import UNLABELED, Manifest, load_pixels, read_manifest, row_pixels, with_held_out
from labelaudit.schemas.model_card import EpochMetrics, GateResult, ModelMetrics, PreprocessSpec
from labelaudit.training import distributed
from labelaudit.training.augment import AUGMENTATIONS, augment, strong_augment
from labelaudit.training.backbones import split_arch
from labelaudit.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from labelaudit.training.classifier_a import ClassifierA, load_classifier_a, map_classes, start_clean_head
from labelaudit.training.config import TrainConfig, out_of_range, unknown_choice
from labelaudit.training.distributed import Ranks
from labelaudit.training.items import Items, find_items, with_checks
from labelaudit.training.loader import ImageLoader, TensorImages, loader_mode
from labelaudit.training.methods import METHODS, Method, ignored_settings
from labelaudit.training.methods.auto import choose_method, with_choice
from labelaudit.training.methods.base import Batch, labelers_with_matrices
from labelaudit.training.methods.fasten import labeler_groups
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.semi import EmaTeacher
from labelaudit.training.student import Student, crossfit_probabilities, student_bars, teacher_targets
from labelaudit.training.transition import (
    confusion_counts,
    labeler_error_rates,
    labeler_transition_matrices,
    per_class_thresholds,
)

LABELER_EM_STEPS = 200  # Dawid-Skene steps behind the card's labeler matrices (labeler-posterior-v1 reads them)


class Reporter(Protocol):
    """Where progress goes (the CLI draws rich progress bars; library code never prints)."""

    def phase(self, name: str, total_steps: int) -> None: ...
    def advance(self, loss: float) -> None: ...
    def epoch(self, metrics: EpochMetrics) -> None: ...
    def note(self, text: str) -> None: ...


class SilentReporter:
    def phase(self, name: str, total_steps: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass

    def epoch(self, metrics: EpochMetrics) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class TaskData:
    """The task: per-row columns on the training device, images through ``images``. ``labels`` (N,) the
    labels training may use (labelers' for untrusted rows, checked for trusted and held-out rows); rows
    index the manifest."""

    images: ImageLoader | TensorImages
    labels: torch.Tensor
    is_trusted: torch.Tensor
    k: int
    train_rows: np.ndarray
    trusted_rows: np.ndarray
    untrusted_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    labeler_ids: np.ndarray
    unlabeled_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # label: UNLABELED
    noisy_groups: list[str] = field(default_factory=lambda: ["*"])  # labeler group of each noisy head
    items: Items | None = None  # which rows label one image (training.items); None: one label per image
    spec: PreprocessSpec | None = None  # how uint8 pixels are normalised; None: ``images`` gives model inputs


@dataclass
class TrainResult:
    checkpoint: Path
    meta: CheckpointMeta
    history: list[EpochMetrics] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Owns the network, the data and the loop; methods supply batch plans and losses."""

    def __init__(
        self,
        cfg: TrainConfig,
        net: TwoHeadNet,
        data: TaskData,
        reporter: Reporter,
        device: torch.device | None = None,
        ranks: Ranks | None = None,
    ):
        device = device or pick_device(cfg.device)
        self.cfg, self.net, self.data, self.reporter, self.device = cfg, net, data, reporter, device
        self.ranks = ranks or Ranks()
        self.init_state = copy.deepcopy(net.state_dict())
        self.rng = np.random.default_rng(cfg.seed)
        stats = (data.spec.mean, data.spec.std) if data.spec is not None else ((0.0,), (1.0,))
        self.mean, self.std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in stats)
        # bf16 autocast and channels_last: the CUDA path; ``precision="bf16"`` takes it on CPU too, so
        # that the mixed-precision code runs in CI, where there is no GPU.
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        if self.autocast:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = distributed.wrap(self.net, self.ranks, device)  # what training steps call (DDP or the net)
        self.semi = EmaTeacher(self) if cfg.unlabeled_weight > 0 else None  # semi-supervised (training.semi)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) uint8 -> (B, C, H, W) float32 on the device, normalised exactly as
        ``labelaudit.imaging.preprocess.normalize`` does (same float32 operations, same order).
        Float tensors are model inputs already (``TensorImages``) and only move to the device."""
        if pixels.dtype != torch.uint8:
            return pixels.to(self.device)
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def load(self, batch: Batch) -> Batch:
        """Load a batch's images outside ``fit``'s prefetching loop (direct calls of a method's loss)."""
        fetched = next(iter(self.data.images.batches([batch.rows], purpose="eval")))
        batch.x = self.to_inputs(fetched.pixels)
        return batch

    def inputs(self, batch: Batch, *, part: str = "labeled", strong: bool = False) -> torch.Tensor:
        """The batch's inputs, augmented while training. ``part``: labeled (trusted rows, then untrusted) |
        trusted | untrusted | unlabeled; ``strong``: a FixMatch-style strong view instead of the policy's."""
        if batch.x is None:
            self.load(batch)
        n_t, n_l = len(batch.trusted), len(batch.trusted) + len(batch.untrusted)
        parts = {
            "labeled": slice(0, n_l),
            "trusted": slice(0, n_t),
            "untrusted": slice(n_t, n_l),
            "unlabeled": slice(n_l, None),
        }
        x = batch.x[parts[part]]
        if strong:
            x = strong_augment(x, flip="flip" in self.cfg.augment)
        elif self.net.training:
            x = augment(x, self.cfg.augment)
        return x.contiguous(memory_format=torch.channels_last) if self.autocast else x

    @torch.no_grad()
    def predict(self, rows: np.ndarray, batch: int = 512) -> torch.Tensor:
        """Clean-head probabilities (len(rows), K), eval mode, no augmentation, images streamed. With
        several processes each predicts its slice of ``rows`` and every rank gets them all."""
        was_training = self.net.training
        self.net.eval()
        mine = self.ranks.shard(rows)
        plan = [mine[i : i + batch] for i in range(0, len(mine), batch)]
        out = []
        for fetched in self.data.images.batches(plan, purpose="eval"):
            x = self.to_inputs(fetched.pixels)
            x = x.contiguous(memory_format=torch.channels_last) if self.autocast else x
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.net(x)
            out.append(torch.softmax(logits.float(), 1))
        self.net.train(was_training)
        local = torch.cat(out) if out else torch.empty(0, self.data.k, device=self.device)
        return self.ranks.gather_rows(local, len(rows))

    def accuracy(self, rows: np.ndarray) -> float | None:
        if len(rows) == 0:
            return None
        return float((self.predict(rows).argmax(1) == self.data.labels[rows]).float().mean())

    def restart_from_init(self) -> None:
        self.net.load_state_dict(self.init_state)

    def _optimizer(self, total_steps: int):
        decay = [p for n, p in self.net.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.net.named_parameters() if p.ndim <= 1]
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            nesterov=True,
        )
        warmup = max(1, int(self.cfg.warmup_epochs * total_steps / max(1, self.cfg.epochs)))

        def factor(step: int) -> float:  # linear warm-up, then cosine to zero
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total_steps - warmup)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def fit(self, method: Method, *, phase: str) -> list[EpochMetrics]:
        """Run ``cfg.epochs`` epochs of ``method`` from the current weights."""
        steps = method.steps_per_epoch()
        opt, sched = self._optimizer(self.cfg.epochs * steps)
        history = []
        for epoch in range(1, self.cfg.epochs + 1):
            method.start_epoch()
            self.model.train()  # the DDP wrapper too, when there is one
            plan = [self._my_slice(b) for b in method.batches(self.rng) if len(b.untrusted) >= self.ranks.world]
            if self.semi is not None:
                self.semi.refresh_pool(method)
                plan = [self.semi.attach(b) for b in plan]
            self.reporter.phase(f"{phase} epoch {epoch}/{self.cfg.epochs}", len(plan))
            started, losses, seen, step_s, load_s = time.perf_counter(), [], 0, 0.0, 0.0
            fetched_all = self.data.images.batches([b.rows for b in plan])
            for batch, fetched in zip(plan, fetched_all, strict=True):
                step_started = time.perf_counter()
                batch.x = self.to_inputs(fetched.pixels)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss, stats = method.loss(batch)
                    if self.semi is not None:
                        loss = loss + self.semi.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if self.semi is not None:
                    self.semi.update()
                batch.x = None
                losses.append(stats.loss)  # .item() inside the loss waited for the device: the time is real
                seen += len(batch.trusted) + len(batch.untrusted) * self.ranks.world  # the global batch
                step_s += time.perf_counter() - step_started
                load_s += fetched.seconds
                self.reporter.advance(stats.loss)
            seconds = time.perf_counter() - started
            m = self._epoch_metrics(method, epoch, losses, sched, seconds, seen, step_s, load_s)
            self.reporter.epoch(m)
            history.append(m)
        return history

    def _my_slice(self, batch: Batch) -> Batch:
        """This rank's part of a global batch: its slice of the untrusted rows, all the trusted rows."""
        return (
            batch
            if not self.ranks.active
            else Batch(untrusted=self.ranks.shard(batch.untrusted), trusted=batch.trusted)
        )

    def _epoch_metrics(self, method, epoch, losses, sched, seconds, seen, step_s, load_s) -> EpochMetrics:
        corrected = method.end_epoch()
        t = method.transition()
        decoders = max(1, self.data.images.workers)
        return EpochMetrics(
            epoch=epoch,
            train_loss=float(np.mean(losses)),
            val_acc=self.accuracy(self.data.val_rows),
            trusted_acc=self.accuracy(self.data.trusted_rows) or 0.0,
            lr=sched.get_last_lr()[0],
            seconds=seconds,
            images_per_s=seen / max(seconds, 1e-9),
            corrected_fraction=corrected,
            step_images_per_s=seen / max(step_s, 1e-9),
            loader_images_per_s=seen * decoders / max(load_s, 1e-9),
            transition_matrix=None if t is None else np.round(t, 4).tolist(),
            pseudo_labeled_fraction=None if self.semi is None else self.semi.end_epoch(),
        )


# -- data and network ------------------------------------------------------------------------------


MEAN_STD_SAMPLE = 2000  # streamed data: images the from-scratch mean and std are measured on


def infer_spec(manifest: Manifest, pixels_mean_std: tuple[float, float] | None, cfg: TrainConfig) -> PreprocessSpec:
    """From scratch: size and channels from the first image (or the config), mean/std from the data."""
    from labelaudit.imaging.preprocess import load_image

    first = load_image(str(manifest.image_path(0)))
    torchvision = split_arch(cfg.arch)[0] == "torchvision"  # its first convolution takes 3 channels
    grey = first.mode in ("L", "I;16", "I", "F", "1", "LA")
    channels = cfg.channels or (1 if grey and not torchvision else 3)
    h = w = cfg.image_size or max(first.size)
    mean, std = pixels_mean_std or (0.5, 0.25)
    return PreprocessSpec(height=h, width=w, channels=channels, mean=(mean,) * channels, std=(std,) * channels)


def data_spec(manifest: Manifest, cfg: TrainConfig, progress=None) -> PreprocessSpec:
    """From scratch: the spec of the first image, with mean and std measured on the data (all of it when
    it fits the pixel cache, which this fills, else a random sample of ``MEAN_STD_SAMPLE`` images)."""
    spec = infer_spec(manifest, None, cfg)
    if loader_mode(cfg.loader, len(manifest), spec, cfg.memory_budget_mb) == "memory":
        pixels = load_pixels(manifest, spec, progress=progress)
    else:
        rows = np.random.default_rng(cfg.seed).permutation(len(manifest))[:MEAN_STD_SAMPLE]
        pixels = np.stack([row_pixels(manifest, int(r), spec) for r in np.sort(rows)])
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, len(pixels), 4096):  # in chunks: a memory-mapped cache is never read whole
        chunk = np.asarray(pixels[start : start + 4096], dtype=np.float64) / 255.0
        total, squares, count = total + chunk.sum(), squares + (chunk**2).sum(), count + chunk.size
    mean = total / count
    return infer_spec(manifest, (float(mean), float(np.sqrt(max(squares / count - mean**2, 1e-12)))), cfg)


def _rows(manifest: Manifest) -> dict[str, np.ndarray]:
    """Row indices by role: ``train`` the labeled training rows (``trusted`` and ``untrusted``), ``unlabeled``
    the training images without a label (only the semi-supervised option reads them), ``val``, ``test``."""
    train = manifest.mask(split="train", labeled=True)
    trusted = manifest.mask(split="train", trusted=True)
    return {
        "train": np.flatnonzero(train),
        "trusted": np.flatnonzero(trusted),
        "untrusted": np.flatnonzero(train & ~trusted),
        "unlabeled": np.flatnonzero(manifest.mask(split="train", labeled=False)),
        "val": np.flatnonzero(manifest.mask(split="val")),
        "test": np.flatnonzero(manifest.mask(split="test")),
    }


def open_images(
    manifest: Manifest, spec: PreprocessSpec, cfg: TrainConfig, device: torch.device, progress=None
) -> ImageLoader:
    """The loader for this run; the trusted rows, which ride in many batches, stay decoded in memory."""
    return ImageLoader(
        manifest,
        spec,
        mode=cfg.loader,
        workers=cfg.workers,
        memory_budget_mb=cfg.memory_budget_mb,
        resident=_rows(manifest)["trusted"],
        pin_memory=device.type == "cuda",
        progress=progress,
    )


def load_task(manifest: Manifest, images: ImageLoader, cfg: TrainConfig, device: torch.device) -> TaskData:
    labels = manifest.labels
    if cfg.label_source == "true_label":
        truth = manifest.true_labels()
        if truth is None:
            raise ManifestError(f"{manifest.path.name}: label_source=true_label needs true_label on every row")
        labels = np.where(labels == UNLABELED, UNLABELED, truth)  # the oracle: clean labels, not more of them
    rows = _rows(manifest)
    is_trusted = np.zeros(len(labels), dtype=bool)
    is_trusted[rows["trusted"]] = True
    return TaskData(
        images=images,
        spec=images.dataset.spec,
        labels=torch.as_tensor(labels, device=device),
        is_trusted=torch.as_tensor(is_trusted, device=device),
        k=len(manifest.classes),
        train_rows=rows["train"],
        trusted_rows=rows["trusted"],
        untrusted_rows=rows["untrusted"],
        unlabeled_rows=rows["unlabeled"],
        val_rows=rows["val"],
        test_rows=rows["test"],
        labeler_ids=manifest.labeler_ids,
        items=find_items(manifest.item_ids, labels, is_trusted),
    )


def _gate(initial: float | None, final: float, init_name: str) -> GateResult:
    if initial is None:
        return GateResult(
            passed=True,
            metric="trusted_acc",
            initial=None,
            final=final,
            reason=f"trained from {init_name}: no starting model to compare against",
        )
    passed = final >= initial
    verdict = "at least as good as" if passed else "WORSE than"
    return GateResult(
        passed=passed,
        metric="trusted_acc",
        initial=initial,
        final=final,
        reason=f"trusted-set accuracy {final:.4f} is {verdict} the starting model's {initial:.4f}",
    )


# -- the run ---------------------------------------------------------------------------------------


def train(
    manifest_path: str | Path,
    *,
    init: str | Path | None,
    out: str | Path,
    cfg: TrainConfig,
    reporter: Reporter | None = None,
    pixel_progress=None,
    init_classes: Path | None = None,
    preprocess: dict[str, Any] | None = None,
    val_manifest: Path | None = None,
    test_manifest: Path | None = None,
) -> TrainResult:
    """Train with ``cfg.method`` from classifier A or from scratch (``init`` None).

    ``init``: a labelaudit checkpoint, ``torchvision:<arch>=<weights>`` or ``timm:<arch>=<weights>``
    (``training.classifier_a``); ``init_classes``: A's class names, when not beside its weights;
    ``preprocess``: PreprocessSpec fields overriding what A's architecture implies;
    ``val_manifest``/``test_manifest``: clean held-out images in their own files (added as those splits).
    """
    _check_config(cfg)
    ranks, rank_device, created = distributed.start(cfg.device)
    reporter = (reporter or SilentReporter()) if ranks.is_main else SilentReporter()
    torch.manual_seed(cfg.seed)
    device = rank_device or pick_device(cfg.device)
    method_cls = None if cfg.method == "auto" else METHODS[cfg.method]  # auto: chosen once the data is read
    if ranks.active and (cfg.consistency_weight > 0 or cfg.unlabeled_weight > 0):
        raise ValueError(
            "consistency_weight and unlabeled_weight (a second forward pass per step) are not supported with "
            "several processes"
        )
    try:
        held_out = {"val": val_manifest, "test": test_manifest}
        return _train(
            manifest_path,
            init,
            Path(out),
            cfg,
            reporter,
            pixel_progress,
            init_classes,
            preprocess,
            ranks,
            device,
            method_cls,
            held_out,
        )
    finally:
        if created:
            distributed.stop()


def _check_rows_for(manifest: Manifest, method_cls: type[Method], cfg: TrainConfig) -> None:
    """The rows ``method_cls`` needs, or a clear refusal. Labeled training rows at all; rows labeled by
    labelers for a method that models their noise (``needs_noisy_labels``); a trusted set for a method that
    needs one, unless labelers stand in for it (``labelers_suffice``: ``crowd``, whose matrices come from EM
    over each labeler's rows) and two of them have ``min_labeler_items`` labels; and rows for a student round
    to train on. Runs after ``auto``, so its choice is checked too."""
    train_rows = manifest.mask(split="train")
    trusted = manifest.trusted[train_rows]
    labeled = manifest.mask(split="train", labeled=True)[train_rows]
    if not labeled.any():
        raise ManifestError(f'{manifest.path.name}: no labeled training rows ("split": "train" with a "label")')
    if method_cls.needs_noisy_labels and not (labeled & ~trusted).any():
        raise ManifestError(
            f"{manifest.path.name}: every labeled training row is trusted; {method_cls.name} models the labelers' "
            "noise and has no labeler's label to read it from (ce, or auto, trains on the trusted rows)"
        )
    if cfg.student_rounds and trusted.all():
        raise ManifestError(
            f"{manifest.path.name}: student_rounds needs rows to train the student on (labeled by labelers, or "
            "without a label); every training row is trusted"
        )
    if cfg.student_rounds and cfg.student_trusted != "rows":
        bars = student_bars(cfg)
        kinds = {"labeled": labeled & ~trusted, "unlabeled": ~labeled}
        present = [kind for kind, rows in kinds.items() if rows.any()]
        if present and all(bars[k] >= 1 for k in present):
            held = " and ".join(f"{kind} rows (bar {bars[kind]})" for kind in present)
            raise ManifestError(
                f"{manifest.path.name}: the student round would train on no row: its {held} are held to a bar of "
                "1, only targets the teacher is certain of; lower the bar, or train the trusted rows as rows "
                "(student_trusted=rows)"
            )
    if not method_cls.needs_trusted or trusted.any():
        return
    where = f'{manifest.path.name}: no trusted training rows ("trusted": true, "split": "train")'
    if not method_cls.labelers_suffice:
        raise ManifestError(f"{where}; {method_cls.name} needs the small hand-checked set")
    noisy = np.flatnonzero(labeled & ~trusted)
    labelers = labelers_with_matrices(manifest.labeler_ids[train_rows], noisy, cfg.min_labeler_items)
    if len(labelers) < 2:
        raise ManifestError(
            f"{where} and {len(labelers)} labeler(s) with at least {cfg.min_labeler_items} labels "
            f"(min_labeler_items); {method_cls.name} needs the small hand-checked set, or two labelers whose "
            "matrices EM can fit"
        )


def _train(
    manifest_path,
    init,
    out,
    cfg,
    reporter,
    pixel_progress,
    init_classes,
    preprocess,
    ranks,
    device,
    method_cls,
    held_out,
) -> TrainResult:

    # 1. classifier A, and task B's data: classes mapped onto A's by name, A's preprocessing
    a = None if init is None else load_classifier_a(str(init), classes_file=init_classes, preprocess=preprocess)
    manifest = read_manifest(
        manifest_path,
        fallback_classes=None if a is None else a.classes,
    )
    if method_cls is None:
        train_rows = manifest.mask(split="train")
        choice = choose_method(
            trusted=manifest.trusted[train_rows],
            labeled=manifest.mask(split="train", labeled=True)[train_rows],
            labeler_ids=manifest.labeler_ids[train_rows],
            classes=len(manifest.classes),
            min_labeler_items=cfg.min_labeler_items,
        )
        cfg = with_choice(cfg, choice)
        method_cls = METHODS[choice.method]
        reporter.note(choice.reason)
    _check_rows_for(manifest, method_cls, cfg)
    for setting, readers in ignored_settings(cfg, method_cls).items():
        reporter.note(
            f"note: {setting}={getattr(cfg, setting)} does nothing in this run ({cfg.method}); "
            f"it applies with {' or '.join(readers)}"
        )
    if cfg.student_crossfit and not cfg.student_rounds:  # after auto, which may add the student round
        raise ValueError("student_crossfit cross-fits the first student round's teacher: it needs student_rounds >= 1")
    if cfg.teacher and not cfg.student_rounds:
        raise ValueError(
            f"teacher {cfg.teacher} replaces the first round before a student round: it needs student_rounds >= 1"
        )
    if cfg.teacher and cfg.student_crossfit:
        raise ValueError("teacher and student_crossfit both replace the first round's network: give one")
    manifest = with_held_out(manifest, **held_out)
    if not ranks.is_main:
        ranks.barrier()  # rank 0 fills the pixel cache first; the others then map it
    if a is not None:
        spec, arch, init_name = a.preprocess, a.arch, a.name
        reporter.note(f"classifier A: {a.arch} from {a.name}; preprocessing from {a.preprocess_source}")
    else:
        spec, arch, init_name = data_spec(manifest, cfg, pixel_progress), cfg.arch, "scratch"
    images = open_images(manifest, spec, cfg, device, pixel_progress)
    if ranks.is_main:
        ranks.barrier()
    try:
        return _train_on(manifest, images, a, arch, init_name, out, cfg, device, method_cls, reporter, ranks)
    finally:
        images.close()


def _check_config(cfg: TrainConfig) -> None:
    if cfg.method not in METHODS and cfg.method != "auto":
        raise ValueError(f"unknown method {cfg.method!r}; choose from auto, {', '.join(sorted(METHODS))}")
    if cfg.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {cfg.augment!r}; choose from {', '.join(AUGMENTATIONS)}")
    if bad := unknown_choice(cfg):
        raise ValueError("unknown settings: " + "; ".join(bad))
    if bad := out_of_range(cfg):
        raise ValueError("settings out of range: " + "; ".join(bad))
    if cfg.student_crossfit == 1 or cfg.student_crossfit < 0:
        raise ValueError("student_crossfit must be 0 (off) or a number of folds >= 2")


def _network(
    arch: str, a: ClassifierA | None, manifest: Manifest, spec: PreprocessSpec, heads: int, reporter: Reporter
) -> TwoHeadNet:
    """Classifier A's backbone with task B's classes mapped onto its final layer (its noise model reset
    to "no noise"), or a fresh network."""
    net = TwoHeadNet(
        arch, len(manifest.classes), spec.channels, noisy_heads=heads, backbone=None if a is None else a.backbone
    )
    if a is not None:
        mapping = map_classes(a.classes, manifest.classes)
        start_clean_head(net.clean_head, a.backbone.head, mapping)
        net.reset_noisy_heads_to_clean()
        reporter.note(mapping.describe())
    return net


def load_teacher(net: TwoHeadNet, path: Path, manifest: Manifest, arch: str) -> None:
    """Put the first-round network saved at ``path`` into ``net`` (its feature extractor and clean head; the
    noisy heads are the method's, not the student's). The checkpoint must come from a run on this very
    manifest (same bytes, so the same rows, labels and classes) with the same architecture."""
    saved, meta = load_checkpoint(path)
    if meta.data_version != manifest.sha256:
        raise ValueError(
            f"teacher {path} was trained on another manifest ({meta.manifest}, sha256 {meta.data_version[:12]}), "
            f"not on {manifest.path.name} (sha256 {manifest.sha256[:12]})"
        )
    if meta.arch != arch:
        raise ValueError(f"teacher {path} is a {meta.arch}, this run trains a {arch}")
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith("noisy_head.")}
    net.load_state_dict(state, strict=False)


@dataclass(frozen=True)
class _Start:
    """Classifier A's own accuracy on task B before any training (None without A)."""

    trusted: float | None
    val: float | None
    test: float | None


def _train_on(manifest, images, a, arch, init_name, out, cfg, device, method_cls, reporter, ranks) -> TrainResult:
    data = load_task(manifest, images, cfg, device)
    if cfg.method == "fasten" and cfg.per_labeler:
        data.noisy_groups = labeler_groups(data.labeler_ids, data.untrusted_rows, cfg.min_labeler_items)
    checkpoint = out / "checkpoint.pt" if out.suffix != ".pt" else out
    if data.items is not None:
        reporter.note(data.items.describe(data.train_rows))

    # 2. the network
    net = _network(arch, a, manifest, data.spec, len(data.noisy_groups), reporter)
    net.noisy_head.requires_grad_(method_cls.trains_noisy_head)
    trainer = Trainer(cfg, net.to(device), data, reporter, device, ranks)

    # 3. the starting point, for the gate, and classifier A's own accuracy on task B
    start = _Start(
        trusted=trainer.accuracy(data.trusted_rows) if a is not None and len(data.trusted_rows) else None,
        val=trainer.accuracy(data.val_rows) if a is not None else None,
        test=trainer.accuracy(data.test_rows) if a is not None else None,
    )

    def describe(run_cfg: TrainConfig, history: list[EpochMetrics]) -> CheckpointMeta:
        return _describe(trainer, manifest, arch, init_name, run_cfg, device, ranks, history, start)

    # 4. the method
    teacher = None  # the first student round's teacher probabilities, when cross-fitted
    if cfg.teacher:  # a first round trained before, on this manifest: the student rounds start from it
        history = []
        load_teacher(trainer.net, Path(cfg.teacher), manifest, arch)
        reporter.note(f"first round: the network saved in {cfg.teacher} (val {trainer.accuracy(data.val_rows):.4f})")
    elif cfg.student_rounds and cfg.student_crossfit:
        probs_l, probs_x, history = crossfit_probabilities(trainer, method_cls, cfg.student_crossfit)
        teacher = (probs_l, probs_x)
    else:
        method = method_cls(trainer)
        method.prepare()
        history = trainer.fit(method, phase=cfg.method)
        if cfg.student_rounds:  # kept, so that other student settings can start from it (--teacher)
            first = checkpoint.with_suffix(".first_round.pt")
            first_meta = describe(replace(cfg, student_rounds=0), history)
            _save(first, trainer.net, first_meta, ranks)
            reporter.note(
                f"first round saved in {first} (test {first_meta.metrics.test_acc:.4f}): "
                f"--teacher {first} trains other student settings without it"
            )
    for round_ in range(1, cfg.student_rounds + 1):  # training.student: again, on the last network's targets
        rows, targets = teacher_targets(trainer, teacher)
        teacher = None  # later rounds: the student as it stands
        trainer.semi = None  # the student's unlabeled rows have the teacher's targets instead
        trainer.restart_from_init()
        method = Student(trainer, rows, targets)
        reporter.note(f"student round {round_}: {method.describe_kept()}")
        history += trainer.fit(method, phase=f"student {round_}")

    # 5. final numbers, and 6. the checkpoint (the noise model stays in it; the export takes the clean head only)
    meta = describe(cfg, history)
    _save(checkpoint, trainer.net, meta, ranks, metrics=True)
    return TrainResult(checkpoint, meta, history)


def _describe(trainer, manifest, arch, init_name, cfg, device, ranks, history, start: _Start) -> CheckpointMeta:
    """The checkpoint's metadata for the network as it stands: accuracies, the disagreement thresholds, each
    labeler's matrix and error rate from its posterior on the training rows, the gate against ``start``."""
    data = trainer.data
    final_trusted = trainer.accuracy(data.trusted_rows) if len(data.trusted_rows) else trainer.accuracy(data.val_rows)
    held_out = data.val_rows if len(data.val_rows) else data.trusted_rows
    held_probs = trainer.predict(held_out).cpu().numpy()
    thresholds = per_class_thresholds(held_probs, data.labels[held_out].cpu().numpy(), data.k)
    posterior = trainer.predict(data.train_rows).cpu().numpy()
    labels_np = data.labels.cpu().numpy()
    trusted_in_train = np.isin(data.train_rows, data.trusted_rows)
    posterior[trusted_in_train] = np.eye(data.k)[labels_np[data.train_rows[trusted_in_train]]]
    checked = with_checks(torch.from_numpy(posterior), data.items, data.train_rows).numpy()  # QA'd labels: truth
    labeler_t, labeler_n = labeler_transition_matrices(
        checked,
        labels_np[data.train_rows],
        data.labeler_ids[data.train_rows],
        data.k,
        em_steps=LABELER_EM_STEPS,
        items=None if data.items is None else data.items.of_row[data.train_rows],
    )
    confusion = confusion_counts(data.labels[held_out].cpu().numpy(), held_probs.argmax(1), data.k)
    untrusted = ~trusted_in_train
    labeler_errors = labeler_error_rates(
        posterior[untrusted].argmax(1),
        labels_np[data.train_rows[untrusted]],
        data.labeler_ids[data.train_rows[untrusted]],
        confusion,
        items=None if data.items is None else data.items.of_row[data.train_rows[untrusted]],
        checked=None if data.items is None else data.items.checked[data.train_rows[untrusted]],
    )
    final_t = history[-1].transition_matrix if history else None
    metrics = ModelMetrics(
        val_acc=trainer.accuracy(data.val_rows),
        test_acc=trainer.accuracy(data.test_rows),
        trusted_acc=final_trusted or 0.0,
        initial_trusted_acc=start.trusted,
        initial_val_acc=start.val,
        initial_test_acc=start.test,
        history=history,
    )
    return CheckpointMeta(
        arch=arch,
        classes=list(manifest.classes),
        preprocess=data.spec,
        method=cfg.method,
        init=init_name,
        config=asdict(cfg) | {"device_used": str(device), "processes": ranks.world, "torch": torch.__version__},
        metrics=metrics,
        gate=_gate(start.trusted, metrics.trusted_acc, init_name),
        transition_matrix=None if final_t is None else np.asarray(final_t).round(4).tolist(),
        labeler_transition_matrices={k: v.round(4).tolist() for k, v in labeler_t.items()},
        labeler_counts=labeler_n,
        disagreement_thresholds=thresholds.round(4).tolist(),
        thresholds_source="val split" if len(data.val_rows) else "trusted set",
        confusion=confusion.tolist(),
        labeler_error_rates=labeler_errors,
        data_version=manifest.sha256,
        manifest=str(manifest.path.resolve()),
        noisy_heads=data.noisy_groups if len(data.noisy_groups) > 1 else [],
    )


def _save(path: Path, net: TwoHeadNet, meta: CheckpointMeta, ranks: Ranks, *, metrics: bool = False) -> None:
    """Rank 0 alone writes the checkpoint (and with ``metrics`` its metrics.json beside it); the others
    wait until it has. The network stays where it is."""
    if ranks.is_main:
        save_checkpoint(path, net, meta)
        if metrics:
            (path.parent / "metrics.json").write_text(meta.model_dump_json(indent=2, exclude={"config"}))
    ranks.barrier()
