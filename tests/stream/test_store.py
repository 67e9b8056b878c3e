"""Both audit stores, real SQLite and real PostgreSQL: durable writes, unique on
(item_id, labeler_id, model_version), and a per-record answer to "was this new?"."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import get_args

import pytest

from labelaudit.schemas.audit import AuditRecord, RelabelAnswer
from labelaudit.serving.core.store import COLUMNS, _row, answers_schema, open_store, table_schema


def verdict(item: str, labeler: str = "anna", version: str = "1", label: str | None = "coat") -> AuditRecord:
    return AuditRecord(
        item_id=item,
        labeler_id=labeler,
        human_label=label,
        predicted_label="shirt",
        label_probability=None if label is None else 0.1,
        predicted_probability=0.8,
        score=0.7,
        disagrees=label is not None,
        policy="confident-joint-v1",
        probabilities=[0.1] * 10,
        model_name="m",
        model_version=version,
        source="kafka",
        topic="images",
        partition=0,
        offset=3,
        created_at=datetime.now(UTC),
    )


def test_writes_are_unique_and_say_which_were_new(store_url):
    store = open_store(store_url)
    try:
        assert store.write([verdict("a"), verdict("b")]) == [True, True]
        # the same item again, another labeler, another model version, and a duplicate inside one batch
        batch = [verdict("a"), verdict("a", labeler="ben"), verdict("a", version="2"), verdict("c"), verdict("c")]
        assert store.write(batch) == [False, True, True, True, False]
        assert store.write([]) == []
        assert store.count() == 5
    finally:
        store.close()


def test_records_survive_reopening_and_unlabeled_images_are_stored(store_url):
    store = open_store(store_url)
    store.write([verdict("u", labeler="", label=None)])
    store.close()
    again = open_store(store_url)
    try:
        assert again.count() == 1
        assert again.write([verdict("u", labeler="", label=None)]) == [False]
    finally:
        again.close()


def _open_and_write(path: str, worker: int) -> str:
    try:
        store = open_store(f"sqlite:///{path}")
        store.write([verdict(f"item-{worker}")])
        store.close()
        return "ok"
    except Exception as exc:  # reported to the parent, which fails the test with it
        return f"{type(exc).__name__}: {exc}"


def test_many_processes_can_open_one_new_sqlite_file_at_once(tmp_path):
    """Two consumers starting together raced to create the store; the loser got 'database is locked'
    (seen in CI about once in a hundred opens)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        for trial in range(25):
            path = tmp_path / f"audit-{trial}.db"
            outcomes = pool.starmap(_open_and_write, [(str(path), w) for w in range(6)])
            assert outcomes == ["ok"] * 6, outcomes
            assert open_store(f"sqlite:///{path}").count() == 6


def test_the_table_is_the_records_fields_and_a_record_reads_back_whole(store_url):
    store = open_store(store_url)
    try:
        if store_url.startswith("sqlite"):
            rows = store.select("SELECT name, \"notnull\" FROM pragma_table_info('audit_records') ORDER BY cid")
        else:
            rows = store.select(
                "SELECT column_name, CASE is_nullable WHEN 'NO' THEN 1 ELSE 0 END FROM information_schema.columns"
                " WHERE table_name = 'audit_records' ORDER BY ordinal_position"
            )
        columns = {name: bool(not_null) for name, not_null in rows}
        assert list(columns) == ["id", *COLUMNS]
        fields = AuditRecord.model_fields
        assert [c.removesuffix("_") for c in COLUMNS] == list(fields)
        for name, field in fields.items():  # NOT NULL exactly where the record requires a value
            assert columns[name if name != "offset" else "offset_"] == (type(None) not in get_args(field.annotation)), (
                name
            )

        record = verdict("r")
        store.write([record])
        [row] = store.select(f"SELECT {', '.join(COLUMNS)} FROM audit_records")
        back = dict(zip(fields, row, strict=True))
        back["disagrees"] = bool(back["disagrees"])
        back["probabilities"] = json.loads(back["probabilities"])
        back["created_at"] = datetime.fromisoformat(back["created_at"])
        assert AuditRecord(**back) == record
    finally:
        store.close()


