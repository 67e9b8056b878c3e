"""The one implementation of the model card's preprocessing, imported by training and serving alike.

Two steps, so that training can cache the expensive one:

1. ``to_pixels``: a decoded Pillow image -> ``(H, W, C)`` uint8 at the model's size and channels.
2. ``normalize``: ``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32, scaled to [0, 1] then
   ``(x - mean) / std`` per channel.

Mode handling (documented in docs/data.md): images with alpha (LA, RGBA, PA, palette with
transparency) are composited over black, the background the training data has; 16-bit and 32-bit
greyscale are rescaled to 8 bits from their full range; CMYK and YCbCr are converted by Pillow.

With the spec's ``jpeg_draft``, ``pixels_from_bytes`` decodes a JPEG at a reduced scale (Pillow's ``draft``:
libjpeg's DCT-domain scaling by 1/2, 1/4 or 1/8, and Y alone for one channel), never smaller than the
resize needs, before the same resize. It changes the pixels slightly, which is why it is part of the
model card: training and serving both call ``pixels_from_bytes``, so they decode alike.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from labelaudit.errors import ImageError
from labelaudit.schemas.model_card import PreprocessSpec

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}

DEFAULT_MAX_PIXELS = 40_000_000  # a decompression-bomb guard, far above any camera frame we expect


Box = tuple[float, float, float, float]


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_for: PreprocessSpec | None = None
) -> Image.Image:
    """Decode image bytes fully, refusing empty, corrupt, truncated and oversized (bomb) inputs.

    ``draft_for``: a JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) still at least the size
    that spec's resize needs (``draft_size``), and as Y alone when the spec has one channel. The pixel limit
    is checked on the declared size first, as without it. Other formats ignore it.
    """
    return _decode(data, max_pixels=max_pixels, draft_for=draft_for)[0]


def _decode(data: bytes, *, max_pixels: int, draft_for: PreprocessSpec | None) -> tuple[Image.Image, Box | None]:
    """``decode_image``, and where a draft shrank the image, the whole source's box in the decoded pixels
    (``(0, 0, W / s, H / s)`` at scale ``1 / s``), so the resize keeps the full decode's geometry."""
    if not data:
        raise ImageError("empty image", reason="empty_image")
    box = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageError(
                    f"image has {img.width}x{img.height} pixels, above the limit of {max_pixels}",
                    reason="too_many_pixels",
                )
            if draft_for is not None and isinstance(img, JpegImagePlugin.JpegImageFile):  # MPO is one too
                declared = img.size
                drafted = img.draft("L" if draft_for.channels == 1 else "RGB", draft_size(*declared, draft_for))
                if drafted is not None and img.size != declared:
                    box = drafted[1]
            img.load()  # decode now, so truncation is caught here and not later
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"image rejected as a decompression bomb: {exc}", reason="too_many_pixels") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image Pillow can identify", reason="not_an_image") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"corrupt or truncated image: {exc}", reason="corrupt_image") from exc
    return img, box


def load_image(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels=max_pixels)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if img.mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("L" if channels == 1 else "RGB")


def _scaled_size(width: float, height: float, spec: PreprocessSpec) -> tuple[int, int]:
    """'shorter_side_center_crop': the size a ``width`` x ``height`` image is resized to before the crop."""
    scale = max(spec.width / width, spec.height / height) / spec.crop_pct
    return max(spec.width, round(width * scale)), max(spec.height, round(height * scale))


def draft_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The smallest (width, height) a ``width`` x ``height`` image may be decoded at for ``spec``: what
    ``_resize`` resizes it to (the model's size for 'stretch', the size before the crop otherwise)."""
    if spec.resize == "stretch":
        return spec.width, spec.height
    return _scaled_size(width, height, spec)


def _resize(img: Image.Image, spec: PreprocessSpec, box: Box | None = None) -> Image.Image:
    """Resize per the spec's rule. ``box``: the part of ``img`` that is the whole source (a drafted JPEG's
    last row and column may reach past it); sizes are computed from it, so a draft only changes the
    pixels the resize starts from, not the geometry (``W / s`` is exact: ``s`` is a power of two)."""
    resample = _RESAMPLE[spec.resample]
    if box is None and img.size == (spec.width, spec.height):
        return img
    if spec.resize == "stretch":
        return img.resize((spec.width, spec.height), resample, box=box)
    w, h = _scaled_size(img.width, img.height, spec) if box is None else _scaled_size(box[2], box[3], spec)
    img = img.resize((w, h), resample, box=box)
    left, top = (w - spec.width) // 2, (h - spec.height) // 2
    return img.crop((left, top, left + spec.width, top + spec.height))


def to_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Convert and resize one image. Returns ``(H, W, C)`` uint8."""
    return _to_pixels(img, spec, None)


def _to_pixels(img: Image.Image, spec: PreprocessSpec, box: Box | None) -> np.ndarray:
    try:
        out = _resize(_to_mode(img, spec.channels), spec, box)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert image of mode {img.mode}: {exc}", reason="unsupported_mode") from exc
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def pixels_from_bytes(data: bytes, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image -> ``(H, W, C)`` uint8 at the model's size: the one path training and serving share
    (a JPEG decoded at a reduced scale first where the spec's ``jpeg_draft`` says so)."""
    img, box = _decode(data, max_pixels=max_pixels, draft_for=spec if spec.jpeg_draft else None)
    return _to_pixels(img, spec, box)


def pixels_from_file(path: str, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file -> ``(H, W, C)`` uint8 at the model's size, as ``pixels_from_bytes``."""
    with open(path, "rb") as f:
        return pixels_from_bytes(f.read(), spec, max_pixels=max_pixels)


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32, scaled to [0, 1] then standardised per channel."""
    if pixels.ndim != 4 or pixels.shape[1:] != (spec.height, spec.width, spec.channels):
        raise ImageError(
            f"expected pixels of shape (N, {spec.height}, {spec.width}, {spec.channels}), got {pixels.shape}",
            reason="bad_tensor_shape",
        )
    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One decoded image -> ``(C, H, W)`` float32 model input."""
    return normalize(to_pixels(img, spec)[None], spec)[0]
