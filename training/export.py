"""Export a checkpoint as a Triton model: ONNX, then verify (checker, parity), then write the repository.

The layout written under ``repo`` (a Triton model repository)::

    <repo>/<name>/config.pbtxt        platform onnxruntime_onnx, dynamic batching
    <repo>/<name>/labels.txt          one class per line, line i = class index i
    <repo>/<name>/model_card.json     the card of the newest export
    <repo>/<name>/<version>/model.onnx
    <repo>/<name>/<version>/model_card.json

The ONNX graph maps ``images`` (B, C, H, W) float32, already preprocessed by
``labelaudit.imaging.preprocess``, to ``probabilities`` (B, K) and ``logits`` (B, K).
Nothing is written into the repository unless every check passes.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf import text_format
from onnx.external_data_helper import uses_external_data
from tritonclient.grpc import model_config_pb2

import labelaudit
from labelaudit.errors import ExportRefused
from labelaudit.imaging.manifest import Manifest, read_manifest, row_pixels
from labelaudit.imaging.preprocess import normalize
from labelaudit.schemas.model_card import ModelCard, ParityResult, PreprocessSpec
from labelaudit.training.checkpoint import CheckpointMeta, load_checkpoint
from labelaudit.training.networks import ProbabilityModel, TwoHeadNet

INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "logits")
TRITON_PLATFORM = "onnxruntime_onnx"
LABELS_FILE = "labels.txt"
MIN_PARITY_IMAGES = 1000
# Where parity images come from, best first: held-out rows are what serving will see.
PARITY_SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class ExportResult:
    """Where an export landed, and the parity check that allowed it."""

    model_dir: Path
    version_dir: Path
    onnx_path: Path
    config_path: Path
    labels_path: Path
    card_path: Path
    parity: ParityResult
    card: ModelCard


# --- ONNX ------------------------------------------------------------------------------------------


def _cpu_eval_copy(net: TwoHeadNet) -> ProbabilityModel:
    """The exported module, on a copy so the caller's net keeps its device, dtype and mode."""
    return ProbabilityModel(copy.deepcopy(net).cpu().float().eval()).eval()


def export_onnx(net: TwoHeadNet, spec: PreprocessSpec, path: Path, *, opset: int = 17) -> None:
    """Write ``net`` as one self-contained ONNX file and check it.

    Graph: ``images`` (batch, C, H, W) float32 -> ``probabilities`` (batch, K), ``logits`` (batch, K),
    with ``batch`` dynamic on all three.
    """
    model = _cpu_eval_copy(net)
    # Batch 2, not 1, so the tracer cannot fold the batch size into a constant anywhere.
    dummy = torch.zeros(2, spec.channels, spec.height, spec.width, dtype=torch.float32)
    batch_axis = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad(), _plain_attention():
        # The TorchScript exporter is chosen on purpose (it writes opset 17 in one inline file, offline);
        # its deprecation notices would only repeat on every export.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            do_constant_folding=True,
        )
    check_onnx(path)


@contextmanager
def _plain_attention() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path (``aten::_native_multi_head_attention``, taken under
    no_grad in eval mode: torchvision's ViTs) has no ONNX form; the plain path computes the same."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def check_onnx(path: Path) -> None:
    """Run the ONNX checker (with shape inference) and refuse external data or unexpected names."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportRefused(f"{path.name} fails the ONNX checker: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ExportRefused(f"{path.name} keeps weights in an external data file; Triton needs one file")
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ExportRefused(
            f"{path.name} has inputs {inputs} and outputs {outputs}; expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}"
        )


# --- parity ----------------------------------------------------------------------------------------


def _batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering range(n): one of size 1, one of an odd size, then ``batch_size`` at a time.

    The first two sizes exercise the dynamic batch axis with shapes unlike the export's dummy.
    """
    start = 0
    for size in (1, 7):
        if start < n:
            yield slice(start, min(start + size, n))
            start += size
    for lo in range(start, n, batch_size):
        yield slice(lo, min(lo + batch_size, n))


def _predict_both(model: ProbabilityModel, session: ort.InferenceSession, x: np.ndarray):
    """Probabilities (B, K) from torch and from onnxruntime for one batch ``x`` (B, C, H, W)."""
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(x))[0].numpy()
    onnx_probs = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: x})[0]
    return torch_probs, onnx_probs


