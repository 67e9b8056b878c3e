"""A BentoML service for the serving benchmark: the exported ONNX model in onnxruntime behind BentoML's
adaptive batching. Clients post multipart ``images`` (PNG files); BentoML opens them as Pillow images,
this service preprocesses them per the model card and returns ``probabilities`` (one row of K per image).

    BENCH_MODEL_DIR=<repo>/labelaudit/1 bentoml serve bentoml_service:Classifier --port 3000   # from bench/peers

Not labelaudit code: it runs in its own virtualenv (.venv-peers-bentoml, made by scripts/peers.sh).
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
from PIL.Image import Image
from preprocess import CardPreprocess, ort_session

MAX_BATCH_SIZE = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "10000"))


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")), traffic={"timeout": 60})
class Classifier:
    def __init__(self) -> None:
        model_dir = Path(os.environ["BENCH_MODEL_DIR"])
        self.preprocess = CardPreprocess(model_dir / "model_card.json")
        self.session = ort_session(model_dir / "model.onnx")

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, images: list[Image]) -> np.ndarray:
        """(B,) images -> (B, K) probabilities; BentoML merges concurrent requests into one call."""
        x = np.stack([self.preprocess(img) for img in images])  # (B, C, H, W)
        return self.session.run([self.preprocess.output_name], {self.preprocess.input_name: x})[0]
