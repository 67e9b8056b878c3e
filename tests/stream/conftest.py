"""A real Kafka broker (scripts/kafka.sh) for the stream tests, and a ``Stream`` per test: its own topics
and group, the consumer as a real process. The real PostgreSQL and the ``store_url`` fixture are in
tests/conftest.py (the report's tests use them too)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from labelaudit.ports import free_port
from tests.stream.streamkit import Broker, Stream


@pytest.fixture(scope="session")
def broker() -> Broker:
    b = Broker(Path(tempfile.mkdtemp(prefix="labelaudit-kafka-")), free_port(2))
    b.start()
    yield b
    b.stop()
    shutil.rmtree(b.dir, ignore_errors=True)


@pytest.fixture
def stream(broker, model_repo, store_url, tmp_path) -> Stream:
    s = Stream(broker, model_repo, store_url, tmp_path)
    yield s
    s.stop_all()
