"""The audit store: verdicts written durably, unique on (item_id, labeler_id, model_version).

SQLite (WAL, synchronous=FULL so a commit survives a crash) is the default; PostgreSQL through psycopg
(``postgresql://...``) for teams with a database server. ``write`` says, per record, whether it was new;
duplicates are ignored, never doubled.

A store that is away (PostgreSQL restarting, SQLite locked past its busy timeout) raises
``StoreUnavailable``: the gateway answers 503 with Retry-After, the consumer retries the batch. Any other
error (a row the database refuses) is the record's own problem and propagates as it is.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args, get_origin

from labelaudit.errors import StoreUnavailable
from labelaudit.schemas.audit import AuditRecord, RelabelAnswer
from labelaudit.serving.core.relabel import audit_draw

if TYPE_CHECKING:
    import psycopg

# The table is AuditRecord's fields, one column each, in its order: ``offset`` is ``offset_`` (a reserved
# word in SQL), the probabilities a JSON array, the time an ISO 8601 string, ``disagrees`` 0 or 1.
COLUMN_NAMES = {"offset": "offset_"}
FIELDS = tuple(AuditRecord.model_fields)
COLUMNS = tuple(COLUMN_NAMES.get(name, name) for name in FIELDS)
# SQL type per field type and dialect (a column is NOT NULL unless its field may be None).
SQL_TYPES = {
    "sqlite": {str: "TEXT", float: "REAL", int: "INTEGER", bool: "INTEGER", list: "TEXT", datetime: "TEXT"},
    "postgresql": {
        str: "TEXT",
        float: "DOUBLE PRECISION",
        int: "BIGINT",
        bool: "INTEGER",
        list: "TEXT",
        datetime: "TEXT",
    },
}
PRIMARY_KEY = {"sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "id BIGSERIAL PRIMARY KEY"}


def _column_type(annotation: object) -> tuple[type, bool]:
    """(the Python type a column stores, whether it may be NULL) from a field's annotation."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    nullable = len(args) < len(get_args(annotation))
    base = args[0] if nullable else annotation
    if get_origin(base) is Literal:
        base = type(get_args(base)[0])
    return cast(type, get_origin(base) or base), nullable  # the record's fields are all of plain types


def answers_schema(dialect: str) -> str:
    """The ``relabel_answers`` table (``RelabelAnswer``): one row per (request, answering labeler), so a
    redelivered answer is stored once. A table of its own, not a column of ``audit_records``: a store made
    before it gains it with ``CREATE TABLE IF NOT EXISTS``, and an answer from the labeler whose label was
    questioned (the same item, labeler and model as the audited label) is kept although its verdict is not new."""
    return (
        f"CREATE TABLE IF NOT EXISTS relabel_answers (\n    {PRIMARY_KEY[dialect]},\n"
        "    request_id TEXT NOT NULL,\n    reason TEXT NOT NULL,\n    item_id TEXT NOT NULL,\n"
        "    labeler_id TEXT NOT NULL,\n    label TEXT NOT NULL,\n    created_at TEXT NOT NULL,\n"
        "    UNIQUE (request_id, labeler_id)\n);\n"
        "CREATE INDEX IF NOT EXISTS relabel_answers_item ON relabel_answers (item_id, labeler_id);\n"
        "CREATE INDEX IF NOT EXISTS relabel_answers_created ON relabel_answers (created_at);\n"
    )


ANSWER_COLUMNS = ("request_id", "reason", "item_id", "labeler_id", "label", "created_at")
_SQLITE_INSERT_ANSWER = (
    f"INSERT OR IGNORE INTO relabel_answers ({', '.join(ANSWER_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in ANSWER_COLUMNS)})"
)


def _answer_row(a: RelabelAnswer) -> tuple[object, ...]:
    return (a.request_id, a.reason, a.item_id, a.labeler_id, a.label, a.created_at.isoformat())


def table_schema(dialect: str) -> str:
    """The audit table's DDL in ``dialect`` (sqlite or postgresql), derived from ``AuditRecord``."""
    columns = [PRIMARY_KEY[dialect]]
    for name, column in zip(FIELDS, COLUMNS, strict=True):
        kind, nullable = _column_type(AuditRecord.model_fields[name].annotation)
        columns.append(f"{column} {SQL_TYPES[dialect][kind]}" + ("" if nullable else " NOT NULL"))
    columns.append("UNIQUE (item_id, labeler_id, model_version)")
    return (
        "CREATE TABLE IF NOT EXISTS audit_records (\n    " + ",\n    ".join(columns) + "\n);\n"
        "CREATE INDEX IF NOT EXISTS audit_records_created ON audit_records (created_at);\n"
    ) + answers_schema(dialect)


