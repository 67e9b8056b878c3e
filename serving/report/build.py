"""From the store's aggregates to the ``Report`` (schemas/report.py): rates, intervals, the labeler flag,
the transition matrices, the trends and the plain-language notes. Statistics only; no SQL, no HTML."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np

from labelaudit import dawid_skene
from labelaudit.agreement import MIN_PAIRS, Estimates, above_pool
from labelaudit.agreement import estimate as one_coin_estimates
from labelaudit.audited import MIN_ANSWERS, AuditedRate
from labelaudit.audited import above_pool as audit_above_pool
from labelaudit.audited import error_rate as audited_rate
from labelaudit.deconvolve import (
    MAX_CLASSES,
    ErrorRate,
    ModelConfusion,
    error_rates,
    labeler_tables,
    wrong_chances,
)
from labelaudit.schemas.report import (
    AnswerRow,
    ClassRow,
    Confusion,
    Consensus,
    ErrorEstimate,
    FlagTest,
    Headline,
    LabelerRow,
    ModelSeen,
    NightRow,
    PreviousNights,
    Rate,
    RelabelAnswers,
    Report,
    Transition,
    Window,
)
from labelaudit.serving.core.relabel import audit_sample_bound
from labelaudit.serving.core.store import AuditStore
from labelaudit.serving.report import aggregate as agg
from labelaudit.serving.report.stats import fisher_greater, holm, wilson

THIN = 20  # fewer labels than this: the page says the interval is wide
# The flag tests a labeler only against others holding at least this share of the window's labels: a
# remainder smaller than that (a QA lead's few checks of trusted items, a handful of test calls) is no
# reference for the crowd, and the step-down would otherwise flag everyone worse than it.
MIN_POOL_SHARE = 0.10
# A labeler at least this share of whose labels answer the random audit sample's requests is a reviewer: the flag
# leaves it out (its answers are what the audit rates are read against; a reliable labeler at 9% would otherwise
# be flagged against a reviewer at 0% once the reviewer holds MIN_POOL_SHARE of the labels).
REVIEWER_SHARE = 0.5
UNKNOWN_LABELER = ""  # records that came without a labeler id: shown, never tested (not one person)
# Above this many numbers per step of Dawid–Skene's EM (labelers x K² + the shared items' distinct label sets'
# labels x K) the shared-item rates come from the one-coin fit. Measured (2-core CPU, a helper's training
# alongside): 20 labelers, 100 classes, 3,000 shared items (1.1M) took 18 s with the bootstrap; 100 labelers,
# 100 classes, 20,000 items (7M) 7 minutes.
DS_MAX_WORK = 2_000_000


def rate(k: int, n: int) -> Rate:
    ci = wilson(k, n)
    return Rate(k=k, n=n, rate=k / n if n else None, low=ci[0] if ci else None, high=ci[1] if ci else None)


def flag_test_description(alpha: float) -> str:
    return (
        "A labeler is flagged when its error rate is significantly above the pooled rate of the labelers in "
        "good standing, step-down: round 1 tests every labeler against all the others; the labelers it flags "
        "leave the pool and the rest are tested again against the smaller pool, until a round flags nobody "
        "(so a spammer or a mostly noisy crew cannot raise the bar for everyone else). "
        "Where the labeler shares enough items with others (a triangle of labelers sharing at least "
        f"{MIN_PAIRS} items pairwise), its error rate comes from the labels of the items it shares (Dawid–Skene's "
        "EM over them, a full confusion matrix per labeler, no model involved), and the test is one-sided: the "
        "difference to the pool's volume-weighted rate over its bootstrap standard error (the shared items "
        "resampled; z-test). Otherwise, where its error rate comes from the random audit sample's answers, the "
        "difference to the volume-weighted rate of the pool's other labelers rated that way over the standard error "
        "of both (audit z-test). Otherwise the test is a "
        "one-sided Fisher exact test of its disagreements against the pool's other labels (which, unlike a test "
        "against the pool's rate as if it were known, counts the pool's own sampling error). A labeler is tested "
        f"only while the others in the pool hold at least {MIN_POOL_SHARE:.0%} of the window's labels. In "
        "each round the p-values are adjusted with Holm–Bonferroni over the labelers tested, and a labeler is "
        f"flagged where the adjusted p-value is at most {alpha:g}. Labels without a labeler id are not tested; nor is "
        f"a reviewer (at least {REVIEWER_SHARE:.0%} of its labels answer the random audit sample), which is not in the "
        "pool either."
    )


def build_report(
    store: AuditStore,
    *,
    window: Window,
    store_kind: str,
    classes: list[str] | None,
    class_source: str,
    model_version: str | None = None,
    nights_back: int = 14,
    top: int = 50,
    alpha: float = 0.05,
    model_confusion: Callable[[str, str], ModelConfusion | None] = lambda name, version: None,
    step: Callable[[str], None] = lambda name: None,
    audit_sample_rate: float = 0.0,
) -> Report:
    """The report for ``window``: the model given by ``model_version`` (default: the one with the window's
    latest record) and its verdicts; the other models in the window are listed, not counted.
    ``model_confusion(name, version)``: that model's confusion from its card, if there is one.
    ``audit_sample_rate`` (the stream's ``LABELAUDIT_AUDIT_SAMPLE_RATE``): above 0, labelers' error rates from
    shared items read only the items of the random audit sample (a second label given because the model
    disagreed comes from an item the model picked, and would read the first labeler's rate high)."""
    since, until = _iso(window.since), _iso(window.until)
    step("models in the window")
    window_span = agg.span(store, since, until)
    seen = [
        ModelSeen(model_name=n, model_version=v, records=c) for n, v, c, _ in agg.models_in_window(store, window_span)
    ]
    chosen = next((m for m in seen if model_version in (None, m.model_version)), None)
    answers = agg.has_answers(store, "disagreement")
    notes: list[str] = []
    first_night = _midnight(window.since.date() - timedelta(days=nights_back))
    if chosen is None:
        notes.append(_empty_note(window, seen, model_version))
        trends = [_night_row(n) for n in agg.nights(store, agg.span(store, _iso(first_night), until), answers)]
        return _empty_report(window, store_kind, classes or [], class_source, seen, notes, alpha, trends)
    scope = agg.Scope(window_span, chosen.model_name, chosen.model_version, answers)
    others = [m for m in seen if m != chosen]
    if others:
        notes.append(
            "Other models audited in this window are not in these numbers: "
            + ", ".join(f"{m.model_name} v{m.model_version} ({m.records:,} records)" for m in others)
            + "."
        )

    step("totals")
    totals = agg.totals(store, scope)
    if classes is None:
        classes, k = agg.classes_in_store(store, chosen.model_name, chosen.model_version)
        if k is not None and k > len(classes):
            notes.append(
                f"The model has {k} classes but only {len(classes)} appear in the store; give --model-repo "
                "to name the others."
            )
    step("labeler pairs (SQL)")
    multi_items = agg.multi_labeled_items(store, scope)
    pairs = agg.pair_agreement(store, scope)
    shared = sum(n for *_, n in pairs)
    agreement = sum(k for _, _, k, _ in pairs) / shared if shared else None
    weight = agg.model_weight(agreement, len(classes))
    step("labels x truth x model (SQL)")
    cells = agg.cells(store, scope, weight)
    extra = sorted({x for c in cells for x in (c.truth, c.human, c.predicted)} - set(classes))
    if extra:
        notes.append(f"Labels outside the model's classes appear in the store: {extra}.")
        classes = [*classes, *extra]

    step("trends (SQL)")
    nights = agg.nights(store, agg.span(store, _iso(first_night), until), answers)
    step("relabel queue and its answers (SQL)")
    queue = agg.relabel_queue(store, scope, top)
    relabel_answers = _relabel_answers(
        agg.relabel_outcomes(store, scope), agg.answers_in_window(store, window_span), classes
    )

    step("labels of the shared items (SQL)")
    shared_rates, note = _shared_estimates(store, scope, classes, pairs, audit_sample_rate)
    notes += [note] if note else []
    confusion, note = _usable_confusion(model_confusion(chosen.model_name, chosen.model_version))
    notes += [note] if note else []
    model_errors = _model_errors(cells, confusion)
    step("audit-sample answers (SQL)")
    sampled = agg.has_answers(store, "audit_sample")
    audited = agg.audited_labels(store, scope) if sampled else []
    audit_errors = _audit_errors(cells, audited, confusion)
    second_opinions = agg.audit_answers_by(store, scope) if sampled else {}
    labelers, flag = _labelers(cells, classes, alpha, shared_rates, model_errors, audit_errors, second_opinions)
    headline = _headline(totals, cells, nights, chosen, window, multi_items)
    notes += _notes(totals, cells, headline, labelers, nights_back)
    return Report(
        generated_at=datetime.now(UTC),
        store=store_kind,
        window=window,
        model=chosen,
        other_models=others,
        classes=classes,
        class_source=class_source,
        headline=headline,
        per_class=_per_class(cells, classes),
        confusion=_confusion(cells, classes),
        consensus=Consensus(labeler_pairs=shared, annotator_agreement=agreement, model_weight=weight),
        labelers=labelers,
        flag_test=flag,
        relabel_queue=queue,
        relabel_answers=relabel_answers,
        trends=[_night_row(n) for n in nights],
        notes=notes,
    )


def _relabel_answers(outcomes: list[agg.Outcomes], in_window: dict[str, int], classes: list[str]) -> RelabelAnswers:
    def rows(key: Callable[[agg.Outcomes], str], order: list[str]) -> list[AnswerRow]:
        counts: dict[str, list[int]] = {}
        for o in outcomes:
            c = counts.setdefault(key(o), [0, 0, 0])
            c[0], c[1], c[2] = c[0] + o.answered, c[1] + o.model, c[2] + o.label
        rank = {name: i for i, name in enumerate(order)}
        return [
            AnswerRow(group=g, answered=n, model=m, kept=k, other=n - m - k, changed=rate(m, n))
            for g, (n, m, k) in sorted(counts.items(), key=lambda x: (rank.get(x[0], len(rank)), x[0]))
        ]

    answered = sum(o.answered for o in outcomes)
    return RelabelAnswers(
        answered=answered,
        precision=rate(sum(o.model for o in outcomes), answered),
        per_labeler=rows(lambda o: o.labeler_id, []),
        per_class=rows(lambda o: o.predicted, classes),
        audit_sample=in_window.get("audit_sample", 0),
        other_models=in_window.get("disagreement", 0) - answered,
    )


def _iso(t: datetime) -> str:
    """The store's own text form of a UTC time (``datetime.isoformat``), so string order is time order."""
    return t.astimezone(UTC).isoformat()


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _night_row(n: agg.Night) -> NightRow:
    return NightRow(
        night=date.fromisoformat(n.night),
        model_name=n.model_name,
        model_version=n.model_version,
        records=n.records,
        model_disagreement=rate(n.model_disagreements, n.labels),
        relabel_requests=n.relabel_requests,
    )


def _per_class(cells: list[agg.Cell], classes: list[str]) -> list[ClassRow]:
    n: defaultdict[str, int] = defaultdict(int)
    k: defaultdict[str, int] = defaultdict(int)
    relabels: defaultdict[str, int] = defaultdict(int)
    predicted: defaultdict[str, int] = defaultdict(int)
    for c in cells:
        n[c.human] += c.labels
        k[c.human] += c.labels if c.human != c.truth else 0
        relabels[c.human] += c.relabel_requests
        predicted[c.predicted] += c.labels
    rows = []
    for name in classes:
        note = None
        if n[name] == 0:
            note = (
                f"never given as a label in this window; the model predicted it {predicted[name]:,} times"
                if predicted[name]
                else "never seen in this window, as a label or as a prediction"
            )
        elif n[name] < THIN:
            note = f"only {n[name]} label{'s' if n[name] > 1 else ''}: the interval is wide"
        rows.append(
            ClassRow(
                name=name,
                disagreement=rate(k[name], n[name]),
                relabel_requests=relabels[name],
                predicted=predicted[name],
                note=note,
            )
        )
    return rows


def _confusion(cells: list[agg.Cell], classes: list[str]) -> Confusion:
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for c in cells:
        counts[index[c.human]][index[c.predicted]] += c.labels
    return Confusion(classes=classes, counts=counts)


def _transition(cells: list[agg.Cell], classes: list[str]) -> Transition:
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for c in cells:
        counts[index[c.truth]][index[c.human]] += c.labels
    rows = [[x / sum(r) for x in r] if sum(r) else None for r in counts]
    return Transition(classes=classes, counts=counts, rows=rows)


def _shared_estimates(
    store: AuditStore,
    scope: agg.Scope,
    classes: list[str],
    pairs: list[tuple[str, str, int, int]],
    audit_sample_rate: float = 0.0,
) -> tuple[Estimates, str | None]:
    """Labelers' error rates from the items several of them labeled: Dawid–Skene's EM over the items' label
    patterns (a full matrix per labeler, so labelers who confuse the same look-alike classes are not read as
    careful), or, where a step of that EM would cost more than ``DS_MAX_WORK`` (labelers x K² for the matrices,
    the patterns' labels x K for the posteriors), the one-coin fit to the pair table; and what the page should
    say about the latter and about the audit sample."""
    bound, sampled = None, None
    if audit_sample_rate > 0:
        bound = audit_sample_bound(audit_sample_rate)
        pairs = agg.pair_agreement(store, scope, bound)
        sampled = (
            f"Labelers' error rates from shared items read only the items of the random audit sample "
            f"({audit_sample_rate:.0%} of the items, drawn by their ids as the stream drew them): a second label "
            "that answers a disagreement request comes from an item the model picked."
        )
    people = [x for x in pairs if UNKNOWN_LABELER not in x[:2]]
    labelers, k = len({a for x in people for a in x[:2]}), len(classes)
    patterns: list[tuple[tuple[tuple[str, int], ...], int]] = []
    if people and labelers * k * k <= DS_MAX_WORK:
        index = {c: i for i, c in enumerate(classes)}
        patterns = [
            (tuple((a, index[y]) for a, y in labels), n)
            for labels, n in agg.label_patterns(store, scope, UNKNOWN_LABELER, sample_bound=bound)
        ]
    work = labelers * k * k + sum(len(p) for p, _ in patterns) * k
    if work > DS_MAX_WORK:
        fallback = (
            f"{labelers} labelers sharing items, {k} classes and the items' {len(patterns):,} distinct sets of labels "
            "are more than the report fits Dawid–Skene's full confusion matrices for in reasonable time: labelers' "
            "error rates from shared items come from their pairwise agreement (one-coin model: it reads labelers "
            "who confuse the same classes as more careful than they are)."
        )
        return one_coin_estimates(people, k), " ".join(x for x in (sampled, fallback) if x)
    return dawid_skene.from_patterns(patterns, k), sampled


def _usable_confusion(confusion: ModelConfusion | None) -> tuple[ModelConfusion | None, str | None]:
    """The card's confusion if the report can deconvolve by it, and what the page should say about it."""
    if confusion is None:
        return None, (
            "No model card with the model's confusion was given (--model-repo): a labeler who shares few "
            "items with others is judged by its disagreement rate, which counts the model's mistakes too."
        )
    if len(confusion.classes) > MAX_CLASSES:
        return None, (
            f"The model has {len(confusion.classes)} classes, more than the {MAX_CLASSES} the report "
            "deconvolves labelers' disagreement for: their error rates are disagreement rates."
        )
    if "trusted" in confusion.source:
        return confusion, (
            f"The model's confusion in its card was measured on the {confusion.source}, which "
            "training fitted: it understates the model's mistakes, so labelers' error rates from the "
            "model lean toward their disagreement rates."
        )
    return confusion, None


def _model_errors(cells: list[agg.Cell], confusion: ModelConfusion | None) -> dict[str, ErrorRate]:
    """Each labeler's error rate deconvolved from its (model's label, human label) counts; {} without a card."""
    if confusion is None:
        return {}
    rows = [(c.labeler_id, c.predicted, c.human, c.labels) for c in cells]
    return error_rates(labeler_tables(rows, confusion.classes), confusion.counts)


def _audit_errors(
    cells: list[agg.Cell], audited: list[agg.Audited], confusion: ModelConfusion | None
) -> dict[str, AuditedRate]:
    """Each labeler's error rate from the audit sample's answers on its labels, with the model's chance that a
    label is wrong as the predictor (``labelaudit.audited``): its cell of the deconvolution where the card has
    the model's confusion, else 1 where the label differs from the model's. Labelers with too few answers are
    left out. Per distinct (model's label, human label) cell, never a K x K table: any number of classes."""
    counts: defaultdict[str, dict[tuple[str, str], list[int]]] = defaultdict(dict)  # labels, agreed, differed
    for x in audited:
        c = counts[x.labeler_id].setdefault((x.predicted, x.human), [0, 0, 0])
        c[1], c[2] = c[1] + x.agreed, c[2] + x.differed
    for cell in cells:
        if cell.labeler_id in counts:
            counts[cell.labeler_id].setdefault((cell.predicted, cell.human), [0, 0, 0])[0] += cell.labels
    out = {}
    for labeler, by_cell in counts.items():
        keys = list(by_cell)
        n = np.array([by_cell[k] for k in keys], dtype=float)  # (cells, 3)
        if n[:, 1:].sum() < MIN_ANSWERS:  # too few answers to say anything: no EM for the predictor
            continue
        if confusion is not None:
            f = wrong_chances([(p, h, labels) for (p, h), labels in zip(keys, n[:, 0], strict=True)], confusion)
        else:
            f = np.array([float(p != h) for p, h in keys])
        found = audited_rate(n[:, 0], n[:, 1], n[:, 2], f)
        if found is not None:
            out[labeler] = found
    return out


def _labelers(
    cells: list[agg.Cell],
    classes: list[str],
    alpha: float,
    est: Estimates,
    model_errors: dict[str, ErrorRate],
    audit_errors: dict[str, AuditedRate],
    second_opinions: dict[str, int] | None = None,
) -> tuple[list[LabelerRow], FlagTest]:
    """The labelers' rows and the flag. ``second_opinions``: per labeler, its labels that answer the audit
    sample's requests; a labeler for whom they are at least ``REVIEWER_SHARE`` of its labels is a reviewer, left
    out of the flag (neither tested nor in anyone's pool: its answers are the audit rates' yardstick)."""
    mine: dict[str, list[agg.Cell]] = defaultdict(list)
    for c in cells:
        mine[c.labeler_id].append(c)
    stats = {a: (sum(c.labels for c in cs if c.human != c.truth), sum(c.labels for c in cs)) for a, cs in mine.items()}
    by_id = {a: i for i, a in enumerate(est.labelers)}
    shown = {
        a: _estimated_error(rate(k, n), est, by_id.get(a), audit_errors.get(a), model_errors.get(a))
        for a, (k, n) in stats.items()
    }
    audited = {a: _interval(e) for a, e in shown.items() if e.source == "audit" and a != UNKNOWN_LABELER}
    given = second_opinions or {}
    reviewers = {a for a, (_, n) in stats.items() if a != UNKNOWN_LABELER and given.get(a, 0) >= REVIEWER_SHARE * n}
    flag = step_down({a: x for a, x in stats.items() if a not in reviewers}, est, alpha, audited)
    rows = []
    for a in sorted(stats, key=lambda a: (-stats[a][1], a)):
        k, n = stats[a]
        rows.append(
            LabelerRow(
                labeler_id=a,
                labels=n,
                multi_labeled=sum(c.multi_labeled for c in mine[a]),
                disagreement=rate(k, n),
                estimated_error=shown[a],
                relabel_requests=sum(c.relabel_requests for c in mine[a]),
                test=flag.test.get(a),
                p_value=flag.p.get(a),
                p_adjusted=flag.adjusted.get(a),
                flagged=a in flag.flagged,
                flag_round=flag.flagged.get(a),
                transition=_transition(mine[a], classes),
                note=_reviewer_note(given[a], n)
                if a in reviewers
                else _labeler_note(a, n, a in flag.p, flag.test.get(a), shown[a].source),
            )
        )
    flagged = [r.labeler_id for r in rows if r.flagged]
    return rows, FlagTest(
        alpha=alpha, description=flag_test_description(alpha), tested=len(flag.p), flagged=flagged, rounds=flag.rounds
    )


@dataclass
class Flags:
    p: dict[str, float] = field(default_factory=dict)  # labeler -> p-value (the round that flagged it, or the last)
    adjusted: dict[str, float] = field(default_factory=dict)  # the same, Holm-adjusted within its round
    # labeler -> "agreement z-test" | "audit z-test" | "Fisher exact"
    test: dict[str, str] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # labeler -> the round (from 1) that flagged it
    rounds: int = 0


def step_down(
    stats: dict[str, tuple[int, int]],
    est: Estimates,
    alpha: float,
    audited: dict[str, tuple[float, float, float]] | None = None,
) -> Flags:
    """Flag labelers significantly above the pool of labelers in good standing, until none is.

    Round 1 tests every labeler against all the others. A labeler flagged in a round leaves the pool, and the
    labelers still in good standing are tested again against the smaller pool; the rounds stop when one flags
    nobody. Why: a spammer (or a crew that is mostly noisy) raises "the others' pooled rate" so far that
    clearly noisy labelers look ordinary next to it; the bar should be set by the labelers who pass. Within
    a round the p-values are Holm-adjusted over the labelers tested in it. ``audited``: the labelers whose shown
    error rate comes from the audit sample's answers (rate, low, high), tested on it (``_flag_p_values``).
    """
    out = Flags()
    standing = {a for a in stats if a != UNKNOWN_LABELER}
    while True:
        out.rounds += 1
        p, test = _flag_p_values(stats, est, standing, audited or {})
        tested = sorted(p)
        adjusted = dict(zip(tested, holm([p[a] for a in tested]), strict=True))
        out.p |= p
        out.adjusted |= adjusted
        out.test |= test
        new = {a for a in tested if adjusted[a] <= alpha}
        out.flagged |= dict.fromkeys(sorted(new), out.rounds)
        standing -= new
        if not new or len(standing) < 2:
            return out


def _flag_p_values(
    stats: dict[str, tuple[int, int]],
    est: Estimates,
    standing: set[str],
    audited: dict[str, tuple[float, float, float]],
) -> tuple[dict[str, float], dict[str, str]]:
    """Per labeler in ``standing``: the agreement z-test where its error rate is identified; else, where its rate
    comes from the audit sample's answers, the z-test of that rate against the pool's other audited labelers'
    (``audited.above_pool``); else the one-sided Fisher exact test of its disagreements against those of the
    pool's other labels. Each test needs others of its kind in the pool, else the next one is used.
    The pool: ``standing`` and the labels without a labeler id (never tested, never flagged)."""
    pool = standing | ({UNKNOWN_LABELER} & stats.keys())
    total_k = sum(stats[a][0] for a in pool)
    total_n = sum(stats[a][1] for a in pool)
    # Only against a real pool: the others must hold MIN_POOL_SHARE of the window's labels.
    enough = {a for a in standing if total_n - stats[a][1] >= MIN_POOL_SHARE * sum(n for _, n in stats.values())}
    volume = {a: stats[a][1] for a in pool}
    p = {a: q for a, q in above_pool(est, volume).items() if a in enough}
    test = dict.fromkeys(p, "agreement z-test")
    checked = audit_above_pool({a: r for a, r in audited.items() if a in pool}, volume)
    for a in sorted(enough & checked.keys()):
        p[a], test[a] = checked[a], "audit z-test"
    for a in sorted(enough - p.keys()):
        k, n = stats[a]
        p[a] = fisher_greater(k, n, total_k - k, total_n - n)
        test[a] = "Fisher exact"
    return p, test


def _estimated_error(
    disagreement: Rate, est: Estimates, i: int | None, audit: AuditedRate | None, model: ErrorRate | None
) -> ErrorEstimate:
    """Agreement with other labelers where identified, else the audit sample's answers (with the model as
    predictor), else the model-deconvolved rate, else disagreement."""
    if i is not None and not np.isnan(est.error[i]):
        return ErrorEstimate(
            rate=float(est.error[i]), low=float(est.low[i]), high=float(est.high[i]), source="agreement"
        )
    if audit is not None:
        low, high = _binomial_floor(audit.rate, audit.low, audit.high, disagreement.n)
        return ErrorEstimate(rate=audit.rate, low=low, high=high, source="audit", answers=audit.answers)
    if model is not None:
        low, high = _binomial_floor(model.rate, model.low, model.high, disagreement.n)
        return ErrorEstimate(rate=model.rate, low=low, high=high, source="model")
    return ErrorEstimate(rate=disagreement.rate, low=disagreement.low, high=disagreement.high, source="disagreement")


def _interval(e: ErrorEstimate) -> tuple[float, float, float]:
    """An audit estimate's rate, low, high (always all three)."""
    assert e.rate is not None and e.low is not None and e.high is not None
    return e.rate, e.low, e.high


def _binomial_floor(rate: float, low: float, high: float, n: int) -> tuple[float, float]:
    """The interval widened, where it is narrower, to the Wilson interval of ``rate`` over the labeler's ``n``
    labels: however well the model's part is known, n labels cannot pin an error rate down more closely than
    that (a bootstrap of three labels that all agree with the model is a point; three labels are not)."""
    floor = wilson(rate * n, n)
    return (low, high) if floor is None else (min(low, floor[0]), max(high, floor[1]))


def _reviewer_note(answers: int, n: int) -> str:
    return (
        f"a reviewer: {answers:,} of its {n:,} labels answer the random audit sample, the yardstick of the others' "
        "audit rates, so it is neither tested nor part of the flag's pool"
    )


def _labeler_note(labeler_id: str, n: int, tested: bool, test: str | None, source: str) -> str | None:
    if labeler_id == UNKNOWN_LABELER:
        return "labels that came without a labeler id: not one person, so not tested"
    if not tested:
        return "the only labeler in this window: there is no pool to compare against, so not tested"
    notes = []
    if n < THIN:
        notes.append(f"only {n} label{'s' if n > 1 else ''}: the interval is wide and the test has little power")
    if test == "Fisher exact" and source == "disagreement":
        notes.append("too few items shared with other labelers: error rate from disagreement (counts model errors too)")
    elif test == "Fisher exact" and source == "audit":
        notes.append("no other labeler in the pool is rated from the audit sample: flag tested on disagreement")
    elif test == "Fisher exact":
        notes.append(
            "flag tested on disagreement with the model (counts the model's errors too), not on the rate shown"
        )
    return "; ".join(notes) or None


def _headline(
    totals: agg.Totals,
    cells: list[agg.Cell],
    nights: list[agg.Night],
    model: ModelSeen,
    window: Window,
    multi_items: int,
) -> Headline:
    n = sum(c.labels for c in cells)
    k = sum(c.labels for c in cells if c.human != c.truth)
    km = sum(c.labels for c in cells if c.human != c.predicted)
    before = [
        x
        for x in nights
        if (x.model_name, x.model_version) == (model.model_name, model.model_version)
        and date.fromisoformat(x.night) < window.since.date()
    ]
    previous = None
    if before:
        pk, pn = sum(x.model_disagreements for x in before), sum(x.labels for x in before)
        change = 100 * (km / n - pk / pn) if n and pn else None
        previous = PreviousNights(
            nights=[date.fromisoformat(x.night) for x in before],
            model_disagreement=rate(pk, pn),
            relabel_requests=rate(sum(x.relabel_requests for x in before), pn),
            change_points=change,
        )
    return Headline(
        records=totals.records,
        images_audited=totals.items,
        labels=n,
        unlabeled=totals.unlabeled,
        multi_labeled_items=multi_items,
        disagreement=rate(k, n),
        model_disagreement=rate(km, n),
        relabel_requests=totals.relabel_requests,
        previous=previous,
    )


def _notes(
    totals: agg.Totals, cells: list[agg.Cell], headline: Headline, labelers: list[LabelerRow], nights_back: int
) -> list[str]:
    notes = []
    if headline.labels == 0:
        notes.append(f"None of the {totals.records:,} records in this window carries a human label: nothing to judge.")
    elif not any(c.multi_labeled for c in cells):
        notes.append("Every item in this window carries one label: each label's truth estimate is the model's label.")
    if headline.previous is None:
        notes.append(f"No earlier night of this model in the {nights_back} nights before: no change to report.")
    return notes


def _empty_note(window: Window, seen: list[ModelSeen], model_version: str | None) -> str:
    span = f"from {window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M} UTC"
    if seen and model_version is not None:
        return f"No audit records of model version {model_version} {span} (other versions are there)."
    return f"No audit records {span}: an empty night, nothing to report."


def _empty_report(
    window: Window,
    store_kind: str,
    classes: list[str],
    class_source: str,
    seen: list[ModelSeen],
    notes: list[str],
    alpha: float,
    trends: list[NightRow],
) -> Report:
    return Report(
        generated_at=datetime.now(UTC),
        store=store_kind,
        window=window,
        model=None,
        other_models=seen,
        classes=classes,
        class_source=class_source,
        headline=Headline(
            records=0,
            images_audited=0,
            labels=0,
            unlabeled=0,
            multi_labeled_items=0,
            disagreement=rate(0, 0),
            model_disagreement=rate(0, 0),
            relabel_requests=0,
            previous=None,
        ),
        per_class=_per_class([], classes),
        confusion=_confusion([], classes),
        consensus=Consensus(labeler_pairs=0, annotator_agreement=None, model_weight=1.0),
        labelers=[],
        flag_test=FlagTest(alpha=alpha, description=flag_test_description(alpha), tested=0, flagged=[]),
        relabel_queue=[],
        trends=trends,
        notes=notes,
    )
