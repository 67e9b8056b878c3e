"""Classifier A as teams have it: a torchvision or timm network from their own weights file, fine-tuned on
task B with the noise-robust methods, exported with parity; class mapping by name; weights files that do
not fit fail with a message that says why."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from labelaudit.errors import ClassifierAError
from labelaudit.training.classifier_a import load_classifier_a, map_classes, parse_init, start_clean_head
from labelaudit.training.export import export_model
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.train import TrainConfig, train
from tests.trainkit import CLASSIFIER_A, TASK_A_PREPROCESS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("family", ["torchvision", "timm"])
@pytest.mark.parametrize("method", ["fasten", "crowd"])
def test_a_torchvision_or_timm_classifier_a_fine_tunes_exports_and_keeps_its_preprocessing(
    family, method, tiny_data, classifier_a_file, tmp_path
):
    arch, _ = CLASSIFIER_A[family]
    weights = classifier_a_file(family)

    result = train(
        tiny_data / "task_b.jsonl",
        init=f"{arch}={weights}",
        out=tmp_path / "run",
        preprocess=TASK_A_PREPROCESS,
        cfg=TrainConfig(method=method, epochs=1, device="cpu"),
    )

    meta = result.meta
    assert meta.arch == arch and meta.init == weights.name
    assert (meta.preprocess.height, meta.preprocess.channels, meta.preprocess.resize) == (28, 3, "stretch")
    assert meta.preprocess.mean == TASK_A_PREPROCESS["mean"]
    # A's weights were loaded and its classes mapped: far above chance (0.1) before any fine-tuning
    assert meta.metrics.initial_val_acc > 0.3
    assert meta.metrics.initial_test_acc is not None
    repo = tmp_path / "repo"
    exported = export_model(
        result.checkpoint, manifest=tiny_data / "task_b.jsonl", repo=repo, parity_images=200, min_images=200
    )
    assert exported.parity.argmax_agreement == 1.0
    card = json.loads(exported.card_path.read_text())
    assert card["architecture"] == arch and card["preprocess"]["mean"] == list(TASK_A_PREPROCESS["mean"])
    assert "dims: -1" not in exported.config_path.read_text()  # the batch axis is Triton's, dims are C, H, W


def test_the_architecture_s_published_preprocessing_is_the_default(classifier_a_file):
    timm_a = load_classifier_a(f"timm:resnet10t={classifier_a_file('timm')}")
    tv_a = load_classifier_a(f"torchvision:resnet18={classifier_a_file('torchvision')}")

    import timm

    published = timm.data.resolve_model_data_config(timm.create_model("resnet10t", pretrained=False))
    assert (3, timm_a.preprocess.height, timm_a.preprocess.width) == published["input_size"]
    assert timm_a.preprocess.resample == published["interpolation"]
    assert timm_a.preprocess.crop_pct == published["crop_pct"] and timm_a.preprocess.mean == published["mean"]
    assert (
        timm_a.preprocess.resize == "shorter_side_center_crop"
        and timm_a.preprocess.jpeg_draft
        and tv_a.preprocess.jpeg_draft
    )
    from torchvision.models import get_model_weights

    t = get_model_weights("resnet18").DEFAULT.transforms()  # metadata only: nothing is downloaded
    assert tv_a.preprocess.height == t.crop_size[0]
    assert tv_a.preprocess.crop_pct == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert tv_a.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert tv_a.classes == (classifier_a_file("torchvision").parent / "classes.txt").read_text().split()


def test_task_b_classes_map_by_name_new_rows_fresh_and_missing_ones_dropped(classifier_a_file):
    a = load_classifier_a(f"torchvision:resnet18={classifier_a_file('torchvision')}")
    b_classes = [a.classes[3], "parka", a.classes[0]]  # two of A's, in another order, and a new one

    mapping = map_classes(a.classes, b_classes)
    net = TwoHeadNet(a.arch, len(b_classes), 3, backbone=a.backbone)
    start_clean_head(net.clean_head, a.backbone.head, mapping)

    assert mapping.rows == [3, None, 0] and mapping.new == ["parka"]
    assert mapping.dropped == [c for c in a.classes if c not in b_classes]
    assert "parka" in mapping.describe() and a.classes[1] in mapping.describe()
    torch.testing.assert_close(net.clean_head.weight[0], a.backbone.head.weight[3])
    torch.testing.assert_close(net.clean_head.weight[2], a.backbone.head.weight[0])
    assert net.clean_head.weight[1].abs().sum() == 0
    assert net.clean_head.bias[1].item() == pytest.approx(a.backbone.head.bias.mean().item())


def test_training_on_a_task_with_a_new_and_a_missing_class_says_what_happened(
    tiny_data, classifier_a_file, tmp_path, note_recorder
):
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    kept = []
    for r in rows:
        if r["label"] == "bag" or r.get("true_label") == "bag":
            continue  # task B has no bags
        for key in ("label", "true_label"):
            if r.get(key) == "coat":
                r[key] = "parka"  # and calls coats parkas: a class A does not know
        kept.append(r)
    folder = tmp_path / "b"
    folder.mkdir()
    for r in kept:  # the images stay where they are: absolute paths
        r["image"] = str((tiny_data / r["image"]).resolve())
    (folder / "task_b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    result = train(
        folder / "task_b.jsonl",
        init=f"torchvision:resnet18={classifier_a_file('torchvision')}",
        out=tmp_path / "run",
        preprocess=TASK_A_PREPROCESS,
        reporter=note_recorder,
        cfg=TrainConfig(method="ce", epochs=1, device="cpu"),
    )

    assert "parka" in result.meta.classes and "bag" not in result.meta.classes and len(result.meta.classes) == 9
    said = " ".join(note_recorder.notes)
    assert "new (fresh rows of the final layer): parka" in said
    assert "dropped" in said and "bag" in said and "coat" in said


def test_weights_that_do_not_fit_fail_saying_why(classifier_a_file, tmp_path):
    tv = classifier_a_file("torchvision")
    with pytest.raises(ClassifierAError, match="does not fit torchvision:resnet34.*missing"):
        load_classifier_a(f"torchvision:resnet34={tv}")
    with pytest.raises(ClassifierAError, match="does not fit timm:resnet10t"):
        load_classifier_a(f"timm:resnet10t={tv}")
    truncated = tmp_path / "a.pth"
    truncated.write_bytes(tv.read_bytes()[:4096])
    with pytest.raises(ClassifierAError, match="not a readable weights file"):
        load_classifier_a(f"torchvision:resnet18={truncated}")
    nine = tmp_path / "nine.txt"
    nine.write_text("\n".join(f"c{i}" for i in range(9)))
    with pytest.raises(ClassifierAError, match="10 outputs but nine.txt lists 9 classes"):
        load_classifier_a(f"torchvision:resnet18={tv}", classes_file=nine)
    with pytest.raises(ClassifierAError, match="torchvision has no classification model"):
        load_classifier_a(f"torchvision:resnet_nonexistent={tv}")
    with pytest.raises(ClassifierAError, match="does not exist"):
        load_classifier_a(f"timm:resnet18={tmp_path / 'missing.pth'}")
    with pytest.raises(ClassifierAError, match="write timm:<architecture>=<weights file>"):
        parse_init("timm:resnet18")


def test_the_cli_reports_a_bad_weights_file_as_an_error_not_a_traceback(tiny_data, tmp_path):
    bad = tmp_path / "a.pth"
    bad.write_bytes(b"not torch at all")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "labelaudit",
            "train",
            "--manifest",
            str(tiny_data / "task_b.jsonl"),
            "--init",
            f"torchvision:resnet18={bad}",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "error:" in run.stdout and "not a readable weights file" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def test_the_loaded_backbone_computes_what_the_user_s_network_computes(classifier_a_file):
    import timm
    from safetensors.torch import load_file

    a = load_classifier_a(f"timm:resnet10t={classifier_a_file('timm')}")
    theirs = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    theirs.load_state_dict(load_file(str(classifier_a_file("timm"))))
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    a.backbone.features.eval()
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(a.backbone.head(a.backbone.features(x)), theirs(x), atol=1e-5, rtol=1e-5)