def added_columns_sql(dialect: str, existing: Collection[str]) -> list[str]:
    """The ``ALTER TABLE`` statements that give a store made by an earlier version the audit table's columns it
    lacks (``image_uri``, for one). A column is only ever added where it may be NULL: the rows already there
    have no value for it."""
    statements = []
    for name, column in zip(FIELDS, COLUMNS, strict=True):
        if column in existing:
            continue
        kind, nullable = _column_type(AuditRecord.model_fields[name].annotation)
        if not nullable:
            raise RuntimeError(f"the audit store's table lacks the column {column}, which cannot be added to old rows")
        statements.append(f"ALTER TABLE audit_records ADD COLUMN {column} {SQL_TYPES[dialect][kind]}")
    return statements


_values = operator.attrgetter(*FIELDS)
# The fields a column cannot hold as they are, and how each is stored.
_STORED_AS: dict[type, Callable[[Any], object]] = {bool: int, list: json.dumps, datetime: datetime.isoformat}
_CONVERT = tuple(
    (i, _STORED_AS[kind])
    for i, name in enumerate(FIELDS)
    if (kind := _column_type(AuditRecord.model_fields[name].annotation)[0]) in (bool, list, datetime)
)


def _row(r: AuditRecord) -> list[object]:
    """One record's column values, in ``COLUMNS`` order."""
    row = list(_values(r))
    for i, convert in _CONVERT:
        if row[i] is not None:
            row[i] = convert(row[i])
    return row


