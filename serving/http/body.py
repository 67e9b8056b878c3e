"""Reading request bodies with a size cap and a deadline, shared by the /v1 and /v2 routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from labelaudit.errors import LabelAuditError, describe_errors

Model = TypeVar("Model", bound=BaseModel)


class BadRequest(LabelAuditError):
    reason = "bad_request"


class UnsupportedMediaType(BadRequest):
    """A body that is neither of the forms a route reads: 415."""

    status_code = 415
    reason = "unsupported_media_type"

    def __init__(self, content_type: str):
        super().__init__(f"unsupported content type {content_type!r}; send multipart/form-data or application/json")


class BodyTimeout(BadRequest):
    """The client stopped sending its body: 408, and the connection is closed (what was not read of the body
    would otherwise be taken for the next request)."""

    status_code = 408
    reason = "body_timeout"


def ascii_int(text: str | None) -> int | None:
    """``text`` as a non-negative integer when it is ASCII digits only, else None. (``str.isdigit`` is also
    true of "²" and "٣", which ``int`` then refuses or reads as another number.)"""
    if text and text.isascii() and text.isdigit():
        return int(text)
    return None


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with 408 when it has not
    all arrived ``timeout_s`` seconds after the reading began."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit, timeout_s)


async def receive_body(receive: Receive, content_length: str | None, limit: int, timeout_s: float | None) -> bytes:
    """``read_body`` on ASGI's ``receive`` (the gateway's hot path has no ``Request``); a client that leaves
    mid-body raises Starlette's ``ClientDisconnect``, as ``Request.stream`` does."""

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    return await collect_body(chunks(), content_length, limit, timeout_s)


async def collect_body(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int, timeout_s: float | None
) -> bytes:
    """The body that ``chunks`` yields (any server's), refused with 413 when the declared length or the bytes
    passes ``limit``, with 408 when it has not all come ``timeout_s`` seconds after the reading began; a body
    that ends before its declared length is a client that left (``ClientDisconnect``)."""
    declared = check_declared_length(content_length, limit)
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise BadRequest(
                        f"body is above the limit of {limit} bytes", reason="body_too_large", status_code=413
                    )
                parts.append(chunk)
    except TimeoutError:
        raise body_timeout(timeout_s, size, declared) from None
    if declared is not None and size < declared:
        raise ClientDisconnect()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_declared_length(content_length: str | None, limit: int) -> int | None:
    """The request's declared body length (None when it declares none), refused with 413 above ``limit``."""
    declared = ascii_int(content_length)
    if declared is not None and declared > limit:
        raise BadRequest(
            f"body of {declared} bytes is above the limit of {limit}", reason="body_too_large", status_code=413
        )
    return declared


def body_timeout(timeout_s: float | None, size: int, declared: int | None) -> BodyTimeout:
    return BodyTimeout(
        f"the request body did not arrive within {timeout_s:g} s ({size} bytes came"
        + (f" of {declared})" if declared is not None else ")")
    )


def parse_json(model: type[Model], body: bytes) -> Model:
    """``body`` as ``model``, or a 422 naming every problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc.errors()), reason="invalid_request", status_code=422) from None


def parse_fields(model: type[Model], fields: dict[str, Any]) -> Model:
    """Form fields (multipart) as ``model``, with the same 422 as ``parse_json``: one model, one set of limits
    and one sentence for both forms of a route."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc.errors()), reason="invalid_request", status_code=422) from None
