"""The report's aggregates, computed by the store in SQL that SQLite and PostgreSQL both accept.

Nothing here reads every record into Python: each query returns grouped counts (at most one row per
labeler x truth x label x prediction, per night, per model) or the relabel queue's top ``k`` rows.
``created_at`` is ISO-8601 UTC text in both stores, so a time window is a string range and a night is
``substr(created_at, 1, 10)``. Every window is also bounded by the first and last ``id`` in it (``Span``,
found on the ``created_at`` index): ids grow with time, so SQLite reads the window as one range of the
table instead of a row lookup per index entry (measured: 9x faster on a night of a million-record store),
and the exact ``created_at`` condition keeps the answer right however ids and times interleave.

The truth estimate of a label (see ``labelaudit.schemas.report``): the model's label where one person
labeled the item; where several did, for labeler ``j`` the class ``k`` maximising
``votes(k) - [k is j's own label] + c * p_model(k)`` over the item's human labels and the model's label
(leave-one-out, so a label never votes for itself; ``c`` from ``model_weight``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from labelaudit.schemas.audit import RelabelReason, Verdict
from labelaudit.schemas.report import QueueItem
from labelaudit.serving.core.relabel import AUDIT_SAMPLE_PART
from labelaudit.serving.core.store import AuditStore

_MODEL_FILTER = " AND model_name = ? AND model_version = ?"

_TRUTH_CTE = """
WITH labeled AS (
    SELECT item_id, labeler_id, human_label, predicted_label, label_probability, predicted_probability,
           disagrees, model_name, model_version, substr(created_at, 1, 10) AS night,
           COUNT(*) OVER (PARTITION BY item_id, model_name, model_version) AS copies, {answer} AS answer
    FROM audit_records
    WHERE {window} AND human_label IS NOT NULL{model_filter}
),
shared AS (SELECT * FROM labeled WHERE copies > 1)"""

# Labeler j's truth estimate on a shared item: the candidate (a human label or the model's label) with the
# most votes(k) - [k is j's own label] + c * p_model(k); ties go to the first label alphabetically.
_CONSENSUS_CTE = """,
candidates AS (
    SELECT item_id, model_name, model_version, human_label AS label, COUNT(*) AS votes,
           MAX(label_probability) AS p
    FROM shared GROUP BY item_id, model_name, model_version, human_label
    UNION ALL
    SELECT item_id, model_name, model_version, predicted_label, 0, MAX(predicted_probability)
    FROM shared GROUP BY item_id, model_name, model_version, predicted_label
),
tally AS (
    SELECT item_id, model_name, model_version, label, SUM(votes) AS votes, MAX(p) AS p
    FROM candidates GROUP BY item_id, model_name, model_version, label
),
judged AS (
    SELECT s.labeler_id, s.human_label, s.predicted_label, s.disagrees, s.night, s.model_name, s.model_version,
           s.answer, t.label,
           ROW_NUMBER() OVER (
               PARTITION BY s.item_id, s.labeler_id, s.model_name, s.model_version
               ORDER BY CAST(t.votes AS DOUBLE PRECISION) - CASE WHEN t.label = s.human_label THEN 1 ELSE 0 END
                        + ? * COALESCE(t.p, 0) DESC, t.label
           ) AS r
    FROM shared s
    JOIN tally t ON t.item_id = s.item_id AND t.model_name = s.model_name AND t.model_version = s.model_version
),
truth AS (
    SELECT labeler_id, human_label, predicted_label, disagrees, night, model_name, model_version,
           predicted_label AS truth_label, 0 AS multi, answer
    FROM labeled WHERE copies = 1
    UNION ALL
    SELECT labeler_id, human_label, predicted_label, disagrees, night, model_name, model_version, label, 1, answer
    FROM judged WHERE r = 1
)"""


def _request_id(t: str, asker: str | None = None) -> str:
    """SQL: the id of a request about the audit row (columns qualified by ``t``), in ``relabel.request_id``'s form:
    the disagreement request about its label (``item/labeler/version``), or with ``asker`` that part fixed
    (``AUDIT_SAMPLE_PART``: the item's audit-sample request). How an answer finds its request."""
    middle = f"{t}labeler_id" if asker is None else f"'{asker}'"
    return f"{t}item_id || '/' || {middle} || '/' || {t}model_version"


# A label that answers a disagreement request (``relabel_answers``): the model picked its item, so it is a
# second opinion on a hard image, not a sample of its labeler's work. It still votes in the consensus of the
# label it answers; it is kept out of its own labeler's numbers. ``{t}`` qualifies the audit row's columns.
_ANSWER = (
    "EXISTS (SELECT 1 FROM relabel_answers ra WHERE ra.item_id = {t}item_id AND ra.labeler_id = {t}labeler_id"
    " AND ra.reason = 'disagreement'"
    # the questioned label itself, where its own labeler answered (then its verdict was not new)
    " AND ra.request_id <> {request_id})"
)


@dataclass(frozen=True)
class Span:
    """A time window: ISO-8601 UTC strings (``since`` inclusive, ``until`` exclusive) and the ids in it."""

    since: str
    until: str
    first_id: int
    last_id: int

    @staticmethod
    def sql(t: str = "") -> str:
        return f"{t}id >= ? AND {t}id <= ? AND {t}created_at >= ? AND {t}created_at < ?"

    def params(self) -> tuple:
        return (self.first_id, self.last_id, self.since, self.until)


def span(store: AuditStore, since: str, until: str) -> Span:
    """The window with its first and last id (an empty window gets an empty id range)."""
    ((first, last),) = store.select(
        "SELECT MIN(id), MAX(id) FROM audit_records WHERE created_at >= ? AND created_at < ?", (since, until)
    )
    return Span(since, until, 0, -1) if first is None else Span(since, until, int(first), int(last))


@dataclass(frozen=True)
class Scope:
    """A window and one model; ``answers``: whether the store holds answers to disagreement requests (then
    the queries that measure labelers leave those labels out: ``not_an_answer``)."""

    span: Span
    model_name: str
    model_version: str
    answers: bool = False

    def params(self) -> tuple:
        return (*self.span.params(), self.model_name, self.model_version)

    def is_answer(self, t: str = "") -> str:
        """SQL: 1 where the audit row (columns qualified by ``t``) answers a disagreement request, else 0."""
        return f"CASE WHEN {_ANSWER.format(t=t, request_id=_request_id(t))} THEN 1 ELSE 0 END" if self.answers else "0"

    def not_an_answer(self, t: str = "") -> str:
        return not_an_answer(self.answers, t)


def not_an_answer(answers: bool, t: str = "") -> str:
    """An ``AND`` condition keeping the audit rows (columns qualified by ``t``) that answer no disagreement
    request; "" where the store holds no such answers (``has_answers(store, "disagreement")``)."""
    return f" AND NOT {_ANSWER.format(t=t, request_id=_request_id(t))}" if answers else ""


def has_answers(store: AuditStore, reason: RelabelReason) -> bool:
    """Whether any stored label answers a request for ``reason`` (the queries that read answers are skipped
    where none does: most stores have none)."""
    return bool(store.select("SELECT 1 FROM relabel_answers WHERE reason = ? LIMIT 1", (reason,)))


@dataclass(frozen=True)
class Cell:
    """Labels of one labeler with one (truth estimate, human label, model label): the report's atom."""

    labeler_id: str
    truth: str
    human: str
    predicted: str
    labels: int
    relabel_requests: int
    multi_labeled: int


@dataclass(frozen=True)
class Totals:
    records: int
    items: int
    unlabeled: int
    relabel_requests: int


@dataclass(frozen=True)
class Night:
    night: str
    model_name: str
    model_version: str
    records: int
    labels: int
    model_disagreements: int
    relabel_requests: int


def _int(value) -> int:
    return 0 if value is None else int(value)  # PostgreSQL's SUM(bigint) is a Decimal


def models_in_window(store: AuditStore, window: Span) -> list[tuple[str, str, int, str]]:
    """(model_name, model_version, records, latest created_at) per model seen in the window."""
    rows = store.select(
        "SELECT model_name, model_version, COUNT(*), MAX(created_at) FROM audit_records"
        f" WHERE {Span.sql()} GROUP BY model_name, model_version",
        window.params(),
    )
    return sorted(((n, v, _int(c), str(t)) for n, v, c, t in rows), key=lambda r: r[3], reverse=True)


def totals(store: AuditStore, scope: Scope) -> Totals:
    ((records, items, unlabeled, relabels),) = store.select(
        "SELECT COUNT(*), COUNT(DISTINCT item_id), SUM(CASE WHEN human_label IS NULL THEN 1 ELSE 0 END),"
        f" SUM(disagrees) FROM audit_records WHERE {Span.sql()}" + _MODEL_FILTER,
        scope.params(),
    )
    return Totals(_int(records), _int(items), _int(unlabeled), _int(relabels))


def multi_labeled_items(store: AuditStore, scope: Scope) -> int:
    """Items with labels from two or more labelers in the window."""
    ((count,),) = store.select(
        "SELECT COUNT(*) FROM (SELECT item_id FROM audit_records"
        f" WHERE {Span.sql()} AND human_label IS NOT NULL"
        + _MODEL_FILTER
        + " GROUP BY item_id HAVING COUNT(*) > 1) multi",
        scope.params(),
    )
    return _int(count)


def pair_agreement(store: AuditStore, scope: Scope, sample_bound: int | None = None) -> list[tuple[str, str, int, int]]:
    """(labeler a, labeler b, items where they agree, items they share) with a < b: the pair table.
    ``sample_bound``: only the items of the random audit sample (``relabel.audit_sample_bound``). Labels
    that answer disagreement requests stay out (``Scope.not_an_answer``): they share the items the model picked.

    A self-join on the item; the unique index (item_id, labeler_id, model_version) serves the lookups.
    """

    def window(t: str) -> str:
        return f" AND {Span.sql(t)} AND {t}human_label IS NOT NULL AND {t}model_name = ? AND {t}model_version = ?"

    sample = "" if sample_bound is None else f" AND {store.audit_draw_sql('a.item_id')} < ?"
    answers = scope.not_an_answer("a.") + scope.not_an_answer("b.")
    sql = (
        "SELECT a.labeler_id, b.labeler_id, SUM(CASE WHEN a.human_label = b.human_label THEN 1 ELSE 0 END), COUNT(*)"
        " FROM audit_records a JOIN audit_records b ON b.item_id = a.item_id AND b.model_version = a.model_version"
        " AND b.labeler_id > a.labeler_id"
        + window("a.")
        + window("b.")
        + sample
        + answers
        + " GROUP BY a.labeler_id, b.labeler_id"
    )
    rows = store.select(sql, scope.params() + scope.params() + (() if sample_bound is None else (sample_bound,)))
    return [(str(a), str(b), _int(k), _int(n)) for a, b, k, n in rows]


MAX_PATTERN_LABELS = 8  # an item's labels the pattern query reads (its first labelers, in the store's id order)


def label_patterns(
    store: AuditStore,
    scope: Scope,
    unknown: str,
    max_labels: int = MAX_PATTERN_LABELS,
    sample_bound: int | None = None,
) -> list[tuple[tuple[tuple[str, str], ...], int]]:
    """Each distinct set of labels that two or more named labelers gave one item, with how many items carry
    it: ``(((labeler, label), ...), items)``, the pairs sorted. The input of Dawid–Skene's EM
    (``labelaudit.dawid_skene.from_patterns``), aggregated in the store: one row per pattern, not per item.

    Portable SQL: ``ROW_NUMBER`` numbers an item's labels by labeler id, and one column pair per position
    pivots them (``group_concat`` cannot be ordered in the SQLite Python ships). Labels without a labeler id
    (``unknown``) are not a person and stay out. An item with more than ``max_labels`` named labels is read
    with its first ``max_labels``. ``sample_bound``: only the items of the random audit sample
    (``relabel.audit_sample_bound``), whose second labels were asked for at random. Labels that answer
    disagreement requests stay out (``Scope.not_an_answer``).
    """
    columns = ", ".join(
        f"MAX(CASE WHEN pos = {i} THEN labeler_id END) AS a{i}, MAX(CASE WHEN pos = {i} THEN human_label END) AS y{i}"
        for i in range(1, max_labels + 1)
    )
    pattern = ", ".join(f"a{i}, y{i}" for i in range(1, max_labels + 1))
    sql = (
        "WITH named AS (SELECT item_id, labeler_id, human_label,"
        " ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY labeler_id) AS pos,"
        " COUNT(*) OVER (PARTITION BY item_id) AS copies"
        f" FROM audit_records WHERE {Span.sql()} AND human_label IS NOT NULL AND labeler_id <> ?"
        + _MODEL_FILTER
        + scope.not_an_answer("audit_records.")
        + ("" if sample_bound is None else f" AND {store.audit_draw_sql('item_id')} < ?")
        + f"), items AS (SELECT {columns} FROM named WHERE copies > 1 GROUP BY item_id)"
        f" SELECT {pattern}, COUNT(*) FROM items GROUP BY {pattern}"
    )
    span, model = scope.params()[:4], scope.params()[4:]
    found: dict[tuple[tuple[str, str], ...], int] = {}
    sample = () if sample_bound is None else (sample_bound,)
    for row in store.select(sql, (*span, unknown, *model, *sample)):
        labels = tuple(sorted((str(a), str(y)) for a, y in zip(row[:-1:2], row[1:-1:2], strict=True) if a is not None))
        found[labels] = found.get(labels, 0) + _int(row[-1])
    return sorted(found.items())


def model_weight(agreement: float | None, k: int) -> float:
    """``c``: the model counted as one more labeler, CROWDLAB's way (docs/report.md).

    CROWDLAB's posterior with equal weights, ``w p_model(k) + w * sum_j (P if label_j = k else
    (1 - P)/(K - 1))``, has the argmax of ``votes(k) + c p_model(k)`` with ``c = 1 / (P - (1 - P)/(K - 1))``.
    Labelers who agree no better than chance leave the model in charge (``c`` capped at 10).
    """
    if agreement is None or k < 2:
        return 1.0
    edge = agreement - (1 - agreement) / (k - 1)
    return 10.0 if edge <= 0.1 else min(10.0, 1.0 / edge)


def cells(store: AuditStore, scope: Scope, weight: float) -> list[Cell]:
    """The labels' cells; a label answering a disagreement request votes in its item's consensus but is not
    one of its labeler's labels here (``Scope.is_answer``): ``relabel_outcomes`` reports it."""
    sql = (
        _TRUTH_CTE.format(window=Span.sql(), model_filter=_MODEL_FILTER, answer=scope.is_answer("audit_records."))
        + _CONSENSUS_CTE
        + (
            "\nSELECT labeler_id, truth_label, human_label, predicted_label, COUNT(*), SUM(disagrees), SUM(multi)"
            " FROM truth WHERE answer = 0 GROUP BY labeler_id, truth_label, human_label, predicted_label"
        )
    )
    rows = store.select(sql, (*scope.params(), weight))
    return [Cell(str(a), str(t), str(h), str(p), _int(n), _int(r), _int(m)) for a, t, h, p, n, r, m in rows]


def nights(store: AuditStore, window: Span, answers: bool = False) -> list[Night]:
    """Per night and model: records (unlabeled too), labels, labels unlike the model's, relabel requests.

    One scan, no consensus: the trend compares nights on the measure that means the same every night. With
    ``answers`` (``has_answers(store, "disagreement")``) the labels answering disagreement requests are not counted.
    """
    rows = store.select(
        "SELECT substr(created_at, 1, 10), model_name, model_version, COUNT(*),"
        " SUM(CASE WHEN human_label IS NOT NULL THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN human_label <> predicted_label THEN 1 ELSE 0 END), SUM(disagrees)"
        f" FROM audit_records WHERE {Span.sql()}{not_an_answer(answers, 'audit_records.')}"
        " GROUP BY substr(created_at, 1, 10), model_name, model_version",
        window.params(),
    )
    out = [Night(str(d), n, v, _int(c), _int(k), _int(x), _int(r)) for d, n, v, c, k, x, r in rows]
    return sorted(out, key=lambda x: (x.night, x.model_name, x.model_version))


@dataclass(frozen=True)
class Outcomes:
    """Answers in the window to the requests about one labeler's labels where the model said one class: the
    second label is the model's label, the first label again, or neither."""

    labeler_id: str
    predicted: str
    model: int
    label: int
    answered: int


def relabel_outcomes(store: AuditStore, scope: Scope) -> list[Outcomes]:
    """Per questioned labeler and model's label: the answers (stored in the window) to those requests.

    An answer finds its request's record by the request id's form (``item/labeler/version``, built in SQL):
    the item's few records come from the unique index.
    """
    sql = (
        "SELECT a.labeler_id, a.predicted_label, SUM(CASE WHEN ra.label = a.predicted_label THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN ra.label = a.human_label AND ra.label <> a.predicted_label THEN 1 ELSE 0 END), COUNT(*)"
        " FROM relabel_answers ra JOIN audit_records a ON a.item_id = ra.item_id"
        f" AND ra.request_id = {_request_id('a.')}"
        " WHERE ra.reason = 'disagreement' AND ra.created_at >= ? AND ra.created_at < ?"
        " AND a.model_name = ? AND a.model_version = ? GROUP BY a.labeler_id, a.predicted_label"
    )
    rows = store.select(sql, (scope.span.since, scope.span.until, scope.model_name, scope.model_version))
    return sorted(
        (Outcomes(str(a), str(p), _int(m), _int(k), _int(n)) for a, p, m, k, n in rows),
        key=lambda o: (o.labeler_id, o.predicted),
    )


@dataclass(frozen=True)
class Audited:
    """A labeler's labels in one (model's label, human label) cell that an audit-sample answer by someone else
    gave again (``agreed``) or changed (``differed``)."""

    labeler_id: str
    predicted: str
    human: str
    agreed: int
    differed: int


def audited_labels(store: AuditStore, scope: Scope) -> list[Audited]:
    """The scope's labels on items whose audit-sample request (the one the label's model version asked,
    ``item/audit-sample/version``) another person answered, per labeler and cell; answers to disagreement
    requests are not labels here, as in ``cells``. An item answered twice counts twice."""
    sql = (
        "SELECT a.labeler_id, a.predicted_label, a.human_label,"
        " SUM(CASE WHEN ra.label = a.human_label THEN 1 ELSE 0 END), SUM(CASE WHEN ra.label <> a.human_label"
        " THEN 1 ELSE 0 END) FROM audit_records a JOIN relabel_answers ra ON ra.item_id = a.item_id"
        f" AND ra.request_id = {_request_id('a.', AUDIT_SAMPLE_PART)}"
        f" WHERE {Span.sql('a.')} AND a.human_label IS NOT NULL AND a.model_name = ? AND a.model_version = ?"
        " AND ra.reason = 'audit_sample' AND ra.labeler_id <> a.labeler_id"
        + scope.not_an_answer("a.")
        + " GROUP BY a.labeler_id, a.predicted_label, a.human_label"
    )
    rows = store.select(sql, scope.params())
    found = (Audited(str(a), str(p), str(h), _int(k), _int(d)) for a, p, h, k, d in rows)
    return sorted(found, key=lambda x: (x.labeler_id, x.predicted, x.human))


def audit_answers_by(store: AuditStore, scope: Scope) -> dict[str, int]:
    """Per labeler, its labels in the scope that answer their item's audit-sample request (the request of the
    label's model version, ``item/audit-sample/version``): the second opinions it gave."""
    sql = (
        "SELECT a.labeler_id, COUNT(*) FROM audit_records a JOIN relabel_answers ra ON ra.item_id = a.item_id"
        f" AND ra.labeler_id = a.labeler_id AND ra.request_id = {_request_id('a.', AUDIT_SAMPLE_PART)}"
        f" WHERE {Span.sql('a.')} AND a.human_label IS NOT NULL AND a.model_name = ? AND a.model_version = ?"
        " AND ra.reason = 'audit_sample' GROUP BY a.labeler_id"
    )
    return {str(a): _int(n) for a, n in store.select(sql, scope.params())}


def answers_in_window(store: AuditStore, window: Span) -> dict[str, int]:
    """Answers stored in the window, per request reason (whatever model they answer)."""
    rows = store.select(
        "SELECT reason, COUNT(*) FROM relabel_answers WHERE created_at >= ? AND created_at < ? GROUP BY reason",
        (window.since, window.until),
    )
    return {str(reason): _int(n) for reason, n in rows}


def relabel_queue(store: AuditStore, scope: Scope, top: int) -> list[QueueItem]:
    """The policy's relabel requests, ``ORDER BY score DESC LIMIT top``, with the item's other labels and the
    answers to each request stored so far."""
    other = (
        "SELECT COUNT(*) FROM audit_records o WHERE o.item_id = q.item_id AND o.model_name = q.model_name"
        " AND o.model_version = q.model_version AND o.labeler_id <> q.labeler_id AND o.human_label IS NOT NULL"
        " AND o.created_at >= ? AND o.created_at < ?"  # the unique index finds the item's few rows: no id range
    )
    answered = f"FROM relabel_answers ra WHERE ra.item_id = q.item_id AND ra.request_id = {_request_id('q.')}"
    verdict = [*Verdict.model_fields, "created_at"]
    sql = (
        f"SELECT {', '.join('q.' + c for c in verdict)}, ({other}), ({other} AND o.human_label = q.human_label),"
        f" (SELECT COUNT(*) {answered}), (SELECT MIN(ra.label) {answered})"
        f" FROM (SELECT {', '.join(verdict)}, model_name, model_version FROM audit_records"
        f" WHERE {Span.sql()}" + _MODEL_FILTER + " AND disagrees = 1"
        " ORDER BY score DESC, item_id, labeler_id LIMIT ?) q ORDER BY q.score DESC, q.item_id, q.labeler_id"
    )
    window = (scope.span.since, scope.span.until)
    rows = store.select(sql, (*window, *window, *scope.params(), top))
    return [
        QueueItem(
            rank=rank,
            **dict(zip(verdict, row[:-4], strict=True)),
            other_labels=_int(row[-4]),
            agreeing_labels=_int(row[-3]),
            answers=_int(row[-2]),
            answer=row[-1],
            thumbnail=False,
        )
        for rank, row in enumerate(rows, start=1)
    ]


def classes_in_store(store: AuditStore, model_name: str, model_version: str) -> tuple[list[str], int | None]:
    """Every class name this model's records ever used (human or model label), and K from its probabilities."""
    rows = store.select(
        "SELECT DISTINCT predicted_label FROM audit_records WHERE model_name = ? AND model_version = ?"
        " UNION SELECT DISTINCT human_label FROM audit_records"
        " WHERE model_name = ? AND model_version = ? AND human_label IS NOT NULL",
        (model_name, model_version, model_name, model_version),
    )
    sample = store.select(
        "SELECT probabilities FROM audit_records WHERE model_name = ? AND model_version = ? LIMIT 1",
        (model_name, model_version),
    )
    k = len(json.loads(sample[0][0])) if sample else None
    return sorted(str(r[0]) for r in rows), k
