"""HTTP request and response models of the gateway (``/v1``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImagePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="The encoded image file (PNG, JPEG, ...), base64.", min_length=1)
    id: str | None = Field(default=None, description="Echoed back, to match results to images.")


class ClassifyRequest(BaseModel):
    """JSON form of ``POST /v1/classify`` (multipart ``files`` is the other)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [{"data": "iVBORw0KGgoAAAANSUhEUg...", "id": "a-1"}], "top_k": 3}]},
    )

    images: list[ImagePayload] = Field(min_length=1)
    top_k: int = Field(default=3, ge=1, le=1000)


class TopClass(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    id: str | None = None
    top: list[TopClass]


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    results: list[ClassifyResult]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable machine-readable ``error`` and a sentence for people."""

    error: str = Field(examples=["bad_image"])
    detail: str = Field(examples=["image 0: corrupt or truncated image"])
