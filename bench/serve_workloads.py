"""The serving benchmark's workloads: the model it serves (a CE model on task B, or an ImageNet-style
ResNet-18 on real JPEG photos) and the payloads, built once in bench/work (see bench/serve.py)."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import SIZES

# -- the model and the payloads ------------------------------------------------------------------------


def build_model(work: Path) -> tuple[Path, Path]:
    """Task B at tiny size and a CE model exported from it (the network is the same at every size)."""
    from labelaudit.training.datasets import fashion_mnist
    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    data, repo = work / "data", work / "repo"
    if not (repo / "labelaudit" / "1" / "model_card.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        per_task, val_size, test_size = SIZES["tiny"]
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=per_task, val_size=val_size, test_size=test_size)
        result = train(data / "task_b.jsonl", init=None, out=work / "runs", cfg=TrainConfig(method="ce", epochs=2))
        export_model(result.checkpoint, manifest=data / "task_b.jsonl", repo=repo)
    return data, repo


def test_images(data: Path, n: int) -> list[bytes]:
    """The first ``n`` PNG files of task B's test split, as bytes."""
    rows = [json.loads(line) for line in (data / "task_b.jsonl").read_text().splitlines()]
    return [(data / r["image"]).read_bytes() for r in rows if r["split"] == "test"][:n]


# -- resnet18-224: real JPEG photos and an ImageNet-style ResNet-18 ---------------------------------------

PHOTO_SIZE = (640, 480)
PHOTO_QUALITY = 90
N_PHOTOS = 64  # distinct photos: the payloads cycle over them, and export parity runs on all of them
SEED = 0
LOGIT_SPREAD = 2.0  # std of the logits across classes, mean over the photos: probabilities neither flat nor one-hot
# Imagenette's ten ImageNet classes, as names only: the weights are random, the answers mean nothing.
RESNET_CLASSES = [
    "tench",
    "english_springer",
    "cassette_player",
    "chain_saw",
    "church",
    "french_horn",
    "garbage_truck",
    "gas_pump",
    "golf_ball",
    "parachute",
]


def resnet_spec():
    """ImageNet-style eval preprocessing (torchvision's Resize(256) + CenterCrop(224)); no JPEG draft, so
    the peers' standalone mirror (bench/peers/preprocess.py) decodes exactly as labelaudit does."""
    from labelaudit.schemas.model_card import PreprocessSpec

    return PreprocessSpec(
        height=224,
        width=224,
        channels=3,
        resize="shorter_side_center_crop",
        crop_pct=0.875,
        resample="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        jpeg_draft=False,
    )


def source_photos() -> list[tuple[str, Image.Image]]:
    """The real photos installed packages ship: scikit-learn's china.jpg and flower.jpg (640x427) and
    matplotlib's grace_hopper.jpg (512x600). scikit-learn is found, not imported (its import is slow)."""
    import importlib.util

    import matplotlib

    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or not sklearn.origin:
        raise SystemExit("--model resnet18-224 needs scikit-learn's sample photos: pip install -e .[bench]")
    images = Path(sklearn.origin).parent / "datasets" / "images"
    grace_hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    paths = [images / "china.jpg", images / "flower.jpg", grace_hopper]
    return [(p.stem, Image.open(p).convert("RGB")) for p in paths]


