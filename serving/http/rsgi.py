"""The gateway on granian's own interface, RSGI, instead of ASGI (``Settings.http_granian_interface``).

Under ASGI every request is a scope dict built for it, a ``receive`` and a ``send`` awaited per message and the
middleware stack's wrappers around both; RSGI hands the app granian's request object, which reads the body
in one call and takes the whole response in another. For the gateway's hot path (``POST /v1/classify`` and
``/v1/audit``, ``hot.HotPath``) that is what the route needs and nothing more; issue 19's benchmark
(docs/serving.md) says what it saves. Every other request (the probes, /metrics, KServe v2, OpenAPI and
/docs) goes to the FastAPI app unchanged through a small ASGI bridge (``_asgi``), and the app's lifespan (the
model, the batcher, the store) runs as under any ASGI server: started before the worker takes requests,
stopped after its last one.

``create_rsgi_app`` is what granian's workers import (``serving.http.server``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from fastapi import FastAPI
from granian.rsgi import HTTPProtocol, ProtocolClosed, Scope
from starlette.requests import ClientDisconnect
from starlette.types import Message

from labelaudit.serving.http.app import create_app
from labelaudit.serving.http.body import body_timeout, check_declared_length, collect_body
from labelaudit.serving.http.hot import HotPath
from labelaudit.serving.http.metrics import CLIENT_CLOSED, GatewayMetrics

log = logging.getLogger("labelaudit.http")

ASGI_VERSIONS = {"version": "3.0", "spec_version": "2.3"}


def create_rsgi_app() -> RsgiGateway:
    """A granian worker's app: the gateway built from its environment, served over RSGI."""
    return RsgiGateway(create_app())


class RsgiGateway:
    """``app`` (``create_app``'s) served over RSGI: the hot path directly, the rest through ASGI."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.hot: HotPath = app.state.hot_path
        self.metrics: GatewayMetrics = app.state.metrics
        self.lifespan = Lifespan(app)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before the worker serves: the app's lifespan startup. A startup that fails ends the worker, as
        granian does for an ASGI app's."""
        try:
            loop.run_until_complete(self.lifespan.startup())
        except StartupFailed as exc:
            log.error("the gateway's startup failed: %s", exc)
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """After the worker's last request: the lifespan shutdown (the batcher drained, the store closed)."""
        loop.run_until_complete(self.lifespan.shutdown())

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":
            return  # websockets are off (granian_options); nothing else reaches an app
        hot = self.hot.route(scope.method, scope.path)
        if hot is None:
            await self._asgi(scope, protocol)
            return
        handler, route = hot
        started, status = time.perf_counter(), 500

        async def read_body(content_length: str | None, limit: int, timeout_s: float | None) -> bytes:
            return await rsgi_body(protocol, content_length, limit, timeout_s)

        try:
            response = await self.hot.answer(scope.path, handler, scope.headers, read_body, self.app.state)
            status = response.status_code
            body = response.body if isinstance(response.body, bytes) else bytes(response.body)
            protocol.response_bytes(status, _str_headers(response.raw_headers), body)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            log.info("POST %s: the client closed the connection before sending its whole body", scope.path)
        finally:
            self.metrics.request_done(route.path, status, time.perf_counter() - started)

    async def _asgi(self, scope: Scope, protocol: HTTPProtocol) -> None:
        """One request through the FastAPI app, as an ASGI server would pass it."""
        body = aiter(protocol)
        body_done = False
        stream = None
        start: dict[str, Any] = {}

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                except ProtocolClosed:
                    body_done = True
                    return {"type": "http.disconnect"}
                return {"type": "http.request", "body": chunk, "more_body": True}
            await protocol.client_disconnect()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal stream
            if message["type"] == "http.response.start":
                start.update(status=message["status"], headers=_str_headers(message.get("headers", [])))
                return
            if message["type"] != "http.response.body":
                return
            chunk, more = message.get("body", b""), message.get("more_body", False)
            if stream is None and not more:  # the whole answer at once: every route of the gateway's
                protocol.response_bytes(start["status"], start["headers"], chunk)
                start["sent"] = True
                return
            if stream is None:
                stream = protocol.response_stream(start["status"], start["headers"])
                start["sent"] = True
            await stream.send_bytes(chunk)

        await self.app(asgi_scope(scope, self.lifespan.state), receive, send)
        if not start.get("sent"):  # the app returned without answering (Starlette always answers, 500 included)
            protocol.response_empty(500, [])


def asgi_scope(scope: Scope, state: dict[str, Any]) -> dict[str, Any]:
    """The ASGI HTTP scope of an RSGI request (``state``: a copy of the lifespan's, as ASGI servers give)."""
    return {
        "type": "http",
        "asgi": ASGI_VERSIONS,
        "http_version": scope.http_version,
        "server": _address(scope.server),
        "client": _address(scope.client),
        "scheme": scope.scheme,
        "method": scope.method,
        "root_path": "",
        "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode("latin-1"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "state": dict(state),
    }


def _address(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _str_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


async def rsgi_body(protocol: HTTPProtocol, content_length: str | None, limit: int, timeout_s: float | None) -> bytes:
    """The request body from granian: ``receive_body``'s limits, deadline and errors. A body with a declared
    length (within the limit) is read in one call; one without (chunked) chunk by chunk against the limit."""
    declared = check_declared_length(content_length, limit)
    if declared is None:

        async def chunks():
            try:
                async for chunk in protocol:
                    yield chunk
            except ProtocolClosed:
                raise ClientDisconnect() from None

        return await collect_body(chunks(), content_length, limit, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            body = await protocol()
    except TimeoutError:
        raise body_timeout(timeout_s, 0, declared) from None
    except ProtocolClosed:
        raise ClientDisconnect() from None
    if len(body) < declared:
        raise ClientDisconnect()
    return body


class StartupFailed(RuntimeError):
    """The app's lifespan startup failed; the message says why (Starlette's: the traceback)."""


class Lifespan:
    """The ASGI lifespan protocol, driven from outside: ``startup`` runs the app's startup and returns once it
    is complete (raising when it failed), ``shutdown`` runs its shutdown."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] | None = None
        self._from_app: asyncio.Queue[Message] | None = None
        self._task: asyncio.Task | None = None

    async def startup(self) -> None:
        self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
        scope = {"type": "lifespan", "asgi": ASGI_VERSIONS, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        try:
            answer = await self._answer()
        except Exception as exc:
            raise StartupFailed(f"{type(exc).__name__}: {exc}") from exc
        if answer["type"] != "lifespan.startup.complete":
            await asyncio.gather(self._task, return_exceptions=True)  # what it raised is in the message
            raise StartupFailed(answer.get("message") or answer["type"])

    async def shutdown(self) -> None:
        if self._task is None or self._to_app is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        answer = await self._answer()
        if answer["type"] != "lifespan.shutdown.complete":
            log.error("the gateway's shutdown failed: %s", answer.get("message", answer["type"]))

    async def _answer(self) -> Message:
        """The app's next lifespan message; its exception if it ended instead."""
        assert self._task is not None and self._from_app is not None
        message = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({message, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if message.done():
            return message.result()
        message.cancel()
        self._task.result()  # raises what ended it
        raise RuntimeError("the app's lifespan ended without answering")
