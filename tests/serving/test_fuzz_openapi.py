"""Fuzz the gateway's own OpenAPI document with schemathesis against the real server: whatever the
generated request, never a 5xx, and every error has the documented shape.

(schemathesis' pytest plugin does not run under pytest 9 yet, so the operations' Hypothesis
strategies are driven directly.)"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_generated_request_makes_the_gateway_fail(gateway):
    schema = schemathesis.openapi.from_url(f"http://{gateway}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/classify", "/v1/models", "/v2/models/{name}/infer"}
    seen: list[int] = []

    for operation in operations:

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call(base_url=f"http://{gateway}")
            seen.append(response.status_code)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert "error" in response.json(), f"{where}: {response.text[:300]}"

        call()
    assert len(seen) > 50 and any(400 <= s < 500 for s in seen)  # it did fuzz, and bad input was refused