def check_parity(
    net: TwoHeadNet,
    onnx_path: Path,
    inputs: np.ndarray,
    *,
    tolerance: float = 1e-4,
    batch_size: int = 256,
    min_images: int = MIN_PARITY_IMAGES,
) -> ParityResult:
    """Compare torch (CPU, eval, float32) with onnxruntime (CPU) on the same ``inputs`` (N, C, H, W).

    Batches vary in size (1, 7, then ``batch_size``) to exercise the dynamic axis. Returns the result;
    raises ``ExportRefused`` if N < ``min_images``, if any argmax differs, or if the largest absolute
    probability difference exceeds ``tolerance``.
    """
    if inputs.ndim != 4:
        raise ExportRefused(f"parity inputs must be (N, C, H, W); got shape {inputs.shape}")
    n = inputs.shape[0]
    if n < min_images:
        raise ExportRefused(f"parity needs at least {min_images} images; got {n}")
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    model = _cpu_eval_copy(net)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree, max_diff = 0, 0.0
    for s in _batch_slices(n, batch_size):
        torch_probs, onnx_probs = _predict_both(model, session, inputs[s])
        agree += int((torch_probs.argmax(1) == onnx_probs.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(torch_probs - onnx_probs).max()))
    result = ParityResult(images=n, argmax_agreement=agree / n, max_abs_prob_diff=max_diff, tolerance=tolerance)
    _refuse_on_mismatch(result)
    return result


def _refuse_on_mismatch(r: ParityResult) -> None:
    # Written as "not <=" so that a NaN difference counts as a failure.
    if r.argmax_agreement < 1.0 or not r.max_abs_prob_diff <= r.tolerance:
        raise ExportRefused(
            f"ONNX and torch disagree on {r.images} images: argmax agreement {r.argmax_agreement:.4%} "
            f"(need 100%), max |probability difference| {r.max_abs_prob_diff:.3g} (tolerance {r.tolerance:g})"
        )


# --- Triton config ---------------------------------------------------------------------------------


def render_triton_config(
    *,
    model_name: str,
    spec: PreprocessSpec,
    num_classes: int,
    max_batch_size: int = 128,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32, 64),
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    instance_kind: str = "KIND_CPU",
) -> str:
    """The ``config.pbtxt`` text for the exported model; dims exclude the batch axis (Triton adds it)."""
    pb = model_config_pb2
    try:
        kind = pb.ModelInstanceGroup.Kind.Value(instance_kind)
    except ValueError as exc:
        raise ExportRefused(f"unknown Triton instance kind {instance_kind!r}") from exc
    outputs = [pb.ModelOutput(name=name, data_type=pb.TYPE_FP32, dims=[num_classes]) for name in OUTPUT_NAMES]
    outputs[0].label_filename = LABELS_FILE  # lets Triton's classification extension name the classes
    chw = [spec.channels, spec.height, spec.width]
    config = pb.ModelConfig(
        name=model_name,
        platform=TRITON_PLATFORM,
        max_batch_size=max_batch_size,
        input=[pb.ModelInput(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=chw)],
        output=outputs,
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=list(preferred_batch_sizes), max_queue_delay_microseconds=max_queue_delay_us
        ),
        instance_group=[pb.ModelInstanceGroup(count=instance_count, kind=kind)],
    )
    text = text_format.MessageToString(config)
    validate_triton_config(text, model_name=model_name, spec=spec, num_classes=num_classes)
    return text


