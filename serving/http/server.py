"""How uvicorn runs the gateway: its options from the settings, and the one timeout it lacks.

uvicorn bounds the wait between requests (``timeout_keep_alive``) but not a request's arrival: any byte
disarms the keep-alive timer, and nothing rearms it until a response is sent. So a client that opens a
connection and sends nothing, or half a header line, holds the connection for ever (uvicorn's issue 157
has asked for ``--timeout-request-start`` since 2018). ``HeaderDeadline`` adds that deadline to uvicorn's
httptools protocol; the body's deadline is the app's (``read_body``, 408).
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
            super().connection_made(transport)
            self._arm_head_deadline()

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
