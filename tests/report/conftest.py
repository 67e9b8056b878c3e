"""The report's tests: known records (reportkit.py) in each store kind (tests/conftest.py's ``store_url``:
SQLite and a real PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.report.reportkit import KNOWN, fill


@pytest.fixture
def known_store(store_url) -> str:
    return fill(store_url, KNOWN)
