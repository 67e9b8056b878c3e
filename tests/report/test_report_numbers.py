"""The report of a store of known records has the numbers worked out by hand (tests/report/conftest.py),
in SQLite and in PostgreSQL, and the edge cases are said in words: an empty night, a labeler with one
label, a class never seen, a store with one labeler."""

from __future__ import annotations

from datetime import date

import pytest

from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.build import build_report
from labelaudit.serving.report.job import night_window
from tests.report.reportkit import CAT, CLASSES, KNOWN, NIGHT, fill, record, report_of


def test_headline(known_store):
    r = report_of(known_store)
    h = r.headline
    assert (r.model.model_name, r.model.model_version, r.model.records) == ("m", "1", 17)
    assert [(m.model_version, m.records) for m in r.other_models] == [("2", 1)]
    assert (h.records, h.images_audited, h.labels, h.unlabeled, h.multi_labeled_items) == (17, 11, 16, 1, 4)
    assert (h.disagreement.k, h.disagreement.n, h.relabel_requests) == (4, 16, 6)
    assert h.disagreement.low < 0.25 < h.disagreement.high
    assert h.previous.nights == [date(2026, 11, 20)]
    # the change is measured on labels unlike the model's label: 6 of 16 tonight (i2, i4, m1 cleo, m2 cleo, m3
    # anna, m3 cleo) against 1 of 2 the night before
    assert (h.model_disagreement.k, h.model_disagreement.n) == (6, 16)
    assert (h.previous.model_disagreement.k, h.previous.model_disagreement.n) == (1, 2)
    assert h.previous.change_points == pytest.approx(-12.5)
    assert r.consensus.annotator_agreement == pytest.approx(5 / 8)
    assert r.consensus.model_weight == pytest.approx(2.0)


def test_per_class_and_confusion(known_store):
    r = report_of(known_store)
    rows = {c.name: c for c in r.per_class}
    assert [(rows[c].disagreement.k, rows[c].disagreement.n) for c in CLASSES] == [(1, 5), (2, 7), (1, 4), (0, 0)]
    assert rows["owl"].disagreement.rate is None and "never seen" in rows["owl"].note
    assert [rows[c].relabel_requests for c in CLASSES] == [1, 2, 3, 0]
    #                  cat dog fox owl  (model)
    assert r.confusion.counts == [
        [4, 1, 0, 0],  # human cat
        [2, 5, 0, 0],  # human dog
        [2, 1, 1, 0],  # human fox
        [0, 0, 0, 0],  # human owl
    ]


def test_per_labeler_with_leave_one_out_consensus(known_store):
    r = report_of(known_store)
    rows = {x.labeler_id: x for x in r.labelers}
    got = {a: (x.labels, x.multi_labeled, x.disagreement.k, x.relabel_requests) for a, x in rows.items()}
    assert got == {"anna": (6, 3, 1, 2), "ben": (5, 3, 1, 1), "cleo": (4, 4, 2, 3), "": (1, 0, 0, 0)}
    assert [x.labeler_id for x in r.labelers] == ["anna", "ben", "cleo", ""]  # by volume
    # Fisher, cleo: 2 of 4 against the others' 2 of 12, so 4 wrong of 16; P(X >= 2) drawing 4 of 16 is
    # (C(4,2) C(12,2) + C(4,3) C(12,1) + C(4,4)) / C(16,4) = (396 + 48 + 1) / 1820
    assert rows["cleo"].p_value == pytest.approx(445 / 1820)
    assert rows["anna"].p_value == pytest.approx(1 - 924 / 8008)  # 1 of 6 vs 3 of 10: 1 - C(12,6) / C(16,6)
    assert rows["cleo"].p_adjusted == pytest.approx(3 * rows["cleo"].p_value)  # Holm: smallest of three, x3
    assert rows[""].p_value is None and "without a labeler id" in rows[""].note
    assert r.flag_test.tested == 3 and r.flag_test.flagged == []
    t = rows["cleo"].transition  # truth estimate x cleo's label
    assert t.counts[:3] == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert t.rows[1] == [0, 0.5, 0.5, 0] and t.rows[3] is None


def test_relabel_queue_is_ordered_by_score_with_the_items_other_labels(known_store):
    r = report_of(known_store, top=4)
    q = [(x.item_id, x.labeler_id, x.score, x.other_labels, x.agreeing_labels) for x in r.relabel_queue]
    assert q == [
        ("m2", "cleo", 0.85, 1, 0),
        ("i2", "anna", 0.7, 0, 0),
        ("i4", "ben", 0.5, 0, 0),
        ("m1", "cleo", 0.3, 2, 0),
    ]
    assert [x.rank for x in r.relabel_queue] == [1, 2, 3, 4]


def test_trends_cover_the_nights_before_and_every_model(known_store):
    r = report_of(known_store)
    got = [
        (t.night.isoformat(), t.model_version, t.records, t.model_disagreement.k, t.model_disagreement.n)
        for t in r.trends
    ]
    assert got == [("2026-11-20", "1", 2, 1, 2), ("2026-11-21", "1", 17, 6, 16), ("2026-11-21", "2", 1, 1, 1)]


def test_an_empty_night_is_said_plainly(known_store):
    r = report_of(known_store, night=date(2026, 11, 25))
    assert r.model is None and r.headline.records == 0 and r.labelers == [] and r.relabel_queue == []
    assert any("empty night" in n for n in r.notes)
    assert [t.night.isoformat() for t in r.trends] == ["2026-11-20", "2026-11-21", "2026-11-21"]


def test_a_labeler_with_one_label_and_a_lone_labeler(tmp_path):
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", [record("x", "solo", "cat", "dog", {"cat": 0.2, "dog": 0.8})])
    r = report_of(url)
    (row,) = r.labelers
    assert (row.labels, row.disagreement.k, row.disagreement.rate) == (1, 1, 1.0)
    assert row.disagreement.low > 0.0 and row.disagreement.high == 1.0
    assert row.p_value is None and not row.flagged and "only labeler" in row.note
    assert any("one label" in n for n in r.notes)
    url2 = fill(f"sqlite:///{tmp_path / 'b.db'}", [*KNOWN, record("y", "dan", "cat", "cat", CAT)])
    dan = next(x for x in report_of(url2).labelers if x.labeler_id == "dan")
    assert dan.p_value == pytest.approx(1.0) and "only 1 label" in dan.note


def test_a_clearly_noisy_labeler_is_flagged(tmp_path):
    good = [record(f"g{i}", f"good{i % 4}", "cat", "cat", CAT) for i in range(200)]
    bad = [record(f"b{i}", "noisy", "dog" if i % 2 else "cat", "cat", CAT) for i in range(40)]
    r = report_of(fill(f"sqlite:///{tmp_path / 'a.db'}", good + bad))
    assert r.flag_test.flagged == ["noisy"]
    assert next(x for x in r.labelers if x.labeler_id == "noisy").p_adjusted < 1e-6


def test_classes_come_from_the_store_when_no_model_card_is_given(known_store):
    store = open_store(known_store)
    try:
        r = build_report(store, window=night_window(NIGHT), store_kind="test", classes=None, class_source="store")
    finally:
        store.close()
    assert r.classes == ["cat", "dog", "fox"]
    assert any("4 classes but only 3" in n for n in r.notes)
