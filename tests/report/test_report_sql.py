"""The report aggregates in the store: the rows that reach Python are grouped counts and the queue's top
``k``, never the records themselves; SQLite and PostgreSQL give the same report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.build import build_report
from labelaudit.serving.report.job import night_window
from tests.databases import new_database
from tests.report.reportkit import CLASSES, KNOWN, NIGHT, fill, record


def synthetic(n: int, seed: int = 0) -> list:
    """``n`` records on NIGHT: five labelers, a third of the items labeled twice."""
    rng = np.random.default_rng(seed)
    out = []
    start = datetime(NIGHT.year, NIGHT.month, NIGHT.day, tzinfo=UTC)
    for i in range(n):
        item = f"s{i // 2 if i % 3 == 0 else i}"
        human, predicted = (CLASSES[j] for j in rng.integers(0, 3, size=2))
        p = {c: 0.1 for c in CLASSES[:3]} | {predicted: 0.8}
        when = (start + timedelta(seconds=int(rng.integers(86_400)))).isoformat()[:19]
        out.append(
            record(item, f"l{i % 5}", human, predicted, p, flag=human != predicted, score=float(rng.random()), at=when)
        )
    return out


class CountingStore:
    """The store, counting the rows each query hands to Python."""

    def __init__(self, store):
        self.store, self.rows = store, 0

    def select(self, sql, params=()):
        rows = self.store.select(sql, params)
        self.rows += len(rows)
        return rows


def test_only_aggregates_reach_python(tmp_path):
    records = synthetic(3_000)
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", records)
    store = open_store(url)
    counting = CountingStore(store)
    try:
        r = build_report(
            counting, window=night_window(NIGHT), store_kind="sqlite", classes=CLASSES, class_source="test", top=10
        )
    finally:
        store.close()
    assert r.headline.labels == store_count(url) > 2_500
    # the labels of items labeled twice reach Python as patterns (the set of (labeler, label) of an item) with
    # their counts, for Dawid-Skene: one row per distinct pattern, far fewer than the items
    labels: dict[str, set] = {}
    for x in records:
        labels.setdefault(x.item_id, set()).add((x.labeler_id, x.human_label))
    shared = [frozenset(v) for v in labels.values() if len(v) > 1]
    patterns = len(set(shared))
    assert patterns < len(shared) / 3
    # 5 labelers x 3 x 3 x 3 cells at most, a few nights and models, ten queue rows, the patterns
    assert counting.rows <= 5 * 27 + 20 + patterns


def store_count(url: str) -> int:
    store = open_store(url)
    try:
        return store.count()
    finally:
        store.close()


def test_sqlite_and_postgres_give_the_same_report(tmp_path, postgres_url):
    records = KNOWN + synthetic(600, seed=1)
    urls = [fill(f"sqlite:///{tmp_path / 'a.db'}", records), fill(new_database(postgres_url), records)]
    reports = []
    for url in urls:
        store = open_store(url)
        try:
            r = build_report(store, window=night_window(NIGHT), store_kind="x", classes=CLASSES, class_source="test")
        finally:
            store.close()
        reports.append(r.model_dump(mode="json", exclude={"generated_at"}))
    assert reports[0]["headline"]["labels"] > 500 and reports[0]["headline"]["multi_labeled_items"] > 50
    assert reports[0] == reports[1]


def test_label_patterns_are_the_shared_items_named_labels(tmp_path, postgres_url):
    """The pattern query (Dawid-Skene's input) in both stores: an item's labels from named labelers, items that
    carry the same set counted together, another model version's and a nameless labeler's labels left out."""
    from labelaudit.serving.report import aggregate as agg

    extra = [
        *(record("m5", who, "dog", "dog", {"dog": 0.9}) for who in ("cleo", "anna", "ben")),  # m4's set again
        record("u1", "", "cat", "cat", {"cat": 0.9}),  # one named label and one without a name: no pattern
        record("u1", "zoe", "cat", "cat", {"cat": 0.9}),
        record("m1", "zoe", "owl", "cat", {"cat": 0.9}, version="2"),  # another model version
    ]
    records = KNOWN + extra
    urls = [fill(f"sqlite:///{tmp_path / 'a.db'}", records), fill(new_database(postgres_url), records)]
    expected = [
        ((("anna", "cat"), ("ben", "cat"), ("cleo", "dog")), 1),  # m1
        ((("anna", "dog"), ("ben", "dog"), ("cleo", "dog")), 2),  # m4, m5
        ((("anna", "fox"), ("cleo", "fox")), 1),  # m3
        ((("ben", "dog"), ("cleo", "fox")), 1),  # m2
    ]
    for url in urls:
        store = open_store(url)
        try:
            window = night_window(NIGHT)
            span = agg.span(store, window.since.isoformat(), window.until.isoformat())
            scope = agg.Scope(span, "m", "1")
            assert agg.label_patterns(store, scope, "") == expected
            # an item with more labels than the query reads keeps its first labelers (by id)
            first_two = agg.label_patterns(store, scope, "", max_labels=2)
            assert ((("anna", "cat"), ("ben", "cat")), 1) in first_two
            assert all(len(p) <= 2 for p, _ in first_two)
        finally:
            store.close()


def test_the_stores_draw_the_audit_sample_as_the_stream_does(tmp_path, postgres_url):
    """The audit sample's draw in SQL (SHA-256's first 60 bits of the item id) is the stream's own, in both
    stores, for ASCII and non-ASCII ids; the pattern query then reads only the sampled items."""
    from labelaudit.serving.core.relabel import audit_draw, audit_sample_bound, in_audit_sample
    from labelaudit.serving.report import aggregate as agg

    ids = [f"item-{i}" for i in range(200)] + ["ärger-1", "猫-2", "x" * 200]
    records = [record(i, who, "cat", "cat", {"cat": 0.9}) for i in ids for who in ("anna", "ben")]
    urls = [fill(f"sqlite:///{tmp_path / 'a.db'}", records), fill(new_database(postgres_url), records)]
    sampled = sum(in_audit_sample(i, 0.3) for i in ids)
    assert 30 < sampled < 95
    for url in urls:
        store = open_store(url)
        try:
            rows = store.select(f"SELECT item_id, {store.audit_draw_sql('item_id')} FROM audit_records")
            assert {(str(i), int(d)) for i, d in rows} == {(i, audit_draw(i)) for i in ids}
            window = night_window(NIGHT)
            span = agg.span(store, window.since.isoformat(), window.until.isoformat())
            scope = agg.Scope(span, "m", "1")
            bound = audit_sample_bound(0.3)
            assert agg.label_patterns(store, scope, "", sample_bound=bound) == [
                ((("anna", "cat"), ("ben", "cat")), sampled)
            ]
            assert agg.pair_agreement(store, scope, bound) == [("anna", "ben", sampled, sampled)]
        finally:
            store.close()
