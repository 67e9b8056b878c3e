"""The nightly report's labeler error rates with one label per item, before and after a reviewer answers the
random audit sample's requests: the model-deconvolved rate (the report's source without answers) against the
audit-sample estimate (the answers, with the model as predictor: ``labelaudit.audited``), and against the answers'
share of changed labels alone. Writes bench/results/report_audit.json and the docs table.

    python -m bench.report_audit        # 3 seeds x audit samples of 2%, 5%, 10% x reviewers erring 0% and 5%

The stream is bench/report.py's (the recipe's five labelers at 40% noise, one label per item, 10,000 items over
three nights) through the real Auditor with bench/report.py's model (task B trained with ``--method auto``, cached
under bench/work: this bench trains it only where that one has not). Then, for each audit rate, a reviewer
answers every request of the audit sample (the items ``relabel.in_audit_sample`` draws: the stream's own rule),
with the true class or, at the reviewer's error rate, another class at random; each answer is a label and a
``relabel_answers`` row, as the gateway stores them. Scored against each labeler's realised error rate in the
window: mean absolute error, Spearman, and how many true rates the 95% intervals hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from datetime import datetime, timedelta

import numpy as np
from rich.console import Console
from rich.progress import track

from bench.common import WORK, LoadSampler, cpu_name, git_commit, write_results
from bench.report import (
    Stream,
    audit_stream,
    compare,
    prepare_model,
    report_json,
    report_scopes,
    simulate_stream,
    true_error_rates,
)

console = Console()
REVIEWER = "qa-reviewer"


def answer_audit_sample(store_url: str, stream: Stream, rate: float, error: float, seed: int) -> dict[str, int]:
    """A reviewer answers the audit sample's requests (share ``rate`` of the items, drawn by id); per labeler,
    how many of its labels got an answer that differs from the label (and ``"answers"``: how many in all)."""
    from labelaudit.schemas.audit import AuditRecord, RelabelAnswer
    from labelaudit.serving.core.relabel import AUDIT_SAMPLE_PART, in_audit_sample, request_id
    from labelaudit.serving.core.store import COLUMNS, open_store
    from labelaudit.training.datasets.fashion_mnist import CLASSES

    rng = np.random.default_rng([seed, 13, int(rate * 1000), int(error * 1000)])
    truth = dict(zip(stream.item_ids, stream.true, strict=True))
    store = open_store(store_url)
    rows = store.select(f"SELECT {', '.join(COLUMNS)} FROM audit_records ORDER BY id")
    records, answers, counts = [], [], {"answers": 0}
    for row in rows:
        r = dict(zip(AuditRecord.model_fields, row, strict=True))
        if not in_audit_sample(r["item_id"], rate):
            continue
        true = int(truth[r["item_id"]])
        said = (true + int(rng.integers(1, len(CLASSES)))) % len(CLASSES) if rng.random() < error else true
        label, when = CLASSES[said], datetime.fromisoformat(r["created_at"]) + timedelta(seconds=1)
        probabilities = json.loads(r["probabilities"])
        records.append(
            AuditRecord.model_construct(
                **r
                | {
                    "labeler_id": REVIEWER,
                    "human_label": label,
                    "label_probability": probabilities[said],
                    "score": 0.0,
                    "disagrees": False,
                    "probabilities": probabilities,
                    "created_at": when,
                }
            )
        )
        answers.append(
            RelabelAnswer(
                request_id=request_id(r["item_id"], AUDIT_SAMPLE_PART, r["model_version"]),
                reason="audit_sample",
                item_id=r["item_id"],
                labeler_id=REVIEWER,
                label=label,
                created_at=when,
            )
        )
        counts["answers"] += 1
        counts[r["labeler_id"]] = counts.get(r["labeler_id"], 0) + int(label != r["human_label"])
    store.write(records, answers)
    store.close()
    return counts


def answers_alone(store_url: str, scope_nights: set[int], stream: Stream) -> tuple[dict[str, float], int]:
    """Per labeler: the share of its answered labels in the window's nights whose answer changed the label; and
    how many of the labelers' labels in the window have an answer."""
    import sqlite3

    night_of = {i: int(n) for i, n in zip(stream.item_ids, stream.night, strict=True)}
    with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT a.item_id, a.labeler_id, a.human_label, ra.label FROM audit_records a"
            " JOIN relabel_answers ra ON ra.item_id = a.item_id AND ra.labeler_id <> a.labeler_id"
        ).fetchall()
    out: dict[str, list[int]] = {}
    for item, labeler, human, answer in rows:
        if night_of[item] in scope_nights:
            c = out.setdefault(labeler, [0, 0])
            c[0] += int(human != answer)
            c[1] += 1
    return {a: k / n for a, (k, n) in out.items()}, sum(n for _, n in out.values())


