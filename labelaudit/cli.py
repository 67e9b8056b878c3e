"""The one entry point: ``labelaudit data | train | export | serve | consume | produce | report | demo``. The
top floor; nothing imports it."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from labelaudit.errors import LabelAuditError
from labelaudit.training.config import TrainConfig as _Defaults  # the defaults --help shows; no torch

if TYPE_CHECKING:
    from labelaudit.serving.settings import Settings

app = typer.Typer(
    help="Serve an image classifier and audit the noisy labels that stream in with it.", no_args_is_help=True
)
console = Console()

DEMO_EPOCHS = {"tiny": (2, 2), "small": (6, 8), "full": (15, 30)}  # classifier A, task B
SIZES = {  # per_task, val_size, test_size
    "tiny": (1_500, 300, 1_000),
    "small": (6_000, 1_000, 2_000),
    "full": (30_000, 2_000, 10_000),
}


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


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
def training_progress() -> Iterator[tuple[object, Callable[[int], None]]]:
    """A reporter and a decoding-progress callback: rich bars on a terminal, plain lines otherwise."""
    if not console.is_terminal:
        counted = {"n": 0}

        def decoded(n: int) -> None:
            counted["n"] += n
            if counted["n"] % 10_000 < n:
                console.print(f"decoded {counted['n']:,} images", soft_wrap=True)

        yield LineReporter(), decoded
        return
    with _progress() as progress:
        decode = progress.add_task("decoding images", total=None, info="")
        yield RichReporter(progress), lambda n: progress.update(decode, advance=n)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


@app.command()
def data(
    out: Annotated[Path, typer.Option(help="Folder to write images, manifests and the labelers' truth to.")] = Path(
        "data"
    ),
    noise: Annotated[float, typer.Option(help="Fraction of wrong labels in task B's training labels.")] = 0.4,
    seed: Annotated[int, typer.Option(help="Data seed (the recipe is deterministic for a seed).")] = 0,
    size: Annotated[str, typer.Option(help="tiny | small | full (30,000 images per task).")] = "small",
    trusted_fraction: Annotated[float, typer.Option(help="Share of task B's training images checked by hand.")] = 0.01,
    unlabeled: Annotated[
        int, typer.Option(help="More task-B training images without a label (semi-supervised training).")
    ] = 0,
) -> None:
    """Build task A and task B from Debian's Fashion-MNIST, with simulated noisy labelers."""
    from labelaudit.training.datasets import fashion_mnist

    if size not in SIZES:
        raise _fail(ValueError(f"--size must be one of {sorted(SIZES)}"))
    per_task, val_size, test_size = SIZES[size]
    with _progress() as progress:
        task = progress.add_task("writing images", total=2 * per_task + test_size + unlabeled, info="")
        try:
            report = fashion_mnist.build(
                out,
                noise=noise,
                seed=seed,
                per_task=per_task,
                val_size=val_size,
                test_size=test_size,
                trusted_fraction=trusted_fraction,
                unlabeled=unlabeled,
                progress=lambda n: progress.update(task, advance=n),
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(exc) from exc
    console.print(
        f"task A: {report.task_a_manifest}\ntask B: {report.task_b_manifest}  "
        f"(noise requested {report.noise_requested:.2f}, actual {report.noise_actual:.3f}; {report.counts})"
    )


def _train_config(**overrides):
    from labelaudit.training.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in overrides.items() if k in known and v is not None})


