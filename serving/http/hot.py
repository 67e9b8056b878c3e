"""The gateway's hot path: ``POST /v1/classify`` and ``POST /v1/audit`` answered straight from ASGI (or RSGI).

Everything else goes through FastAPI. These two are where the traffic is, and for a small image FastAPI's
machinery around a route (the router's matching, the exception middleware, the route's own request and
response wrappers and exit stack) cost about as much CPU as decoding the image (issue 19's profile,
docs/serving.md). ``HotRoutes`` sits in front of it, inside ``MeasureRequests`` (so the metrics see these
requests as any other), and does only what the routes need: the API key, the body (``receive_body``: the
same limits, deadline and errors as ``read_body``), the handler and the answer. The handlers are
``V1Handlers``, which the FastAPI routes call too: the routes still document the API (OpenAPI, /docs) and
answer whatever reaches them, and the two paths cannot differ in what they answer (tests/serving run against
the app as served, so through this path).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers, State
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from labelaudit.errors import LabelAuditError
from labelaudit.serving.http.body import BodyTimeout, receive_body
from labelaudit.serving.http.errors import answer_to, error_at
from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.http")


@dataclass(frozen=True)
class Routed:
    """What the router would put in the scope as ``route``: its ``path`` is ``MeasureRequests``' route label."""

    path: str


class HeaderLookup(Protocol):
    """Request headers by lower-case name: Starlette's ``Headers`` (ASGI) or granian's ``RSGIHeaders``."""

    def get(self, key: str, default: str, /) -> str: ...


Handler = Callable[[State, str, bytes], Awaitable[Response]]  # (app state, content type, body) -> answer
Authorize = Callable[[HeaderLookup], None]  # raises LabelAuditError (401) when the request may not pass
ReadBody = Callable[[str | None, int, float | None], Awaitable[bytes]]  # (content-length, limit, deadline)


class HotPath:
    """The hot routes' handlers and what they check, whichever server interface delivers the request (ASGI:
    ``HotRoutes``; granian's RSGI: ``serving.http.rsgi``)."""

    def __init__(self, *, settings: Settings, handlers: dict[str, Handler], authorize: Authorize | None = None):
        """``handlers``: per POST path, its handler."""
        self.settings, self.authorize = settings, authorize
        self.handlers = {path: (handler, Routed(path)) for path, handler in handlers.items()}

    def route(self, method: str, path: str) -> tuple[Handler, Routed] | None:
        """The handler and route label for a request, or None when it is not for the hot path."""
        return self.handlers.get(path) if method == "POST" else None

    async def answer(
        self, path: str, handler: Handler, headers: HeaderLookup, read_body: ReadBody, state: State
    ) -> Response:
        """The response to a hot request: the handler's, or the error's answer. A client that left while its
        body was coming raises ``ClientDisconnect``: nobody is there to answer."""
        try:
            if self.authorize is not None:
                self.authorize(headers)
            settings = self.settings
            length = headers.get("content-length", "") or None
            body = await read_body(length, settings.max_body_bytes, settings.http_body_timeout_s)
            return await handler(state, headers.get("content-type", ""), body)
        except ClientDisconnect:
            raise  # nobody to answer: the caller counts it (499)
        except LabelAuditError as exc:
            if isinstance(exc, BodyTimeout):
                log.info("408 on POST %s: %s", path, exc)
            return answer_to(path, exc)
        except Exception:
            log.exception("unhandled error on POST %s", path)
            return error_at(path, 500, "internal_error", "the server failed to handle this request; it has been logged")


class HotRoutes:
    """ASGI middleware: the hot path's requests answered here, everything else passed on to ``app``."""

    def __init__(self, app: ASGIApp, *, hot: HotPath):
        self.app, self.hot = app, hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (hot := self.hot.route(scope["method"], scope["path"])) is None:
            await self.app(scope, receive, send)
            return
        handler, route = hot
        scope["route"] = route

        async def read_body(content_length: str | None, limit: int, timeout_s: float | None) -> bytes:
            return await receive_body(receive, content_length, limit, timeout_s)

        response = await self.hot.answer(scope["path"], handler, Headers(scope=scope), read_body, scope["app"].state)
        await response(scope, receive, send)
