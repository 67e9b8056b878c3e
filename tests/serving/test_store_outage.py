"""A PostgreSQL restart seen from the gateway (issue 16, item 4): while the store is away /v1/audit
answers 503 with Retry-After and /readyz says not ready; once it is back both recover by themselves,
no restart of the gateway. The real PostgreSQL is stopped and started mid-test."""

from __future__ import annotations

import base64

import httpx

from labelaudit.serving.settings import Settings
from tests.serving.gatewaykit import running_gateway, small_png
from tests.stream.streamkit import run_script


def audit(url: str, item_id: str) -> httpx.Response:
    body = {"item_id": item_id, "labeler_id": "anna", "label": "coat", "image": base64.b64encode(small_png()).decode()}
    return httpx.post(f"{url}/v1/audit", json=body, timeout=60)


def test_the_gateway_waits_out_a_postgres_restart(model_repo, own_postgres):
    settings = Settings(
        model_repo=model_repo, ort_intra_op_threads=1, store_url=own_postgres["url"], store_timeout_s=1.0
    )
    with running_gateway(settings) as url:
        assert audit(url, "before").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        run_script("scripts/postgres.sh", "stop", own_postgres["dir"])
        try:
            during = audit(url, "during")
            assert during.status_code == 503, during.text
            assert during.json()["error"] == "store_unavailable" and int(during.headers["retry-after"]) >= 1
            ready = httpx.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["error"] == "store_unavailable"
            assert httpx.get(f"{url}/healthz").status_code == 200  # alive: nothing to restart
        finally:
            run_script("scripts/postgres.sh", "start", own_postgres["dir"], own_postgres["port"])
        after = audit(url, "after")
        assert after.status_code == 200, after.text
        assert after.json()["recorded"] is True
        assert httpx.get(f"{url}/readyz").status_code == 200
