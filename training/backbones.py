"""Feature extractors: our own small networks, and classifier A as teams have it (torchvision or timm).

Every backbone maps images (B, C, H, W) to pooled features (B, F); the clean and noisy heads of
``TwoHeadNet`` sit on those features, so every method works on every architecture. An architecture is
named ``cnn_small``, ``resnet_small``, ``torchvision:<name>`` (any of ``torchvision.models.list_models()``
whose final layer is a Linear) or ``timm:<name>`` (any of ``timm.list_models()``).

Nothing is downloaded: torchvision's and timm's constructors run with no pretrained weights; classifier
A's weights come from the user's own file (``load_weights_file``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labelaudit.errors import ClassifierAError

OWN = "labelaudit"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def cnn_small(in_channels: int) -> tuple[nn.Module, int]:
    """A VGG-style net for 28x28 inputs, ~22 M multiply-adds per image: fits 2-core CPU runs."""
    body = nn.Sequential(
        _conv_bn(in_channels, 32),
        _conv_bn(32, 32),
        nn.MaxPool2d(2),  # (B, 32, 14, 14)
        _conv_bn(32, 64),
        _conv_bn(64, 64),
        nn.MaxPool2d(2),  # (B, 64, 7, 7)
        _conv_bn(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (B, 128)
    )
    return body, 128


def resnet_small(in_channels: int) -> tuple[nn.Module, int]:
    """A pre-activation-free ResNet-14 of widths 64/128/256 for small images (GPU-sized)."""
    body = nn.Sequential(
        _conv_bn(in_channels, 64),
        BasicBlock(64, 64, 1),
        BasicBlock(64, 64, 1),
        BasicBlock(64, 128, 2),
        BasicBlock(128, 128, 1),  # (B, 128, H/2, W/2)
        BasicBlock(128, 256, 2),
        BasicBlock(256, 256, 1),  # (B, 256, H/4, W/4)
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return body, 256


OWN_ARCHITECTURES = {"cnn_small": cnn_small, "resnet_small": resnet_small}


@dataclass
class Backbone:
    """A network cut before its final layer. ``features``: (B, C, H, W) -> (B, ``width``). ``head_key``:
    where the final layer was in the full network's state dict (``fc``, ``classifier.1``, ``head.fc``);
    ``head``: that layer with classifier A's weights once they are loaded (``backbone_from_weights``)."""

    features: nn.Module
    width: int
    head_key: str | None = None
    head: nn.Linear | None = None


def split_arch(arch: str) -> tuple[str, str]:
    """``"timm:resnet50"`` -> ``("timm", "resnet50")``; ``"cnn_small"`` -> ``("labelaudit", "cnn_small")``."""
    family, _, name = arch.rpartition(":")
    family = family or OWN
    if family not in (OWN, "torchvision", "timm") or not name:
        raise ClassifierAError(
            f"architecture {arch!r}: write cnn_small, resnet_small, torchvision:<name> or timm:<name>"
        )
    return family, name


def build_backbone(arch: str, in_channels: int) -> Backbone:
    """A freshly initialised backbone of ``arch``, cut before its final layer."""
    family, name = split_arch(arch)
    if family == OWN:
        if name not in OWN_ARCHITECTURES:
            raise ClassifierAError(f"unknown architecture {arch!r}; ours are {sorted(OWN_ARCHITECTURES)}")
        body, width = OWN_ARCHITECTURES[name](in_channels)
        return Backbone(body, width)
    if family == "torchvision":
        return _torchvision(name, in_channels)
    return _timm(name, in_channels)


def _torchvision(name: str, in_channels: int) -> Backbone:
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ClassifierAError(
            f"torchvision has no classification model {name!r}; see torchvision.models.list_models()"
        )
    if in_channels != 3:
        raise ClassifierAError(f"torchvision:{name} takes 3 channels; set channels to 3 (greyscale is converted)")
    model = models.get_model(name, weights=None, num_classes=1)  # the 1-class final layer is cut off below
    head_key = last_linear(model)
    if head_key is None:
        raise ClassifierAError(f"torchvision:{name} does not end in a Linear layer; it cannot carry the heads")
    width = model.get_submodule(head_key).in_features
    parent, _, attr = head_key.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return Backbone(model, width, head_key)


def _timm(name: str, in_channels: int) -> Backbone:
    import timm

    if not timm.is_model(name):
        raise ClassifierAError(f"timm has no model {name!r}; see timm.list_models()")
    model = timm.create_model(name, pretrained=False, num_classes=1, in_chans=in_channels)
    head_key = model.pretrained_cfg.get("classifier") if isinstance(model.get_classifier(), nn.Linear) else None
    model.reset_classifier(0)  # forward() now ends at forward_head(pre_logits=True): (B, F)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return Backbone(model, int(width), head_key)


def last_linear(model: nn.Module) -> str | None:
    """The name of the last Linear module in registration order: torchvision's classifier
    (``fc``, ``classifier.1``, ``heads.head``, ...)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


# -- classifier A's weights, from the user's own file ------------------------------------------------


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file (a bare state dict, or one under
    ``state_dict`` / ``model`` / ``state_dict_ema``); DistributedDataParallel's ``module.`` prefix is
    dropped. Raises ``ClassifierAError`` saying what is wrong with the file."""
    if not path.is_file():
        raise ClassifierAError(f"classifier A's weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load and safetensors raise many types for a bad file
        raise ClassifierAError(
            f"{path.name}: not a readable weights file (truncated or another format?): {exc}"
        ) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierAError(f"{path.name}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def backbone_from_weights(arch: str, path: Path) -> Backbone:
    """Build ``arch`` and load the user's weights into it, strictly: every tensor of the file must fit and
    every tensor of the network must be in the file. The file's final layer becomes ``Backbone.head``
    (its rows: classifier A's classes). Raises ``ClassifierAError`` saying what does not fit."""
    state = load_weights_file(path)
    backbone = build_backbone(arch, _input_channels(state))
    head = {
        k.removeprefix(f"{backbone.head_key}."): v
        for k, v in state.items()
        if backbone.head_key and k.startswith(f"{backbone.head_key}.")
    }
    body = {k: v for k, v in state.items() if not (backbone.head_key and k.startswith(f"{backbone.head_key}."))}
    problems = _mismatch(backbone.features.state_dict(), body)
    weight = head.get("weight")
    if backbone.head_key and (weight is None or weight.ndim != 2 or weight.shape[1] != backbone.width):
        found = "none" if weight is None else tuple(weight.shape)
        problems.append(f"final layer {backbone.head_key}.weight should be (classes, {backbone.width}), found {found}")
    if problems:
        raise ClassifierAError(f"{path.name} does not fit {arch}: " + "; ".join(problems))
    backbone.features.load_state_dict(body, strict=True)
    if weight is not None:
        backbone.head = nn.Linear(backbone.width, weight.shape[0], bias="bias" in head)
        backbone.head.load_state_dict(head)
    return backbone


def _input_channels(state: dict[str, torch.Tensor]) -> int:
    """The input channels of the first convolution (4-D weight) in the file; 3 if there is none."""
    for v in state.values():
        if v.ndim == 4:
            return int(v.shape[1])
    return 3


def _mismatch(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    """What differs between a network's tensors and a file's, one phrase per kind of difference."""
    missing = sorted(set(mine) - set(theirs))
    unexpected = sorted(set(theirs) - set(mine))
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}"
        for k, v in mine.items()
        if k in theirs and theirs[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing from the file (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the architecture does not have (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (file vs network, e.g. {shapes[0]})")
    return parts
