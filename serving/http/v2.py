"""The Open Inference Protocol (KServe v2) on the gateway, so existing V2 clients work unchanged
(tritonclient's HTTP client among them, with its binary tensor extension).

Inputs (one per request): ``image_bytes`` BYTES [B], encoded image files that the gateway decodes and
preprocesses per the model card; or ``images`` FP32 [B, C, H, W], tensors already preprocessed.
Output: ``probabilities`` FP32 [B, K].
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from labelaudit import __version__
from labelaudit.errors import LabelAuditError, describe_errors
from labelaudit.schemas.api import V2InferRequest, V2Tensor
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.http.body import ascii_int, read_body
from labelaudit.serving.http.errors import documented_errors
from labelaudit.serving.http.responses import OrjsonResponse

HEADER = "Inference-Header-Content-Length"
BYTES_INPUT, TENSOR_INPUT, OUTPUT = "image_bytes", "images", "probabilities"


ERRORS = documented_errors(400, 401, 404, 413, 422, 429, 503)


class V2Error(LabelAuditError):
    reason = "invalid_inference_request"


def _core(request: Request, name: str, version: str | None = None) -> InferenceCore:
    core: InferenceCore = request.app.state.core
    if name != core.model.name or (version is not None and version != core.model.version):
        raise LabelAuditError(
            f"model {name!r} version {version!r} is not served here", reason="model_not_found", status_code=404
        )
    return core


def _split_body(body: bytes, header_length: str | None) -> tuple[V2InferRequest, bytes]:
    """The JSON part, validated, and the binary tail of a (possibly binary-extension) request."""
    n = len(body) if header_length is None else ascii_int(header_length)
    if n is None or n > len(body):
        raise V2Error(f"{HEADER} must be the JSON part's length in bytes, 0 to {len(body)}; got {header_length!r}")
    try:
        # The parser /v1 uses (pydantic's): the same nesting limit (json.loads recursed until RecursionError, a
        # 500), no lone surrogates; NaN and Infinity are read, and refused in the tensor with a clearer reason.
        parsed = pydantic_core.from_json(body[:n])
    except ValueError as exc:
        raise V2Error(f"request is not valid JSON: {exc}") from None
    try:
        return V2InferRequest.model_validate(parsed), body[n:]
    except ValidationError as exc:
        raise V2Error(describe_errors(exc.errors())) from None


def _decode_bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES tensor in binary form: each element is a 4-byte little-endian length, then the bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2Error("truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise V2Error("truncated BYTES tensor")
        out.append(raw[offset : offset + length])
        offset += length
    return out


def _input_payload(spec: V2Tensor, tail: bytes, offset: int) -> tuple[Any, int]:
    size = (spec.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(tail):
            raise V2Error(f"input {spec.name!r}: binary_data_size does not match the body")
        return tail[offset : offset + size], offset + size
    if "data" not in spec.model_fields_set:
        raise V2Error(f"input {spec.name!r} has neither data nor binary_data_size")
    return spec.data, offset


def _parse_images(spec: V2Tensor, payload: Any) -> list[bytes]:
    if spec.datatype != "BYTES":
        raise V2Error(f"{BYTES_INPUT} must be BYTES, got {spec.datatype!r}")
    if isinstance(payload, bytes):
        return _decode_bytes_elements(payload)
    flat = np.asarray(payload, dtype=object).ravel().tolist()
    if not all(isinstance(x, str) for x in flat):
        raise V2Error(f"{BYTES_INPUT} JSON data must be strings (base64 is not implied; send binary)")
    images = []
    for i, text in enumerate(flat):
        try:
            images.append(text.encode("latin-1"))  # one byte per character, as tritonclient writes them
        except UnicodeEncodeError as exc:
            raise V2Error(
                f"{BYTES_INPUT}[{i}] has a character above U+00FF at position {exc.start}: a JSON BYTES element "
                "carries one byte per character (U+0000 to U+00FF); send images as binary data",
                status_code=422,
            ) from None
    return images


def _parse_tensor(spec: V2Tensor, payload: Any, core: InferenceCore) -> np.ndarray:
    p = core.model.card.preprocess
    expected = [p.channels, p.height, p.width]
    shape = spec.shape
    if spec.datatype != "FP32" or len(shape) != 4 or shape[1:] != expected or not 1 <= shape[0]:
        raise V2Error(
            f"{TENSOR_INPUT} must be FP32 with shape [B, {', '.join(map(str, expected))}], B at least 1; "
            f"got {spec.datatype} {shape}"
        )
    if shape[0] > core.settings.max_images_per_request:
        raise V2Error(f"{shape[0]} images; send 1 to {core.settings.max_images_per_request}")
    try:
        if isinstance(payload, bytes):
            arr = np.frombuffer(payload, dtype="<f4")
        else:
            arr = np.asarray(payload, dtype=np.float32).ravel()
        tensor = arr.reshape(shape).astype(np.float32, copy=False)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: a JSON integer past float's range
        raise V2Error(f"{TENSOR_INPUT}: data does not fit shape {shape}: {exc}") from None
    if not np.isfinite(tensor).all():
        where = np.argwhere(~np.isfinite(tensor))[0].tolist()
        raise V2Error(f"{TENSOR_INPUT} is not finite (NaN or infinity) at {where}", status_code=422)
    return tensor


def _finite_outputs(probs: np.ndarray) -> np.ndarray:
    """The probabilities, or a 422 when the model's output for these inputs is not finite: JSON cannot carry
    NaN or infinity (the answer failed as a 500), and as binary they would be no answer either. Finite
    inputs of a wild scale (1e38) overflow the model's float32 arithmetic."""
    bad = ~np.isfinite(probs).all(axis=tuple(range(1, probs.ndim)))
    if bad.any():
        raise V2Error(
            f"the model's output is not finite (NaN or infinity) for image(s) {np.flatnonzero(bad).tolist()}: "
            "the input is far outside what the model was trained on (see the model card's preprocessing)",
            reason="non_finite_output",
            status_code=422,
        )
    return probs


