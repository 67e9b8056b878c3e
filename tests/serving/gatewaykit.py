"""Helpers for the serving tests that need a gateway with settings of their own, and images to send."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager

import uvicorn
from PIL import Image

from labelaudit.ports import free_port
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings


def bilevel_png(side: int) -> bytes:
    """A one-bit PNG: a few KB on the wire, ``side**2`` pixels to decode."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def running_gateway(settings: Settings, **uvicorn_options):
    """The gateway for ``settings`` as a real uvicorn server in a thread: yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    options = {"log_level": "warning"} | uvicorn_options
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
