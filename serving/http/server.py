"""How uvicorn runs the gateway: its options from the settings, and the one timeout it lacks.

uvicorn bounds the wait between requests (``timeout_keep_alive``) but not a request's arrival: any byte
disarms the keep-alive timer, and nothing rearms it until a response is sent. So a client that opens a
connection and sends nothing, or half a header line, holds the connection for ever (uvicorn's issue 157
has asked for ``--timeout-request-start`` since 2018), and httptools buffers a request head of any size
(10 MB was accepted). ``HeaderDeadline`` adds that deadline and a 64 KiB cap (431) to uvicorn's httptools
protocol; the body's deadline is the app's (``read_body``, 408).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.http")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (uvicorn without [standard]): h11 serves, without a header deadline
    HttpToolsProtocol = None


# A request line and headers above this are refused (nginx's large_client_header_buffers is 4 x 8 KiB).
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b'content-length: 89\r\n\r\n{"error": "headers_too_large", "detail": "the request line and headers pass 65536 bytes"}'
)


@functools.cache
def _header_timeout_from_settings() -> float:
    return Settings().http_header_timeout_s


if HttpToolsProtocol is not None:

    class HeaderDeadline(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request head: from the connection's
        opening, or from the first byte of its next request, to the end of its headers. Past it the
        connection is closed without an answer (there is no request yet to answer), as nginx does with
        ``client_header_timeout``. The keep-alive wait between requests stays uvicorn's."""

        header_timeout_s: float | None = None  # None: this process's Settings (uvicorn's worker processes)

        def connection_made(self, transport) -> None:
            self._head_deadline = None
            self._head_bytes = 0
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_deadline is None or self.transport.is_closing():
                return  # no request head in progress: these bytes were a body, or the head is done
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:  # httptools buffers a head of any size: bound it
                log.info("closed a connection from %s: a request head above %d bytes", self.client, MAX_HEAD_BYTES)
                self.transport.write(HEAD_TOO_LARGE)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            if self._head_deadline is None:
                self._head_bytes = 0
                seconds = self.header_timeout_s or _header_timeout_from_settings()
                self._head_deadline = self.loop.call_later(seconds, self._head_deadline_passed)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_deadline_passed(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                log.debug("closed a connection from %s: no whole request head in time", self.client)
                self.transport.close()

else:
    HeaderDeadline = None


def server_options(settings: Settings, *, workers: bool = False) -> dict[str, Any]:
    """uvicorn's keyword arguments for the gateway's timeouts. ``workers``: for ``uvicorn.run`` with
    several worker processes, which import the protocol by name and read its timeout from their settings."""
    options: dict[str, Any] = {"timeout_keep_alive": settings.http_keep_alive_timeout_s}
    if HeaderDeadline is None:
        log.warning("httptools is not installed: no deadline for request heads (install uvicorn[standard])")
    elif workers:
        options["http"] = f"{__name__}:HeaderDeadline"
    else:
        options["http"] = type(
            "HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": settings.http_header_timeout_s}
        )
    return options
