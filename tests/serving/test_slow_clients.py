"""Slow and vanishing clients against a real uvicorn server (a thread, the options ``labelaudit serve``
passes) and a real granian one (``labelaudit serve --server granian``, a subprocess): a client that leaves
mid-body is counted as 499 and logged in one line, not a 500 with two tracebacks; one that stalls mid-body
gets 408 and its connection closed; one that never finishes its headers, or sends nothing, is disconnected;
keep-alive connections are closed when idle; a request head past 64 KiB is a 431. Where the two servers
differ (docs/serving.md, "The HTTP server"), the tests say how."""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from labelaudit.serving.http.server import MAX_HEAD_BYTES, granian_options, server_options, worker_environment
from labelaudit.serving.settings import Settings
from tests.serving.gatewaykit import running_gateway, served_by_cli
from tests.serving.httpkit import closed_by_server, connect, post, read_response, request_head

TIMEOUT_S = 1.0  # the header, body and keep-alive timeouts of this server
LEAVERS = 20


@dataclass
class Gateway:
    address: str
    server: str
    log: Path | None  # granian's workers' output; None: uvicorn in this process, whose records reach caplog


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def gateway_under_test(request, model_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    settings = Settings(
        model_repo=model_repo,
        ort_intra_op_threads=1,
        store_url=f"sqlite:///{folder / 'audit.db'}",
        http_header_timeout_s=TIMEOUT_S,
        http_body_timeout_s=TIMEOUT_S,
        http_keep_alive_timeout_s=TIMEOUT_S,
    )
    if request.param == "uvicorn":
        # log_config=None: records reach caplog
        with running_gateway(settings, log_config=None, **server_options(settings)) as url:
            yield Gateway(url.removeprefix("http://"), "uvicorn", None)
    else:
        env = worker_environment(settings)  # the settings above, as a worker reads them
        with served_by_cli(folder, server="granian", workers=1, env=env) as (url, _, log):
            yield Gateway(url.removeprefix("http://"), "granian", log)


@pytest.fixture
def server(gateway_under_test) -> str:
    return gateway_under_test.address


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


def test_a_client_that_leaves_mid_body_is_a_499_in_one_line_not_a_500(gateway_under_test, server, caplog):
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
    if (log := gateway_under_test.log) is not None:  # granian's worker: no caplog, and no INFO lines of ours
        assert "Traceback" not in log.read_text() and "Exception" not in log.read_text(), log.read_text()
        return
    lines = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(lines) == LEAVERS and all(r.exc_info is None for r in lines)
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]


def test_a_client_that_stalls_mid_body_gets_408_and_its_connection_closed(server):
    before = requests_by_status(server).get("408", 0.0)
    with connect(server, timeout_s=10) as sock:
        sock.sendall(request_head("POST", "/v1/audit", length=50_000, content_type="application/json"))
        sock.sendall(b'{"item_id": "b-1", "image": "')
        started = time.monotonic()
        status, headers, body = read_response(sock)
        waited = time.monotonic() - started
        assert status == 408 and b"body_timeout" in body and headers["connection"] == "close", body
        assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 2, waited
        sock.settimeout(2)
        assert closed_by_server(sock)
    assert requests_by_status(server).get("408", 0.0) - before == 1


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/classify HTTP/1.1\r\nHost: gateway\r\nContent-Le"],
    ids=["nothing", "half-a-header"],
)
def test_a_client_that_never_finishes_its_request_head_is_disconnected(server, sent):
    with connect(server, timeout_s=10) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert closed_by_server(sock)  # blocks until the server closes (or the socket's 10 s timeout)
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + 2


def test_the_head_deadline_starts_again_with_each_request_on_a_connection(server):
    with connect(server, timeout_s=10) as sock:
        for _ in range(3):  # a request head in pieces, within the deadline, then another
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: gateway\r\n", b"\r\n"):
                sock.sendall(piece)
                time.sleep(TIMEOUT_S / 4)
            assert read_response(sock)[0] == 200
        sock.sendall(b"GET /heal")  # the start of a request that never ends
        started = time.monotonic()
        assert closed_by_server(sock)
        assert time.monotonic() - started < TIMEOUT_S + 2


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server, timeout_s=10) as sock:
        sock.sendall(request_head("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert closed_by_server(sock)
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + 2


def test_a_whole_request_is_still_served(server):
    with connect(server) as sock:
        sock.sendall(post("/v1/classify", b'{"images": []}'))
        status, _, body = read_response(sock)
        assert status == 422 and b"invalid_request" in body


def test_a_request_head_above_its_cap_gets_431_and_the_connection_closed(gateway_under_test, server):
    with connect(server) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + b"X-Padding: " + b"a" * 200_000
        try:
            sock.sendall(head)  # never ends: the cap, not the deadline, must stop it
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before every byte is sent
        status, headers, body = read_response(sock)
        assert status == 431 and headers["connection"] == "close"
        if gateway_under_test.server == "uvicorn":  # granian's 431 is hyper's own, with no body
            assert b"headers_too_large" in body
        assert closed_by_server(sock)
    with connect(server) as sock:  # a long but sane head is still served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 30_000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_the_head_deadline_on_a_kept_connection_runs_from_the_first_byte_or_the_last_response(gateway_under_test):
    """uvicorn (``HeaderDeadline``) times a request head from its first byte; granian (hyper) from the previous
    response, so a request that starts late on a kept-alive connection has less time (docs/serving.md)."""
    with connect(gateway_under_test.address, timeout_s=10) as sock:
        sock.sendall(request_head("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        time.sleep(TIMEOUT_S * 0.6)  # idle, within the keep-alive timeout
        try:
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: gateway\r\n", b"\r\n"):
                sock.sendall(piece)  # a head that takes 0.6 of the deadline from its first byte
                time.sleep(TIMEOUT_S * 0.3)
            served = read_response(sock)[0] == 200
        except (BrokenPipeError, ConnectionError):
            served = False
        assert served == (gateway_under_test.server == "uvicorn")


def test_many_short_headers(gateway_under_test):
    """150 headers of 10 bytes: uvicorn (httptools) serves them; granian (hyper) allows 100 and answers 431."""
    with connect(gateway_under_test.address) as sock:
        sock.sendall(request_head("GET", "/healthz", headers={f"X-{i}": "v" for i in range(150)}))
        status = read_response(sock)[0]
        assert status == (200 if gateway_under_test.server == "uvicorn" else 431)
    with connect(gateway_under_test.address) as sock:  # 90: both serve them
        sock.sendall(request_head("GET", "/healthz", headers={f"X-{i}": "v" for i in range(90)}))
        assert read_response(sock)[0] == 200


def test_granian_has_one_timer_for_the_keep_alive_wait_and_the_head_the_longer_of_the_two():
    behind_nginx = granian_options(Settings(http_header_timeout_s=10, http_keep_alive_timeout_s=75))
    assert behind_nginx["http1_settings"].header_read_timeout == 75_000  # ms; above granian's CLI cap of 60 s
    assert granian_options(Settings())["http1_settings"].header_read_timeout == 10_000  # 10 s and 5 s
    assert granian_options(Settings())["http1_settings"].max_buffer_size == MAX_HEAD_BYTES
