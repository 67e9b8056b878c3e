"""``labelaudit train`` and ``labelaudit export``: fine-tune classifier A on task B with a noise-robust method,
with progress (bars on a terminal, lines otherwise); then ONNX, the Triton repository and the model card."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from labelaudit.cli.common import console, fail, progress_bars
from labelaudit.errors import LabelAuditError
from labelaudit.training.config import TrainConfig as _Defaults  # the defaults --help shows; no torch


def _epoch_line(m) -> str:
    val = "-" if m.val_acc is None else f"{m.val_acc:.4f}"
    extra = "" if m.corrected_fraction is None else f"  corrected {m.corrected_fraction:.3f}"
    if m.pseudo_labeled_fraction is not None:
        extra += f"  pseudo-labeled {m.pseudo_labeled_fraction:.3f}"
    if m.transition_matrix is not None:
        t = m.transition_matrix
        extra += f"  mean diag(T) {sum(t[i][i] for i in range(len(t))) / len(t):.3f}"
    speed = f"{m.images_per_s:.0f} img/s"
    if m.step_images_per_s is not None and m.loader_images_per_s is not None:
        speed += f" (step {m.step_images_per_s:.0f}, loader {m.loader_images_per_s:.0f})"
    return f"val {val}  trusted {m.trusted_acc:.4f}  {speed}{extra}"


class RichReporter:
    """Draws one bar per epoch and a line of metrics after it."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def phase(self, name: str, total_steps: int) -> None:
        self.task = self.progress.add_task(name, total=total_steps, info="")

    def advance(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, info=f"loss {loss:.3f}")

    def epoch(self, m) -> None:
        self.progress.update(self.task, info=_epoch_line(m))

    def note(self, text: str) -> None:
        self.progress.console.print(text)


class LineReporter:
    """Plain lines, flushed as they come, for output that is not a terminal (a log file, CI): a line per
    epoch, and one every ``every`` seconds within an epoch."""

    def __init__(self, every: float = 30.0):
        self.every, self.name, self.total, self.done, self.last = every, "", 0, 0, time.monotonic()

    def phase(self, name: str, total_steps: int) -> None:
        self.name, self.total, self.done, self.last = name, total_steps, 0, time.monotonic()

    def advance(self, loss: float) -> None:
        self.done += 1
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            console.print(f"{self.name}: step {self.done}/{self.total}, loss {loss:.3f}", soft_wrap=True)

    def epoch(self, m) -> None:
        console.print(f"{self.name}: {_epoch_line(m)}", soft_wrap=True)

    def note(self, text: str) -> None:
        console.print(text, soft_wrap=True)


@contextmanager
def trainingprogress_bars() -> Iterator[tuple[object, Callable[[int], None]]]:
    """A reporter and a decoding-progress callback: rich bars on a terminal, plain lines otherwise."""
    if not console.is_terminal:
        counted = {"n": 0}

        def decoded(n: int) -> None:
            counted["n"] += n
            if counted["n"] % 10_000 < n:
                console.print(f"decoded {counted['n']:,} images", soft_wrap=True)

        yield LineReporter(), decoded
        return
    with progress_bars() as progress:
        decode = progress.add_task("decoding images", total=None, info="")
        yield RichReporter(progress), lambda n: progress.update(decode, advance=n)


def _train_config(**overrides):
    from labelaudit.training.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in overrides.items() if k in known and v is not None})


def run_training(
    manifest: Path,
    init: str,
    out: Path,
    *,
    init_classes: Path | None = None,
    preprocess: dict | None = None,
    val_manifest: Path | None = None,
    test_manifest: Path | None = None,
    **config,
):
    """Train with progress (bars on a terminal, lines otherwise) and print the outcome; shared by
    ``train`` and ``demo``."""
    from labelaudit.training.train import train as train_model

    cfg = _train_config(**config)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone reports
        return train_model(
            manifest,
            init=None if init == "scratch" else init,
            out=out,
            cfg=cfg,
            init_classes=init_classes,
            preprocess=preprocess,
            val_manifest=val_manifest,
            test_manifest=test_manifest,
        )
    with trainingprogress_bars() as (reporter, decoded):
        result = train_model(
            manifest,
            init=None if init == "scratch" else init,
            out=out,
            cfg=cfg,
            reporter=reporter,
            pixel_progress=decoded,
            init_classes=init_classes,
            preprocess=preprocess,
            val_manifest=val_manifest,
            test_manifest=test_manifest,
        )
    m, gate = result.meta.metrics, result.meta.gate
    if m.initial_val_acc is not None or m.initial_trusted_acc is not None:
        console.print(
            f"classifier A on task B, untouched: val {m.initial_val_acc}, test {m.initial_test_acc}, "
            f"trusted {m.initial_trusted_acc}",
            soft_wrap=True,
        )
    console.print(
        f"[bold]{result.meta.method}[/bold] -> {result.checkpoint}: val {m.val_acc}, test {m.test_acc}, "
        f"trusted {m.trusted_acc:.4f}; gate {'passed' if gate.passed else '[red]FAILED[/red]'}: {gate.reason}",
        soft_wrap=True,
    )
    return result


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(","))


