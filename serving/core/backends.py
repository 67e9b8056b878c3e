"""Inference backends: one interface, preprocessed tensors in, probabilities out.

``OnnxRuntimeBackend`` runs the exported ONNX file in process (CUDA provider first when
onnxruntime-gpu is installed). ``TritonBackend`` calls a Triton server (or any KServe-v2 server) that
serves the same repository, through tritonclient's asyncio clients, gRPC or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import numpy as np
import onnxruntime as ort

from labelaudit.errors import Unavailable
from labelaudit.serving.core.model_repo import ServedModel
from labelaudit.serving.settings import Settings, intra_op_threads

log = logging.getLogger("labelaudit.backends")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class BackendUnavailable(Unavailable):
    reason = "backend_unavailable"


class Backend(Protocol):
    """``images`` (B, C, H, W) float32, preprocessed per the model card -> probabilities (B, K)."""

    async def infer(self, images: np.ndarray) -> np.ndarray: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


class OnnxRuntimeBackend:
    def __init__(self, model: ServedModel, settings: Settings):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(settings)
        options.inter_op_num_threads = settings.ort_inter_op_threads
        options.graph_optimization_level = _OPT_LEVELS[settings.ort_graph_optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_allow_spinning else "0")
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(model.onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = model.card.onnx_input
        self.output_name = model.card.onnx_outputs[0]  # probabilities

    def infer_sync(self, images: np.ndarray) -> np.ndarray:
        probs: np.ndarray = self.session.run([self.output_name], {self.input_name: images})[0]
        return probs

    async def infer(self, images: np.ndarray) -> np.ndarray:
        # onnxruntime releases the GIL while it computes, so a worker thread keeps the event loop free.
        # run_in_executor, not to_thread: to_thread copies the context, per-batch overhead for nothing.
        return await asyncio.get_running_loop().run_in_executor(None, self.infer_sync, images)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.session = None


class TritonBackend:
    """``images`` FP32 [B, C, H, W] -> ``probabilities`` FP32 [B, K] on a remote Triton model."""

    def __init__(self, model: ServedModel, settings: Settings):
        if settings.triton_protocol == "grpc":
            import tritonclient.grpc.aio as client
        else:
            import tritonclient.http.aio as client
        self._client_module = client
        self.client = client.InferenceServerClient(settings.triton_url)
        self.model_name = model.name
        self.model_version = settings.model_version or ""  # "" = Triton's version policy
        self.input_name, self.output_name = model.card.onnx_input, model.card.onnx_outputs[0]
        self.timeout_s, self.url = settings.triton_timeout_s, settings.triton_url
        self.binary = settings.triton_protocol == "grpc" or settings.triton_binary_data
        # tritonclient's asyncio HTTP client does not inflate gzip bodies it did not ask for, while some
        # V2 servers (MLServer) gzip whenever the client accepts it: ask for plain bodies. It also posts
        # JSON as octet-stream, which servers built on FastAPI refuse: say what it is.
        headers = {"Accept-Encoding": "identity"}
        if not self.binary:
            headers["Content-Type"] = "application/json"
        self.extra = {"headers": headers} if settings.triton_protocol == "http" else {}

    async def infer(self, images: np.ndarray) -> np.ndarray:
        c = self._client_module
        inp = c.InferInput(self.input_name, list(images.shape), "FP32")
        if self.binary:
            inp.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            out = c.InferRequestedOutput(self.output_name)
        else:  # plain JSON tensors, for KServe-v2 servers without Triton's binary extension
            inp.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32), binary_data=False)
            out = c.InferRequestedOutput(self.output_name, binary_data=False)
        try:
            result = await asyncio.wait_for(
                self.client.infer(
                    self.model_name, [inp], model_version=self.model_version, outputs=[out], **self.extra
                ),
                self.timeout_s,
            )
        except TimeoutError:
            raise BackendUnavailable(f"Triton at {self.url} did not answer within {self.timeout_s}s") from None
        except Exception as exc:  # connection refused, server error: the caller gets a clear 503
            log.warning("Triton at %s failed: %r", self.url, exc)
            first_line = str(exc).splitlines()[0][:200] if str(exc) else ""  # never relay a remote traceback
            raise BackendUnavailable(f"Triton at {self.url} failed: {type(exc).__name__}: {first_line}") from None
        probs: np.ndarray = result.as_numpy(self.output_name)
        return probs

    async def ready(self) -> bool:
        try:
            return bool(
                await asyncio.wait_for(self.client.is_model_ready(self.model_name, self.model_version), self.timeout_s)
            )
        except Exception:  # unreachable counts as not ready
            return False

    async def close(self) -> None:
        await self.client.close()
