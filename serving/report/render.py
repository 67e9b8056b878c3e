"""``report.html``: one self-contained page (figures and thumbnails embedded as data URIs, no script, no
network) from a ``Report``. Every section says in words what is missing instead of drawing nothing."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from labelaudit.schemas.report import ErrorEstimate, LabelerRow, Rate, Report
from labelaudit.serving.report import plots

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; } .notes li { color: #8a5a00; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 10em; }
.card .v { font-size: 1.6em; font-weight: 600; } .card .l { color: #666; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #eee; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
td .missing { white-space: normal; display: inline-block; min-width: 14em; }
th { background: #f6f6f6; } td.t, th.t { text-align: left; }
tr.flag td { background: #fdecea; } .flagmark { color: #c0392b; font-weight: 600; }
.missing { color: #888; font-style: italic; font-size: 0.85em; }
img.fig { max-width: 100%; display: block; margin: 0.5em 0; } img.thumb { width: 56px; height: auto; image-rendering: pixelated; }
.method { background: #f8f8f8; padding: 0.6em 1em; border-left: 3px solid #ccc; }
"""


def pct(r: Rate) -> str:
    return "–" if r.rate is None else f"{100 * r.rate:.1f}%"


def interval(r: Rate) -> str:
    return "–" if r.low is None or r.high is None else f"{100 * r.low:.1f}–{100 * r.high:.1f}%"


