"""Slow and vanishing clients against a real uvicorn server (a thread): a client that leaves mid-body is
counted as 499 and logged in one line, not a 500 with two tracebacks."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import httpx
import pytest
import uvicorn
from httpkit import connect, request_head

from labelaudit.ports import free_port
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings

LEAVERS = 20


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    settings = Settings(
        model_repo=model_repo,
        ort_intra_op_threads=1,
        store_url=f"sqlite:///{tmp_path_factory.mktemp('slow') / 'audit.db'}",
    )
    port = free_port()
    # log_config=None: uvicorn's records reach caplog
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def requests_by_status(address: str) -> dict[str, float]:
    """``labelaudit_http_requests_total`` summed over routes, by status."""
    totals: dict[str, float] = {}
    for line in httpx.get(f"http://{address}/metrics").text.splitlines():
        if line.startswith("labelaudit_http_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            totals[status] = totals.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_client_that_leaves_mid_body_is_a_499_in_one_line_not_a_500(server, caplog):
    caplog.set_level(logging.INFO)
    before = requests_by_status(server).get("499", 0.0)
    for i in range(LEAVERS):
        sock = connect(server)
        sock.sendall(request_head("POST", "/v1/classify", length=100_000, content_type="application/json"))
        sock.sendall(b'{"images": [{"data": "' + b"A" * 1000)
        if i % 2:  # half of them reset the connection instead of closing it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert wait_for(lambda: requests_by_status(server).get("499", 0.0) - before == LEAVERS), requests_by_status(server)
    statuses = requests_by_status(server)
    assert not [s for s in statuses if s.startswith("5")], statuses
    lines = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(lines) == LEAVERS and all(r.exc_info is None for r in lines)
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]
