"""The network every method trains: one feature extractor (``training.backbones``) and two linear heads.

Every method uses the same network so that checkpoints move between them: the clean head is the
classifier (what is exported); the noisy head models the labelers' labels (FasTEN's second head; the
other methods leave it untrained). Shapes: input (B, C, H, W) -> features (B, F) -> logits (B, K).
The heads sit on the backbone's pooled features, whatever the architecture (torchvision's layer before
``fc``/``classifier``, timm's ``forward_head(pre_logits=True)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from labelaudit.training.backbones import Backbone, build_backbone


class TwoHeadNet(nn.Module):
    """Feature extractor ``phi`` with a clean head ``theta`` and a noisy head ``theta_bar``.

    ``noisy_heads`` > 1 gives one noisy head per labeler group (FasTEN with per-labeler noise models);
    they share one Linear layer of ``noisy_heads * K`` outputs.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int,
        dropout: float = 0.0,
        noisy_heads: int = 1,
        backbone: Backbone | None = None,
    ):
        super().__init__()
        backbone = backbone or build_backbone(arch, in_channels)  # given: classifier A's, weights loaded
        self.arch = arch
        self.features, width = backbone.features, backbone.width
        self.dropout = nn.Dropout(dropout)
        self.clean_head = nn.Linear(width, num_classes)
        self.num_classes, self.noisy_heads = num_classes, noisy_heads
        self.noisy_head = nn.Linear(width, num_classes * noisy_heads)

    def forward(self, x: torch.Tensor, *, both: bool = False, detach_first: int = 0):
        """Clean-head logits (B, K): the classifier. ``both``: (clean logits (B, K), noisy logits (B, H * K))
        from one pass through the feature extractor, in ``forward`` so that DistributedDataParallel sees it.

        ``detach_first``: the first rows' features are detached, so their losses train the heads but
        not the feature extractor (FasTEN's trusted rows, ``TrainConfig.trusted_trains_features``)."""
        f = self.dropout(self.features(x))
        if not both:
            return self.clean_head(f)
        if detach_first:
            f = torch.cat([f[:detach_first].detach(), f[detach_first:]])
        return self.clean_head(f), self.noisy_head(f)

    def forward_both(self, x: torch.Tensor, *, detach_first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x, both=True)``."""
        return self.forward(x, both=True, detach_first=detach_first)

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


@contextmanager
def running_stats_frozen(net: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers normalise with the batch's own statistics (train mode) but leave their
    running averages alone. For an extra forward pass on strongly augmented views, whose statistics are not
    the test images': without it the last pass of every step, the strong one, would set the statistics the
    exported model normalises with."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