def validate_triton_config(
    text: str,
    *,
    model_name: str | None = None,
    spec: PreprocessSpec | None = None,
    num_classes: int | None = None,
) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt`` text and check it describes our ONNX model; raise ``ExportRefused`` if not.

    Always checked: platform, ``max_batch_size`` > 0, the input and output names and FP32 types, the
    preferred batch sizes. Checked when given: the model name, input dims (C, H, W), output dims (K,).
    """
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ExportRefused(f"config.pbtxt does not parse as a Triton ModelConfig: {exc}") from exc
    problems = _config_problems(config, model_name, spec, num_classes)
    if problems:
        raise ExportRefused("invalid Triton config: " + "; ".join(problems))
    return config


def _config_problems(
    config: model_config_pb2.ModelConfig,
    model_name: str | None,
    spec: PreprocessSpec | None,
    num_classes: int | None,
) -> list[str]:
    """Everything wrong with ``config``, as messages; empty when it is fine."""
    problems = []
    if config.platform != TRITON_PLATFORM:
        problems.append(f"platform is {config.platform!r}, expected {TRITON_PLATFORM!r}")
    if config.max_batch_size <= 0:
        problems.append(f"max_batch_size is {config.max_batch_size}; it must be > 0 for a batched model")
    if model_name is not None and config.name != model_name:
        problems.append(f"name is {config.name!r}, expected {model_name!r} (the model's folder name)")
    expected_in = None if spec is None else [spec.channels, spec.height, spec.width]
    problems += _tensor_problems("input", config.input, [INPUT_NAME], expected_in)
    expected_out = None if num_classes is None else [num_classes]
    problems += _tensor_problems("output", config.output, list(OUTPUT_NAMES), expected_out)
    for size in config.dynamic_batching.preferred_batch_size:
        if not 0 < size <= config.max_batch_size:
            problems.append(f"preferred_batch_size {size} is outside 1..{config.max_batch_size} (max_batch_size)")
    return problems


def _tensor_problems(kind: str, tensors, names: list[str], dims: list[int] | None) -> list[str]:
    """Check a repeated ModelInput/ModelOutput field against the expected names and dims."""
    found = [t.name for t in tensors]
    if found != names:
        return [f"{kind} names are {found}, expected {names}"]
    problems = []
    for t in tensors:
        if t.data_type != model_config_pb2.TYPE_FP32:
            type_name = model_config_pb2.DataType.Name(t.data_type)
            problems.append(f"{kind} {t.name!r} has type {type_name}, expected TYPE_FP32")
        if dims is not None and list(t.dims) != dims:
            problems.append(f"{kind} {t.name!r} has dims {list(t.dims)}, expected {dims}")
    return problems


# --- model card ------------------------------------------------------------------------------------


def code_version() -> str:
    """``labelaudit.__version__``, plus the short git commit when running from a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return labelaudit.__version__
    return f"{labelaudit.__version__} (git {commit})" if commit else labelaudit.__version__


def build_model_card(
    meta: CheckpointMeta, *, name: str, version: str, parity: ParityResult, onnx_sha256: str
) -> ModelCard:
    """The model card for an export: the checkpoint's metadata plus parity, hash and code version."""
    return ModelCard(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        classes=meta.classes,
        preprocess=meta.preprocess,
        architecture=meta.arch,
        method=meta.method,
        init=meta.init,
        metrics=meta.metrics,
        gate=meta.gate,
        transition_matrix=meta.transition_matrix,
        labeler_transition_matrices=meta.labeler_transition_matrices,
        labeler_counts=meta.labeler_counts,
        disagreement_thresholds=meta.disagreement_thresholds,
        thresholds_source=meta.thresholds_source,
        confusion=meta.confusion,
        labeler_error_rates=meta.labeler_error_rates,
        parity=parity,
        data_version=meta.data_version,
        code_version=code_version(),
        training_config=meta.config,
        onnx_sha256=onnx_sha256,
    )


# --- the whole export ------------------------------------------------------------------------------


def _parity_rows(manifest: Manifest, limit: int) -> np.ndarray:
    """Row indices for the parity check: test rows first, then val, then train; at most ``limit``."""
    order = np.concatenate([np.flatnonzero(manifest.mask(split=s)) for s in PARITY_SPLITS])
    return order[:limit]


