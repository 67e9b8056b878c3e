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