def run_training(manifest: Path, init: str, out: Path, *, init_classes: Path | None = None,
                 preprocess: dict | None = None, val_manifest: Path | None = None,
                 test_manifest: Path | None = None, **config):  # fmt: skip
    """Train with progress (bars on a terminal, lines otherwise) and print the outcome; shared by
    ``train`` and ``demo``."""
    from labelaudit.training.train import train as train_model

    cfg = _train_config(**config)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone reports
        return train_model(manifest, init=None if init == "scratch" else init, out=out, cfg=cfg,
                           init_classes=init_classes, preprocess=preprocess, val_manifest=val_manifest,
                           test_manifest=test_manifest)  # fmt: skip
    with training_progress() as (reporter, decoded):
        result = train_model(manifest, init=None if init == "scratch" else init, out=out, cfg=cfg,
                             reporter=reporter, pixel_progress=decoded, init_classes=init_classes,
                             preprocess=preprocess, val_manifest=val_manifest, test_manifest=test_manifest)  # fmt: skip
    m, gate = result.meta.metrics, result.meta.gate
    if m.initial_val_acc is not None or m.initial_trusted_acc is not None:
        console.print(f"classifier A on task B, untouched: val {m.initial_val_acc}, test {m.initial_test_acc}, "
                      f"trusted {m.initial_trusted_acc}", soft_wrap=True)  # fmt: skip
    console.print(
        f"[bold]{result.meta.method}[/bold] -> {result.checkpoint}: val {m.val_acc}, test {m.test_acc}, "
        f"trusted {m.trusted_acc:.4f}; gate {'passed' if gate.passed else '[red]FAILED[/red]'}: {gate.reason}",
        soft_wrap=True,
    )
    return result


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(","))


@app.command()
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
    ] = "scratch",  # fmt: skip
    init_classes: Annotated[
        Path | None,
        typer.Option(
            help="Classifier A's class names: a classes.txt or task A's manifest "
            "(default: <weights>.classes.txt or classes.txt beside the weights)."
        ),
    ] = None,  # fmt: skip
    method: Annotated[
        str, typer.Option(help="auto | ce | glc | fasten | crowd | crowdmix | mentormix (docs/methods.md)")
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
    ] = None,  # fmt: skip
    trusted_per_class: Annotated[
        int, typer.Option(help="FasTEN: trusted per class per step; 0 = all.")
    ] = _Defaults.trusted_per_class,
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
    seed: Annotated[int, typer.Option()] = _Defaults.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = _Defaults.device,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 autocast + channels_last on CUDA) | bf16 | fp32")
    ] = _Defaults.precision,
) -> None:
    """Fine-tune classifier A (or train from scratch) with a noise-robust method."""
    preprocess = {"height": input_size, "width": input_size, "crop_pct": crop_pct, "resize": resize,
                  "resample": interpolation, "mean": _floats(mean), "std": _floats(std), "channels": channels,
                  "jpeg_draft": jpeg_draft}  # fmt: skip
    preprocess = {k: v for k, v in preprocess.items() if v is not None}
    try:
        run_training(manifest, init, out, init_classes=init_classes, preprocess=preprocess or None, method=method,
                     val_manifest=val_manifest, test_manifest=test_manifest,
                     epochs=epochs, batch_size=batch_size, lr=lr, arch=arch, augment=augment, loader=loader,
                     workers=workers, memory_budget_mb=memory_budget_mb, trusted_per_class=trusted_per_class,
                     rho=rho, per_labeler=per_labeler, consistency_weight=consistency_weight, mixup_alpha=mixup_alpha,
                     held_out_estimate=held_out_estimate, mentormix_gamma=mentormix_gamma,
                     posterior_weight=posterior_weight,
                     unlabeled_weight=unlabeled_weight, semi_pool=semi_pool,
                     seed=seed, device=device, precision=precision, trusted_trains_features=not trusted_heads_only,
                     channels=channels if init == "scratch" else None,
                     image_size=input_size if init == "scratch" else None)  # fmt: skip
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc


