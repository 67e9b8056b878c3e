"""``/v1``: classify images, audit a human label, read the model card. Each route reads its body itself (JSON
or multipart, checked by the same pydantic models its OpenAPI documents) and calls the runtime's core."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.datastructures import State

from labelaudit.schemas.api import ClassifyForm, ClassifyRequest, ClassifyResponse
from labelaudit.schemas.audit import AuditForm, AuditRequest, AuditResponse
from labelaudit.schemas.model_card import ModelCard
from labelaudit.serving.core.audit import AuditItem, Auditor
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.payload import image_from_base64
from labelaudit.serving.http.body import BadRequest, UnsupportedMediaType, parse_fields, parse_json, read_body
from labelaudit.serving.http.errors import documented_errors
from labelaudit.serving.http.metrics import GatewayMetrics
from labelaudit.serving.http.multipart import Form, parse_form
from labelaudit.serving.http.responses import OrjsonResponse
from labelaudit.serving.settings import Settings

ERRORS = documented_errors(400, 401, 413, 415, 422, 429, 503)
AUDIT_FIELDS = [name for name in AuditResponse.model_fields if name != "recorded"]  # copied from the AuditRecord


def two_body_forms(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict:
    """OpenAPI for a route that reads its body itself: JSON or multipart form fields, each a pydantic model
    (the models the route validates with, so the documented limits are the enforced ones)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": form_model.model_json_schema()},
            },
        }
    }


def text_fields(form: Form, names: Iterable[str]) -> dict[str, str]:
    """The text fields of ``form`` that it has, for a form model (a missing one is the model's to report)."""
    return {name: value for name in names if (value := form.text(name)) is not None}


def images_from_body(content_type: str, body: bytes, settings: Settings) -> tuple[list[bytes], list[str | None], int]:
    """(encoded images, ids, top_k) from multipart ``files`` or JSON ``{"images": [{"data": base64}]}``."""
    limit = settings.max_images_per_request
    if content_type.startswith("multipart/form-data"):
        form = parse_form(body, content_type, max_parts=limit + 10)
        files = form.files("files")
        if not files:
            raise BadRequest("multipart body has no 'files' part", reason="no_images", status_code=422)
        images = [f.data for f in files]
        top_k = {"top_k": value} if (value := form.text("top_k")) else {}  # empty: the default, as in a web form
        form_fields = parse_fields(ClassifyForm, {"files": images, **top_k})
        ids, k = [f.filename for f in files], form_fields.top_k
    elif content_type.startswith("application/json"):
        parsed = parse_json(ClassifyRequest, body)
        images = []
        for i, item in enumerate(parsed.images):
            images.append(image_from_base64(item.data, where=f"images[{i}].data"))
        ids, k = [item.id for item in parsed.images], parsed.top_k
    else:
        raise UnsupportedMediaType(content_type)
    if len(images) > limit:
        raise BadRequest(
            f"{len(images)} images in one request; the limit is {limit}", reason="too_many_images", status_code=413
        )
    return images, ids, k


def audit_item_from_body(content_type: str, body: bytes) -> AuditItem:
    """One ``AuditItem`` from JSON (base64 ``image``) or multipart (file ``image`` and text fields)."""
    if content_type.startswith("application/json"):
        parsed = parse_json(AuditRequest, body)
        image = image_from_base64(parsed.image, where="image")
        return AuditItem(
            item_id=parsed.item_id,
            labeler_id=parsed.labeler_id,
            label=parsed.label,
            image=image,
            answers=parsed.answers,
        )
    if content_type.startswith("multipart/form-data"):
        form = parse_form(body, content_type, max_parts=12)
        fields = text_fields(form, ["item_id", "labeler_id", "label"])
        if answers := form.text("answers"):  # empty: none, as in a web form
            fields["answers"] = answers
        image_part = {"image": upload[0].data} if (upload := form.files("image")) else {}
        form_fields = parse_fields(AuditForm, {**fields, **image_part})
        return AuditItem(
            item_id=form_fields.item_id,
            labeler_id=form_fields.labeler_id,
            label=form_fields.label,
            image=form_fields.image,
            answers=form_fields.answers,
        )
    raise UnsupportedMediaType(content_type)


class V1Handlers:
    """What ``POST /v1/classify`` and ``POST /v1/audit`` do with a body that has been read: the FastAPI routes
    (which document them) and the gateway's hot path (``serving/http/hot.py``, which serves them) both call
    these, so the two cannot answer differently."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings, self.metrics = settings, metrics

    async def classify(self, state: State, content_type: str, body: bytes) -> Response:
        core: InferenceCore = state.core
        images, ids, k = images_from_body(content_type, body, self.settings)
        probs = await core.classify(images)
        self.metrics.images.inc(len(images))
        results = [
            {"index": i, "id": ids[i], "top": [{"label": c, "probability": p} for c, p in top]}
            for i, top in enumerate(core.top_k(probs, k))
        ]  # ClassifyResponse's shape, built as plain values (see responses.py)
        return OrjsonResponse({"model_name": core.model.name, "model_version": core.model.version, "results": results})

    async def audit(self, state: State, content_type: str, body: bytes) -> Response:
        item = audit_item_from_body(content_type, body)
        auditor: Auditor = state.auditor
        [(record, new)] = await auditor.audit([item], source="http")
        self.metrics.images.inc()
        answer = AuditResponse.model_construct(  # the record's own checked values: no second validation
            **{name: getattr(record, name) for name in AUDIT_FIELDS}, recorded=new
        )
        return Response(answer.model_dump_json(), media_type="application/json")


def build_v1_router(handlers: V1Handlers, auth: Sequence[Depends]) -> APIRouter:
    """The ``/v1`` routes, each behind ``auth`` (the API key's dependency, or none)."""
    router = APIRouter(prefix="/v1", dependencies=list(auth))
    settings = handlers.settings

    async def body_of(request: Request) -> bytes:
        return await read_body(request, settings.max_body_bytes, settings.http_body_timeout_s)

    @router.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        openapi_extra=two_body_forms(ClassifyRequest, ClassifyForm),
    )
    async def classify(request: Request) -> Response:
        """Top-k classes for one or many images (multipart ``files``, or JSON with base64 ``data``)."""
        body = await body_of(request)
        return await handlers.classify(request.app.state, request.headers.get("content-type", ""), body)

    @router.post(
        "/audit",
        response_model=AuditResponse,
        responses=ERRORS,
        openapi_extra=two_body_forms(AuditRequest, AuditForm),
    )
    async def audit(request: Request) -> Response:
        """Classify one image, judge its human label, record the verdict (the same policy and store as
        the Kafka consumer). A repeat of (item_id, labeler_id, model version) answers with recorded=false. With
        ``http_publish_relabels`` on, a disagreement's relabel request is on the relabel topic before the answer.
        With ``answers`` (a relabel request's ``request_id``) the label is also kept as that request's answer
        and asks for no relabel itself."""
        body = await body_of(request)
        return await handlers.audit(request.app.state, request.headers.get("content-type", ""), body)

    @router.get("/models", response_model=ModelCard, responses=ERRORS)
    async def model_card(request: Request) -> ModelCard:
        """The served model's card: classes, preprocessing, metrics, transition matrices, thresholds."""
        return request.app.state.core.model.card

    return router