def _table(head: list[str], rows: list[list[str]], row_class: Callable[[int], str] = lambda i: "") -> str:
    th = "".join(f'<th class="{"t" if i == 0 else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        f'<tr class="{row_class(n)}">'
        + "".join(f'<td class="{"t" if i == 0 else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for n, r in enumerate(rows)
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _figure(uri: str, alt: str) -> str:
    return f'<img class="fig" src="{uri}" alt="{escape(alt)}">'


def _header(report: Report) -> str:
    m = report.model
    model = f"{escape(m.model_name)} version {escape(m.model_version)}" if m else "no model (no records)"
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    return (
        f"<h1>Label-disagreement report: {escape(report.window.label)}</h1>"
        f'<p class="meta">Window {report.window.since:%Y-%m-%d %H:%M} to {report.window.until:%Y-%m-%d %H:%M} UTC · '
        f"verdicts by <b>{model}</b> · store: {escape(report.store)} · generated {report.generated_at:%Y-%m-%d %H:%M} "
        f'UTC · <a href="report.json">report.json</a> · <a href="relabel_queue.csv">relabel_queue.csv</a></p>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def _card(value: str, label: str) -> str:
    return f'<div class="card"><div class="v">{value}</div><div class="l">{escape(label)}</div></div>'


def _headline(report: Report) -> str:
    h = report.headline
    p = h.previous
    change = "no earlier nights"
    if p is not None and p.change_points is not None:
        change = (
            f"{p.change_points:+.1f} pts: {pct(h.model_disagreement)} tonight vs {pct(p.model_disagreement)} "
            f"over {len(p.nights)} earlier night(s)"
        )
    cards = [
        _card(f"{h.images_audited:,}", f"images audited ({h.records:,} records, {h.unlabeled:,} without a label)"),
        _card(
            pct(h.disagreement),
            f"disagreement rate, 95% CI {interval(h.disagreement)} ({h.disagreement.k:,} of {h.labels:,} labels)",
        ),
        _card(f"{h.relabel_requests:,}", "relabel requests (the serving policy's flags)"),
        _card(escape(change), "change against the previous nights, in disagreement with the model's label"),
        _card(f"{h.multi_labeled_items:,}", "items labeled by two or more labelers"),
    ]
    return "<h2>Headline</h2><div class='cards'>" + "".join(cards) + "</div>"


def _classes(report: Report) -> str:
    rows = [
        [
            escape(c.name),
            f"{c.disagreement.n:,}",
            f"{c.disagreement.k:,}",
            pct(c.disagreement),
            interval(c.disagreement),
            f"{c.relabel_requests:,}",
            f"{c.predicted:,}",
            f'<span class="missing">{escape(c.note)}</span>' if c.note else "",
        ]
        for c in report.per_class
    ]
    out = "<h2>Per class</h2>"
    if report.headline.labels == 0:
        return out + '<p class="missing">No labels in this window: no per-class numbers.</p>'
    out += _figure(plots.class_rates(report.per_class, report.headline.disagreement), "disagreement rate per class")
    out += _table(["human label", "labels", "disagree", "rate", "95% CI", "relabel requests", "model said", ""], rows)
    return out + _figure(plots.confusion_heatmap(report.confusion), "confusion matrix, human label vs model")


def estimate_source(e: ErrorEstimate) -> str:
    """Where a labeler's estimated error rate comes from, as the page and the terminal say it."""
    return f"audit of {e.answers:,}" if e.source == "audit" and e.answers is not None else e.source


def _labeler_row(r: LabelerRow) -> list[str]:
    p = "–" if r.p_adjusted is None else f"{r.p_adjusted:.2g}"
    flag = '<span class="flagmark">flagged</span>' if r.flagged else ""
    note = f'<span class="missing">{escape(r.note)}</span>' if r.note else ""
    e = r.estimated_error
    est = (
        "–"
        if e.rate is None or e.low is None or e.high is None
        else f"{100 * e.rate:.1f}% ({100 * e.low:.1f}–{100 * e.high:.1f}%, {estimate_source(e)})"
    )
    return [
        escape(r.labeler_id or "(no labeler id)"),
        f"{r.labels:,}",
        f"{r.multi_labeled:,}",
        f"{r.disagreement.k:,}",
        pct(r.disagreement),
        interval(r.disagreement),
        est,
        f"{r.relabel_requests:,}",
        escape(r.test or "–"),
        p,
        flag,
        note,
    ]


def _labelers(report: Report) -> str:
    out = "<h2>Per labeler</h2>"
    if not report.labelers:
        return out + '<p class="missing">No labeled records in this window: no labelers to compare.</p>'
    f = report.flag_test
    rounds = f"{f.rounds} round{'s' if f.rounds != 1 else ''}"
    out += (
        f'<p class="method"><b>The flag.</b> {escape(f.description)} Tested: {f.tested}; {rounds}; flagged: '
        + (escape(", ".join(f.flagged)) if f.flagged else "none")
        + ".</p>"
    )
    out += _figure(plots.labeler_rates(report.labelers, report.headline.disagreement), "disagreement per labeler")
    head = [
        "labeler",
        "labels",
        "on shared items",
        "disagree",
        "rate",
        "95% CI",
        "estimated error (95% CI, from)",
        "relabel requests",
        "test",
        "Holm p",
        "",
        "",
    ]
    rows = [_labeler_row(r) for r in report.labelers]
    out += _table(head, rows, lambda i: "flag" if report.labelers[i].flagged else "")
    more = len(report.labelers) - plots.MAX_TRANSITIONS
    out += "<h3>How each labeler's labels relate to the truth estimate</h3>"
    out += _figure(plots.transitions(report.labelers), "per-labeler transition matrices")
    if more > 0:
        out += (
            f'<p class="missing">{more} more labelers\' matrices are in report.json (the page shows the '
            f"{plots.MAX_TRANSITIONS} with the most labels).</p>"
        )
    return out


def _queue(report: Report, thumbs: dict[str, str]) -> str:
    out = f"<h2>Relabel queue (top {len(report.relabel_queue)} by disagreement score)</h2>"
    if not report.relabel_queue:
        return out + '<p class="missing">No relabel requests in this window.</p>'
    rows = []
    for q in report.relabel_queue:
        uri = thumbs.get(q.item_id)
        img = (
            f'<img class="thumb" src="{uri}" alt="{escape(q.item_id)}">'
            if uri
            else '<span class="missing">no image</span>'
        )
        lp = "–" if q.label_probability is None else f"{q.label_probability:.3f}"
        rows.append(
            [
                str(q.rank),
                img,
                escape(q.item_id),
                escape(q.labeler_id or "(none)"),
                escape(q.human_label),
                escape(q.predicted_label),
                f"{q.predicted_probability:.3f}",
                lp,
                f"{q.score:.3f}",
                f"{q.agreeing_labels}/{q.other_labels}",
                "–" if q.answer is None else escape(q.answer) + (f" (+{q.answers - 1})" if q.answers > 1 else ""),
            ]
        )
    missing = sum(not q.thumbnail for q in report.relabel_queue)
    if missing:
        out += (
            f'<p class="missing">{missing} of {len(report.relabel_queue)} items have no thumbnail: the store keeps '
            "no images; give --images (a manifest or a folder) to show them.</p>"
        )
    head = [
        "#",
        "image",
        "item",
        "labeler",
        "human label",
        "model label",
        "p(model)",
        "p(human)",
        "score",
        "others agreeing",
        "answered",
    ]
    return out + _table(head, rows)


def _answers(report: Report) -> str:
    a = report.relabel_answers
    out = "<h2>Relabel requests answered</h2>"
    if a.answered == 0:
        out += (
            '<p class="missing">No answers to this model\'s relabel requests in this window: a relabel tool names the '
            "request a label answers (<code>answers</code>, the request's <code>request_id</code>) to measure the "
            "queue here.</p>"
        )
    else:
        out += (
            f"<p>{a.answered:,} answers to disagreement requests: {pct(a.precision)} gave the model's label "
            f"(95% CI {interval(a.precision)}), the queue's precision as the second person sees it. These labels "
            "vote in their items' consensus above but are not counted as their labelers' labels: the model picked "
            "their items.</p>"
        )
        out += _figure(plots.answer_rates(a.per_labeler, a.precision), "answers siding with the model per labeler")
        head = ["answered", "gave the model's label", "gave the same label", "gave another", "changed", "95% CI"]
        for title, rows in (("questioned labeler", a.per_labeler), ("model's label", a.per_class)):
            cells = [
                [
                    escape(r.group or "(none)"),
                    f"{r.answered:,}",
                    f"{r.model:,}",
                    f"{r.kept:,}",
                    f"{r.other:,}",
                    pct(r.changed),
                    interval(r.changed),
                ]
                for r in rows
            ]
            out += _table([title, *head], cells)
    extra = []
    if a.audit_sample:
        extra.append(f"{a.audit_sample:,} answers to audit-sample requests (counted as labels above)")
    if a.other_models:
        extra.append(f"{a.other_models:,} answers to requests about other models' labels or requests not found")
    return out + (f'<p class="missing">Also in this window: {"; ".join(extra)}.</p>' if extra else "")


def _trends(report: Report) -> str:
    out = "<h2>Trends over the last nights</h2>"
    if not report.trends:
        return out + '<p class="missing">No records in the nights before this window either.</p>'
    out += (
        '<p class="method">Nights are compared on the share of labels unlike the model\'s label: it means the '
        "same every night, while the truth estimate depends on how many items several people labeled.</p>"
    )
    out += _figure(plots.trend_lines(report.trends), "disagreement with the model per night")
    rows = [
        [
            r.night.isoformat(),
            escape(f"{r.model_name} v{r.model_version}"),
            f"{r.records:,}",
            f"{r.model_disagreement.n:,}",
            pct(r.model_disagreement),
            interval(r.model_disagreement),
            f"{r.relabel_requests:,}",
        ]
        for r in report.trends
    ]
    head = ["night", "model", "records", "labels", "unlike the model", "95% CI", "relabel requests"]
    return out + _table(head, rows)


def _method(report: Report) -> str:
    c = report.consensus
    agreement = (
        "no item had two labels"
        if c.annotator_agreement is None
        else (f"P = {c.annotator_agreement:.3f} over {c.labeler_pairs:,} pairs")
    )
    return (
        "<h2>How these numbers are made</h2><div class='method'><p>A label <b>disagrees</b> when it differs from its "
        "truth estimate. For an item one person labeled, the truth estimate is the model's label. For an item "
        "several people labeled, labeler j's label is judged against the others and the model (never its own vote):"
        f" the class k maximising votes(k) + c·p_model(k), with c = {c.model_weight:.2f} from the labelers' mean "
        f"pairwise agreement ({agreement}), CROWDLAB's weighting with the model counted as one more labeler.</p>"
        "<p>A labeler's <b>estimated error rate</b> comes, where it shares enough items with other labelers, from "
        "the labels of the items it shares with them (Dawid–Skene: a confusion matrix per labeler and a true-class "
        "posterior per item, fitted by EM, so people who share the same confusions are not read as careful; above "
        "100 classes, the one-coin model fitted to the labelers' pairwise agreement; 95% interval from a bootstrap "
        "of the shared items). No model is involved, so it also sees the mistakes a labeler shares with "
        "the model. Where it shares too few but at least 20 of its labels are in the random audit sample and "
        "someone else answered their requests, it comes from those answers (their share of changed labels, with "
        "the model's chance that each of the labeler's labels is wrong as a predictor that narrows the interval "
        "without biasing the rate: prediction-powered inference; normal 95% interval; the answer is taken as "
        "the truth, so a reviewer's own mistakes read as the labeler's). "
        "Elsewhere, given the model card (<code>--model-repo</code>), it comes from the labeler's "
        "disagreement with the model, less the model's own mistakes as measured on clean held-out images (its "
        "confusion in the card; Dawid–Skene EM with the model as an annotator of known confusion; 95% interval "
        "from a bootstrap of both). That assumes the labeler and the model err independently given the true "
        "class, so a labeler who errs on the images the model finds hard, toward the model's own guess, reads "
        "low. Without a card it is the disagreement rate, which also counts the model's own mistakes.</p>"
        "<p>Disagreement intervals are 95% Wilson score intervals. A <b>relabel request</b> is the serving policy's own verdict "
        f"(confident disagreement), stored with each record. Classes from: {escape(report.class_source)}.</p></div>"
    )


def render_html(report: Report, thumbs: dict[str, str]) -> str:
    """The whole page. ``thumbs``: item_id -> data URI for the queue's images that were found."""
    body = "".join(
        [
            _header(report),
            _headline(report),
            _classes(report),
            _labelers(report),
            _queue(report, thumbs),
            _answers(report),
            _trends(report),
            _method(report),
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>labelaudit report {escape(report.window.label)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>"
    )