def answer_to(item: str, labeler: str = "reviewer") -> RelabelAnswer:
    return RelabelAnswer(
        request_id=f"{item}/anna/1",
        reason="disagreement",
        item_id=item,
        labeler_id=labeler,
        label="shirt",
        created_at=datetime.now(UTC),
    )


def test_answers_are_written_with_their_records_in_one_transaction(store_url):
    store = open_store(store_url)
    try:
        assert store.write([verdict("a", labeler="reviewer")], [answer_to("a")]) == [True]
        # a redelivery: the record and the answer are both already there
        assert store.write([verdict("a", labeler="reviewer")], [answer_to("a")]) == [False]
        # a record the database refuses fails the whole batch: the answers are not kept either
        broken = verdict("b", labeler="reviewer").model_copy(update={"predicted_label": {"not": "text"}})
        with pytest.raises(Exception, match="(?i)adapt|bind|type"):
            store.write([verdict("c", labeler="reviewer"), broken], [answer_to("c"), answer_to("b")])
        assert store.select("SELECT item_id, labeler_id FROM relabel_answers") == [("a", "reviewer")]
        assert store.count() == 1
    finally:
        store.close()


def test_a_store_made_before_relabel_answers_gains_the_table(store_url):
    """A store whose audit table predates relabel_answers opens, keeps its records and takes answers."""
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    old_schema = table_schema(dialect).replace(answers_schema(dialect), "")
    assert "relabel_answers" not in old_schema
    if dialect == "sqlite":
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            conn.executescript(old_schema)
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(old_schema)
    old = open_store(store_url)  # opened by this version: the answers table is made beside the old one
    try:
        assert old.write([verdict("a")]) == [True]
        assert old.write([verdict("a", labeler="reviewer")], [answer_to("a")]) == [True]
        assert old.select("SELECT request_id, reason, label FROM relabel_answers") == [
            ("a/anna/1", "disagreement", "shirt")
        ]
    finally:
        old.close()


def _without_image_uri(schema: str) -> str:
    """The audit table as versions before ``image_uri`` made it."""
    old = schema.replace("    image_uri TEXT,\n", "")
    assert "image_uri" not in old and old != schema
    return old


def _old_store(store_url: str) -> None:
    """A store made before ``image_uri``, holding one record (item ``old``)."""
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    old_columns = [c for c in COLUMNS if c != "image_uri"]
    values = _row(verdict("old"))[: len(old_columns)]  # image_uri is the last column
    insert = f"INSERT INTO audit_records ({', '.join(old_columns)}) VALUES "
    if dialect == "sqlite":
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            conn.executescript(_without_image_uri(table_schema(dialect)))
            conn.execute(insert + f"({', '.join('?' for _ in values)})", values)
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(_without_image_uri(table_schema(dialect)))
            conn.execute(insert + f"({', '.join('%s' for _ in values)})", values)


def test_a_store_made_before_image_uri_gains_the_column_and_keeps_its_records(store_url):
    _old_store(store_url)
    store = open_store(store_url)  # this version adds the column the old table lacks
    try:
        assert store.select("SELECT item_id, image_uri FROM audit_records") == [("old", None)]
        record = verdict("new").model_copy(update={"image_uri": "file:///data/new.png"})
        assert store.write([record, verdict("old")]) == [True, False]
        assert store.select("SELECT item_id, image_uri FROM audit_records ORDER BY id") == [
            ("old", None),
            ("new", "file:///data/new.png"),
        ]
    finally:
        store.close()
    again = open_store(store_url)  # a second open finds the column there and adds nothing
    try:
        assert again.count() == 2
    finally:
        again.close()


def test_many_processes_can_open_one_old_sqlite_file_at_once(tmp_path):
    """Consumers started together on a store made before image_uri each find the column missing; one adds it,
    the others must not fail on 'duplicate column'."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        for trial in range(10):
            path = tmp_path / f"old-{trial}.db"
            _old_store(f"sqlite:///{path}")
            outcomes = pool.starmap(_open_and_write, [(str(path), w) for w in range(6)])
            assert outcomes == ["ok"] * 6, outcomes
            assert open_store(f"sqlite:///{path}").count() == 7