class AuditStore(Protocol):
    def write(self, records: list[AuditRecord], answers: Sequence[RelabelAnswer] = ()) -> list[bool]:
        """``records`` and the relabel ``answers`` among them in one transaction, durable when this returns;
        True where the record was new (a repeated answer is ignored like a repeated record)."""
        ...

    def ready(self) -> bool: ...
    def count(self) -> int: ...
    def select(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]: ...
    def audit_draw_sql(self, column: str) -> str:
        """An SQL expression of this store for ``relabel.audit_draw`` of the text in ``column``."""
        ...

    def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: str | Path, *, open_timeout_s: float = 30.0):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=open_timeout_s)
        self._conn.create_function("labelaudit_audit_draw", 1, audit_draw, deterministic=True)
        self._lock = threading.Lock()  # one writer at a time; callers come from worker threads
        # Several processes opening one new file at once (two consumers, a consumer and the gateway) race
        # to switch it to WAL and create the table; SQLite answers the loser "database is locked" at once,
        # without waiting on the busy timeout. Seen in CI: retry until the winner is done.
        deadline = time.monotonic() + open_timeout_s
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.executescript(table_schema("sqlite"))
                existing = {row[1] for row in self._conn.execute("PRAGMA table_info(audit_records)")}
                for statement in added_columns_sql("sqlite", existing):
                    self._conn.execute(statement)
                break
            except sqlite3.OperationalError as exc:  # "duplicate column": another process added it first
                if not ("locked" in str(exc) or "duplicate column" in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def write(self, records: list[AuditRecord], answers: Sequence[RelabelAnswer] = ()) -> list[bool]:
        """All records (and answers) in one transaction, durable when this returns; True where the record was new."""
        placeholders = ", ".join("?" for _ in COLUMNS)
        sql = f"INSERT OR IGNORE INTO audit_records ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # waits out another writer up to the busy timeout
            except sqlite3.OperationalError as exc:  # locked past it, disk I/O: the store, not the records
                raise StoreUnavailable(f"SQLite store: {exc}") from exc
            try:
                new = [self._conn.execute(sql, _row(r)).rowcount == 1 for r in records]
                if answers:
                    self._conn.executemany(_SQLITE_INSERT_ANSWER, [_answer_row(a) for a in answers])
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"SQLite store: {exc}") from exc
                raise
            return new

    def ready(self) -> bool:
        return True  # a local file: when it cannot be written, ``write`` says why

    def count(self) -> int:
        with self._lock:
            n: int = self._conn.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0]
            return n

    def select(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """A read query in SQL both stores accept, ``?`` placeholders; its rows (the report's aggregates)."""
        with self._lock:
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, params).fetchall()
            return rows

    def audit_draw_sql(self, column: str) -> str:
        return f"labelaudit_audit_draw({column})"  # registered on the connection: SQLite has no SHA-256

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresStore:
    """The same table in PostgreSQL; a commit is durable (synchronous_commit stays on).

    Connections come from a psycopg_pool pool that checks each one before handing it out, so after the
    server restarts the next write gets a fresh connection instead of failing on a dead one. While the
    server is away, a call waits up to ``timeout_s`` for a connection, then raises ``StoreUnavailable``.

    Once open, the pool gives up reconnecting after ``RECONNECT_WINDOW_S`` and the next call starts a fresh
    attempt at once. psycopg_pool's own default keeps retrying for 5 minutes with the wait doubling each
    time (1, 2, 4, 8, 16 s, ...): after an 18-second outage the pool slept on for another ~11 s with the
    server back, and every call in that time was a 503. With the short window a server that is back is
    found by the next call (or within ~1 s by an attempt already under way).
    """

    RECONNECT_WINDOW_S = 2.0

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_connections: int = 4):
        from psycopg_pool import ConnectionPool  # only needed for this store

        self.timeout_s = timeout_s
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(2, round(timeout_s))},
            name="labelaudit-store",
            open=False,
        )
        self._pool.open(wait=True, timeout=30.0)  # at start a database that is not there is an error
        self._pool.reconnect_timeout = self.RECONNECT_WINDOW_S  # read at each new attempt; start kept its 5 min
        with self._connection() as conn:
            # Two processes creating the table at once would race; an advisory lock serialises them.
            conn.execute("SELECT pg_advisory_xact_lock(724716)")
            conn.execute(table_schema("postgresql"))
            existing = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'audit_records'"
            ).fetchall()
            for statement in added_columns_sql("postgresql", {row[0] for row in existing}):
                conn.execute(statement)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection in a transaction, committed on exit; a lost or missing server is
        ``StoreUnavailable``, an error about the statement itself propagates."""
        import psycopg

        try:
            with self._pool.connection(timeout=self.timeout_s) as conn:
                yield conn
        except psycopg.OperationalError as exc:  # includes the pool's PoolTimeout
            raise StoreUnavailable(
                f"PostgreSQL store: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc

    def write(self, records: list[AuditRecord], answers: Sequence[RelabelAnswer] = ()) -> list[bool]:
        """All records in one INSERT (the answers in a second) and one transaction; True where the record was new."""
        if not records:
            return []
        row = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
        sql = (
            f"INSERT INTO audit_records ({', '.join(COLUMNS)}) VALUES {', '.join([row] * len(records))} "
            "ON CONFLICT (item_id, labeler_id, model_version) DO NOTHING RETURNING item_id, labeler_id, model_version"
        )
        params = [value for r in records for value in _row(r)]
        with self._connection() as conn:
            inserted = set(conn.execute(sql, params).fetchall())
            if answers:
                answer_row = "(" + ", ".join(["%s"] * len(ANSWER_COLUMNS)) + ")"
                conn.execute(
                    f"INSERT INTO relabel_answers ({', '.join(ANSWER_COLUMNS)})"
                    f" VALUES {', '.join([answer_row] * len(answers))} ON CONFLICT (request_id, labeler_id) DO NOTHING",
                    [value for a in answers for value in _answer_row(a)],
                )
        new = []
        for r in records:  # the first of two identical keys in one batch is the new one
            key = (r.item_id, r.labeler_id, r.model_version)
            new.append(key in inserted)
            inserted.discard(key)
        return new

    def ready(self) -> bool:
        """The server answers a trivial query within the timeout."""
        try:
            with self._connection() as conn:
                conn.execute("SELECT 1")
            return True
        except StoreUnavailable:
            return False

    def count(self) -> int:
        with self._connection() as conn:
            return cast(tuple[int], conn.execute("SELECT COUNT(*) FROM audit_records").fetchone())[0]  # one row

    def select(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """As ``SqliteStore.select``: ``?`` placeholders become psycopg's ``%s`` (a literal ``%`` is kept).

        Nested-loop joins are off for these reads: they are whole-window aggregates, and on a table whose
        statistics are stale (freshly filled, not yet analysed) the planner picks nested loops that make
        their joins quadratic (measured: 16 s instead of 0.05 s on 3,000 records).
        """
        with self._connection() as conn:
            conn.execute("SET LOCAL enable_nestloop = off")
            return conn.execute(sql.replace("%", "%%").replace("?", "%s"), params).fetchall()

    def audit_draw_sql(self, column: str) -> str:
        # the first 15 hex digits of the SHA-256 (PostgreSQL 11+) of the UTF-8 text: its first 60 bits
        return f"('x' || substr(encode(sha256(convert_to({column}, 'UTF8')), 'hex'), 1, 15))::bit(60)::bigint"

    def close(self) -> None:
        self._pool.close()


def open_store(url: str, *, timeout_s: float = 5.0) -> AuditStore:
    """``sqlite:///path/to/file.db`` or ``postgresql://user:password@host:port/database``; ``timeout_s``:
    how long a PostgreSQL call waits for a connection before ``StoreUnavailable``."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, timeout_s=timeout_s)
    raise ValueError(f"unsupported store URL {url.split(':', 1)[0]!r}: use sqlite:///path.db or postgresql://host/db")