def train(
    manifest: Annotated[Path, typer.Option(help="JSONL manifest: item_id, image, label, labeler_id, trusted, split.")],
    val_manifest: Annotated[
        Path | None, typer.Option(help="Clean held-out images in a manifest of their own (added as split val).")
    ] = None,
    test_manifest: Annotated[
        Path | None, typer.Option(help="Clean test images in a manifest of their own (added as split test).")
    ] = None,
    init: Annotated[
        str,
        typer.Option(
            help="Classifier A: a labelaudit checkpoint, torchvision:<arch>=<weights.pth>, "
            "timm:<arch>=<weights.pth|.safetensors>, or 'scratch'."
        ),
    ] = "scratch",
    init_classes: Annotated[
        Path | None,
        typer.Option(
            help="Classifier A's class names: a classes.txt or task A's manifest "
            "(default: <weights>.classes.txt or classes.txt beside the weights)."
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="auto (chosen from what the data has: a trusted set, labeler ids) | ce | glc | fasten | crowd | "
            "crowdmix | mentormix (docs/methods.md)"
        ),
    ] = _Defaults.method,
    out: Annotated[Path, typer.Option(help="Folder for checkpoint.pt and metrics.json.")] = Path("runs/latest"),
    epochs: Annotated[int, typer.Option()] = _Defaults.epochs,
    batch_size: Annotated[int, typer.Option()] = _Defaults.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, warm-up then cosine).")] = _Defaults.lr,
    arch: Annotated[
        str, typer.Option(help="From scratch only: cnn_small | resnet_small | torchvision:<name> | timm:<name>.")
    ] = _Defaults.arch,
    augment: Annotated[
        str, typer.Option(help="none | flip | shift | shift-flip | crop-flip (flips are wrong for digits and text).")
    ] = _Defaults.augment,
    loader: Annotated[
        str, typer.Option(help="memory: decode once into a cache | stream: decode in worker processes | auto: by size.")
    ] = _Defaults.loader,
    workers: Annotated[
        int | None, typer.Option(help="stream: decoding processes (default: usable CPUs, max 8).")
    ] = None,
    memory_budget_mb: Annotated[
        float, typer.Option(help="auto: decoded images up to this size are cached.")
    ] = _Defaults.memory_budget_mb,
    input_size: Annotated[
        int | None, typer.Option(help="Classifier A's input side in pixels (default: its architecture's).")
    ] = None,
    crop_pct: Annotated[
        float | None, typer.Option(help="Centre crop share after the resize (timm's crop_pct).")
    ] = None,
    resize: Annotated[str | None, typer.Option(help="stretch | shorter_side_center_crop")] = None,
    interpolation: Annotated[str | None, typer.Option(help="bilinear | bicubic | nearest")] = None,
    mean: Annotated[
        str | None, typer.Option(help="Per-channel mean, comma-separated (e.g. 0.485,0.456,0.406).")
    ] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, comma-separated.")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (greyscale) or 3 (RGB).")] = None,
    jpeg_draft: Annotated[
        bool | None,
        typer.Option(
            "--jpeg-draft/--no-jpeg-draft",
            help="Decode JPEGs at the reduced DCT scale the resize allows (default: on for torchvision: "
            "and timm: classifier A, off otherwise); training and serving then decode alike.",
        ),
    ] = None,
    trusted_per_class: Annotated[
        int, typer.Option(help="FasTEN: trusted per class per step; 0 = all.")
    ] = _Defaults.trusted_per_class,
    trusted_per_step: Annotated[
        int,
        typer.Option(
            help="crowd, crowdmix, student rounds: trusted rows per step, cycling through a larger set; 0 = all."
        ),
    ] = _Defaults.trusted_per_step,
    rho: Annotated[float, typer.Option(help="FasTEN: confidence needed to correct a label.")] = _Defaults.rho,
    per_labeler: Annotated[
        bool, typer.Option("--per-labeler", help="FasTEN: one noisy head and T-hat per labeler.")
    ] = _Defaults.per_labeler,
    consistency_weight: Annotated[
        float, typer.Option(help="FasTEN: weight of FixMatch-style consistency on untrusted images.")
    ] = _Defaults.consistency_weight,
    trusted_heads_only: Annotated[
        bool,
        typer.Option("--trusted-heads-only", help="FasTEN: trusted images train the heads, not the features."),
    ] = not _Defaults.trusted_trains_features,
    unlabeled_weight: Annotated[
        float, typer.Option(help="Semi-supervised: weight of the EMA teacher's consistency on unlabeled rows; 0 = off.")
    ] = _Defaults.unlabeled_weight,
    semi_pool: Annotated[
        str, typer.Option(help="Semi-supervised: unlabeled+doubted | unlabeled | doubted (crowd's doubted labels).")
    ] = _Defaults.semi_pool,
    held_out_estimate: Annotated[
        bool,
        typer.Option("--held-out-estimate", help="FasTEN: T-hat from the trusted half the cross-entropy skips."),
    ] = _Defaults.held_out_estimate,
    mixup_alpha: Annotated[
        float, typer.Option(help="crowdmix, mentormix: mixup weight from Beta(alpha, alpha); 0 = no mixing.")
    ] = _Defaults.mixup_alpha,
    mentormix_gamma: Annotated[
        float, typer.Option(help="mentormix: loss quantile below which an example counts as clean.")
    ] = _Defaults.mentormix_gamma,
    posterior_weight: Annotated[
        float, typer.Option(help="crowd, crowdmix: weight of cross-entropy to the sharpened label posterior; 0 = off.")
    ] = _Defaults.posterior_weight,
    trim_fraction: Annotated[
        float,
        typer.Option(help="crowd, crowdmix: share of each batch's largest untrusted losses left out; 0 = off."),
    ] = _Defaults.trim_fraction,
    trusted_weight: Annotated[
        float,
        typer.Option(
            help="crowd, crowdmix, student rounds (--student-trusted half): the trusted rows' share of each step's "
            "loss; the other rows get the rest."
        ),
    ] = _Defaults.trusted_weight,
    student_rounds: Annotated[
        int, typer.Option(help="Train again from classifier A on the last network's posterior targets, N times.")
    ] = _Defaults.student_rounds,
    student_threshold: Annotated[
        float, typer.Option(help="Student rounds: rows whose target's top probability is below this sit out.")
    ] = _Defaults.student_threshold,
    student_labeled_threshold: Annotated[
        float,
        typer.Option(
            help="Student rounds: labeled rows also sit out where their label's posterior is below this "
            "(stricter than --student-threshold for them); 0 = the same bar for every row.",
        ),
    ] = _Defaults.student_labeled_threshold,
    student_unlabeled_threshold: Annotated[
        float,
        typer.Option(
            help="Student rounds: images without a label also sit out where the teacher's guess is below this "
            "(stricter than --student-threshold for them); 0 = the same bar for every row; 1 = none of them.",
        ),
    ] = _Defaults.student_unlabeled_threshold,
    student_trusted: Annotated[
        str,
        typer.Option(
            help="Student rounds: half = the trusted set every step, half the loss (as in the first round); "
            "rows = the trusted rows train among the student's rows, their checked labels as targets.",
        ),
    ] = _Defaults.student_trusted,
    teacher: Annotated[
        str,
        typer.Option(
            help="Student rounds: a checkpoint of a first round on this same manifest (the checkpoint.first_round.pt "
            "a student run keeps, or a run's checkpoint.pt): skip the first round and start the student rounds "
            "from it (try student settings at half the cost).",
        ),
    ] = _Defaults.teacher,
    student_crossfit: Annotated[
        int,
        typer.Option(
            help="First student round: F >= 2 trains F networks, each without one fold of the labeled rows, "
            "so that no row's target comes from a network that saw its label; 0 = one network for all rows."
        ),
    ] = _Defaults.student_crossfit,
    seed: Annotated[int, typer.Option()] = _Defaults.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = _Defaults.device,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 autocast + channels_last on CUDA) | bf16 | fp32")
    ] = _Defaults.precision,
) -> None:
    """Fine-tune classifier A (or train from scratch) with a noise-robust method."""
    preprocess = {
        "height": input_size,
        "width": input_size,
        "crop_pct": crop_pct,
        "resize": resize,
        "resample": interpolation,
        "mean": _floats(mean),
        "std": _floats(std),
        "channels": channels,
        "jpeg_draft": jpeg_draft,
    }
    preprocess = {k: v for k, v in preprocess.items() if v is not None}
    try:
        run_training(
            manifest,
            init,
            out,
            init_classes=init_classes,
            preprocess=preprocess or None,
            method=method,
            val_manifest=val_manifest,
            test_manifest=test_manifest,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            arch=arch,
            augment=augment,
            loader=loader,
            workers=workers,
            memory_budget_mb=memory_budget_mb,
            trusted_per_class=trusted_per_class,
            trusted_per_step=trusted_per_step,
            rho=rho,
            per_labeler=per_labeler,
            consistency_weight=consistency_weight,
            mixup_alpha=mixup_alpha,
            held_out_estimate=held_out_estimate,
            mentormix_gamma=mentormix_gamma,
            posterior_weight=posterior_weight,
            trim_fraction=trim_fraction,
            trusted_weight=trusted_weight,
            unlabeled_weight=unlabeled_weight,
            semi_pool=semi_pool,
            student_rounds=student_rounds,
            student_threshold=student_threshold,
            student_labeled_threshold=student_labeled_threshold,
            student_unlabeled_threshold=student_unlabeled_threshold,
            student_trusted=student_trusted,
            student_crossfit=student_crossfit,
            teacher=teacher,
            seed=seed,
            device=device,
            precision=precision,
            trusted_trains_features=not trusted_heads_only,
            channels=channels if init == "scratch" else None,
            image_size=input_size if init == "scratch" else None,
        )
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise fail(exc) from exc
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun rank whose run finished: exit_now says why
        from labelaudit.training.distributed import exit_now

        exit_now()


