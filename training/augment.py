"""Augmentation on the training device, a whole batch at once: (B, C, H, W) normalised inputs in and out.

Named policies (``TrainConfig.augment``, ``labelaudit train --augment``), because the right one depends on
the task: a mirrored digit or text is another thing, a mirrored shirt is a shirt.

- ``none``: the images as they are.
- ``flip``: horizontal flips.
- ``shift``: integer shifts up to 1/14 of the side (2 px at 28), edges replicated.
- ``shift-flip``: both (the default: right for photos and clothes, wrong for digits and text).
- ``crop-flip``: random resized crops (35-100% of the area, aspect 3/4-4/3) and flips, the usual policy
  for photos at 224 px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "flip", "shift", "shift-flip", "crop-flip")


def augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """One random draw of ``policy`` per image. (B, C, H, W) -> (B, C, H, W)."""
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {policy!r}; choose from {', '.join(AUGMENTATIONS)}")
    if policy == "none":
        return x
    b, _, h, w = x.shape
    dev = x.device
    theta = torch.zeros(b, 2, 3, device=dev)
    flip = torch.rand(b, device=dev) < 0.5 if "flip" in policy else torch.zeros(b, dtype=torch.bool, device=dev)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    if policy.startswith("shift"):
        most = max(1, round(min(h, w) / 14))
        shifts = torch.randint(-most, most + 1, (b, 2), device=dev).float()
        theta[:, 0, 2] = shifts[:, 0] * 2 / w
        theta[:, 1, 2] = shifts[:, 1] * 2 / h
    mode = "nearest"
    if policy == "crop-flip":
        area = 0.35 + 0.65 * torch.rand(b, device=dev)
        ratio = torch.exp((torch.rand(b, device=dev) * 2 - 1) * math.log(4 / 3))
        sx, sy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        theta[:, 0, 0] *= sx
        theta[:, 1, 1] = sy
        theta[:, 0, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - sx)
        theta[:, 1, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - sy)
        mode = "bilinear"
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def strong_augment(x: torch.Tensor, *, flip: bool = True) -> torch.Tensor:
    """FixMatch-style strong view: rotation ±20°, scale 0.85-1.15, shifts of 3/28 of the side, flips (unless
    ``flip`` is False: a policy without flips, for digits or text, keeps them out of the strong view too),
    contrast and brightness jitter, Gaussian noise and a cut-out square of 10/28 of the side.
    (B, C, H, W), normalised inputs."""
    b, _, h, w = x.shape
    dev = x.device
    cutout = max(1, round(min(h, w) * 10 / 28))
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.pi / 9
    scale = 0.85 + 0.3 * torch.rand(b, device=dev)
    flipped = torch.rand(b, device=dev) < 0.5
    flip = torch.where(flipped & flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = (torch.rand(b, 2, device=dev) * 2 - 1) * (3 / 28) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * 0.4
    brightness = (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * 0.4
    out = out * contrast + brightness + 0.1 * torch.randn_like(out)
    cy, cx = torch.randint(0, h, (b,), device=dev), torch.randint(0, w, (b,), device=dev)
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= cutout // 2) & ((xs - cx[:, None, None]).abs() <= cutout // 2)
    return out.masked_fill(hole[:, None], 0.0)
