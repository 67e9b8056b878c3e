"""Fixtures for the serving tests: the gateway as a real uvicorn server on loopback."""

from __future__ import annotations

import os

import pytest

from labelaudit.serving.settings import Settings
from tests.serving.gatewaykit import running_gateway


@pytest.fixture(scope="session", autouse=True)
def audit_store_in_tmp(tmp_path_factory):
    """Every app built in these tests writes its verdicts under tmp, never into the checkout."""
    path = tmp_path_factory.mktemp("store") / "audit.db"
    before = os.environ.get("LABELAUDIT_STORE_URL")
    os.environ["LABELAUDIT_STORE_URL"] = f"sqlite:///{path}"
    yield path
    if before is None:
        os.environ.pop("LABELAUDIT_STORE_URL", None)
    else:
        os.environ["LABELAUDIT_STORE_URL"] = before


@pytest.fixture(scope="session")
def gateway(model_repo):
    with running_gateway(Settings(model_repo=model_repo, ort_intra_op_threads=1)) as url:
        yield url.removeprefix("http://")
