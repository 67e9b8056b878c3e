"""A minimal MLServer runtime that serves an ONNX file with onnxruntime, the way Triton's onnxruntime
backend would: input ``images`` FP32 [B, C, H, W] -> output ``probabilities`` FP32 [B, K].

Loaded by MLServer itself (a real KServe-v2 server) in the Triton-backend tests; not labelaudit code.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        probs = self.session.run(["probabilities"], {"images": images})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probs)])
