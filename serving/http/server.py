"""How the gateway is run (``run_gateway``): uvicorn or granian (``Settings.http_server``), its worker
processes, their settings and shared metrics, each server's options from the settings, and the one timeout
uvicorn lacks.

uvicorn bounds the wait between requests (``timeout_keep_alive``) but not a request's arrival: any byte
disarms the keep-alive timer, and nothing rearms it until a response is sent. So a client that opens a
connection and sends nothing, or half a header line, holds the connection for ever (uvicorn's issue 157
has asked for ``--timeout-request-start`` since 2018), and httptools buffers a request head of any size
(10 MB was accepted). ``HeaderDeadline`` adds that deadline and a 64 KiB cap (431) to uvicorn's httptools
protocol; the body's deadline is the app's (``read_body``, 408).

granian (hyper underneath) has both of its own, mapped in ``granian_options``: a header read timeout, which
runs from a connection's opening or its last response (so it is the keep-alive wait too), and a read buffer
that a request head must fit in (431 past it). docs/serving.md says what differs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from labelaudit.serving.core.model_repo import resolve_model
from labelaudit.serving.settings import Settings, intra_op_threads, usable_cpus

log = logging.getLogger("labelaudit.http")

# What each worker process imports and calls to build its app from its environment: the ASGI app (uvicorn,
# granian's ASGI interface) or that app wrapped for granian's RSGI interface.
APP_FACTORY = "labelaudit.serving.http.app:create_app"
RSGI_APP_FACTORY = "labelaudit.serving.http.rsgi:create_rsgi_app"

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


def granian_options(settings: Settings) -> dict[str, Any]:
    """granian's ``Server`` keyword arguments for the gateway, besides the target, address and workers. HTTP/1
    only, as uvicorn serves (the head limits below are HTTP/1's); uvloop, as uvicorn[standard] runs; uvicorn's
    listen backlog (2048); one Rust I/O thread per worker (granian's default: there is a worker per CPU); a
    worker that dies is started again, as uvicorn's supervisor does. hyper times the wait for a request head
    from the connection's opening or from its last response, so its one timer is both our header deadline and
    our keep-alive timeout: it gets the longer of the two (keep-alive above a proxy's idle timeout matters
    more than a shorter deadline for heads, which then stays bounded all the same)."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    head_wait_s = max(settings.http_header_timeout_s, settings.http_keep_alive_timeout_s)
    rsgi = settings.http_granian_interface == "rsgi"
    return {
        "interface": Interfaces.RSGI if rsgi else Interfaces.ASGI,  # either runs the app's lifespan (its runtime)
        "http": HTTPModes.http1,
        "websockets": False,
        "loop": Loops.uvloop,
        "backlog": 2048,
        "runtime_threads": 1,
        "respawn_failed_workers": True,
        "http1_settings": HTTP1Settings(
            header_read_timeout=max(1, round(head_wait_s * 1000)),  # milliseconds
            keep_alive=True,
            max_buffer_size=MAX_HEAD_BYTES,  # a head that does not fit: 431 (hyper's answer, empty)
        ),
        "log_level": "info",
        "log_access": settings.http_access_log,
    }


def run_gateway(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until stopped, with ``settings.http_server``: one process, or ``settings.http_workers`` of them
    (0: one per usable CPU) sharing the port, each with its own model session, onnxruntime threads shared out
    among them, and one metrics folder they all write to. Fails before binding when the model is not there
    (``ModelNotFound``) or a given metrics folder is not a folder (``NotADirectoryError``)."""
    resolve_model(settings.model_repo, settings.model_name, settings.model_version)
    if (given := settings.prometheus_multiproc_dir) is not None and not given.is_dir():
        raise NotADirectoryError(f"PROMETHEUS_MULTIPROC_DIR={given} is not a folder")
    workers = settings.http_workers or usable_cpus()
    SERVERS[settings.http_server](settings, host, port, workers)


def _run_uvicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    """One worker runs in this process, on the app built here; several are spawned worker processes, each with
    a listening socket of its own (``ReusePortWorkers``), or uvicorn's own supervisor's, sharing one socket,
    when ``http_reuse_port`` is off or the platform has no ``SO_REUSEPORT``."""
    import uvicorn

    from labelaudit.serving.http.app import create_app

    common: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "access_log": settings.http_access_log}
    if workers == 1:
        uvicorn.run(create_app(settings), **common, **server_options(settings))
        return
    _hand_settings_to_workers(settings, workers)
    with shared_metrics_dir(settings) as folder:
        log.info("the %d workers' metrics are merged from %s", workers, folder)
        if settings.http_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            config = uvicorn.Config(APP_FACTORY, factory=True, **common, **server_options(settings, workers=True))
            ReusePortWorkers(config, workers).run()
        else:
            uvicorn.run(APP_FACTORY, factory=True, workers=workers, **common, **server_options(settings, workers=True))


class ReusePortWorkers:
    """uvicorn workers that each listen on a socket of their own, bound to the same address with
    ``SO_REUSEPORT``: the kernel then spreads new connections evenly among them (by a hash of each
    connection's addresses). On one shared socket, whichever worker is awake accepts: measured with 64
    connections opened at once, splits from 60/4 to 35/29 between 2 workers (issue 19), so one worker's core
    saturated while the other idled, and latency depended on which worker a connection landed on.

    This process only supervises: it checks the address is free (a second gateway must not join the first one's
    port, which ``SO_REUSEPORT`` would otherwise allow), spawns the workers, starts a worker again when one
    dies while serving, adds one on SIGTTIN and retires one on SIGTTOU (as uvicorn's supervisor does), and on
    SIGTERM or SIGINT stops them all (each finishes its requests: uvicorn's graceful shutdown). A worker that
    could not start (its socket or its app's lifespan failed: exit code ``STARTUP_FAILURE``) stops the gateway,
    rather than being started again and again."""

    STARTUP_FAILURE = 3  # a worker's exit code when its app did not start (uvicorn.run's own, for one worker)

    def __init__(self, config: Any, workers: int):
        self.config, self.workers = config, workers
        self.context = multiprocessing.get_context("spawn")  # from the environment alone, as uvicorn's workers
        self.stopping = False

    def run(self) -> None:
        reuse_port_socket(self.config.host, self.config.port, probe=True).close()  # the address is ours alone
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGTTIN, lambda *_: setattr(self, "workers", self.workers + 1))
        signal.signal(signal.SIGTTOU, lambda *_: setattr(self, "workers", max(1, self.workers - 1)))
        started = [self._start() for _ in range(self.workers)]
        failed: int | None = None
        try:
            while not self.stopping:
                time.sleep(0.2)
                while len(started) < self.workers:
                    started.append(self._start())
                while len(started) > self.workers:
                    retired = started.pop()
                    retired.terminate()
                    retired.join()
                    log.info("worker %d retired", retired.pid)
                for proc in [p for p in started if not p.is_alive()]:
                    started.remove(proc)
                    if proc.exitcode == self.STARTUP_FAILURE:
                        log.error("worker %d could not start: stopping the gateway", proc.pid)
                        failed, self.stopping = proc.exitcode, True
                        break
                    log.warning("worker %d exited with %s: starting another", proc.pid, proc.exitcode)
                    started.append(self._start())
        finally:
            for proc in started:
                proc.terminate()
            for proc in started:
                proc.join(timeout=self.config.timeout_graceful_shutdown or 30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        if failed is not None:
            raise SystemExit(failed)

    def _start(self) -> Any:
        proc = self.context.Process(target=_reuse_port_worker, args=(self.config,), daemon=False)
        proc.start()
        return proc


def reuse_port_socket(host: str, port: int, *, probe: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT`` and listening; with ``probe``, bound without it,
    to fail (``OSError``: address in use) when anything else holds the address."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not probe:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not probe:
            sock.listen(2048)  # uvicorn's backlog
    except OSError:
        sock.close()
        raise
    return sock


def _reuse_port_worker(config: Any) -> None:
    """One worker process of ``ReusePortWorkers``: its own socket, then uvicorn's server on it until SIGTERM."""
    import uvicorn

    config.configure_logging()
    try:
        sock = reuse_port_socket(config.host, config.port)
    except OSError as exc:
        log.error("worker %d could not listen on %s:%s: %s", os.getpid(), config.host, config.port, exc)
        sys.exit(ReusePortWorkers.STARTUP_FAILURE)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # its lifespan failed (uvicorn logged why): the supervisor must not start it again
        sys.exit(ReusePortWorkers.STARTUP_FAILURE)


def _run_granian(settings: Settings, host: str, port: int, workers: int) -> None:
    """granian always serves from worker processes, one included, so each builds its app from the environment.
    They are spawned, not forked (Python's default on Linux, which granian would follow), as uvicorn's are: a
    worker starts from the environment alone, never from what this process imported or opened."""
    from granian.server import Server

    # granian's workers on Linux each bind the port with SO_REUSEPORT, so another server's listener on it would
    # be joined, not refused: the address must be free first, as ReusePortWorkers checks for uvicorn's.
    reuse_port_socket(host, port, probe=True).close()
    _hand_settings_to_workers(settings, workers)
    multiprocessing.set_start_method("spawn", force=True)
    with shared_metrics_dir(settings) if workers > 1 else nullcontext() as folder:
        if folder is not None:
            log.info("the %d workers' metrics are merged from %s", workers, folder)
        target = RSGI_APP_FACTORY if settings.http_granian_interface == "rsgi" else APP_FACTORY
        server = Server(target, factory=True, address=host, port=port, workers=workers, **granian_options(settings))
        server.serve()


def _hand_settings_to_workers(settings: Settings, workers: int) -> None:
    """Each worker process builds its own app from the environment it inherits: these settings, whole."""
    os.environ.update(worker_environment(settings))
    os.environ["LABELAUDIT_ORT_INTRA_OP_THREADS"] = str(intra_op_threads(settings, workers))


# The servers ``Settings.http_server`` names; its default there is the gateway's.
SERVERS: dict[str, Callable[[Settings, str, int, int], None]] = {"uvicorn": _run_uvicorn, "granian": _run_granian}


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
    removed on exit. Set before the server starts them: prometheus_client reads it when first imported."""
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
