"""The one implementation of the model card's preprocessing, imported by training and serving alike.

Two steps, so that training can cache the expensive one:

1. ``to_pixels``: a decoded Pillow image -> ``(H, W, C)`` uint8 at the model's size and channels.
2. ``normalize``: ``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32, scaled to [0, 1] then
   ``(x - mean) / std`` per channel.

Mode handling (documented in docs/preprocessing.md): images with alpha (LA, RGBA, PA, palette with
transparency) are composited over black, the background the training data has; 16-bit and 32-bit
greyscale are rescaled to 8 bits from their full range; CMYK and YCbCr are converted by Pillow.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelaudit.errors import ImageError
from labelaudit.schemas.model_card import PreprocessSpec

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}

DEFAULT_MAX_PIXELS = 40_000_000  # a decompression-bomb guard, far above any camera frame we expect


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully, refusing empty, corrupt, truncated and oversized (bomb) inputs."""
    if not data:
        raise ImageError("empty image", reason="empty_image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageError(
                    f"image has {img.width}x{img.height} pixels, above the limit of {max_pixels}",
                    reason="too_many_pixels",
                )
            img.load()  # decode now, so truncation is caught here and not later
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"image rejected as a decompression bomb: {exc}", reason="too_many_pixels") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image Pillow can identify", reason="not_an_image") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"corrupt or truncated image: {exc}", reason="corrupt_image") from exc
    return img


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


def _resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    resample = _RESAMPLE[spec.resample]
    if img.size == (spec.width, spec.height):
        return img
    if spec.resize == "stretch":
        return img.resize((spec.width, spec.height), resample)
    scale = max(spec.width / img.width, spec.height / img.height)
    w, h = max(spec.width, round(img.width * scale)), max(spec.height, round(img.height * scale))
    img = img.resize((w, h), resample)
    left, top = (w - spec.width) // 2, (h - spec.height) // 2
    return img.crop((left, top, left + spec.width, top + spec.height))


def to_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Convert and resize one image. Returns ``(H, W, C)`` uint8."""
    try:
        out = _resize(_to_mode(img, spec.channels), spec)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert image of mode {img.mode}: {exc}", reason="unsupported_mode") from exc
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


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