def interval_holds(report, errors: dict[str, tuple[int, int]]) -> int:
    rows = {x.labeler_id: x.estimated_error for x in report.labelers}
    return sum(rows[a].low <= w / n <= rows[a].high for a, (w, n) in errors.items())


def run_seed(args, seed: int, record) -> None:
    from labelaudit.training.datasets.fashion_mnist import CLASSES

    classes = list(CLASSES)
    data, repo = prepare_model(
        args.size, seed, args.noise, args.stream_images, (args.epochs_a, args.epochs_b), args.method
    )
    stream = simulate_stream(data, noise=args.noise, seed=seed, multi=0.0, nights=args.nights)
    work = WORK / f"report-audit-{data.name}-{repo.name}"  # the stream's data and the model that audited it
    base = work / "base.db"
    if not base.exists():  # the Auditor's verdicts depend only on the model and the stream: kept between runs
        work.mkdir(parents=True, exist_ok=True)
        partial = work / "partial.db"
        partial.unlink(missing_ok=True)
        audited = asyncio.run(audit_stream(stream, repo, [f"sqlite:///{partial}"], classes))
        partial.rename(base)
        console.print(f"seed {seed}: {audited:,} labels audited")
    scopes = report_scopes(args.nights)
    card = json.loads((repo / "labelaudit" / "model_card.json").read_text())
    common = dict(kind="audit", seed=seed, noise=args.noise, model_test_acc=card["metrics"].get("test_acc"))
    for scope, (window, nights) in scopes.items():
        errors = true_error_rates(stream, nights)
        report, _ = report_json(f"sqlite:///{base}", window, work / "out-base", classes, repo)
        record(
            **common,
            scope=scope,
            audit_rate=0.0,
            reviewer_error=None,
            estimator="model",
            answers=0,
            intervals_hold=interval_holds(report, errors),
            **_scored(report, errors),
        )
    for rate in args.rates:
        for error in args.reviewer_errors:
            url = f"sqlite:///{work / 'answered.db'}"
            shutil.copyfile(base, work / "answered.db")
            answer_audit_sample(url, stream, rate, error, seed)
            for scope, (window, nights) in scopes.items():
                errors = true_error_rates(stream, nights)
                report, secs = report_json(url, window, work / "out-answered", classes, repo)
                alone, answered = answers_alone(url, nights, stream)
                point = dict(**common, scope=scope, audit_rate=rate, reviewer_error=error, answers=answered)
                record(
                    **point,
                    estimator="audit",
                    intervals_hold=interval_holds(report, errors),
                    report_seconds=round(secs, 2),
                    **_scored(report, errors),
                )
                if errors.keys() <= alone.keys():  # every labeler has an answer to read
                    record(**point, estimator="answers_alone", intervals_hold=None, **compare(alone, errors, None))


def _scored(report, errors: dict[str, tuple[int, int]]) -> dict:
    rows = {x.labeler_id: x.estimated_error for x in report.labelers}
    row = compare({a: rows[a].rate for a in errors}, errors, report.flag_test.flagged)
    for a in errors:
        row["per_labeler"][a] |= {"source": rows[a].source, "low": rows[a].low, "high": rows[a].high}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny data, 2,000 stream images, one seed")
    ap.add_argument("--size", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--stream-images", type=int, default=10_000)
    ap.add_argument("--epochs-a", type=int, default=8)
    ap.add_argument("--epochs-b", type=int, default=60)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="audit sample shares")
    ap.add_argument("--reviewer-errors", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--name", default="report_audit")
    args = ap.parse_args()
    if args.quick:
        args.size, args.seeds, args.stream_images, args.epochs_a, args.epochs_b = "tiny", [0], 2_000, 3, 4
        args.name = "report_audit_quick" if args.name == "report_audit" else args.name
    config = vars(args) | {"reviewer": "answers every audit-sample request; wrong answers uniform over the others"}
    device = f"2-core CPU ({cpu_name()}); SQLite {__import__('sqlite3').sqlite_version}"
    rows: list[dict] = []
    load = LoadSampler()  # each row: the load so far (its mean and peak) and now

    def record(**row) -> None:
        rows.append(row | {"git_commit": git_commit(), **load.summary()})
        write_results(args.name, config=config, rows=rows, device=device)

    with load:
        for seed in track(args.seeds, description="seeds", console=console):
            run_seed(args, seed, record)
    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
