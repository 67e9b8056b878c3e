"""Classifier A, where training starts: a labelaudit checkpoint, or a torchvision or timm network from the
user's own weights file, with its class names and the preprocessing it was trained with.

``--init`` forms (``parse_init``)::

    runs/a/checkpoint.pt                  a labelaudit checkpoint (classes and preprocessing inside)
    torchvision:resnet50=a.pth            torchvision architecture + a state dict
    timm:convnext_tiny=a.safetensors      timm architecture + a state dict or safetensors file

Task B's classes map onto classifier A's by name (``map_classes``): a class A knows keeps A's row of the
final layer, a new class gets a fresh row, A's classes that B lacks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelaudit.errors import ClassifierAError
from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.training.backbones import Backbone, backbone_from_weights, split_arch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ClassifierA:
    """Where training starts. ``backbone.head`` is A's final layer (rows: ``classes``), when it had one."""

    arch: str
    backbone: Backbone
    classes: list[str] | None
    preprocess: PreprocessSpec
    name: str  # for the model card: the weights file's name
    preprocess_source: str  # where ``preprocess`` came from, said to the user


@dataclass
class ClassMapping:
    """Task B's classes against A's. ``rows[b]``: the row of A's final layer class ``b`` starts from, or
    None for a class A does not know."""

    rows: list[int | None]
    kept: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.new and not self.dropped:
            return f"task B's {len(self.kept)} classes are classifier A's"
        parts = [f"{len(self.kept)} of task B's classes are classifier A's"]
        if self.new:
            parts.append(f"new (fresh rows of the final layer): {', '.join(self.new)}")
        if self.dropped:
            parts.append(f"classifier A's classes task B lacks (dropped): {', '.join(self.dropped)}")
        return "; ".join(parts)


def parse_init(init: str) -> tuple[str | None, Path]:
    """``"timm:resnet50=a.pth"`` -> ``("timm:resnet50", Path("a.pth"))``; a checkpoint -> ``(None, path)``."""
    family, sep, rest = init.partition(":")
    if sep and family in ("torchvision", "timm"):
        arch, eq, weights = rest.partition("=")
        if not eq or not arch or not weights:
            raise ClassifierAError(f"--init {init!r}: write {family}:<architecture>=<weights file>")
        return f"{family}:{arch}", Path(weights)
    return None, Path(init)