def run_export(checkpoint: Path, manifest: Path | None, repo: Path, name: str, version: str, force: bool,
               **options):  # fmt: skip
    """Export with progress and print the outcome; ``options``: ``export_model``'s parity and Triton
    settings."""
    from labelaudit.training.checkpoint import load_checkpoint
    from labelaudit.training.export import export_model

    if manifest is None:
        manifest = Path(load_checkpoint(checkpoint)[1].manifest)
    with _progress() as progress:
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


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt written by `labelaudit train`.")],
    repo: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = Path("model_repository"),
    manifest: Annotated[Path | None, typer.Option(help="Images for the parity check (default: training's).")] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "labelaudit",
    version: Annotated[str, typer.Option(help="Model version (a positive integer).")] = "1",
    force: Annotated[bool, typer.Option(help="Export even if the model is worse than classifier A.")] = False,
    parity_images: Annotated[
        int, typer.Option(help="Images ONNX and torch are compared on (test, val, train).")
    ] = 1000,
    min_parity_images: Annotated[
        int, typer.Option(help="Refuse the export when the manifest has fewer images than this.")
    ] = 1000,
    instance_kind: Annotated[str, typer.Option(help="Triton instance_group kind: cpu | gpu.")] = "cpu",
) -> None:
    """Write model.onnx (parity-checked), config.pbtxt, labels.txt and the model card."""
    kinds = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
    if instance_kind not in kinds:
        raise _fail(ValueError(f"--instance-kind must be cpu or gpu, not {instance_kind!r}"))
    try:
        run_export(checkpoint, manifest, repo, name, version, force, parity_images=parity_images,
                   min_images=min(min_parity_images, parity_images), instance_kind=kinds[instance_kind])  # fmt: skip
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc


@app.command()
def serve(
    model_repo: Annotated[Path | None, typer.Option(help="Triton model repository (LABELAUDIT_MODEL_REPO).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Gateway processes sharing the port; 0: one per usable CPU (LABELAUDIT_HTTP_WORKERS)."
        ),
    ] = None,
) -> None:
    """Start the HTTP gateway (uvicorn) on embedded defaults: onnxruntime in process."""
    import uvicorn

    from labelaudit.serving.http.app import create_app
    from labelaudit.serving.http.server import server_options
    from labelaudit.serving.settings import Settings, intra_op_threads, usable_cpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"model_repo": model_repo} if model_repo else {}))
    try:
        from labelaudit.serving.core.model_repo import resolve_model

        resolve_model(settings.model_repo, settings.model_name, settings.model_version)  # fail before binding
    except LabelAuditError as exc:
        raise _fail(exc) from exc
    if (given := settings.prometheus_multiproc_dir) is not None and not given.is_dir():
        raise _fail(NotADirectoryError(f"PROMETHEUS_MULTIPROC_DIR={given} is not a folder"))
    workers = settings.http_workers if workers is None else workers
    workers = workers or usable_cpus()
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=settings.http_access_log,
                    **server_options(settings))  # fmt: skip
        return
    # Each worker process builds its own app (and model session) from the same environment.
    os.environ["LABELAUDIT_MODEL_REPO"] = str(settings.model_repo)
    os.environ["LABELAUDIT_ORT_INTRA_OP_THREADS"] = str(intra_op_threads(settings, workers))
    with shared_metrics_dir(settings) as folder:
        logging.getLogger("labelaudit.http").info("the %d workers' metrics are merged from %s", workers, folder)
        uvicorn.run("labelaudit.serving.http.app:create_app", factory=True, workers=workers, host=host, port=port,
                    log_level="info", access_log=settings.http_access_log,
                    **server_options(settings, workers=True))  # fmt: skip


