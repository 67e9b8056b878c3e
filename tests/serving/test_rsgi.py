"""granian's RSGI interface (``serving/http/rsgi.py``, granian's default here) against its ASGI one: two real
``labelaudit serve --server granian`` subprocesses with the same settings (an API key, a small body limit),
one request list, the same answers: the hot routes that RSGI serves itself (success, every refusal, chunked
bodies) and everything it passes to the FastAPI app (probes, KServe v2, OpenAPI, 404/405). Then each one's
``/metrics`` counts the hot requests by route and status as the ASGI middleware does."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.serving.gatewaykit import scrape, served_by_cli

KEY = "rsgi-k3y"
LIMIT = 64 * 1024  # LABELAUDIT_MAX_BODY_BYTES
AUTH = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def pngs(tiny_data) -> list[bytes]:
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    return [(tiny_data / r["image"]).read_bytes() for r in rows if r["split"] == "test"][:4]


@pytest.fixture(scope="module")
def gateways(model_repo, tmp_path_factory) -> Iterator[dict[str, str]]:
    """``{"rsgi": url, "asgi": url}``: granian with each interface, everything else the same."""
    urls, stack = {}, []
    try:
        for interface in ("rsgi", "asgi"):
            folder = tmp_path_factory.mktemp(interface)
            env = {
                "LABELAUDIT_STORE_URL": f"sqlite:///{folder / 'audit.db'}",
                "LABELAUDIT_ORT_INTRA_OP_THREADS": "1",
                "LABELAUDIT_API_KEY": KEY,
                "LABELAUDIT_MAX_BODY_BYTES": str(LIMIT),
                "LABELAUDIT_HTTP_GRANIAN_INTERFACE": interface,
            }
            served = served_by_cli(folder, "--model-repo", str(model_repo), server="granian", workers=1, env=env)
            stack.append(served)
            urls[interface] = served.__enter__()[0]
        yield urls
    finally:
        for served in reversed(stack):
            served.__exit__(None, None, None)


def chunked(data: bytes, size: int = 100) -> Iterator[bytes]:
    """A body with no Content-Length: httpx sends a generator chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def requests(pngs: list[bytes]) -> list[tuple[str, str, str, dict]]:
    """(name, method, path, httpx keyword arguments); each is sent once to each gateway."""
    b64 = base64.b64encode(pngs[0]).decode()
    classify_json = json.dumps({"images": [{"data": b64, "id": "a"}], "top_k": 3}).encode()
    audit = {"item_id": "item-1", "labeler_id": "ann-1", "label": "coat", "image": b64}
    v2 = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}]}
    files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    json_type = {"content-type": "application/json"}
    return [
        ("healthz", "GET", "/healthz", {}),
        ("readyz", "GET", "/readyz", {}),
        ("openapi", "GET", "/openapi.json", {}),
        ("not found", "GET", "/nope", {}),
        ("classify by GET", "GET", "/v1/classify", {"headers": AUTH}),
        ("multipart", "POST", "/v1/classify", {"files": files, "headers": AUTH}),
        ("json", "POST", "/v1/classify", {"content": classify_json, "headers": AUTH | json_type}),
        ("chunked json", "POST", "/v1/classify", {"content": chunked(classify_json), "headers": AUTH | json_type}),
        ("no key", "POST", "/v1/classify", {"files": files}),
        ("wrong key", "POST", "/v1/classify", {"files": files, "headers": {"authorization": "Bearer nope"}}),
        ("bearer key", "POST", "/v1/classify", {"files": files, "headers": {"authorization": f"Bearer {KEY}"}}),
        ("text body", "POST", "/v1/classify", {"content": b"hello", "headers": AUTH | {"content-type": "text/plain"}}),
        ("bad json", "POST", "/v1/classify", {"content": b'{"images": 3}', "headers": AUTH | json_type}),
        ("declared too large", "POST", "/v1/classify", {"content": b"x" * (LIMIT + 1), "headers": AUTH | json_type}),
        ("chunked too large", "POST", "/v1/classify", {"content": chunked(b"x" * (LIMIT + 1), 4096), "headers": AUTH}),
        ("audit", "POST", "/v1/audit", {"json": audit, "headers": AUTH}),
        ("audit again", "POST", "/v1/audit", {"json": audit, "headers": AUTH}),
        ("audit with no label", "POST", "/v1/audit", {"json": audit | {"label": None}, "headers": AUTH}),
        ("v2 metadata", "GET", "/v2/models/labelaudit", {"headers": AUTH}),
        ("v2 infer", "POST", "/v2/models/labelaudit/infer", {"json": v2, "headers": AUTH}),
        ("v2 without key", "POST", "/v2/models/labelaudit/infer", {"json": v2}),
        ("query string", "GET", "/healthz?verbose=1&x=%20", {}),
    ]


