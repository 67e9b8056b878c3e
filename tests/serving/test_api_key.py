"""Which routes ``LABELAUDIT_API_KEY`` guards, pinned: the API needs the key; the probes (the kubelet
calls them without credentials), /metrics (Prometheus scrapes it without them) and the API's own
description stay open. A new route fails this test until it is put on one side or the other."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings

OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
}
NEEDS_KEY = {
    ("POST", "/v1/classify"),
    ("POST", "/v1/audit"),
    ("GET", "/v1/models"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
}


@pytest.fixture(scope="module")
def client(model_repo):
    with TestClient(create_app(Settings(model_repo=model_repo, ort_intra_op_threads=1, api_key="k3y"))) as c:
        yield c


def routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route: the OpenAPI document's (included routers' too, which FastAPI keeps
    behind a private wrapper in app.routes) and the app's own routes left out of it (/metrics, /docs)."""
    documented = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    direct = {(m, r.path) for r in app.routes for m in getattr(r, "methods", None) or () if m != "HEAD"}
    return documented | direct


def url(path: str) -> str:
    return path.format(name="labelaudit", version="1")


def test_every_route_is_either_open_or_guarded(client):
    assert routes(client.app) == OPEN | NEEDS_KEY


@pytest.mark.parametrize(("method", "path"), sorted(NEEDS_KEY))
def test_the_api_needs_the_key(client, method, path):
    without = client.request(method, url(path))
    assert without.status_code == 401 and "unauthorized" in without.text, without.text
    for header in ({"Authorization": "Bearer k3y"}, {"X-API-Key": "k3y"}):
        assert client.request(method, url(path), headers=header).status_code != 401


@pytest.mark.parametrize(("method", "path"), sorted(OPEN))
def test_probes_metrics_and_the_description_are_open(client, method, path):
    response = client.request(method, url(path))
    assert response.status_code == 200, response.text
