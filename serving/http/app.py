"""The FastAPI gateway: thin routes over the inference core. ``create_app(settings)`` builds it: the runtime in
its lifespan, the API key, the request metrics, the probes, and the routers (``/v1``, KServe v2 under ``/v2``)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labelaudit import __version__
from labelaudit.errors import LabelAuditError, StoreUnavailable
from labelaudit.schemas.api import ErrorResponse
from labelaudit.serving.core.runtime import open_runtime
from labelaudit.serving.http.errors import install_error_handlers
from labelaudit.serving.http.hot import HeaderLookup, HotPath, HotRoutes
from labelaudit.serving.http.metrics import GatewayMetrics, MeasureRequests
from labelaudit.serving.http.v1 import V1Handlers, build_v1_router
from labelaudit.serving.http.v2 import build_v2_router
from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.http")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = GatewayMetrics(settings.prometheus_multiproc_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("labelaudit gateway %s starting with %s", __version__, settings.redacted())
        async with open_runtime(
            settings, batching="dynamic", observer=metrics, publish_relabels=settings.http_publish_relabels
        ) as runtime:
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
        # Off unless asked for (see Settings.http_opentelemetry): FastAPI would check its providers per request.
        telemetry=None if settings.http_opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)

    api_key = settings.api_key

    def check_api_key(headers: HeaderLookup) -> None:
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        # Installed only when a key is configured (``auth`` below); without one nothing would match.
        if api_key is None or not secrets.compare_digest(given.encode(), api_key.get_secret_value().encode()):
            raise LabelAuditError("missing or wrong API key", reason="unauthorized", status_code=401)

    async def require_api_key(request: Request) -> None:  # async: a plain def would cost a thread hop per request
        check_api_key(request.headers)

    # No key configured: no dependency at all (FastAPI solves dependencies per request, ~5% of its time).
    auth = [Depends(require_api_key)] if api_key is not None else []

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

    v1 = V1Handlers(settings, metrics)
    app.include_router(build_v1_router(v1, auth))
    app.include_router(build_v2_router(auth))
    # The two busiest routes skip FastAPI's per-request machinery (hot.py); inside MeasureRequests, which is
    # added last so that it is the outermost of the two.
    hot = HotPath(
        settings=settings,
        handlers={"/v1/classify": v1.classify, "/v1/audit": v1.audit},
        authorize=check_api_key if api_key is not None else None,
    )
    app.add_middleware(HotRoutes, hot=hot)
    app.add_middleware(MeasureRequests, metrics=metrics)
    app.state.hot_path, app.state.metrics = hot, metrics  # granian's RSGI interface serves them itself (rsgi.py)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
