"""A PostgreSQL restart seen from the gateway (issue 16, item 4): while the store is away /v1/audit
answers 503 with Retry-After and /readyz says not ready; once it is back both recover by themselves,
no restart of the gateway, and promptly. The real PostgreSQL is stopped and started mid-test."""

from __future__ import annotations

import base64
import time

import httpx

from labelaudit.serving.settings import Settings
from tests.serving.gatewaykit import running_gateway, small_png
from tests.stream.streamkit import run_script

# Between the attempts a pool left on psycopg_pool's doubling backoff makes 15 and 31 s (+-10%) into the
# outage: such a pool would sleep ~10 s more with the server back (it did, and this test failed on it).
OUTAGE_S = 18.0
# A client honouring Retry-After sees the store again within this long of the server taking connections.
RECOVERY_S = 6.0


def audit(url: str, item_id: str) -> httpx.Response:
    body = {"item_id": item_id, "labeler_id": "anna", "label": "coat", "image": base64.b64encode(small_png()).decode()}
    return httpx.post(f"{url}/v1/audit", json=body, timeout=60)


def first_success_after(url: str, item_id: str, deadline_s: float) -> tuple[httpx.Response, float]:
    """Retry /v1/audit as a client would (every 0.25 s, each call waiting out the store's timeout)
    until it is not a 503 or ``deadline_s`` passes; the last answer and the seconds it took."""
    start = time.monotonic()
    while True:
        answer = audit(url, item_id)
        took = time.monotonic() - start
        if answer.status_code != 503 or took > deadline_s:
            return answer, took
        time.sleep(0.25)


def test_the_gateway_waits_out_a_postgres_restart(model_repo, own_postgres):
    settings = Settings(
        model_repo=model_repo, ort_intra_op_threads=1, store_url=own_postgres["url"], store_timeout_s=1.0
    )
    with running_gateway(settings) as url:
        assert audit(url, "before").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        run_script("scripts/postgres.sh", "stop", own_postgres["dir"])
        stopped = time.monotonic()
        try:
            during = audit(url, "during")
            assert during.status_code == 503, during.text
            assert during.json()["error"] == "store_unavailable" and int(during.headers["retry-after"]) >= 1
            ready = httpx.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["error"] == "store_unavailable"
            assert httpx.get(f"{url}/healthz").status_code == 200  # alive: nothing to restart
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        finally:
            run_script("scripts/postgres.sh", "start", own_postgres["dir"], own_postgres["port"])  # waits for it
        after, took = first_success_after(url, "after", deadline_s=3 * RECOVERY_S)
        assert after.status_code == 200, after.text
        assert took <= RECOVERY_S, f"the store came back {took:.1f} s after the server did"
        assert after.json()["recorded"] is True
        assert httpx.get(f"{url}/readyz").status_code == 200