def _wants_binary(request: V2InferRequest) -> bool:
    if (request.parameters or {}).get("binary_data_output"):
        return True
    return any(out.name == OUTPUT and (out.parameters or {}).get("binary_data") for out in request.outputs or [])


def build_v2_router(auth: list) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])

    @router.get("")
    async def server_metadata() -> dict:
        return {"name": "labelaudit", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready(request: Request) -> dict:
        return {"ready": getattr(request.app.state, "core", None) is not None}

    @router.get("/models/{name}", dependencies=auth)
    @router.get("/models/{name}/versions/{version}", dependencies=auth)
    async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
        core = _core(request, name, version)
        p, k = core.model.card.preprocess, len(core.classes)
        return {
            "name": core.model.name,
            "versions": [core.model.version],
            "platform": "labelaudit",
            "inputs": [
                {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, p.channels, p.height, p.width]},
            ],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, k]}],
        }

    @router.get("/models/{name}/ready", dependencies=auth)
    @router.get("/models/{name}/versions/{version}/ready", dependencies=auth)
    async def model_ready(request: Request, name: str, version: str | None = None) -> dict:
        core = _core(request, name, version)
        return {"name": core.model.name, "ready": True}

    infer_docs = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": V2InferRequest.model_json_schema()},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"The binary tensor extension: JSON header ({HEADER} bytes), then the tensors.",
                },
            },
        },
        "responses": {
            "200": {
                "description": "The probabilities, FP32 [B, K]",
                "content": {
                    "application/json": {
                        "example": {
                            "id": "r-1",
                            "model_name": "labelaudit",
                            "model_version": "1",
                            "outputs": [
                                {"name": OUTPUT, "datatype": "FP32", "shape": [1, 3], "data": [0.9, 0.07, 0.03]}
                            ],
                        }
                    }
                },
            }
        },
    }

    @router.post("/models/{name}/infer", dependencies=auth, openapi_extra=infer_docs, responses=ERRORS)
    @router.post(
        "/models/{name}/versions/{version}/infer", dependencies=auth, openapi_extra=infer_docs, responses=ERRORS
    )
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        core = _core(request, name, version)
        body = await read_body(request, core.settings.max_body_bytes, core.settings.http_body_timeout_s)
        request_json, tail = _split_body(body, request.headers.get(HEADER))
        spec = request_json.inputs[0]
        payload, _ = _input_payload(spec, tail, 0)
        if spec.name == BYTES_INPUT:
            images = _parse_images(spec, payload)
            if not images or len(images) > core.settings.max_images_per_request:
                raise V2Error(f"{len(images)} images; send 1 to {core.settings.max_images_per_request}")
            probs = await core.classify(images)
        elif spec.name == TENSOR_INPUT:
            probs = await core.infer(_parse_tensor(spec, payload, core))
        else:
            raise V2Error(f"unknown input {spec.name!r}; expected {BYTES_INPUT!r} or {TENSOR_INPUT!r}")
        probs = _finite_outputs(np.ascontiguousarray(probs, dtype=np.float32))
        out: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
        answer = {"model_name": core.model.name, "model_version": core.model.version, "outputs": [out]}
        if request_json.id is not None:
            answer["id"] = request_json.id
        if not _wants_binary(request_json):
            out["data"] = probs.ravel().tolist()
            return OrjsonResponse(answer)  # finite: checked above
        raw = probs.astype("<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(answer).encode()
        return Response(header + raw, media_type="application/octet-stream", headers={HEADER: str(len(header))})

    return router
