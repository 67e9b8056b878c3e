"""Helpers for the serving tests that need a gateway with settings of their own, and images to send."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

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


# The line each server logs once per worker when that worker's app has started (after its lifespan); granian
# also logs "Started worker-N runtime-M" per Rust runtime thread, which this does not count.
WORKER_STARTED = {
    "uvicorn": re.compile(r"Application startup complete", re.M),
    "granian": re.compile(r"Started worker-\d+$", re.M),
}


def wait_for(condition, what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the gateway log ends:\n{log.read_text()[-3000:]}")


def answers_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", headers={"Connection": "close"}).status_code == 200
    except httpx.TransportError:
        return False


def process_group_is_gone(pgid: int, timeout_s: float = 10) -> bool:
    """True once no process is left in the group ``pgid`` (the server's workers included)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@contextmanager
def served_by_cli(folder: Path, *options: str, server: str, workers: int, env: dict[str, str]):
    """``labelaudit serve --server SERVER --workers N OPTIONS`` as a real subprocess in a process group of its
    own, with a minimal environment and ``env`` on top, its output in ``folder/gateway.log``. Yields (url,
    process, log) once every worker has started its app and ``/readyz`` answers; on the way out kills whatever
    is left of the group."""
    port, log = free_port(), folder / "gateway.log"
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    if "PYTHONPATH" in os.environ:  # the workers run the code the tests import
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-m", "labelaudit.cli", "serve", "--port", str(port)]
    command += ["--server", server, "--workers", str(workers), *options]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=folder, env=base | env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(WORKER_STARTED[server].findall(log.read_text())) == workers, f"{workers} workers", log)
        wait_for(lambda: answers_ready(url), "/readyz", log)
        yield url, proc, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def scrape(url: str) -> dict[str, float]:
    """Every sample of one ``/metrics`` scrape, keyed ``name{label="value",...}`` (labels sorted)."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples
