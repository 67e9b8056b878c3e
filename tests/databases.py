"""PostgreSQL databases for tests: each test that asks gets an empty database of its own on the session's server."""

from __future__ import annotations

import uuid


def new_database(postgres_url: str) -> str:
    """The URL of a new, empty database on the server of ``postgres_url``."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