def parity_inputs(
    manifest_path: Path,
    meta: CheckpointMeta,
    *,
    limit: int,
    min_images: int = MIN_PARITY_IMAGES,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Up to ``limit`` manifest images, preprocessed as serving will: (N, C, H, W) float32. Only those
    images are decoded, whatever the manifest's size."""
    if limit < 1:
        raise ExportRefused(f"parity_images is {limit}: parity needs at least one image (--parity-images)")
    manifest = read_manifest(manifest_path, classes=meta.classes)
    rows = _parity_rows(manifest, limit)
    if len(rows) < min_images:
        raise ExportRefused(
            f"parity needs at least {min_images} images; {manifest_path.name} has {len(manifest)} rows and "
            f"parity_images is {limit} (--parity-images, --min-parity-images)"
        )
    pixels = np.empty((len(rows), meta.preprocess.height, meta.preprocess.width, meta.preprocess.channels), np.uint8)
    for i, row in enumerate(rows):
        pixels[i] = row_pixels(manifest, int(row), meta.preprocess)
        if progress:
            progress(1)
    return normalize(pixels, meta.preprocess)


def _refuse_bad_names(name: str, version: str) -> None:
    # Triton ignores version folders that are not positive integers, and the name is a folder name.
    if not version.isdigit() or int(version) < 1:
        raise ExportRefused(f"version must be a positive integer (a Triton version folder); got {version!r}")
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ExportRefused(f"model name {name!r} is not a usable folder name")


def _refuse_failed_gate(meta: CheckpointMeta, force: bool) -> None:
    if not meta.gate.passed and not force:
        raise ExportRefused(
            f"the training gate failed ({meta.gate.metric}: initial {meta.gate.initial}, final "
            f"{meta.gate.final}): {meta.gate.reason}. Pass --force to export anyway."
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_model_files(
    staging: Path,
    net: TwoHeadNet,
    meta: CheckpointMeta,
    inputs: np.ndarray,
    *,
    name: str,
    version: str,
    min_images: int,
    instance_kind: str,
) -> tuple[ParityResult, ModelCard]:
    """Write and verify everything under ``staging`` (laid out like ``<repo>/<name>``)."""
    onnx_path = staging / version / "model.onnx"
    export_onnx(net, meta.preprocess, onnx_path)
    parity = check_parity(net, onnx_path, inputs, min_images=min_images)
    config = render_triton_config(
        model_name=name, spec=meta.preprocess, num_classes=len(meta.classes), instance_kind=instance_kind
    )
    (staging / "config.pbtxt").write_text(config)
    (staging / LABELS_FILE).write_text("".join(f"{c}\n" for c in meta.classes))
    card = build_model_card(meta, name=name, version=version, parity=parity, onnx_sha256=_sha256(onnx_path))
    card_json = card.model_dump_json(indent=2) + "\n"
    (staging / version / "model_card.json").write_text(card_json)
    (staging / "model_card.json").write_text(card_json)
    return parity, card


def _publish(staging: Path, model_dir: Path, version: str) -> None:
    """Move a verified staging folder into place: the version folder first, then the shared files."""
    model_dir.mkdir(exist_ok=True)
    os.replace(staging / version, model_dir / version)
    for file in ("config.pbtxt", LABELS_FILE, "model_card.json"):
        os.replace(staging / file, model_dir / file)


def export_model(
    checkpoint: Path,
    *,
    manifest: Path,
    repo: Path,
    name: str = "labelaudit",
    version: str = "1",
    force: bool = False,
    parity_images: int = MIN_PARITY_IMAGES,
    min_images: int = MIN_PARITY_IMAGES,
    instance_kind: str = "KIND_CPU",
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export ``checkpoint`` into the Triton repository ``repo`` as ``<name>/<version>``.

    Refuses (``ExportRefused``) a checkpoint whose gate failed unless ``force``; a version that is not
    a positive integer or already exists;
    a manifest with fewer than ``min_images`` usable rows; and any failed check. Parity runs on up to
    ``parity_images`` manifest images (test rows first, then val, then train). ``progress(n)`` is
    called as images are decoded. On refusal nothing is left in ``repo``.
    """
    _refuse_bad_names(name, version)
    net, meta = load_checkpoint(checkpoint)
    _refuse_failed_gate(meta, force)
    model_dir = Path(repo) / name
    if (model_dir / version).exists():
        raise ExportRefused(f"{model_dir / version} already exists; choose another version or remove it")
    inputs = parity_inputs(Path(manifest), meta, limit=parity_images, min_images=min_images, progress=progress)
    Path(repo).mkdir(parents=True, exist_ok=True)
    # Staged inside the repository so the final moves are renames on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-export-", dir=repo))
    try:
        parity, card = _write_model_files(
            staging, net, meta, inputs, name=name, version=version, min_images=min_images, instance_kind=instance_kind
        )
        _publish(staging, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    version_dir = model_dir / version
    return ExportResult(
        model_dir=model_dir,
        version_dir=version_dir,
        onnx_path=version_dir / "model.onnx",
        config_path=model_dir / "config.pbtxt",
        labels_path=model_dir / LABELS_FILE,
        card_path=version_dir / "model_card.json",
        parity=parity,
        card=card,
    )