def make_photos(folder: Path, n: int = N_PHOTOS, seed: int = SEED) -> list[Path]:
    """``n`` distinct 640x480 JPEG photos (quality 90), taking the sources in turn: a random 4:3 box of each
    (60 to 100% of the largest that fits), rescaled (bicubic) to 640x480, mirrored half the time."""
    rng = np.random.default_rng(seed)
    sources = source_photos()
    out_w, out_h = PHOTO_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        stem, src = sources[i % len(sources)]
        box_w = min(src.width, src.height * out_w / out_h) * rng.uniform(0.6, 1.0)
        box_h = box_w * out_h / out_w
        left, top = rng.uniform(0, src.width - box_w), rng.uniform(0, src.height - box_h)
        img = src.resize(PHOTO_SIZE, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(folder / f"{i:02d}-{stem}.jpg")
        img.save(paths[-1], "JPEG", quality=PHOTO_QUALITY)
    if len({p.read_bytes() for p in paths}) != n:
        raise RuntimeError("the made photos are not all distinct")
    return paths


def _recipe() -> dict:
    """What the resnet18-224 work folder was built from: a change rebuilds it."""
    return {
        "version": 2,
        "photos": N_PHOTOS,
        "size": PHOTO_SIZE,
        "quality": PHOTO_QUALITY,
        "seed": SEED,
        "classes": RESNET_CLASSES,
        "logit_spread": LOGIT_SPREAD,
        "preprocess": resnet_spec().model_dump(mode="json"),
    }


def build_resnet18(work: Path) -> tuple[Path, list[Path]]:
    """The photos, a manifest of them (split ``test``, labels round the classes), a seeded random ResNet-18
    saved as a labelaudit checkpoint with a hand-built CheckpointMeta, exported by ``export_model`` with
    parity on all the photos. Returns (model repository, photo paths); built once per recipe."""
    recipe, repo, photos = work / "recipe.json", work / "repo", work / "photos"
    if recipe.exists() and json.loads(recipe.read_text()) == json.loads(json.dumps(_recipe())):
        if (repo / "labelaudit" / "1" / "model_card.json").exists():
            return repo, sorted(photos.glob("*.jpg"))
    import hashlib

    import torch

    from labelaudit.imaging.preprocess import normalize, pixels_from_file
    from labelaudit.schemas.model_card import GateResult, ModelMetrics
    from labelaudit.training.checkpoint import CheckpointMeta, save_checkpoint
    from labelaudit.training.export import export_model
    from labelaudit.training.networks import TwoHeadNet

    shutil.rmtree(work, ignore_errors=True)
    paths = make_photos(photos)
    manifest = photos / "manifest.jsonl"
    rows = [
        {
            "item_id": p.stem,
            "image": p.name,
            "label": RESNET_CLASSES[i % len(RESNET_CLASSES)],
            "labeler_id": "bench",
            "split": "test",
        }
        for i, p in enumerate(paths)
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = resnet_spec()
    x = torch.from_numpy(normalize(np.stack([pixels_from_file(str(p), spec) for p in paths]), spec))
    torch.manual_seed(SEED)
    net = TwoHeadNet("torchvision:resnet18", len(RESNET_CLASSES), spec.channels)
    calibrate(net, x)
    meta = CheckpointMeta(
        arch="torchvision:resnet18",
        classes=RESNET_CLASSES,
        preprocess=spec,
        method="untrained",
        init="scratch",
        config={
            "bench": "bench/serve.py --model resnet18-224",
            "seed": SEED,
            "weights": "seeded random init; BatchNorm statistics from the photos; clean head scaled to a logit "
            f"spread of {LOGIT_SPREAD}",
        },
        metrics=ModelMetrics(trusted_acc=0.0),
        gate=GateResult(
            passed=True,
            metric="trusted_acc",
            initial=None,
            final=0.0,
            reason="a benchmark model with random weights, exported only to time serving",
        ),
        disagreement_thresholds=[1 / len(RESNET_CLASSES)] * len(RESNET_CLASSES),
        thresholds_source="none: a benchmark model (1/K for every class)",
        data_version=hashlib.sha256(manifest.read_bytes()).hexdigest(),
        manifest=str(manifest),
    )
    checkpoint = work / "resnet18.pt"
    save_checkpoint(checkpoint, net, meta)
    export_model(checkpoint, manifest=manifest, repo=repo, parity_images=N_PHOTOS, min_images=N_PHOTOS)
    recipe.write_text(json.dumps(_recipe()))
    return repo, paths


def calibrate(net, x) -> None:
    """Random weights with BatchNorm's initial statistics (mean 0, var 1) answer nearly alike for every photo
    (seed 0: the same top class for all, at 0.39 to 0.41), unlike a trained model. So that the answers (and
    the parity checks' probabilities) vary by photo as a trained model's do: the BatchNorm statistics of one
    training-mode pass over ``x`` (momentum None: exactly that batch's), then
    the clean head's bias centred (every class's mean logit over ``x`` 0, so the top class varies) and the
    head scaled so the logits spread by LOGIT_SPREAD across classes; the noisy head copies it."""
    import torch
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train()(x)
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
        net.clean_head.bias.sub_(net(x).mean(dim=0))  # each class's mean logit over the photos 0: varied answers
        scale = LOGIT_SPREAD / float(net(x).std(dim=1).mean())
        net.clean_head.weight.mul_(scale)
        net.clean_head.bias.mul_(scale)
        net.reset_noisy_heads_to_clean()


@dataclass
class Workload:
    """The model repository to serve and the images to send, for one ``--model``."""

    repo: Path
    images: list[bytes]
    payload: str  # for the results' config


def workload(model: str, work: Path) -> Workload:
    if model == "fmnist":
        data, repo = build_model(work)
        images = test_images(data, 256)
        mean = np.mean([len(i) for i in images])
        return Workload(repo, images, f"task-B test PNGs, {len(images)} distinct, mean {mean:.0f} bytes")
    repo, paths = build_resnet18(work)
    images = [p.read_bytes() for p in paths]
    mean = np.mean([len(i) for i in images])
    payload = (
        f"{len(images)} distinct {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG photos (quality {PHOTO_QUALITY}, mean "
        f"{mean:.0f} bytes), crops and rescales of scikit-learn's china.jpg and flower.jpg and matplotlib's "
        "grace_hopper.jpg"
    )
    return Workload(repo, images, payload)


def groups(images: list[bytes], per_request: int, n: int) -> list[list[bytes]]:
    """``n`` request payloads of ``per_request`` images each, cycling over ``images``."""
    cycle = itertools.cycle(images)
    return [[next(cycle) for _ in range(per_request)] for _ in range(n)]
