"""A real Kafka broker (scripts/kafka.sh) and a real PostgreSQL (scripts/postgres.sh) for the stream
tests, and a ``Stream`` per test: its own topics and group, the consumer as a real process."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from streamkit import Broker, Stream, free_port, run_script


@pytest.fixture(scope="session")
def broker() -> Broker:
    b = Broker(Path(tempfile.mkdtemp(prefix="labelaudit-kafka-")), free_port(2))
    b.start()
    yield b
    b.stop()
    shutil.rmtree(b.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    # Directly under /tmp, not pytest's 0700 tmp tree: as root the server runs as the postgres user.
    where = tempfile.mkdtemp(prefix="labelaudit-pg-")
    port = free_port()
    run_script("scripts/postgres.sh", "start", where, str(port))
    yield run_script("scripts/postgres.sh", "url", where).strip()
    run_script("scripts/postgres.sh", "stop", where)
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """Each test gets an empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    import psycopg

    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def stream(broker, model_repo, store_url, tmp_path) -> Stream:
    s = Stream(broker, model_repo, store_url, tmp_path)
    yield s
    s.stop_all()