def run_export(checkpoint: Path, manifest: Path | None, repo: Path, name: str, version: str, force: bool, **options):
    """Export with progress and print the outcome; ``options``: ``export_model``'s parity and Triton
    settings."""
    from labelaudit.training.checkpoint import load_checkpoint
    from labelaudit.training.export import export_model

    if manifest is None:
        manifest = Path(load_checkpoint(checkpoint)[1].manifest)
    with progress_bars() as progress:
        task = progress.add_task("decoding parity images", total=None, info="")
        result = export_model(
            checkpoint,
            manifest=manifest,
            repo=repo,
            name=name,
            version=version,
            force=force,
            progress=lambda n: progress.update(task, advance=n),
            **options,
        )
    p = result.parity
    console.print(
        f"exported {result.onnx_path}\n  parity on {p.images} images: argmax agreement {p.argmax_agreement:.4f}, "
        f"max |Δp| {p.max_abs_prob_diff:.2e} (bound {p.tolerance:.0e})\n  Triton config {result.config_path}\n"
        f"  model card {result.card_path}"
    )
    return result


def export(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt written by `labelaudit train`.")],
    repo: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = Path("model_repository"),
    manifest: Annotated[Path | None, typer.Option(help="Images for the parity check (default: training's).")] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "labelaudit",
    version: Annotated[str, typer.Option(help="Model version (a positive integer).")] = "1",
    force: Annotated[bool, typer.Option(help="Export even if the model is worse than classifier A.")] = False,
    parity_images: Annotated[
        int, typer.Option(min=1, help="Images ONNX and torch are compared on (test, val, train).")
    ] = 1000,
    min_parity_images: Annotated[
        int, typer.Option(min=0, help="Refuse the export when the manifest has fewer images than this.")
    ] = 1000,
    instance_kind: Annotated[str, typer.Option(help="Triton instance_group kind: cpu | gpu.")] = "cpu",
) -> None:
    """Write model.onnx (parity-checked), config.pbtxt, labels.txt and the model card."""
    kinds = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
    if instance_kind not in kinds:
        raise fail(ValueError(f"--instance-kind must be cpu or gpu, not {instance_kind!r}"))
    try:
        run_export(
            checkpoint,
            manifest,
            repo,
            name,
            version,
            force,
            parity_images=parity_images,
            min_images=min(min_parity_images, parity_images),
            instance_kind=kinds[instance_kind],
        )
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise fail(exc) from exc
