"""An MLServer runtime for the serving benchmark: encoded image bytes in (BYTES ``image_bytes``, base64
on REST), decoded and preprocessed per the model card, then the exported ONNX model in onnxruntime;
``probabilities`` FP32 [B, K] out. MLServer's adaptive batching (``max_batch_size``/``max_batch_time``
in model-settings.json) merges concurrent requests before ``predict`` sees them.

Not labelaudit code: MLServer loads it from bench/peers/ (PYTHONPATH) in its own virtualenv.
"""

from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from preprocess import CardPreprocess, ort_session


class DecodeOnnxModel(MLModel):
    async def load(self) -> bool:
        onnx_path = Path(self.settings.parameters.uri)
        self.preprocess = CardPreprocess(onnx_path.parent / "model_card.json")
        self.session = ort_session(onnx_path)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = Base64Codec.decode_input(payload.inputs[0])  # list of encoded files, one per row
        x = np.stack([self.preprocess(data) for data in images])  # (B, C, H, W)
        probs = self.session.run([self.preprocess.output_name], {self.preprocess.input_name: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probs)])