@contextmanager
def shared_metrics_dir(settings: Settings) -> Iterator[Path]:
    """The folder where every worker writes its metrics (prometheus_client's multiprocess mode), in the
    environment the workers inherit: the user's PROMETHEUS_MULTIPROC_DIR, or a fresh private one that is
    removed on exit. Set before uvicorn starts them: prometheus_client reads it when first imported."""
    if (folder := settings.prometheus_multiproc_dir) is not None:
        if any(folder.glob("*.db")):
            logging.getLogger("labelaudit.http").warning(
                "%s holds metrics files of an earlier run: they are added to this run's totals", folder
            )
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="labelaudit-metrics-") as created:  # mode 0700
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
        try:
            yield Path(created)
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@app.command()
def consume(
    model_repo: Annotated[Path | None, typer.Option(help="Triton model repository (LABELAUDIT_MODEL_REPO).")] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS).")
    ] = None,
    store_url: Annotated[str | None, typer.Option(help="Audit store URL (LABELAUDIT_STORE_URL).")] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus metrics on PORT (0: off), at LABELAUDIT_METRICS_HOST.")
    ] = 0,
    stop_when_idle: Annotated[float | None, typer.Option(help="Exit after this many seconds without messages.")] = None,
    max_messages: Annotated[int | None, typer.Option(help="Exit after this many messages.")] = None,
) -> None:
    """Join the consumer group on the images topic: audit every labeled image, commit after the store."""
    from labelaudit.serving.settings import Settings
    from labelaudit.serving.stream.consumer import consume as run_consumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    overrides = {"model_repo": model_repo, "kafka_bootstrap_servers": bootstrap, "store_url": store_url}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.getLogger("labelaudit.stream").info("settings: %s", settings.redacted())
    try:
        stats = run_consumer(
            settings, metrics_port=metrics_port, stop_when_idle_s=stop_when_idle, max_messages=max_messages
        )
    except LabelAuditError as exc:
        raise _fail(exc) from exc
    console.print(
        f"audited {stats.audited} ({stats.new} new), dead letters {stats.dead_lettered}, "
        f"relabel requests {stats.relabels}"
    )


@app.command()
def produce(
    manifest: Annotated[Path, typer.Option(help="JSONL manifest of labeled images (e.g. data/task_b.jsonl).")],
    split: Annotated[str | None, typer.Option(help="Only rows of this split (train, val, test).")] = "train",
    limit: Annotated[int | None, typer.Option(help="At most this many messages.")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Send the manifest this many times (item ids suffixed).")] = 1,
    by_uri: Annotated[bool, typer.Option(help="Send file:// URIs instead of the image bytes.")] = False,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions when the topic is created here.")] = 4,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS).")
    ] = None,
) -> None:
    """Stream a manifest's labeled images into the images topic, keyed by item_id."""
    from labelaudit.serving.settings import Settings
    from labelaudit.serving.stream.producer import image_messages
    from labelaudit.serving.stream.producer import produce as send

    settings = Settings(**({"kafka_bootstrap_servers": bootstrap} if bootstrap else {}))
    try:
        base = list(image_messages(manifest, split=split, by_uri=by_uri, limit=limit))
    except LabelAuditError as exc:
        raise _fail(exc) from exc
    messages = base if repeat == 1 else [
        m.model_copy(update={"item_id": f"{m.item_id}#{n}"}) for n in range(repeat) for m in base
    ]  # fmt: skip
    with _progress() as progress:
        task = progress.add_task(f"producing to {settings.kafka_topic}", total=len(messages), info="")
        sent = send(settings, messages, partitions=partitions, on_sent=lambda n: progress.advance(task, n))
    console.print(f"sent {sent} messages to {settings.kafka_topic} at {settings.kafka_bootstrap_servers}")


