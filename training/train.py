"""Fine-tune classifier A on task B's noisy labels with a noise-robust method. Reads top to bottom:

config -> data (manifest, pixels through the model card's preprocessing) -> network (from classifier A
or scratch) -> the method's epochs, each reporting clean held-out accuracy, trusted accuracy and the
estimated transition matrix -> final numbers (thresholds for the audit, per-labeler matrices, the
export gate) -> checkpoint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from labelaudit.errors import ManifestError
from labelaudit.schemas.model_card import EpochMetrics, GateResult, ModelMetrics, PreprocessSpec
from labelaudit.serving.core.preprocess import normalize
from labelaudit.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from labelaudit.training.manifest import Manifest, load_pixels, read_manifest
from labelaudit.training.methods import METHODS, Method
from labelaudit.training.methods.fasten import labeler_groups
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.transition import labeler_transition_matrices, per_class_thresholds


@dataclass
class TrainConfig:
    """Every knob that changes the result. Saved inside the checkpoint and the model card."""

    method: str = "fasten"
    arch: str = "cnn_small"  # used only when training from scratch; otherwise classifier A's
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    augment: bool = True  # random shifts of up to 2 px and horizontal flips
    trusted_per_class: int = 0  # FasTEN: trusted samples per class per iteration; 0 = the whole set
    rho: float = 0.8  # FasTEN: confidence needed to correct a label
    noisy_weight: float = 0.5  # FasTEN: λ, the weight of the noisy head's loss
    trusted_trains_features: bool = True  # FasTEN: False = trusted rows train the heads only (unbiased T̂)
    per_labeler: bool = False  # FasTEN: one noisy head (and T̂) per labeler with enough items
    min_labeler_items: int = 100  # FasTEN per_labeler: fewer items -> the pooled head
    consistency_weight: float = 0.0  # FasTEN: weight of the FixMatch-style loss on untrusted images; 0 = off
    pseudo_threshold: float = 0.95  # FasTEN consistency: confidence a pseudo-label needs
    label_source: Literal["label", "true_label"] = "label"  # "true_label": the oracle (simulated data)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast + channels_last on CUDA only
    image_size: int | None = None  # scratch only; default: the first image's size
    channels: int | None = None  # scratch only; default: 1 for greyscale images, else 3


class Reporter(Protocol):
    """Where progress goes (the CLI draws rich progress bars; library code never prints)."""

    def phase(self, name: str, total_steps: int) -> None: ...
    def advance(self, loss: float) -> None: ...
    def epoch(self, metrics: EpochMetrics) -> None: ...


class SilentReporter:
    def phase(self, name: str, total_steps: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass

    def epoch(self, metrics: EpochMetrics) -> None:
        pass


@dataclass
class TaskData:
    """The whole task on the training device. ``x`` (N, C, H, W) float32; ``labels`` (N,) the labels
    training may use (labelers' for untrusted rows, checked for trusted and held-out rows)."""

    x: torch.Tensor
    labels: torch.Tensor
    is_trusted: torch.Tensor
    k: int
    train_rows: np.ndarray
    trusted_rows: np.ndarray
    untrusted_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    labeler_ids: np.ndarray
    noisy_groups: list[str] = field(default_factory=lambda: ["*"])  # labeler group of each noisy head


@dataclass
class TrainResult:
    checkpoint: Path
    meta: CheckpointMeta
    history: list[EpochMetrics] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random integer shifts of up to 2 px (edges replicated) and horizontal flips. (B, C, H, W)."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)
    flip = torch.rand(b, device=x.device) < 0.5
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    shifts = torch.randint(-2, 3, (b, 2), device=x.device).float()
    theta[:, 0, 2] = shifts[:, 0] * 2 / w
    theta[:, 1, 2] = shifts[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def strong_augment(x: torch.Tensor, cutout: int = 10) -> torch.Tensor:
    """FixMatch-style strong view: rotation ±20°, scale 0.85-1.15, shifts ±3 px, flips, contrast and
    brightness jitter, Gaussian noise and a cut-out square. (B, C, H, W), normalised inputs."""
    b, _, h, w = x.shape
    dev = x.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * np.pi / 9
    scale = 0.85 + 0.3 * torch.rand(b, device=dev)
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = (torch.rand(b, 2, device=dev) * 2 - 1) * 3 * 2 / torch.tensor([w, h], device=dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * 0.4
    brightness = (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * 0.4
    out = out * contrast + brightness + 0.1 * torch.randn_like(out)
    cy, cx = torch.randint(0, h, (b,), device=dev), torch.randint(0, w, (b,), device=dev)
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= cutout // 2) & ((xs - cx[:, None, None]).abs() <= cutout // 2)
    return out.masked_fill(hole[:, None], 0.0)


class Trainer:
    """Owns the network, the data and the loop; methods supply batches and losses."""

    def __init__(self, cfg: TrainConfig, net: TwoHeadNet, data: TaskData, reporter: Reporter):
        self.cfg, self.net, self.data, self.reporter = cfg, net, data, reporter
        self.device = data.x.device
        self.init_state = copy.deepcopy(net.state_dict())
        self.rng = np.random.default_rng(cfg.seed)
        # bf16 autocast and channels_last: the CUDA path; ``precision="bf16"`` takes it on CPU too, so
        # that the mixed-precision code runs in CI, where there is no GPU.
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if self.autocast:
            self.net = self.net.to(memory_format=torch.channels_last)

    def inputs(self, rows: np.ndarray, *, strong: bool = False) -> torch.Tensor:
        x = self.data.x[torch.as_tensor(rows, device=self.device)]
        if strong:
            x = strong_augment(x)
        elif self.cfg.augment and self.net.training:
            x = augment(x)
        return x.contiguous(memory_format=torch.channels_last) if self.autocast else x

    @torch.no_grad()
    def predict(self, rows: np.ndarray, batch: int = 2048) -> torch.Tensor:
        """Clean-head probabilities (len(rows), K), eval mode, no augmentation."""
        was_training = self.net.training
        self.net.eval()
        out = []
        for start in range(0, len(rows), batch):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.net(self.inputs(rows[start : start + batch]))
            out.append(torch.softmax(logits.float(), 1))
        self.net.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.data.k, device=self.device)

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
            lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True,
        )  # fmt: skip
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
            self.net.train()
            self.reporter.phase(f"{phase} epoch {epoch}/{self.cfg.epochs}", steps)
            started, losses, seen = time.perf_counter(), [], 0
            for batch in method.batches(self.rng):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss, stats = method.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(stats.loss)
                seen += len(batch.untrusted) + len(batch.trusted)
                self.reporter.advance(stats.loss)
            seconds = time.perf_counter() - started
            corrected = method.end_epoch()
            t = method.transition()
            m = EpochMetrics(
                epoch=epoch, train_loss=float(np.mean(losses)), val_acc=self.accuracy(self.data.val_rows),
                trusted_acc=self.accuracy(self.data.trusted_rows) or 0.0, lr=sched.get_last_lr()[0],
                seconds=seconds, images_per_s=seen / max(seconds, 1e-9), corrected_fraction=corrected,
                transition_matrix=None if t is None else np.round(t, 4).tolist(),
            )  # fmt: skip
            self.reporter.epoch(m)
            history.append(m)
        return history


# -- data and network ------------------------------------------------------------------------------


def infer_spec(manifest: Manifest, pixels_mean_std: tuple[float, float] | None, cfg: TrainConfig) -> PreprocessSpec:
    """From scratch: size and channels from the first image (or the config), mean/std from the data."""
    from labelaudit.serving.core.preprocess import load_image

    first = load_image(str(manifest.path.parent / manifest.records[0].image))
    channels = cfg.channels or (1 if first.mode in ("L", "I;16", "I", "F", "1", "LA") else 3)
    h = w = cfg.image_size or max(first.size)
    mean, std = pixels_mean_std or (0.5, 0.25)
    return PreprocessSpec(height=h, width=w, channels=channels, mean=(mean,) * channels, std=(std,) * channels)


def data_spec(manifest: Manifest, cfg: TrainConfig, progress=None) -> PreprocessSpec:
    """From scratch: the spec of the first image, with mean and std measured on the data."""
    sample = load_pixels(manifest, infer_spec(manifest, None, cfg), progress=progress).astype(np.float32) / 255.0
    return infer_spec(manifest, (float(sample.mean()), float(sample.std())), cfg)


def _rows(manifest: Manifest) -> dict[str, np.ndarray]:
    train = manifest.mask(split="train")
    trusted = manifest.mask(split="train", trusted=True)
    return {
        "train": np.flatnonzero(train),
        "trusted": np.flatnonzero(trusted),
        "untrusted": np.flatnonzero(train & ~trusted),
        "val": np.flatnonzero(manifest.mask(split="val")),
        "test": np.flatnonzero(manifest.mask(split="test")),
    }


def load_task(
    manifest: Manifest, spec: PreprocessSpec, cfg: TrainConfig, device: torch.device, progress=None
) -> TaskData:
    pixels = load_pixels(manifest, spec, progress=progress)  # (N, H, W, C) uint8, cached
    labels = manifest.labels
    if cfg.label_source == "true_label":
        labels = manifest.true_labels()
        if labels is None:
            raise ManifestError(f"{manifest.path.name}: label_source=true_label needs true_label on every row")
    rows = _rows(manifest)
    is_trusted = np.zeros(len(labels), dtype=bool)
    is_trusted[rows["trusted"]] = True
    return TaskData(
        x=torch.from_numpy(normalize(pixels, spec)).to(device),
        labels=torch.as_tensor(labels, device=device),
        is_trusted=torch.as_tensor(is_trusted, device=device),
        k=len(manifest.classes),
        train_rows=rows["train"], trusted_rows=rows["trusted"], untrusted_rows=rows["untrusted"],
        val_rows=rows["val"], test_rows=rows["test"], labeler_ids=manifest.labeler_ids,
    )  # fmt: skip


def _gate(initial: float | None, final: float, init_name: str) -> GateResult:
    if initial is None:
        return GateResult(passed=True, metric="trusted_acc", initial=None, final=final,
                          reason=f"trained from {init_name}: no starting model to compare against")  # fmt: skip
    passed = final >= initial
    verdict = "at least as good as" if passed else "WORSE than"
    return GateResult(
        passed=passed, metric="trusted_acc", initial=initial, final=final,
        reason=f"trusted-set accuracy {final:.4f} is {verdict} the starting model's {initial:.4f}",
    )  # fmt: skip


# -- the run ---------------------------------------------------------------------------------------


def train(
    manifest_path: str | Path,
    *,
    init: str | Path | None,
    out: str | Path,
    cfg: TrainConfig,
    reporter: Reporter | None = None,
    pixel_progress=None,
) -> TrainResult:
    """Train with ``cfg.method`` from classifier A (``init`` a checkpoint) or from scratch (``None``)."""
    reporter = reporter or SilentReporter()
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose from {sorted(METHODS)}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {cfg.precision!r}; choose from auto, bf16, fp32")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    method_cls = METHODS[cfg.method]

    # 1. data, held to classifier A's classes and preprocessing
    net_a, init_meta = load_checkpoint(init) if init is not None else (None, None)
    manifest = read_manifest(
        manifest_path, classes=init_meta.classes if init_meta else None, require_trusted=method_cls.needs_trusted
    )
    if init_meta is not None:
        classes, spec, arch, init_name = init_meta.classes, init_meta.preprocess, init_meta.arch, Path(init).name
    else:
        classes, arch, init_name = manifest.classes, cfg.arch, "scratch"
        spec = data_spec(manifest, cfg, pixel_progress)
    data = load_task(manifest, spec, cfg, device, progress=pixel_progress)
    if cfg.method == "fasten" and cfg.per_labeler:
        data.noisy_groups = labeler_groups(data.labeler_ids, data.untrusted_rows, cfg.min_labeler_items)

    # 2. the network: classifier A's weights (its noise model reset to "no noise"), or fresh ones
    net = TwoHeadNet(arch, len(classes), spec.channels, noisy_heads=len(data.noisy_groups))
    if net_a is not None:
        state = {k: v for k, v in net_a.state_dict().items() if not k.startswith("noisy_head.")}
        net.load_state_dict(state, strict=False)
        net.reset_noisy_heads_to_clean()
    trainer = Trainer(cfg, net.to(device), data, reporter)

    # 3. the starting point, for the gate
    initial_trusted = trainer.accuracy(data.trusted_rows) if init is not None and len(data.trusted_rows) else None
    initial_val = trainer.accuracy(data.val_rows) if init is not None else None

    # 4. the method
    method = method_cls(trainer)
    method.prepare()
    history = trainer.fit(method, phase=cfg.method)

    # 5. final numbers
    final_trusted = trainer.accuracy(data.trusted_rows) if len(data.trusted_rows) else trainer.accuracy(data.val_rows)
    held_out = data.val_rows if len(data.val_rows) else data.trusted_rows
    held_probs = trainer.predict(held_out).cpu().numpy()
    thresholds = per_class_thresholds(held_probs, data.labels[held_out].cpu().numpy(), data.k)
    posterior = trainer.predict(data.train_rows).cpu().numpy()
    labels_np = data.labels.cpu().numpy()
    trusted_in_train = np.isin(data.train_rows, data.trusted_rows)
    posterior[trusted_in_train] = np.eye(data.k)[labels_np[data.train_rows[trusted_in_train]]]
    labeler_t, labeler_n = labeler_transition_matrices(
        posterior, labels_np[data.train_rows], data.labeler_ids[data.train_rows], data.k
    )
    final_t = history[-1].transition_matrix if history else None
    metrics = ModelMetrics(
        val_acc=trainer.accuracy(data.val_rows), test_acc=trainer.accuracy(data.test_rows),
        trusted_acc=final_trusted or 0.0, initial_trusted_acc=initial_trusted, initial_val_acc=initial_val,
        history=history,
    )  # fmt: skip
    meta = CheckpointMeta(
        arch=arch, classes=list(classes), preprocess=spec, method=cfg.method, init=init_name,
        config=asdict(cfg) | {"device_used": str(device), "torch": torch.__version__},
        metrics=metrics, gate=_gate(initial_trusted, metrics.trusted_acc, init_name),
        transition_matrix=None if final_t is None else np.asarray(final_t).round(4).tolist(),
        labeler_transition_matrices={k: v.round(4).tolist() for k, v in labeler_t.items()},
        labeler_counts=labeler_n, disagreement_thresholds=thresholds.round(4).tolist(),
        thresholds_source="val split" if len(data.val_rows) else "trusted set",
        data_version=manifest.sha256, manifest=str(Path(manifest_path)),
        noisy_heads=data.noisy_groups if len(data.noisy_groups) > 1 else [],
    )  # fmt: skip

    # 6. checkpoint (the noise model stays in it; the export takes the clean head only)
    out_path = Path(out)
    checkpoint = out_path / "checkpoint.pt" if out_path.suffix != ".pt" else out_path
    save_checkpoint(checkpoint, trainer.net.to("cpu").to(memory_format=torch.contiguous_format), meta)
    (checkpoint.parent / "metrics.json").write_text(meta.model_dump_json(indent=2, exclude={"config"}))
    return TrainResult(checkpoint, meta, history)
