"""Both audit stores, real SQLite and real PostgreSQL: durable writes, unique on
(item_id, labeler_id, model_version), and a per-record answer to "was this new?"."""

from __future__ import annotations

from datetime import UTC, datetime

from labelaudit.schemas.audit import AuditRecord
from labelaudit.serving.core.store import open_store


def verdict(item: str, labeler: str = "anna", version: str = "1", label: str | None = "coat") -> AuditRecord:
    return AuditRecord(
        item_id=item, labeler_id=labeler, human_label=label, predicted_label="shirt",
        label_probability=None if label is None else 0.1, predicted_probability=0.8, score=0.7,
        disagrees=label is not None, policy="confident-joint-v1", probabilities=[0.1] * 10, model_name="m",
        model_version=version, source="kafka", topic="images", partition=0, offset=3, created_at=datetime.now(UTC),
    )  # fmt: skip


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
