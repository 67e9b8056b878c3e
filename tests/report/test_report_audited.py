"""Labelers' error rates from the random audit sample's answers, with the model as predictor (prediction-powered
inference, ``labelaudit.audited``): exact on hand-built tables, unbiased where the model's guess is not, and in
the report where a labeler's mistakes are the model's own (source "audit"), in SQLite and PostgreSQL alike."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from labelaudit.audited import MIN_ANSWERS, above_pool, error_rate
from labelaudit.deconvolve import ModelConfusion, cell_errors, fit, wrong_chances
from labelaudit.schemas.audit import RelabelAnswer
from labelaudit.serving.report.render import render_html
from labelaudit.serving.report.stats import Z95, wilson
from tests.databases import new_database
from tests.report.reportkit import CLASSES, fill, record, report_of


def test_without_a_predictor_that_varies_the_rate_is_the_answers_share():
    """f the same in every cell: nothing to learn from it (λ = 0), the answers alone, Wilson interval."""
    labels = np.array([[300.0, 20.0], [30.0, 150.0]])
    agreed = np.array([[20.0, 1.0], [2.0, 7.0]])
    differed = np.array([[3.0, 0.0], [1.0, 6.0]])
    got = error_rate(labels, agreed, differed, np.full((2, 2), 0.3))
    assert got is not None
    assert (got.rate, got.answers, got.weight) == (pytest.approx(10 / 40), 40, 0.0)
    assert (got.low, got.high) == pytest.approx(wilson(10, 40))


def test_a_predictor_that_tracks_the_answers_carries_the_rate():
    """By hand. Labels: 80 where the model agrees (f = 0.1), 20 where it does not (f = 0.6); N = 100,
    mean f = (80 * 0.1 + 20 * 0.6) / 100 = 0.2. Answered: 18 of the first cell (2 changed), 12 of the second
    (9 changed); n = 30, mean e = 11/30, mean f = (18 * 0.1 + 12 * 0.6) / 30 = 0.3.
    cov(e, f) = Σ (e - 11/30)(f - 0.3) / 29 over the 30 points; var(f) = (18 * 0.04 + 12 * 0.09) / 29 = 1.8 / 29;
    λ = cov / ((1 + 30/100) var f); rate = λ 0.2 + 11/30 - λ 0.3."""
    labels = np.array([[80.0, 0.0], [0.0, 20.0]])
    f = np.array([[0.1, 0.0], [0.0, 0.6]])
    agreed = np.array([[16.0, 0.0], [0.0, 3.0]])
    differed = np.array([[2.0, 0.0], [0.0, 9.0]])
    e = np.r_[np.zeros(16), np.ones(2), np.zeros(3), np.ones(9)]
    fs = np.r_[np.full(18, 0.1), np.full(12, 0.6)]
    cov = ((e - 11 / 30) * (fs - 0.3)).sum() / 29
    lam = cov / (1.3 * 1.8 / 29)
    rate = lam * 0.2 + 11 / 30 - lam * 0.3
    got = error_rate(labels, agreed, differed, f)
    assert got is not None
    assert got.weight == pytest.approx(lam)
    assert got.rate == pytest.approx(rate)
    d = e - lam * fs
    se = np.sqrt(lam**2 * (80 * 0.01 + 20 * 0.16) / 100 / 100 + d.var(ddof=1) / 30)
    assert (got.low, got.high) == pytest.approx((rate - 1.96 * se, rate + 1.96 * se), abs=1e-4)
    # the answers alone would say 11/30 = 0.37; the labels' mix (80% where the model agrees) pulls it down
    assert got.rate < 11 / 30


def test_too_few_answers_say_nothing():
    labels = np.array([[50.0]])
    few = MIN_ANSWERS - 1
    assert error_rate(labels, np.array([[few - 1.0]]), np.array([[1.0]]), np.array([[0.2]])) is None


def test_the_rate_stays_unbiased_when_the_model_misses_the_labelers_mistakes():
    """A labeler wrong 25% of the time, most of it (20 points) on labels the model agrees with, where the
    model's guess says 2%: the model alone reads about 0.07. Random samples of 150 answers: the estimate is
    centred on the truth and its interval holds it about 95% of the time."""
    rng = np.random.default_rng(0)
    f = np.array([[0.02, 0.0], [0.0, 0.5]])  # the model's chance the label is wrong: agree / disagree cells
    n_agree, n_disagree = 4_000, 1_000
    wrong_agree, wrong_disagree = 1_000, 250  # 25% and 25%: what the model sees in neither cell
    truth = (wrong_agree + wrong_disagree) / 5_000
    labels = np.array([[n_agree, 0.0], [0.0, n_disagree]])
    assert (labels * f).sum() / labels.sum() == pytest.approx(0.116)
    rates, held = [], 0
    for _ in range(400):
        picked = rng.choice(5_000, size=150, replace=False)
        in_agree, wrong = picked < n_agree, np.zeros(150, bool)
        wrong[in_agree] = picked[in_agree] < wrong_agree
        wrong[~in_agree] = picked[~in_agree] - n_agree < wrong_disagree
        agreed = np.diag([np.sum(in_agree & ~wrong), np.sum(~in_agree & ~wrong)]).astype(float)
        differed = np.diag([np.sum(in_agree & wrong), np.sum(~in_agree & wrong)]).astype(float)
        got = error_rate(labels, agreed, differed, f)
        assert got is not None
        rates.append(got.rate)
        held += got.low <= truth <= got.high
    assert np.mean(rates) == pytest.approx(truth, abs=0.01)
    assert 0.9 <= held / 400 <= 0.99


def test_cell_errors_average_to_the_deconvolved_rate():
    """The K = 2 table of test_report_deconvolve: error 0.2. Cell (model 0, label 1) by hand:
    1 - 0.4 * 0.2 * 0.95 / (0.6 * 0.9 * 0.3 + 0.4 * 0.2 * 0.95) = 1 - 0.076 / 0.238."""
    pi, c, t = np.array([0.6, 0.4]), np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.7, 0.3], [0.05, 0.95]])
    table = np.einsum("i,ik,ij->kj", pi, c, t) * 10_000
    f = cell_errors(table, c * 100_000, iterations=2_000)
    assert f[0, 1] == pytest.approx(1 - 0.076 / 0.238, abs=1e-3)
    assert (f * table).sum() / table.sum() == pytest.approx(0.2, abs=1e-3)
    assert (f * table).sum() / table.sum() == pytest.approx(fit(table[None], c[None], iterations=2_000)[0], abs=1e-5)
    # a label outside the model's classes is always wrong
    wider = np.concatenate([table, np.full((2, 1), 5.0)], axis=1)
    assert cell_errors(wider, c * 100_000)[:, 2].tolist() == [1.0, 1.0]


# -- in the report ---------------------------------------------------------------------------------------

# The model: right 80% of the time on each seen class, its mistakes spread (the card's held-out counts).
CONFUSION = ModelConfusion(
    classes=CLASSES,
    counts=np.array([[80, 10, 10, 0], [10, 80, 10, 0], [10, 10, 80, 0], [5, 5, 5, 85]]),
    source="the validation split",
)
SEEN = CLASSES[:3]


def _stream() -> tuple[list, list[RelabelAnswer], dict[str, float]]:
    """'hider' labels 200 items and always gives the model's label: wrong exactly where the model is (40
    items), so it never disagrees with it. 'anna' labels 100 items and is wrong on 10 the model gets right.
    A reviewer ('qa') answers the audit-sample requests of 60 of hider's items (12 of its mistakes among them)
    and 10 of anna's; answers to model version 2's requests are not about these labels."""
    records, answers = [], []
    for i in range(200):
        truth = SEEN[i % 3]
        said = SEEN[(i + 1) % 3] if i % 5 == 0 else truth  # the model's label: wrong on every fifth item
        p = {c: (0.7 if c == said else 0.15) for c in SEEN}
        records.append(record(f"h{i}", "hider", said, said, p))
        if i < 60:
            records.append(record(f"h{i}", "qa", truth, said, p))
            answers.append(_answer(f"h{i}", "1", truth))
        elif i < 90:
            answers.append(_answer(f"h{i}", "2", truth))  # another version's request: not counted
    for i in range(100):
        truth = SEEN[i % 3]
        human = SEEN[(i + 2) % 3] if i % 10 == 0 else truth
        p = {c: (0.8 if c == truth else 0.1) for c in SEEN}
        records.append(record(f"a{i}", "anna", human, truth, p, flag=human != truth, score=0.5))
        if i < 10:
            records.append(record(f"a{i}", "qa", truth, truth, p))
            answers.append(_answer(f"a{i}", "1", truth))
    return records, answers, {"hider": 40 / 200, "anna": 10 / 100}


def _answer(item: str, version: str, label: str) -> RelabelAnswer:
    from datetime import UTC, datetime

    return RelabelAnswer(
        request_id=f"{item}/audit-sample/{version}",
        reason="audit_sample",
        item_id=item,
        labeler_id="qa",
        label=label,
        created_at=datetime(2026, 11, 21, 12, tzinfo=UTC),
    )


def test_the_report_reads_a_labeler_the_model_cannot_see_from_the_audit_answers(tmp_path, postgres_url):
    records, answers, truth = _stream()
    plain = report_of(fill(f"sqlite:///{tmp_path / 'plain.db'}", records), model_confusion=lambda n, v: CONFUSION)
    before = {x.labeler_id: x.estimated_error for x in plain.labelers}
    assert before["hider"].source == "model" and before["hider"].rate < 0.1  # the model's mistakes are its own

    urls = [
        fill(f"sqlite:///{tmp_path / 'a.db'}", records, answers),
        fill(new_database(postgres_url), records, answers),
    ]
    reports = [report_of(url, model_confusion=lambda n, v: CONFUSION) for url in urls]
    assert reports[0].model_dump(exclude={"generated_at"}) == reports[1].model_dump(exclude={"generated_at"})
    after = {x.labeler_id: x.estimated_error for x in reports[0].labelers}
    hider = after["hider"]
    assert (hider.source, hider.answers) == ("audit", 60)  # version 2's answers left out
    assert hider.low <= truth["hider"] <= hider.high
    assert abs(hider.rate - truth["hider"]) < abs(before["hider"].rate - truth["hider"])
    assert after["anna"].source == "model"  # 10 answers are too few: the card's estimate stays
    assert after["anna"] == before["anna"]
    page = render_html(reports[0], {})
    assert "audit of 60" in page


def test_without_a_card_the_audit_answers_still_give_the_rate(tmp_path):
    records, answers, truth = _stream()
    report = report_of(fill(f"sqlite:///{tmp_path / 'a.db'}", records, answers))
    hider = next(x.estimated_error for x in report.labelers if x.labeler_id == "hider")
    assert (hider.source, hider.answers) == ("audit", 60)
    assert hider.rate == pytest.approx(12 / 60)  # it never disagrees with the model: the predictor is flat


def test_wrong_chances_are_the_tables_cells_and_outsiders_are_wrong():
    cells = [("cat", "cat", 50.0), ("cat", "dog", 10.0), ("dog", "dog", 30.0), ("dog", "zebra", 5.0)]
    got = wrong_chances(cells, CONFUSION)
    table = np.zeros((4, 5))
    table[0, 0], table[0, 1], table[1, 1], table[1, 4] = 50, 10, 30, 5
    f = cell_errors(table, CONFUSION.counts)
    assert got.tolist() == pytest.approx([f[0, 0], f[0, 1], f[1, 1], 1.0])
    assert got[0] < got[1]  # a label the model agrees with is less likely wrong


def test_above_pool_is_the_z_test_of_the_rate_against_the_others_weighted_by_volume():
    se = 0.05 / Z95  # every interval below is rate +- 0.05
    rates = {"a": (0.30, 0.25, 0.35), "b": (0.10, 0.05, 0.15), "c": (0.20, 0.15, 0.25)}
    got = above_pool(rates, {"a": 100, "b": 300, "c": 100, "nobody": 50})
    pool_a = (3 * 0.10 + 0.20) / 4
    assert got["a"] == pytest.approx(norm.sf((0.30 - pool_a) / (se * np.sqrt(1 + (3 / 4) ** 2 + (1 / 4) ** 2))))
    pool_b = (0.30 + 0.20) / 2
    assert got["b"] == pytest.approx(norm.sf((0.10 - pool_b) / (se * np.sqrt(1 + 2 * (1 / 2) ** 2))))
    assert got["a"] < 0.05 < got["c"] < got["b"]
    assert above_pool({"a": rates["a"]}, {"a": 100}) == {}  # nobody to compare with


def _copier_stream() -> list:
    """'copier' gives the model's label on 200 items (wrong on every fifth, where the model is: 20%, and it never
    disagrees with the model); 'anna' and 'ben' label 200 items each, wrong on every 25th (4%), so they disagree
    with the model wherever it errs, as does 'cara' on 100 items nobody checks. A reviewer ('qa') answers the audit
    sample: 60 of copier's items, 40 of each other careful labeler's."""
    records = []
    for who, n_answered in (("copier", 60), ("anna", 40), ("ben", 40), ("cara", 0)):
        for i in range(100 if who == "cara" else 200):
            truth = SEEN[i % 3]
            said = SEEN[(i + 1) % 3] if i % 5 == 0 else truth
            human = said if who == "copier" else (SEEN[(i + 2) % 3] if i % 25 == 1 else truth)
            p = {c: (0.7 if c == said else 0.15) for c in SEEN}
            item = f"{who}{i}"
            records.append(record(item, who, human, said, p, flag=human != said, score=0.5 * (human != said)))
            if i < n_answered:
                records.append(record(item, "qa", truth, said, p))
    return records


def test_the_flag_tests_the_audit_estimate_where_disagreement_would_flag_the_careful(tmp_path):
    """With one label per item, disagreement with the model flags the careful labelers (the model's mistakes
    count against them) and passes the one who copies the model; the audit sample's rates say the opposite,
    and the flag follows them where the pool has other audited labelers."""
    records = _copier_stream()
    answers = [_answer(r.item_id, "1", r.human_label) for r in records if r.labeler_id == "qa"]
    report = report_of(fill(f"sqlite:///{tmp_path / 'a.db'}", records, answers), model_confusion=lambda n, v: CONFUSION)
    rows = {x.labeler_id: x for x in report.labelers}
    assert {a: rows[a].estimated_error.source for a in ("copier", "anna", "ben")} == dict.fromkeys(
        ("copier", "anna", "ben"), "audit"
    )
    assert rows["copier"].disagreement.rate < rows["anna"].disagreement.rate  # what Fisher's test would read
    assert {a: rows[a].test for a in ("copier", "anna", "ben")} == dict.fromkeys(
        ("copier", "anna", "ben"), "audit z-test"
    )
    assert report.flag_test.flagged == ["copier"]
    assert (rows["cara"].estimated_error.source, rows["cara"].test) == ("model", "Fisher exact")
    assert "not on the rate shown" in rows["cara"].note
    # every label of the reviewer answers the audit sample: the yardstick, not one of the crew
    assert (rows["qa"].test, rows["qa"].flagged) == (None, False) and "a reviewer" in rows["qa"].note
    assert report.flag_test.tested == 4

    # the only audited labeler left in the pool has no other of its kind: back to disagreement, said so
    alone = [r for r in records if r.labeler_id not in ("anna", "ben") or r.item_id.endswith(("0", "2", "4"))]
    kept = {r.item_id for r in alone if r.labeler_id != "qa"}
    few = report_of(
        fill(
            f"sqlite:///{tmp_path / 'b.db'}",
            [r for r in alone if r.item_id in kept],
            [a for a in answers if a.item_id in kept],
        ),
        model_confusion=lambda n, v: CONFUSION,
    )
    sources = {x.labeler_id: (x.estimated_error.source, x.test, x.note) for x in few.labelers}
    assert sources["copier"][:2] == ("audit", "Fisher exact")
    assert "no other labeler in the pool is rated from the audit sample" in sources["copier"][2]


def test_a_reviewer_is_not_the_crews_yardstick_for_the_flag(tmp_path):
    """'good' errs on 10% of 600 items, 'bad' on 60% of 300, each item labeled once; a careful reviewer answers
    the audit sample on all of bad's. Once 'bad' is flagged, the reviewer (a quarter of the labels) would be the
    whole pool, and 'good', worse than a reviewer who never errs, would be flagged against it."""
    records = []
    for who, n in (("good", 600), ("bad", 300)):
        for i in range(n):
            truth = SEEN[i % 3]
            said = SEEN[(i + 1) % 3] if i % 5 == 0 else truth  # the model errs on every fifth item
            wrong = i % 10 == 3 if who == "good" else i % 5 in (1, 2, 3)
            human = SEEN[(i + 2) % 3] if wrong else truth
            p = {c: (0.7 if c == said else 0.15) for c in SEEN}
            records.append(record(f"{who}{i}", who, human, said, p, flag=human != said, score=0.5 * (human != said)))
            if who == "bad":
                records.append(record(f"{who}{i}", "qa", truth, said, p))
    answers = [_answer(r.item_id, "1", r.human_label) for r in records if r.labeler_id == "qa"]
    report = report_of(fill(f"sqlite:///{tmp_path / 'a.db'}", records, answers))
    rows = {x.labeler_id: x for x in report.labelers}
    assert rows["bad"].estimated_error.source == "audit" and rows["bad"].estimated_error.rate > 0.5
    assert rows["good"].disagreement.rate > rows["qa"].disagreement.rate  # what a test against the reviewer sees
    assert report.flag_test.flagged == ["bad"]
    assert rows["qa"].test is None and "a reviewer: 300 of its 300 labels" in rows["qa"].note