@app.command()
def report(
    date: Annotated[
        str | None, typer.Option("--date", help="The night to report, YYYY-MM-DD (UTC); default: yesterday.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Instead of --date: window start, ISO-8601 (UTC if no zone).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="With --since: window end (exclusive).")] = None,
    store_url: Annotated[str | None, typer.Option(help="Audit store URL (LABELAUDIT_STORE_URL).")] = None,
    out: Annotated[Path, typer.Option(help="Folder under which the dated report folder is written.")] = Path("reports"),
    images: Annotated[
        Path | None, typer.Option(help="Thumbnails: a JSONL manifest (item_id, image) or a folder of <item_id>.png.")
    ] = None,
    model_repo: Annotated[
        Path | None,
        typer.Option(
            help="The model cards: the classes' names (default: those in the store) and the model's "
            "confusion, which turns one-label-per-item disagreement into labelers' error rates."
        ),
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Report this model version (default: the window's latest).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Items in the relabel queue.")] = 50,
    nights: Annotated[int, typer.Option(min=0, help="Earlier nights in the trends.")] = 14,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Family-wise error rate of the labeler flag.")] = 0.05,
) -> None:
    """Write the label-disagreement report (report.html, report.json, relabel_queue.csv) for one night."""
    from datetime import UTC, datetime, timedelta
    from datetime import date as date_type

    from labelaudit.serving.core.model_repo import resolve_model
    from labelaudit.serving.report.job import STEPS, night_window, run_report, span_window
    from labelaudit.serving.settings import Settings

    settings = Settings(**({"store_url": store_url} if store_url else {}))
    try:
        if since or until:
            if date or not (since and until):
                raise ValueError("give --date, or both --since and --until")
            window = span_window(datetime.fromisoformat(since), datetime.fromisoformat(until))
        else:
            night = date_type.fromisoformat(date) if date else datetime.now(UTC).date() - timedelta(days=1)
            window = night_window(night)
        classes, source = None, "the classes seen in the store (no --model-repo)"
        if model_repo is not None:
            served = resolve_model(model_repo, settings.model_name, model_version)
            classes, source = served.card.classes, f"the model card of {served.name} version {served.version}"
        with _progress() as progress:
            task = progress.add_task(f"report {window.label}", total=STEPS, info="")
            written = run_report(
                settings.store_url.get_secret_value(), window, out, images=images, classes=classes,
                class_source=source, model_version=model_version, model_repo=model_repo, nights_back=nights, top=top,
                alpha=alpha, step=lambda name: progress.update(task, advance=1, info=name),
            )  # fmt: skip
            progress.update(task, completed=STEPS, info="done")
    except (LabelAuditError, ValueError) as exc:
        raise _fail(exc) from exc
    h = written.report.headline
    rate = "-" if h.disagreement.rate is None else f"{h.disagreement.rate:.1%}"
    console.print(
        f"{h.images_audited:,} images audited, disagreement {rate}, {h.relabel_requests:,} relabel requests, "
        f"flagged labelers: {', '.join(written.report.flag_test.flagged) or 'none'}\n"
        f"report: {written.html}\n        {written.json}\n        {written.csv}"
    )
    for note in written.report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("labelaudit-demo"),
    full: Annotated[bool, typer.Option(help="Full size (30,000 images per task, more epochs; wants a GPU).")] = False,
    size: Annotated[
        str | None, typer.Option(help="tiny | small | full; overrides --full (tiny is for smoke tests).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="Noise-robust method for task B; auto picks by what the data has (docs/methods.md).")
    ] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    arch: Annotated[
        str,
        typer.Option(
            help="Classifier A's network: cnn_small, or a torchvision:/timm: one (e.g. torchvision:resnet18), "
            "trained on task A from scratch at 3 channels."
        ),
    ] = "cnn_small",  # fmt: skip
) -> None:
    """The whole job on real data: build task A/B, train classifier A, fine-tune on noisy task B, export
    to ONNX and a Triton repository, serve it, stream task B's labeled images through a real Kafka broker
    into the auditing consumer, write the report, and print where everything is with the headline numbers."""
    import shutil
    from datetime import UTC, datetime, timedelta

    from labelaudit import demo as online

    size = size or ("full" if full else "small")
    if size not in DEMO_EPOCHS:
        raise _fail(ValueError(f"--size must be one of {sorted(DEMO_EPOCHS)}"))
    epochs_a, epochs_b = DEMO_EPOCHS[size]
    data_dir, repo = out / "data", out / "model_repository"
    for stale in (repo, out / "kafka", out / "audit.db", out / "audit.db-wal", out / "audit.db-shm"):
        if stale.is_dir():
            shutil.rmtree(stale)  # the demo owns its folder; a re-run starts its online half afresh
        elif stale.exists():
            stale.unlink()
    store_url = f"sqlite:///{(out / 'audit.db').resolve()}"
    started = datetime.now(UTC) - timedelta(minutes=1)
    try:
        data(out=data_dir, noise=0.4, seed=seed, size=size, trusted_fraction=0.01)
        console.rule("classifier A on task A (clean labels)")
        a = run_training(data_dir / "task_a.jsonl", "scratch", out / "runs/classifier_a", method="ce",
                         epochs=epochs_a, seed=seed, arch=arch,
                         channels=None if arch in ("cnn_small", "resnet_small") else 3)  # fmt: skip
        console.rule(f"task B with noisy labels: {method} from classifier A")  # auto says what it chose
        b = run_training(data_dir / "task_b.jsonl", str(a.checkpoint), out / f"runs/{method}", method=method,
                         epochs=epochs_b, seed=seed)  # fmt: skip
        console.rule("export")
        exported = run_export(b.checkpoint, data_dir / "task_b.jsonl", repo, "labelaudit", "1", False)
        _print_summary(b.meta, exported)

        console.rule("serving: labelaudit serve")
        with online.gateway(repo, store_url, out / "gateway.log") as url:
            check = online.check_gateway(url, data_dir / "task_b.jsonl")
        _print_gateway(check)

        console.rule("the stream: Kafka broker, labelaudit produce, labelaudit consume")
        with online.local_broker(out / "kafka") as bootstrap, _progress() as progress:
            task = progress.add_task("auditing task B's labels", total=None, info=f"broker {bootstrap}")
            outcome = online.stream_task_b(
                bootstrap, repo, data_dir / "task_b.jsonl", store_url, out / "consumer.log",
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )  # fmt: skip
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    _print_stream(outcome, out, store_url)
    console.rule("the report: labelaudit report")
    report(since=started.isoformat(), until=(datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
           store_url=store_url, out=out / "reports", images=data_dir / "task_b.jsonl", model_repo=repo)  # fmt: skip


def _print_gateway(check) -> None:
    table = Table(title=f"the gateway at {check.url} (stopped again)")
    for col in ("item", "top class", "p", "human label", "disagrees", "score"):
        table.add_column(col)
    for (item, top, p), verdict in zip(check.classified, check.audited, strict=True):
        table.add_row(
            item, top, f"{p:.3f}", verdict["human_label"], str(verdict["disagrees"]), f"{verdict['score']:.3f}"
        )
    console.print(table)


def _print_stream(outcome, out: Path, store_url: str) -> None:
    precision = outcome.truly_wrong_flagged / max(1, outcome.disagreements)
    recall = outcome.truly_wrong_flagged / max(1, outcome.truly_wrong)
    console.print(
        f"streamed {outcome.sent:,} labeled images through Kafka; audited {outcome.audited:,} in "
        f"{outcome.seconds:.0f}s ({outcome.audited / max(outcome.seconds, 1e-9):.0f} images/s)\n"
        f"relabel requests: {outcome.disagreements:,}; {precision:.0%} of them are truly wrong labels "
        f"(the simulation knows), and they catch {recall:.0%} of the {outcome.truly_wrong:,} wrong labels\n"
        f"audit store: {store_url}\nlogs: {out / 'gateway.log'}, {out / 'consumer.log'}"
    )


def _print_summary(meta, exported) -> None:
    m = meta.metrics
    table = Table(title="labelaudit demo: task B")
    for col in ("model", "clean val acc", "clean test acc", "trusted acc"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row(
        "classifier A, untouched", fmt(m.initial_val_acc), fmt(m.initial_test_acc), fmt(m.initial_trusted_acc)
    )
    table.add_row(f"{meta.method} from classifier A", fmt(m.val_acc), fmt(m.test_acc), fmt(m.trusted_acc))
    console.print(table)
    labelers = Table(title="per labeler, on its training items: disagreement with the model, and its error rate "
                     "(the model's measured mistakes taken out)")  # fmt: skip
    for col in ("labeler", "items", "disagreement", "estimated error rate (95% interval)"):
        labelers.add_column(col)
    for lid, e in meta.labeler_error_rates.items():
        labelers.add_row(lid, f"{meta.labeler_counts.get(lid, 0):,}", f"{e.disagreement:.3f}",
                         f"{e.rate:.3f} ({e.low:.3f}-{e.high:.3f})")  # fmt: skip
    console.print(labelers)
    console.print(f"Triton model repository: {exported.model_dir.parent}\nmodel card: {exported.card_path}")


if __name__ == "__main__":
    app()