def comparable(response: httpx.Response) -> object:
    """The answer's body, with the probabilities rounded (two processes' onnxruntime sessions)."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return response.text

    def rounded(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    return rounded(response.json())


def test_rsgi_answers_every_request_as_granians_asgi_interface_does(gateways, pngs):
    for (name, method, path, kwargs), (_, _, _, again) in zip(requests(pngs), requests(pngs), strict=True):
        rsgi = httpx.request(method, gateways["rsgi"] + path, **kwargs)
        asgi = httpx.request(method, gateways["asgi"] + path, **again)  # a chunked body is a generator: used once
        assert rsgi.status_code == asgi.status_code, f"{name}: {rsgi.status_code} {rsgi.text[:300]}"
        assert rsgi.headers.get("content-type") == asgi.headers.get("content-type"), name
        assert comparable(rsgi) == comparable(asgi), name
        if rsgi.status_code >= 400:
            assert rsgi.status_code < 500, f"{name}: {rsgi.text[:300]}"
            if not path.startswith("/v2"):
                assert set(rsgi.json()) == {"error", "detail"}, name
    # the statuses themselves, so that two equally wrong interfaces cannot pass
    statuses = {name: httpx.request(m, gateways["rsgi"] + p, **kw).status_code for name, m, p, kw in requests(pngs)}
    assert statuses["multipart"] == statuses["json"] == statuses["chunked json"] == statuses["bearer key"] == 200
    assert statuses["no key"] == statuses["wrong key"] == statuses["v2 without key"] == 401
    assert statuses["text body"] == 415 and statuses["bad json"] == 422
    assert statuses["declared too large"] == statuses["chunked too large"] == 413
    assert statuses["not found"] == 404 and statuses["classify by GET"] == 405
    assert statuses["audit"] == statuses["v2 infer"] == statuses["v2 metadata"] == 200


def test_rsgi_counts_the_hot_routes_requests_by_route_and_status(gateways, pngs):
    url = gateways["rsgi"]
    before = scrape(url)
    files = [("files", ("a.png", pngs[0], "image/png"))]
    for _ in range(3):
        assert httpx.post(f"{url}/v1/classify", files=files, headers=AUTH).status_code == 200
    assert httpx.post(f"{url}/v1/classify", files=files).status_code == 401
    after = scrape(url)

    def grew(route: str, status: str) -> float:
        key = f'labelaudit_http_requests_total{{route="{route}",status="{status}"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("/v1/classify", "200") == 3 and grew("/v1/classify", "401") == 1
    count = 'labelaudit_http_request_seconds_count{route="/v1/classify"}'
    assert after[count] - before.get(count, 0.0) == 4


def test_granian_serves_over_rsgi_unless_asked_for_asgi():
    from granian.constants import Interfaces

    from labelaudit.serving.http.server import granian_options
    from labelaudit.serving.settings import Settings

    assert granian_options(Settings())["interface"] == Interfaces.RSGI
    assert granian_options(Settings(http_granian_interface="asgi"))["interface"] == Interfaces.ASGI


def test_an_rsgi_worker_whose_app_cannot_start_stops_the_gateway_and_says_why(model_repo, tmp_path):
    """The lifespan fails (no audit store can be opened where a file stands): the worker logs why, once per
    attempt, and the gateway exits non-zero instead of serving without its runtime."""
    from tests.serving.gatewaykit import free_port

    bad_store = tmp_path / "not-a-folder"
    bad_store.write_text("a file where the store's folder should be")
    env = dict(os.environ) | {"LABELAUDIT_STORE_URL": f"sqlite:///{bad_store / 'audit.db'}"}
    command = [sys.executable, "-m", "labelaudit.cli", "serve", "--port", str(free_port()), "--server", "granian"]
    result = subprocess.run(
        command + ["--workers", "1", "--model-repo", str(model_repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the gateway's startup failed" in output and "not-a-folder" in output
    assert "never retrieved" not in output
