"""ONNX export, parity, Triton config and the full export into a model repository."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import labelaudit
from labelaudit.errors import ExportRefused
from labelaudit.schemas.model_card import GateResult, ModelCard, ModelMetrics, ParityResult, PreprocessSpec
from labelaudit.training import export
from labelaudit.training.checkpoint import CheckpointMeta, save_checkpoint
from labelaudit.training.networks import TwoHeadNet

CLASSES = [f"class_{k}" for k in range(10)]
SPEC = PreprocessSpec(height=28, width=28, channels=1, mean=(0.5,), std=(0.25,))
PARITY = ParityResult(images=64, argmax_agreement=1.0, max_abs_prob_diff=1e-7, tolerance=1e-4)


def _net(seed: int = 0) -> TwoHeadNet:
    torch.manual_seed(seed)
    return TwoHeadNet("cnn_small", len(CLASSES), 1).eval()


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    """(n, 1, 28, 28) float32, roughly what normalised images look like."""
    return np.random.default_rng(seed).normal(size=(n, 1, 28, 28)).astype(np.float32)


def _meta(*, passed: bool = True, manifest: str = "manifest.jsonl") -> CheckpointMeta:
    return CheckpointMeta(
        arch="cnn_small",
        classes=CLASSES,
        preprocess=SPEC,
        method="fasten",
        init="classifier_a.pt",
        config={"epochs": 3, "lr": 0.01},
        metrics=ModelMetrics(trusted_acc=0.8, initial_trusted_acc=0.7),
        gate=GateResult(
            passed=passed,
            metric="trusted_acc",
            initial=0.7,
            final=0.8 if passed else 0.6,
            reason="final >= initial" if passed else "trusted_acc fell from 0.70 to 0.60",
        ),
        transition_matrix=np.eye(10).tolist(),
        disagreement_thresholds=[0.5] * 10,
        thresholds_source="val",
        confusion=(np.eye(10, dtype=int) * 90 + 1).tolist(),
        data_version="0" * 64,
        manifest=manifest,
    )


@pytest.fixture(scope="module")
def net() -> TwoHeadNet:
    return _net()


@pytest.fixture(scope="module")
def onnx_path(net: TwoHeadNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export.export_onnx(net, SPEC, path)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 random 28x28 greyscale PNGs: 20 train, 10 val, 10 test, with classes.txt beside them."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(root / f"{i}.png")
        split = "train" if i < 20 else "val" if i < 30 else "test"
        label = CLASSES[i % 10]
        rows.append({"item_id": str(i), "image": f"{i}.png", "label": label, "labeler_id": "a", "split": split})
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _checkpoint(tmp_path: Path, *, passed: bool = True) -> Path:
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, _net(), _meta(passed=passed))
    return path


# --- ONNX and parity -------------------------------------------------------------------------------


def test_export_onnx_is_checked_single_file_with_dynamic_batch(onnx_path: Path) -> None:
    onnx.checker.check_model(str(onnx_path), full_check=True)
    model = onnx.load(str(onnx_path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["probabilities", "logits"]
    assert model.opset_import[0].version == 17
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    assert list(onnx_path.parent.iterdir()) == [onnx_path]  # no external data file beside it


def test_export_onnx_leaves_callers_net_untouched(tmp_path: Path) -> None:
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export.export_onnx(net, SPEC, tmp_path / "m.onnx")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_parity_passes_on_varied_batches(net: TwoHeadNet, onnx_path: Path) -> None:
    result = export.check_parity(net, onnx_path, _inputs(64), batch_size=16, min_images=64)
    assert result.images == 64
    assert result.argmax_agreement == 1.0
    assert result.max_abs_prob_diff <= 1e-4
    assert result.tolerance == 1e-4


def test_batch_slices_include_size_one_and_an_odd_size() -> None:
    sizes = [s.stop - s.start for s in export._batch_slices(64, 16)]
    assert sizes[:2] == [1, 7]
    assert sum(sizes) == 64
    assert [s.stop - s.start for s in export._batch_slices(3, 16)] == [1, 2]


def test_parity_refuses_a_model_that_differs_from_the_onnx(net: TwoHeadNet, onnx_path: Path) -> None:
    drifted = copy.deepcopy(net)
    with torch.no_grad():
        drifted.clean_head.bias[0] += 1.0  # the ONNX file still has the old bias
    with pytest.raises(ExportRefused, match=r"max \|probability difference\|"):
        export.check_parity(drifted, onnx_path, _inputs(64), min_images=64)


def test_parity_refuses_too_few_images(net: TwoHeadNet, onnx_path: Path) -> None:
    with pytest.raises(ExportRefused, match="at least 1000 images; got 64"):
        export.check_parity(net, onnx_path, _inputs(64))


# --- Triton config ---------------------------------------------------------------------------------


def _config_text(**overrides) -> str:
    args = {"model_name": "labelaudit", "spec": SPEC, "num_classes": 10} | overrides
    return export.render_triton_config(**args)


def test_triton_config_renders_and_validates() -> None:
    config = export.validate_triton_config(_config_text(), model_name="labelaudit", spec=SPEC, num_classes=10)
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 128
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [10]), ("logits", [10])]
    assert [o.label_filename for o in config.output] == ["labels.txt", ""]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, config.instance_group[0].KIND_CPU)]


def test_triton_config_text_names_the_platform_and_labels() -> None:
    text = _config_text(instance_kind="KIND_GPU", instance_count=2)
    assert 'platform: "onnxruntime_onnx"' in text
    assert 'label_filename: "labels.txt"' in text
    assert "KIND_GPU" in text and "count: 2" in text


def test_validate_rejects_garbage() -> None:
    with pytest.raises(ExportRefused, match="does not parse"):
        export.validate_triton_config("this is { not a model config")


def test_validate_rejects_wrong_platform() -> None:
    text = _config_text().replace("onnxruntime_onnx", "tensorrt_plan")
    with pytest.raises(ExportRefused, match="platform is 'tensorrt_plan'"):
        export.validate_triton_config(text)


def test_validate_rejects_unexpected_dims_and_names() -> None:
    with pytest.raises(ExportRefused, match=r"dims \[1, 28, 28\], expected \[3, 28, 28\]"):
        export.validate_triton_config(_config_text(), spec=SPEC.model_copy(update={"channels": 3}))
    with pytest.raises(ExportRefused, match=r"dims \[10\], expected \[5\]"):
        export.validate_triton_config(_config_text(), num_classes=5)
    with pytest.raises(ExportRefused, match="output names"):
        export.validate_triton_config(_config_text().replace('"logits"', '"scores"'))


def test_render_refuses_preferred_batch_above_max_and_unknown_kind() -> None:
    with pytest.raises(ExportRefused, match="preferred_batch_size 64"):
        _config_text(max_batch_size=32)
    with pytest.raises(ExportRefused, match="instance kind"):
        _config_text(instance_kind="KIND_TPU")


# --- model card ------------------------------------------------------------------------------------


def test_model_card_copies_meta_and_round_trips() -> None:
    meta = _meta()
    card = export.build_model_card(meta, name="labelaudit", version="3", parity=PARITY, onnx_sha256="ab" * 32)
    assert ModelCard.model_validate_json(card.model_dump_json()) == card
    assert (card.init, card.method, card.architecture) == ("classifier_a.pt", "fasten", "cnn_small")
    assert card.training_config == meta.config
    assert card.gate == meta.gate and card.metrics == meta.metrics
    assert card.confusion == meta.confusion  # the report deconvolves labelers' disagreement by it
    assert card.parity == PARITY and card.onnx_sha256 == "ab" * 32
    assert card.code_version.startswith(labelaudit.__version__)
    assert card.created_at.tzinfo is not None


# --- the whole export ------------------------------------------------------------------------------


def _export(tmp_path: Path, manifest: Path, *, passed: bool = True, **kwargs) -> export.ExportResult:
    args = {"manifest": manifest, "repo": tmp_path / "repo", "parity_images": 32, "min_images": 16} | kwargs
    return export.export_model(_checkpoint(tmp_path, passed=passed), **args)


def test_export_model_writes_the_triton_layout(tmp_path: Path, manifest: Path) -> None:
    result = _export(tmp_path, manifest, version="2")
    repo = tmp_path / "repo"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "labelaudit",
        "labelaudit/2",
        "labelaudit/2/model.onnx",
        "labelaudit/2/model_card.json",
        "labelaudit/config.pbtxt",
        "labelaudit/labels.txt",
        "labelaudit/model_card.json",
    ]
    model_dir = repo / "labelaudit"
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES
    export.validate_triton_config(
        (model_dir / "config.pbtxt").read_text(), model_name="labelaudit", spec=SPEC, num_classes=10
    )
    card = ModelCard.model_validate_json((model_dir / "2" / "model_card.json").read_text())
    assert (model_dir / "model_card.json").read_text() == (model_dir / "2" / "model_card.json").read_text()
    assert card.onnx_sha256 == hashlib.sha256((model_dir / "2" / "model.onnx").read_bytes()).hexdigest()
    assert card.version == "2" and card.parity == result.parity
    assert result.parity.images == 32 and result.parity.argmax_agreement == 1.0


def test_parity_rows_prefer_test_then_val(manifest: Path) -> None:
    rows = export._parity_rows(export.read_manifest(manifest), 15)
    assert list(rows) == list(range(30, 40)) + list(range(20, 25))


def test_export_model_refuses_an_existing_version(tmp_path: Path, manifest: Path) -> None:
    _export(tmp_path, manifest)
    with pytest.raises(ExportRefused, match="already exists"):
        _export(tmp_path, manifest)


@pytest.mark.parametrize("version", ["v1", "0", ""])
def test_export_model_refuses_a_version_triton_would_ignore(tmp_path: Path, manifest: Path, version: str) -> None:
    with pytest.raises(ExportRefused, match="positive integer"):
        _export(tmp_path, manifest, version=version)
    assert not (tmp_path / "repo").exists()


def test_failed_gate_refuses_without_force_and_writes_nothing(tmp_path: Path, manifest: Path) -> None:
    with pytest.raises(ExportRefused, match=r"trusted_acc fell from 0\.70 to 0\.60.*--force"):
        _export(tmp_path, manifest, passed=False)
    assert not (tmp_path / "repo").exists()


def test_failed_gate_exports_with_force(tmp_path: Path, manifest: Path) -> None:
    result = _export(tmp_path, manifest, passed=False, force=True)
    assert result.onnx_path.is_file()
    assert result.card.gate.passed is False


def test_too_few_manifest_rows_refuses(tmp_path: Path, manifest: Path) -> None:
    with pytest.raises(ExportRefused, match="at least 1000 images"):
        _export(tmp_path, manifest, min_images=1000)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("count", [0, -3])
def test_a_parity_count_below_one_is_refused_not_sliced(tmp_path: Path, manifest: Path, count: int) -> None:
    """A negative count once sliced all but the last images off the end and checked those."""
    with pytest.raises(ExportRefused, match=f"parity_images is {count}: parity needs at least one image"):
        _export(tmp_path, manifest, parity_images=count, min_images=0)
    assert not (tmp_path / "repo").exists()


def test_failed_parity_leaves_nothing_in_the_repo(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = export.export_onnx

    def export_a_different_net(net: TwoHeadNet, spec: PreprocessSpec, path: Path, **kwargs) -> None:
        drifted = copy.deepcopy(net)
        with torch.no_grad():
            drifted.clean_head.bias[0] += 1.0
        real_export(drifted, spec, path, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_a_different_net)
    with pytest.raises(ExportRefused, match="disagree"):
        _export(tmp_path, manifest)
    assert list((tmp_path / "repo").iterdir()) == []
