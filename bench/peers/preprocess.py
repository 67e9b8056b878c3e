"""The model card's preprocessing, mirrored with Pillow and NumPy only, for the peer servers' own venvs
(labelaudit is not installed there). Same steps as ``labelaudit.imaging.preprocess``: decode, convert
the mode (alpha over black, 16-bit rescaled), resize (stretch, or shorter side + centre crop, the resize
scale divided by the card's ``crop_pct`` first), scale to [0, 1], standardise per channel, NCHW float32.
A card with ``jpeg_draft`` is refused: the mirror decodes JPEGs in full. bench/serve.py checks the peers'
probabilities against the gateway's on the same images before it times anything.

Not labelaudit code: the peers load it from bench/peers/ (MLServer via PYTHONPATH, BentoML beside its service).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


class CardPreprocess:
    """Encoded image bytes (or a Pillow image) -> (C, H, W) float32, per ``model_card.json``'s ``preprocess``."""

    def __init__(self, card_path: Path | str):
        card = json.loads(Path(card_path).read_text())
        spec = card["preprocess"]
        self.input_name = card.get("onnx_input", "images")
        self.output_name = card.get("onnx_outputs", ["probabilities"])[0]
        self.height, self.width, self.channels = spec["height"], spec["width"], spec["channels"]
        self.resize_rule, self.resample = spec.get("resize", "stretch"), _RESAMPLE[spec.get("resample", "bilinear")]
        self.crop_pct = float(spec.get("crop_pct", 1.0))  # 'shorter_side_center_crop': the crop's share of the resize
        if spec.get("jpeg_draft"):
            raise ValueError(f"{card_path}: jpeg_draft is not mirrored here (JPEGs are decoded in full)")
        self.mean = np.asarray(spec["mean"], dtype=np.float32)
        self.std = np.asarray(spec["std"], dtype=np.float32)

    def _mode(self, img: Image.Image) -> Image.Image:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
            img = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
        if img.mode in ("LA", "RGBA", "PA", "La", "RGBa"):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
        return img.convert("L" if self.channels == 1 else "RGB")

    def _resize(self, img: Image.Image) -> Image.Image:
        if img.size == (self.width, self.height):
            return img
        if self.resize_rule == "stretch":
            return img.resize((self.width, self.height), self.resample)
        scale = max(self.width / img.width, self.height / img.height) / self.crop_pct  # as labelaudit's _scaled_size
        w, h = max(self.width, round(img.width * scale)), max(self.height, round(img.height * scale))
        img = img.resize((w, h), self.resample)
        left, top = (w - self.width) // 2, (h - self.height) // 2
        return img.crop((left, top, left + self.width, top + self.height))

    def __call__(self, image: bytes | Image.Image) -> np.ndarray:
        img = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
        img.load()
        pixels = np.asarray(self._resize(self._mode(img)), dtype=np.uint8)  # (H, W) or (H, W, C)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        x = (pixels.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (C, H, W)


def ort_session(onnx_path: Path | str):
    """onnxruntime with the gateway's default options (intra-op threads: onnxruntime's choice, one
    inter-op thread, all graph optimisations, sequential), so the peers differ from us in serving only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