def read_class_names(path: Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line) or from a task's manifest (its ``classes.txt``
    beside it, else its sorted labels)."""
    if not path.is_file():
        raise ClassifierAError(f"classifier A's class list {path} does not exist")
    if path.suffix == ".jsonl":
        from labelaudit.imaging.manifest import read_manifest

        return read_manifest(path).classes
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ClassifierAError(f"{path.name} names a class twice")
    return names


def _classes_beside(weights: Path) -> Path | None:
    for candidate in (weights.with_suffix(".classes.txt"), weights.parent / "classes.txt"):
        if candidate.is_file():
            return candidate
    return None


def load_classifier_a(
    init: str, *, classes_file: Path | None = None, preprocess: dict[str, Any] | None = None
) -> ClassifierA:
    """Load classifier A from ``init`` (see the module docstring).

    ``classes_file``: A's class names (default: ``<weights>.classes.txt`` or ``classes.txt`` beside the
    weights). ``preprocess``: PreprocessSpec fields that override what A's architecture implies
    (timm's pretrained config, torchvision's weights transforms) or what its checkpoint says.
    """
    arch, path = parse_init(init)
    if arch is None:
        return _from_checkpoint(path, preprocess or {})
    backbone = backbone_from_weights(arch, path)
    classes_path = classes_file or _classes_beside(path)
    classes = read_class_names(classes_path) if classes_path else None
    k = None if backbone.head is None else backbone.head.out_features
    if classes is not None and k is not None and len(classes) != k:
        raise ClassifierAError(
            f"{path.name}'s final layer has {k} outputs but {classes_path.name} lists {len(classes)} classes"
        )
    spec, source = architecture_preprocess(arch, backbone.features)
    spec, source = _override(spec, source, preprocess or {})
    return ClassifierA(arch, backbone, classes, spec, path.name, source)


def _from_checkpoint(path: Path, overrides: dict[str, Any]) -> ClassifierA:
    from labelaudit.training.checkpoint import load_checkpoint

    net, meta = load_checkpoint(path)
    backbone = Backbone(net.features, net.clean_head.in_features, head=net.clean_head)
    if overrides:
        raise ClassifierAError(
            f"{path.name} is a labelaudit checkpoint: its preprocessing is fixed by its model card; "
            "preprocessing flags apply to torchvision: and timm: weights only"
        )
    return ClassifierA(meta.arch, backbone, list(meta.classes), meta.preprocess, path.name, "its checkpoint")


def architecture_preprocess(arch: str, model: nn.Module) -> tuple[PreprocessSpec, str]:
    """The preprocessing an architecture's published weights use: timm's pretrained config, or the
    transforms of torchvision's default weights (metadata only; nothing is downloaded). JPEGs are decoded
    at the reduced DCT scale the resize allows (``jpeg_draft``: photos are these networks' input, and the
    fast decode is then the one training and serving share)."""
    family, name = split_arch(arch)
    if family == "timm":
        import timm

        cfg = timm.data.resolve_model_data_config(model)
        c, h, w = cfg["input_size"]
        resample = cfg["interpolation"] if cfg["interpolation"] in ("bilinear", "bicubic", "nearest") else "bicubic"
        spec = PreprocessSpec(
            height=h,
            width=w,
            channels=c,
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            resize="shorter_side_center_crop",
            crop_pct=cfg.get("crop_pct", 1.0),
            resample=resample,
            jpeg_draft=True,
        )
        return spec, f"timm's pretrained config for {name}"
    from torchvision import models

    try:
        t = models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        spec = PreprocessSpec(
            height=224,
            width=224,
            channels=3,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize="shorter_side_center_crop",
            crop_pct=224 / 256,
            jpeg_draft=True,
        )
        return spec, f"ImageNet defaults (torchvision publishes no weights for {name})"
    crop, resize = t.crop_size[0], t.resize_size[0]
    spec = PreprocessSpec(
        height=crop,
        width=crop,
        channels=3,
        mean=tuple(t.mean),
        std=tuple(t.std),
        resize="shorter_side_center_crop",
        crop_pct=min(1.0, crop / resize),
        resample=t.interpolation.value,
        jpeg_draft=True,
    )
    return spec, f"torchvision's {name} weights transforms"


def _override(spec: PreprocessSpec, source: str, overrides: dict[str, Any]) -> tuple[PreprocessSpec, str]:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return spec, source
    fields = spec.model_dump() | overrides
    if "channels" in overrides and "mean" not in overrides:
        fields["mean"], fields["std"] = (
            (fields["mean"][0],) * fields["channels"],
            (fields["std"][0],) * fields["channels"],
        )
    try:
        return PreprocessSpec(**fields), f"{source}, with {', '.join(sorted(overrides))} from the flags"
    except ValueError as exc:
        raise ClassifierAError(f"preprocessing flags: {exc}") from exc


def map_classes(a_classes: list[str] | None, b_classes: list[str]) -> ClassMapping:
    """Match task B's classes to A's by name. Without A's names nothing matches: every row is fresh."""
    if a_classes is None:
        return ClassMapping(rows=[None] * len(b_classes), new=list(b_classes))
    index = {c: i for i, c in enumerate(a_classes)}
    rows = [index.get(c) for c in b_classes]
    return ClassMapping(
        rows=rows,
        kept=[c for c in b_classes if c in index],
        new=[c for c in b_classes if c not in index],
        dropped=[c for c in a_classes if c not in set(b_classes)],
    )


@torch.no_grad()
def start_clean_head(head: nn.Linear, a_head: nn.Linear | None, mapping: ClassMapping) -> None:
    """Task B's clean head from A's final layer: A's row for a class A knows; for a new class a zero
    weight row and the mean of A's biases, so it starts as no class in particular and learns from B."""
    if a_head is None:
        return  # nothing to start from: the head keeps its fresh initialisation
    bias = a_head.bias if a_head.bias is not None else torch.zeros(a_head.out_features)
    for b, a in enumerate(mapping.rows):
        if a is None:
            head.weight[b].zero_()
            head.bias[b] = bias.mean()
        else:
            head.weight[b].copy_(a_head.weight[a])
            head.bias[b] = bias[a]
