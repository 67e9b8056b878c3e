"""One place that turns errors into responses: 4xx with a reason, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from labelaudit.errors import LabelAuditError, describe_errors
from labelaudit.schemas.api import ErrorResponse
from labelaudit.serving.http.body import BodyTimeout

log = logging.getLogger("labelaudit.http")


def documented_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses: every one has the ErrorResponse body."""
    return {code: {"model": ErrorResponse} for code in codes}


def error_response(
    request: Request, status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": reason, "detail": sentence}``; on the KServe v2 routes the protocol's own shape,
    ``{"error": message}``, which V2 clients show to their users (the reason leads the message)."""
    return error_at(request.url.path, status, error, detail, headers)


def error_at(path: str, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``error_response`` for a request to ``path``."""
    if path.startswith("/v2"):
        content = {"error": f"{error}: {detail}"}
    else:
        content = {"error": error, "detail": detail}
    return JSONResponse(status_code=status, content=content, headers=headers)


def answer_to(path: str, exc: LabelAuditError) -> JSONResponse:
    """The answer to a request that raised ``exc``: its status and reason, ``Retry-After`` when it says when to
    come back (429 Overloaded, 503 Unavailable), and ``Connection: close`` after a body that stopped coming."""
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else {}
    if isinstance(exc, BodyTimeout):  # the rest of the body may still come: the connection cannot carry another
        headers["Connection"] = "close"
    return error_at(path, exc.status_code, exc.reason, str(exc), headers or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LabelAuditError)
    async def _ours(request: Request, exc: LabelAuditError) -> JSONResponse:
        if isinstance(exc, BodyTimeout):
            log.info("408 on %s %s: %s", request.method, request.url.path, exc)
        return answer_to(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe_errors(exc.errors(), whole="request")
        return error_response(request, 422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            request, exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, 500, "internal_error", "the server failed to handle this request; it has been logged"
        )
