"""Inference backends: one interface, preprocessed tensors in, probabilities out.

``OnnxRuntimeBackend`` runs the exported ONNX file in process (CUDA provider first when
onnxruntime-gpu is installed). The Triton backend (tritonclient, async) comes with the HTTP gateway.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
import onnxruntime as ort

from labelaudit.serving.core.model_repo import ServedModel
from labelaudit.serving.settings import Settings

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class Backend(Protocol):
    """``images`` (B, C, H, W) float32, preprocessed per the model card -> probabilities (B, K)."""

    async def infer(self, images: np.ndarray) -> np.ndarray: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


class OnnxRuntimeBackend:
    def __init__(self, model: ServedModel, settings: Settings):
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = settings.ort_inter_op_threads
        options.graph_optimization_level = _OPT_LEVELS[settings.ort_graph_optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(model.onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = model.card.onnx_input
        self.output_name = model.card.onnx_outputs[0]  # probabilities

    def infer_sync(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: images})[0]

    async def infer(self, images: np.ndarray) -> np.ndarray:
        # onnxruntime releases the GIL while it computes, so a worker thread keeps the event loop free.
        return await asyncio.to_thread(self.infer_sync, images)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.session = None
