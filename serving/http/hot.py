"""The gateway's hot path: ``POST /v1/classify`` and ``POST /v1/audit`` answered straight from ASGI.

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


Handler = Callable[[State, str, bytes], Awaitable[Response]]  # (app state, content type, body) -> answer
Authorize = Callable[[Headers], None]  # raises LabelAuditError (401) when the request may not pass


class HotRoutes:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        handlers: dict[str, Handler],
        authorize: Authorize | None = None,
    ):
        """``handlers``: per POST path, its handler."""
        self.app, self.settings, self.authorize = app, settings, authorize
        self.handlers = {path: (handler, Routed(path)) for path, handler in handlers.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or (hot := self.handlers.get(scope["path"])) is None:
            await self.app(scope, receive, send)
            return
        handler, route = hot
        scope["route"] = route
        try:
            response = await self._answer(handler, scope, receive)
        except ClientDisconnect:
            raise  # nobody to answer: MeasureRequests counts it (499)
        except LabelAuditError as exc:
            if isinstance(exc, BodyTimeout):
                log.info("408 on POST %s: %s", scope["path"], exc)
            response = answer_to(scope["path"], exc)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            response = error_at(
                scope["path"], 500, "internal_error", "the server failed to handle this request; it has been logged"
            )
        await response(scope, receive, send)

    async def _answer(self, handler: Handler, scope: Scope, receive: Receive) -> Response:
        headers = Headers(scope=scope)
        if self.authorize is not None:
            self.authorize(headers)
        settings = self.settings
        body = await receive_body(
            receive, headers.get("content-length"), settings.max_body_bytes, settings.http_body_timeout_s
        )
        return await handler(scope["app"].state, headers.get("content-type", ""), body)
