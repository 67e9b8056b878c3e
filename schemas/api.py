"""HTTP request and response models of the gateway (``/v1``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from labelaudit.schemas.fields import Identifier

TopK = Annotated[int, Field(ge=1, le=1000, description="How many classes to return per image, best first.")]


class ImagePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="The encoded image file (PNG, JPEG, ...), base64.", min_length=1)
    id: Identifier | None = Field(default=None, description="Echoed back, to match results to images.")


class ClassifyRequest(BaseModel):
    """JSON form of ``POST /v1/classify`` (multipart ``files`` is the other)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [{"data": "iVBORw0KGgoAAAANSUhEUg...", "id": "a-1"}], "top_k": 3}]},
    )

    images: list[ImagePayload] = Field(min_length=1)
    top_k: TopK = 3


class ClassifyForm(BaseModel):
    """multipart/form-data form of ``POST /v1/classify``: file parts ``files`` (each file's name comes back as
    its result's ``id``) and an optional text field ``top_k``, checked as ``ClassifyRequest``'s."""

    files: list[bytes] = Field(min_length=1, description="The encoded image files (PNG, JPEG, ...).")
    top_k: TopK = 3


class TopClass(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    id: str | None = None
    top: list[TopClass]


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_name": "labelaudit",
                    "model_version": "1",
                    "results": [
                        {
                            "index": 0,
                            "id": "a-1",
                            "top": [
                                {"label": "coat", "probability": 0.91},
                                {"label": "pullover", "probability": 0.06},
                                {"label": "shirt", "probability": 0.02},
                            ],
                        }
                    ],
                }
            ]
        },
    )

    model_name: str
    model_version: str
    results: list[ClassifyResult]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable machine-readable ``error`` and a sentence for people."""

    error: str = Field(examples=["bad_image"])
    detail: str = Field(examples=["image 0: corrupt or truncated image"])


# -- the Open Inference Protocol (KServe v2) under /v2 ----------------------------------------------


class V2Tensor(BaseModel):
    """One input of a v2 inference request: ``data`` in JSON, or ``parameters.binary_data_size`` bytes of
    the binary tail (the binary tensor extension)."""

    name: str = Field(description="'image_bytes' (BYTES [B], encoded image files) or 'images' (FP32 [B, C, H, W]).")
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: Any = Field(default=None, description="The elements, flat or nested, row-major.")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: exactly one input; ``probabilities`` FP32 [B, K] comes back."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "r-1",
                    "inputs": [
                        {"name": "images", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.1, 0.5, 0.2, 0.9]}
                    ],
                    "outputs": [{"name": "probabilities"}],
                }
            ]
        }
    )

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = None
