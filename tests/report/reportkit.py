"""A store filled with known records, and the numbers a report of it must show, worked out by hand in
``KNOWN``'s comments."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from labelaudit.schemas.audit import AuditRecord, RelabelAnswer
from labelaudit.serving.core.store import open_store

CLASSES = ["cat", "dog", "fox", "owl"]  # owl is never seen
NIGHT = date(2026, 11, 21)


def record(
    item: str,
    labeler: str,
    human: str | None,
    predicted: str,
    p: dict[str, float],
    *,
    flag: bool = False,
    score: float = 0.0,
    version: str = "1",
    at: str = "2026-11-21T10:00:00",
) -> AuditRecord:
    probs = [p.get(c, 0.0) for c in CLASSES]
    return AuditRecord(
        item_id=item,
        labeler_id=labeler,
        human_label=human,
        predicted_label=predicted,
        label_probability=None if human is None else p.get(human, 0.0),
        predicted_probability=p[predicted],
        score=score,
        disagrees=flag,
        policy="confident-joint-v1",
        probabilities=probs,
        model_name="m",
        model_version=version,
        source="kafka",
        created_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
    )


CAT, DOG, FOX = (
    {"cat": 0.8, "dog": 0.1, "fox": 0.1},
    {"cat": 0.1, "dog": 0.8, "fox": 0.1},
    {"fox": 0.8, "cat": 0.1, "dog": 0.1},
)
M1 = {"cat": 0.6, "dog": 0.3, "fox": 0.1}

KNOWN = [
    # one label per item: the truth estimate is the model's label
    record("i1", "anna", "cat", "cat", CAT),
    record("i2", "anna", "cat", "dog", {"cat": 0.1, "dog": 0.8, "fox": 0.1}, flag=True, score=0.7),  # disagrees
    record("i3", "anna", "dog", "dog", DOG),
    record("i4", "ben", "dog", "cat", {"cat": 0.6, "dog": 0.1, "fox": 0.3}, flag=True, score=0.5),  # disagrees
    record("i5", "ben", "fox", "fox", FOX),
    record("i6", "", "cat", "cat", CAT),  # no labeler id: shown, not tested
    record("i7", "", None, "dog", DOG),  # unlabeled: counted as audited, not judged
    # several labels per item. Pairs: m1 3 (1 agrees), m2 1 (0), m3 1 (1), m4 3 (3): P = 5/8, K = 4,
    # so c = 1 / (5/8 - (3/8)/3) = 2; score(k) = other labelers' votes for k + 2 p_model(k).
    # m1: anna's truth is cat (ben 1 + 1.2 > cleo's dog 1 + 0.6), ben's too; cleo's is cat (2 + 1.2 > 0.6): disagrees
    record("m1", "anna", "cat", "cat", M1),
    record("m1", "ben", "cat", "cat", M1),
    record("m1", "cleo", "dog", "cat", M1, flag=True, score=0.3),
    record("m2", "ben", "dog", "dog", {"dog": 0.9, "fox": 0.05, "cat": 0.05}),  # dog 1.8 > fox 1 + 0.1: agrees
    record("m2", "cleo", "fox", "dog", {"dog": 0.9, "fox": 0.05, "cat": 0.05}, flag=True, score=0.85),  # disagrees
    # the other labeler overrules the model: fox 1 + 0.6 > cat 1.2, for both
    record("m3", "anna", "fox", "cat", {"cat": 0.6, "fox": 0.3, "dog": 0.1}, flag=True, score=0.3),
    record("m3", "cleo", "fox", "cat", {"cat": 0.6, "fox": 0.3, "dog": 0.1}, flag=True, score=0.3),
    record("m4", "anna", "dog", "dog", DOG),
    record("m4", "ben", "dog", "dog", DOG),
    record("m4", "cleo", "dog", "dog", DOG),
    # not in the night's numbers: another model version (earlier than v1's latest record), the night before
    record("v2", "anna", "cat", "dog", DOG, flag=True, score=0.9, version="2", at="2026-11-21T01:00:00"),
    record("p1", "anna", "cat", "dog", DOG, flag=True, score=0.7, at="2026-11-20T12:00:00"),
    record("p2", "ben", "dog", "dog", DOG, at="2026-11-20T13:00:00"),
]


def fill(url: str, records: list[AuditRecord], answers: Sequence[RelabelAnswer] = ()) -> str:
    store = open_store(url)
    try:
        store.write(records, answers)
    finally:
        store.close()
    return url


def report_of(url: str, night: date = NIGHT, **kw):
    """The report of ``night`` over the store at ``url``, with ``build_report``'s other options ``kw``."""
    from labelaudit.serving.report.build import build_report
    from labelaudit.serving.report.job import night_window

    store = open_store(url)
    try:
        return build_report(
            store, window=night_window(night), store_kind="test", classes=CLASSES, class_source="test", **kw
        )
    finally:
        store.close()
