"""bench/peers/preprocess.py, the standalone mirror of the model card's preprocessing that the peer servers
of bench/serve.py run in their own venvs, gives labelaudit's model input bit for bit: stretch and shorter
side + centre crop, crop_pct 1.0 and 0.875 (ImageNet's 256 -> 224), RGB and greyscale, on a real photo
(matplotlib's grace_hopper.jpg) and on generated images of odd sizes and modes. A card with ``jpeg_draft``,
which the mirror does not do, is refused rather than mirrored wrongly."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from labelaudit.imaging.preprocess import normalize, pixels_from_bytes
from labelaudit.schemas.model_card import PreprocessSpec

MIRROR = Path(__file__).resolve().parents[2] / "bench" / "peers" / "preprocess.py"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _mirror_module():
    spec = importlib.util.spec_from_file_location("peers_preprocess", MIRROR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    photo = Image.open(PHOTO).convert("RGB")
    noise = Image.fromarray(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8))
    return {
        "grace_hopper.jpg": PHOTO.read_bytes(),
        "640x480 jpeg": _encoded(photo.resize((640, 480), Image.Resampling.BICUBIC), "JPEG"),
        "457x301 rgb png": _encoded(noise, "PNG"),
        "301x457 rgba png": _encoded(noise.rotate(90, expand=True).convert("RGBA"), "PNG"),
        "97x61 greyscale png": _encoded(noise.resize((97, 61)).convert("L"), "PNG"),
    }


SPECS = {
    "stretch": PreprocessSpec(height=224, width=224, channels=3, **IMAGENET),
    "crop, crop_pct 1.0": PreprocessSpec(
        height=224, width=224, channels=3, resize="shorter_side_center_crop", **IMAGENET
    ),
    "crop, crop_pct 0.875": PreprocessSpec(
        height=224, width=224, channels=3, resize="shorter_side_center_crop", crop_pct=0.875, **IMAGENET
    ),
    "crop, crop_pct 0.9, 1 channel, not square": PreprocessSpec(
        height=96, width=128, channels=1, resize="shorter_side_center_crop", crop_pct=0.9, mean=(0.5,), std=(0.25,)
    ),
}


def _card(tmp_path: Path, spec: PreprocessSpec) -> Path:
    path = tmp_path / "model_card.json"
    path.write_text(json.dumps({"preprocess": spec.model_dump(mode="json")}))
    return path


@pytest.mark.parametrize("name", SPECS)
def test_the_mirror_equals_labelaudit_bit_for_bit(tmp_path, name):
    spec = SPECS[name]
    mirror = _mirror_module().CardPreprocess(_card(tmp_path, spec))
    for image, data in _images().items():
        ours = normalize(pixels_from_bytes(data, spec)[None], spec)[0]
        theirs = mirror(data)
        assert theirs.dtype == np.float32 and theirs.shape == ours.shape, image
        np.testing.assert_array_equal(theirs, ours, err_msg=f"{name}: {image}")
        np.testing.assert_array_equal(mirror(Image.open(io.BytesIO(data))), ours, err_msg=f"{name}: {image} (Pillow)")


def test_crop_pct_changes_the_input(tmp_path):
    """The mirror honours crop_pct: 0.875 crops a smaller share of the photo than 1.0 does."""
    full, imagenet = SPECS["crop, crop_pct 1.0"], SPECS["crop, crop_pct 0.875"]
    module = _mirror_module()
    data = PHOTO.read_bytes()
    a = module.CardPreprocess(_card(tmp_path, full))(data)
    b = module.CardPreprocess(_card(tmp_path, imagenet))(data)
    assert np.abs(a - b).max() > 0.5


def test_a_card_with_jpeg_draft_is_refused(tmp_path):
    spec = SPECS["crop, crop_pct 0.875"].model_copy(update={"jpeg_draft": True})
    with pytest.raises(ValueError, match="jpeg_draft"):
        _mirror_module().CardPreprocess(_card(tmp_path, spec))
