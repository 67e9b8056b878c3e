"""Every family a team's classifier A comes from exports to ONNX with a dynamic batch axis and passes the
parity check: convolutional, mobile, ConvNeXt and transformer networks from torchvision and timm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.training.export import check_parity, export_onnx
from labelaudit.training.networks import TwoHeadNet

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("torchvision:mobilenet_v3_small", 64),
        ("torchvision:efficientnet_b0", 64),
        ("torchvision:convnext_tiny", 64),
        ("torchvision:vit_b_16", 224),  # nn.MultiheadAttention: its inference fast path has no ONNX form
        ("timm:vit_tiny_patch16_224", 224),
        ("timm:convnext_atto", 64),
        ("timm:efficientnet_b0", 64),
    ],
)
def test_the_family_exports_with_a_dynamic_batch_and_matches_torch(arch, size, tmp_path):
    torch.manual_seed(0)
    net = TwoHeadNet(arch, 5, 3).eval()
    spec = PreprocessSpec(height=size, width=size, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    path = tmp_path / "model.onnx"

    export_onnx(net, spec, path)
    x = np.random.default_rng(0).normal(size=(9, 3, size, size)).astype(np.float32)
    result = check_parity(net, path, x, min_images=9, batch_size=4)  # batches of 1, 7 and 1: the axis is dynamic

    assert result.argmax_agreement == 1.0 and result.max_abs_prob_diff <= 1e-4
