"""Fixtures for the serving tests: the gateway as a real uvicorn server on loopback."""

from __future__ import annotations

import os
import threading
import time

import pytest
import uvicorn

from labelaudit.ports import free_port
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings


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
    port = free_port()
    app = create_app(Settings(model_repo=model_repo, ort_intra_op_threads=1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
