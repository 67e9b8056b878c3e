"""The supported architectures: one feature extractor and two linear heads.

Every method uses the same network so that checkpoints move between them: the clean head is the
classifier (what is exported); the noisy head models the labelers' labels (FasTEN's second head; the
other methods leave it untrained). Shapes: input (B, C, H, W) -> features (B, F) -> logits (B, K).
"""

from __future__ import annotations

import torch
from torch import nn


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
        _conv_bn(in_channels, 32), _conv_bn(32, 32), nn.MaxPool2d(2),  # (B, 32, 14, 14)
        _conv_bn(32, 64), _conv_bn(64, 64), nn.MaxPool2d(2),  # (B, 64, 7, 7)
        _conv_bn(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 128)
    )  # fmt: skip
    return body, 128


def resnet_small(in_channels: int) -> tuple[nn.Module, int]:
    """A pre-activation-free ResNet-14 of widths 64/128/256 for small images (GPU-sized)."""
    body = nn.Sequential(
        _conv_bn(in_channels, 64),
        BasicBlock(64, 64, 1), BasicBlock(64, 64, 1),
        BasicBlock(64, 128, 2), BasicBlock(128, 128, 1),  # (B, 128, H/2, W/2)
        BasicBlock(128, 256, 2), BasicBlock(256, 256, 1),  # (B, 256, H/4, W/4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    return body, 256


ARCHITECTURES = {"cnn_small": cnn_small, "resnet_small": resnet_small}


class TwoHeadNet(nn.Module):
    """Feature extractor ``phi`` with a clean head ``theta`` and a noisy head ``theta_bar``.

    ``noisy_heads`` > 1 gives one noisy head per labeler group (FasTEN with per-labeler noise models);
    they share one Linear layer of ``noisy_heads * K`` outputs.
    """

    def __init__(self, arch: str, num_classes: int, in_channels: int, dropout: float = 0.0, noisy_heads: int = 1):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; supported: {sorted(ARCHITECTURES)}")
        self.arch = arch
        self.features, width = ARCHITECTURES[arch](in_channels)
        self.dropout = nn.Dropout(dropout)
        self.clean_head = nn.Linear(width, num_classes)
        self.num_classes, self.noisy_heads = num_classes, noisy_heads
        self.noisy_head = nn.Linear(width, num_classes * noisy_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clean-head logits (B, K): the classifier."""
        return self.clean_head(self.dropout(self.features(x)))

    def forward_both(self, x: torch.Tensor, *, detach_first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean logits (B, K), noisy logits (B, H * K)) from one pass through the feature extractor.

        ``detach_first``: the first rows' features are detached, so their losses train the heads but
        not the feature extractor (FasTEN's trusted rows, ``TrainConfig.trusted_trains_features``)."""
        f = self.dropout(self.features(x))
        if detach_first:
            f = torch.cat([f[:detach_first].detach(), f[detach_first:]])
        return self.clean_head(f), self.noisy_head(f)

    def reset_noisy_heads_to_clean(self) -> None:
        """Start every noise model at "labels are right": each noisy head a copy of the clean head."""
        with torch.no_grad():
            self.noisy_head.weight.copy_(self.clean_head.weight.repeat(self.noisy_heads, 1))
            self.noisy_head.bias.copy_(self.clean_head.bias.repeat(self.noisy_heads))


class ProbabilityModel(nn.Module):
    """What is exported: images (B, C, H, W) -> (probabilities (B, K), logits (B, K))."""

    def __init__(self, net: TwoHeadNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(images)
        return torch.softmax(logits.float(), dim=1), logits
