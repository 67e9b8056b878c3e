"""The FastAPI gateway: thin routes over the inference core. ``create_app(settings)`` builds it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from labelaudit import __version__
from labelaudit.errors import LabelAuditError, StoreUnavailable
from labelaudit.schemas.api import (
    ClassifyForm,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    ErrorResponse,
    TopClass,
)
from labelaudit.schemas.audit import AuditForm, AuditRequest, AuditResponse
from labelaudit.schemas.model_card import ModelCard
from labelaudit.serving.core.audit import AuditItem, Auditor
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.runtime import open_runtime
from labelaudit.serving.http.body import BadRequest, parse_fields, parse_json, read_body
from labelaudit.serving.http.errors import documented_errors, install_error_handlers
from labelaudit.serving.http.metrics import GatewayMetrics, MeasureRequests
from labelaudit.serving.http.multipart import Form, parse_form
from labelaudit.serving.http.v2 import build_v2_router
from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.http")

ERRORS = documented_errors(400, 401, 413, 415, 422, 429, 503)


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


async def images_from_request(request: Request, settings: Settings) -> tuple[list[bytes], list[str | None], int]:
    """(encoded images, ids, top_k) from multipart ``files`` or JSON ``{"images": [{"data": base64}]}``."""
    body = await read_body(request, settings.max_body_bytes, settings.http_body_timeout_s)
    content_type = request.headers.get("content-type", "")
    limit = settings.max_images_per_request
    if content_type.startswith("multipart/form-data"):
        form = parse_form(body, content_type, max_parts=limit + 10)
        files = form.files("files")
        if not files:
            raise BadRequest("multipart body has no 'files' part", reason="no_images", status_code=422)
        images = [f.data for f in files]
        top_k = {"top_k": value} if (value := form.text("top_k")) else {}  # empty: the default, as in a web form
        parsed = parse_fields(ClassifyForm, {"files": images, **top_k})
        ids, k = [f.filename for f in files], parsed.top_k
    elif content_type.startswith("application/json"):
        parsed = parse_json(ClassifyRequest, body)
        images = []
        for i, item in enumerate(parsed.images):
            try:
                images.append(base64.b64decode(item.data, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(
                    f"images[{i}].data is not valid base64", reason="bad_base64", status_code=422
                ) from None
        ids, k = [item.id for item in parsed.images], parsed.top_k
    else:
        raise BadRequest(
            f"unsupported content type {content_type!r}; send multipart/form-data or application/json",
            reason="unsupported_media_type",
            status_code=415,
        )
    if len(images) > limit:
        raise BadRequest(
            f"{len(images)} images in one request; the limit is {limit}", reason="too_many_images", status_code=413
        )
    return images, ids, k


async def audit_item_from_request(request: Request, settings: Settings) -> AuditItem:
    """One ``AuditItem`` from JSON (base64 ``image``) or multipart (file ``image`` and text fields)."""
    body = await read_body(request, settings.max_body_bytes, settings.http_body_timeout_s)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        parsed = parse_json(AuditRequest, body)
        try:
            image = base64.b64decode(parsed.image, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("image is not valid base64", reason="bad_base64", status_code=422) from None
        return AuditItem(item_id=parsed.item_id, labeler_id=parsed.labeler_id, label=parsed.label, image=image)
    if content_type.startswith("multipart/form-data"):
        form = parse_form(body, content_type, max_parts=12)
        fields = text_fields(form, ["item_id", "labeler_id", "label"])
        image = {"image": upload[0].data} if (upload := form.files("image")) else {}
        parsed = parse_fields(AuditForm, {**fields, **image})
        return AuditItem(item_id=parsed.item_id, labeler_id=parsed.labeler_id, label=parsed.label, image=parsed.image)
    raise BadRequest(
        f"unsupported content type {content_type!r}; send multipart/form-data or application/json",
        reason="unsupported_media_type",
        status_code=415,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = GatewayMetrics(settings.prometheus_multiproc_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("labelaudit gateway %s starting with %s", __version__, settings.redacted())
        async with open_runtime(settings, batching="dynamic", observer=metrics) as runtime:
            app.state.core, app.state.backend, app.state.auditor = runtime.core, runtime.backend, runtime.auditor
            app.state.batcher = runtime.batcher
            try:
                yield
            finally:
                metrics.process_exiting()

    app = FastAPI(
        title="labelaudit gateway",
        version=__version__,
        description="Classify images with the exported task-B model; audit human labels against it.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    async def require_api_key(request: Request) -> None:  # async: a plain def would cost a thread hop per request
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
            raise LabelAuditError("missing or wrong API key", reason="unauthorized", status_code=401)

    # No key configured: no dependency at all (FastAPI solves dependencies per request, ~5% of its time).
    auth = [Depends(require_api_key)] if settings.api_key is not None else []

    app.add_middleware(MeasureRequests, metrics=metrics)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        dependencies=auth,
        openapi_extra=two_body_forms(ClassifyRequest, ClassifyForm),
    )
    async def classify(request: Request) -> ClassifyResponse:
        """Top-k classes for one or many images (multipart ``files``, or JSON with base64 ``data``)."""
        core: InferenceCore = request.app.state.core
        images, ids, k = await images_from_request(request, settings)
        probs = await core.classify(images)
        metrics.images.inc(len(images))
        metrics.queue_depth.set(request.app.state.batcher.queued_images)
        results = [
            ClassifyResult(index=i, id=ids[i], top=[TopClass(label=c, probability=p) for c, p in top])
            for i, top in enumerate(core.top_k(probs, k))
        ]
        return ClassifyResponse(model_name=core.model.name, model_version=core.model.version, results=results)

    @app.post(
        "/v1/audit",
        response_model=AuditResponse,
        responses=ERRORS,
        dependencies=auth,
        openapi_extra=two_body_forms(AuditRequest, AuditForm),
    )
    async def audit(request: Request) -> AuditResponse:
        """Classify one image, judge its human label, record the verdict (the same policy and store as
        the Kafka consumer). A repeat of (item_id, labeler_id, model version) answers with recorded=false."""
        item = await audit_item_from_request(request, settings)
        auditor: Auditor = request.app.state.auditor
        [(record, new)] = await auditor.audit([item], source="http")
        metrics.images.inc()
        return AuditResponse(**record.model_dump(include=set(AuditResponse.model_fields) - {"recorded"}), recorded=new)

    @app.get("/v1/models", response_model=ModelCard, responses=ERRORS, dependencies=auth)
    async def model_card(request: Request) -> ModelCard:
        """The served model's card: classes, preprocessing, metrics, transition matrices, thresholds."""
        return request.app.state.core.model.card

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        """The model is loaded, the backend answers and (unless ``ready_requires_store`` is off) so does
        the audit store."""
        core = getattr(request.app.state, "core", None)
        if core is None or not await request.app.state.backend.ready():
            raise LabelAuditError("model or backend not ready", reason="not_ready", status_code=503)
        if settings.ready_requires_store and not await asyncio.to_thread(request.app.state.auditor.store.ready):
            raise StoreUnavailable("the audit store does not answer")
        return {"status": "ready", "model": core.model.name, "version": core.model.version}

    app.include_router(build_v2_router(auth))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
