"""How uvicorn runs the gateway (``run_gateway``): its worker processes, their settings and shared metrics,
its options from the settings, and the one timeout it lacks.

uvicorn bounds the wait between requests (``timeout_keep_alive``) but not a request's arrival: any byte
disarms the keep-alive timer, and nothing rearms it until a response is sent. So a client that opens a
connection and sends nothing, or half a header line, holds the connection for ever (uvicorn's issue 157
has asked for ``--timeout-request-start`` since 2018), and httptools buffers a request head of any size
(10 MB was accepted). ``HeaderDeadline`` adds that deadline and a 64 KiB cap (431) to uvicorn's httptools
protocol; the body's deadline is the app's (``read_body``, 408).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from labelaudit.serving.core.model_repo import resolve_model
from labelaudit.serving.settings import Settings, intra_op_threads, usable_cpus

log = logging.getLogger("labelaudit.http")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # no httptools (uvicorn without [standard]): h11 serves, without a header deadline
    HAVE_HTTPTOOLS = False


# A request line and headers above this are refused (nginx's large_client_header_buffers is 4 x 8 KiB).
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b'content-length: 89\r\n\r\n{"error": "headers_too_large", "detail": "the request line and headers pass 65536 bytes"}'
)


@functools.cache
def _header_timeout_from_settings() -> float:
    return Settings().http_header_timeout_s


if HAVE_HTTPTOOLS:

    class HeaderDeadline(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request head: from the connection's
        opening, or from the first byte of its next request, to the end of its headers. Past it the
        connection is closed without an answer (there is no request yet to answer), as nginx does with
        ``client_header_timeout``. The keep-alive wait between requests stays uvicorn's."""

        header_timeout_s: float | None = None  # None: this process's Settings (uvicorn's worker processes)

        def connection_made(self, transport) -> None:
            self._head_deadline: asyncio.TimerHandle | None = None
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


def server_options(settings: Settings, *, workers: bool = False) -> dict[str, Any]:
    """uvicorn's keyword arguments for the gateway's timeouts. ``workers``: for ``uvicorn.run`` with
    several worker processes, which import the protocol by name and read its timeout from their settings."""
    options: dict[str, Any] = {"timeout_keep_alive": settings.http_keep_alive_timeout_s}
    if not HAVE_HTTPTOOLS:
        log.warning("httptools is not installed: no deadline for request heads (install uvicorn[standard])")
    elif workers:
        options["http"] = f"{__name__}:HeaderDeadline"
    else:
        options["http"] = type(
            "HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": settings.http_header_timeout_s}
        )
    return options


def run_gateway(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until stopped: one process, or ``settings.http_workers`` of them (0: one per usable CPU) sharing
    the port, each with its own model session, onnxruntime threads shared out among them, and one metrics
    folder they all write to. Fails before binding when the model is not there (``ModelNotFound``) or a
    given metrics folder is not a folder (``NotADirectoryError``)."""
    import uvicorn

    from labelaudit.serving.http.app import create_app

    resolve_model(settings.model_repo, settings.model_name, settings.model_version)
    if (given := settings.prometheus_multiproc_dir) is not None and not given.is_dir():
        raise NotADirectoryError(f"PROMETHEUS_MULTIPROC_DIR={given} is not a folder")
    workers = settings.http_workers or usable_cpus()
    common: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "access_log": settings.http_access_log}
    if workers == 1:
        uvicorn.run(create_app(settings), **common, **server_options(settings))
        return
    # Each worker process builds its own app from the environment it inherits: these settings, whole.
    os.environ.update(worker_environment(settings))
    os.environ["LABELAUDIT_ORT_INTRA_OP_THREADS"] = str(intra_op_threads(settings, workers))
    with shared_metrics_dir(settings) as folder:
        log.info("the %d workers' metrics are merged from %s", workers, folder)
        uvicorn.run(
            "labelaudit.serving.http.app:create_app",
            factory=True,
            workers=workers,
            **common,
            **server_options(settings, workers=True),
        )


def worker_environment(settings: Settings) -> dict[str, str]:
    """``LABELAUDIT_*`` variables that give a worker process's ``Settings()`` every value of ``settings`` that
    differs from its default (options given on the command line included), in the form pydantic-settings
    reads back: text as it is, everything else as JSON."""
    prefix = Settings.model_config.get("env_prefix", "")
    values = settings.model_dump(mode="json")
    env = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value == field.get_default(call_default_factory=True):
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(values[name], str):
            text = values[name]
        else:
            text = json.dumps(values[name])
        alias = field.validation_alias  # a variable of its own, e.g. PROMETHEUS_MULTIPROC_DIR
        env[alias if isinstance(alias, str) else f"{prefix}{name}".upper()] = text
    return env


@contextmanager
def shared_metrics_dir(settings: Settings) -> Iterator[Path]:
    """The folder where every worker writes its metrics (prometheus_client's multiprocess mode), in the
    environment the workers inherit: the user's PROMETHEUS_MULTIPROC_DIR, or a fresh private one that is
    removed on exit. Set before uvicorn starts them: prometheus_client reads it when first imported."""
    if (folder := settings.prometheus_multiproc_dir) is not None:
        if any(folder.glob("*.db")):
            log.warning("%s holds metrics files of an earlier run: they are added to this run's totals", folder)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="labelaudit-metrics-") as created:  # mode 0700
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
        try:
            yield Path(created)
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
