"""Labels that answer relabel requests (``relabel_answers``) in the report: the queue's precision as the second
person sees it, per questioned labeler; answers to disagreement requests kept out of the labelers' numbers
(the model picked their items) while they still vote in their items' consensus; both stores alike."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from labelaudit.schemas.audit import RelabelAnswer
from labelaudit.serving.core.relabel import request_reason
from labelaudit.serving.report.render import render_html
from tests.databases import new_database
from tests.report.reportkit import CLASSES, fill, record, report_of

CAT_DOG = {"cat": 0.1, "dog": 0.8, "fox": 0.1}  # the model says dog
FOX_CAT = {"cat": 0.6, "fox": 0.3, "dog": 0.1}  # the model says cat, fox its second guess


def answer(request_id: str, labeler: str, label: str, at: str = "2026-11-21T12:00:00") -> RelabelAnswer:
    item = request_id.split("/", 1)[0]
    return RelabelAnswer(
        request_id=request_id,
        reason=request_reason(item, request_id),
        item_id=item,
        labeler_id=labeler,
        label=label,
        created_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
    )


# Requests about anna's q1 and q2 and ben's q3 are answered by others, ben's q4 by ben himself. Each answer by
# another labeler is also a label (its own audit record, never flagged). s1 is in the audit sample, answered by ben; q5's request was about
# model version 2's verdict.
RECORDS = [
    record("q1", "anna", "cat", "dog", CAT_DOG, flag=True, score=0.8),
    record("q1", "ben", "dog", "dog", CAT_DOG),  # answer: the model's label (changed)
    record("q2", "anna", "fox", "cat", FOX_CAT, flag=True, score=0.6),
    record("q2", "cleo", "fox", "cat", FOX_CAT),  # answer: anna's label again (kept)
    record("q3", "ben", "cat", "dog", CAT_DOG, flag=True, score=0.7),
    record("q3", "anna", "fox", "dog", CAT_DOG),  # answer: neither
    record("q4", "ben", "dog", "cat", FOX_CAT, flag=True, score=0.5),
    record("s1", "anna", "cat", "cat", {"cat": 0.9}),
    record("s1", "ben", "cat", "cat", {"cat": 0.9}),  # answers the audit-sample request: a label like any other
    record("q5", "anna", "cat", "dog", CAT_DOG, flag=True, version="2", at="2026-11-21T01:00:00"),
]
ANSWERS = [
    answer("q1/anna/1", "ben", "dog"),
    answer("q2/anna/1", "cleo", "fox"),
    answer("q3/ben/1", "anna", "fox"),
    answer("q4/ben/1", "ben", "cat"),  # ben looks again at his own label: its verdict is the old one, not new
    answer("s1/audit-sample/1", "ben", "cat"),
    answer("q5/anna/2", "ben", "dog"),
]


def test_the_report_measures_the_answers_and_keeps_them_out_of_the_labelers_numbers(tmp_path, postgres_url):
    urls = [
        fill(f"sqlite:///{tmp_path / 'a.db'}", RECORDS, ANSWERS),
        fill(new_database(postgres_url), RECORDS, ANSWERS),
    ]
    reports = [report_of(url) for url in urls]
    assert reports[0].model_dump(exclude={"generated_at"}) == reports[1].model_dump(exclude={"generated_at"})
    r = reports[0]

    a = r.relabel_answers
    assert (a.answered, a.precision.k, a.precision.n, a.audit_sample, a.other_models) == (4, 2, 4, 1, 1)
    rows = {x.group: (x.answered, x.model, x.kept, x.other) for x in a.per_labeler}
    assert rows == {"anna": (2, 1, 1, 0), "ben": (2, 1, 0, 1)}
    # by the model's label: it said dog on q1 (changed) and q3 (neither), cat on q2 (kept) and q4 (changed)
    assert [(x.group, x.answered, x.model, x.kept, x.other) for x in a.per_class] == [
        ("cat", 2, 1, 1, 0),
        ("dog", 2, 1, 0, 1),
    ]

    # anna: q1, q2, s1 (her answer on q3 is not her label); ben: q3, q4 (his own, questioned, label) and his
    # audit-sample answer on s1
    labelers = {x.labeler_id: x for x in r.labelers}
    assert {k: x.labels for k, x in labelers.items()} == {"anna": 3, "ben": 3}
    assert r.headline.labels == 6 and r.headline.relabel_requests == 4
    # the answers vote: q1's truth for anna is ben's dog, q2's is cleo's fox (without cleo's vote the model's cat)
    assert labelers["anna"].multi_labeled == 3 and labelers["anna"].disagreement.k == 1
    # the answers' own labels are not pairs: s1 is the only item two labelers shared at random
    assert r.consensus.labeler_pairs == 1

    # the queue says which requests are answered, and with what
    assert {q.item_id: (q.answers, q.answer) for q in r.relabel_queue} == {
        "q1": (1, "dog"),
        "q2": (1, "fox"),
        "q3": (1, "fox"),
        "q4": (1, "cat"),
    }

    page = render_html(r, {})
    assert "4 answers to disagreement requests: 50.0% gave the model's label" in page
    section = page[page.index("<h2>Relabel requests answered") : page.index("<h2>Trends")]
    assert section.count("<table>") == 2 and "questioned labeler" in section
    assert "1 answers to audit-sample requests" in page and "1 answers to requests about other models" in page


def said_by(rng: np.random.Generator, truth: int, error: float) -> int:
    return truth if rng.random() >= error else int((truth + rng.integers(1, 4)) % 4)


def test_named_answers_to_disagreement_requests_do_not_bias_the_labelers_rates(tmp_path):
    """A third of the items get two more labels at random (audit-sample answers); every other item whose first
    label is wrong gets one more, answering the model's disagreement. Read as plain labels the disagreement
    answers make every first labeler look wrong more often than it is; named as answers they stay out."""
    rng = np.random.default_rng(3)
    error = {"a": 0.1, "b": 0.25, "c": 0.15, "d": 0.3}
    records, answers, wrong = [], [], {x: [] for x in error}
    for i in range(2_400):
        item, truth = f"r{i}", int(rng.integers(4))
        p = {c: 0.1 for c in CLASSES} | {CLASSES[truth]: 0.7}  # the model is right: a wrong label disagrees
        first, *others = rng.permutation(sorted(error))
        labels = [(first, said_by(rng, truth, error[first]))]
        if rng.random() < 0.3:
            answers_to, asked = f"{item}/audit-sample/1", others[:2]
        elif labels[0][1] != truth:
            answers_to, asked = f"{item}/{first}/1", others[:1]
        else:
            answers_to, asked = "", []
        labels += [(who, said_by(rng, truth, error[who])) for who in asked]
        for j, (who, said) in enumerate(labels):
            wrong[who].append(said != truth)
            records.append(record(item, who, CLASSES[said], CLASSES[truth], p, flag=j == 0 and said != truth))
            if j > 0:
                answers.append(answer(answers_to, who, CLASSES[said]))
    realised = {x: float(np.mean(w)) for x, w in wrong.items()}
    mae = {}
    for named in (False, True):
        r = report_of(fill(f"sqlite:///{tmp_path / f'{named}.db'}", records, answers if named else ()))
        rows = {x.labeler_id: x.estimated_error for x in r.labelers}
        assert all(rows[x].source == "agreement" for x in error)
        mae[named] = np.mean([abs(rows[x].rate - realised[x]) for x in error])
    assert mae[True] < 0.03 and mae[False] > mae[True] + 0.03, mae
