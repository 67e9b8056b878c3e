"""The nightly report's labeler error rates from items several labelers labeled: Dawid–Skene over the items'
label patterns (the report's source now, ``labelaudit.dawid_skene`` on ``aggregate.label_patterns``) against the
one-coin fit to the labelers' pair agreement (``labelaudit.agreement`` on ``aggregate.pair_agreement``, its
source before, forced here through the report's fallback), on the same store, and whom the report's flag names
with each. Writes bench/results/report_rates.json and the docs table.

    python -m bench.report_rates            # 3 seeds x 10%/25%/50% of items with three labels (minutes)

The labels are bench/report.py's simulated stream (the recipe's five labelers on task B's clean test images,
``--multi`` of the items with two more labels from two other labelers, three nights), written straight into a
SQLite store. No model is trained: neither estimator reads the model (its rates come from the labels of the
shared items alone), so each record's model label is set to the true class. Scored against each labeler's
realised error rate over the scope's items: mean absolute error and Spearman, for the last night and for all
three; and whether the flagged labelers are exactly the ones the simulation made noisy (every kind but
"reliable", as bench/report.py counts them). Every labeler here shares enough items for a rate from them, so
the flag tests those rates (its z-test) and the model label plays no part in it. bench/report.py measures the
whole report (the single-label runs, the flag beside cleanlab) with a trained model.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from rich.console import Console
from rich.progress import track
from scipy.stats import spearmanr

from bench.common import SIZES, WORK, LoadSampler, device_name, git_commit, write_results
from bench.report import FIRST_NIGHT, Stream, simulate_stream, true_error_rates, truly_noisy

console = Console()


def fill_store(url: str, stream: Stream, classes: list[str]) -> int:
    """Every label of the stream as an audit record on its night (the model label: the true class)."""
    from labelaudit.schemas.audit import AuditRecord
    from labelaudit.serving.core.store import open_store

    store = open_store(url)
    records = []
    for i, (item, labels) in enumerate(zip(stream.item_ids, stream.labels, strict=True)):
        night = datetime.combine(FIRST_NIGHT + timedelta(days=int(stream.night[i])), datetime.min.time(), UTC)
        true = classes[int(stream.true[i])]
        for j, (labeler, y) in enumerate(labels):
            records.append(
                AuditRecord.model_construct(
                    item_id=item,
                    labeler_id=labeler,
                    human_label=classes[y],
                    predicted_label=true,
                    label_probability=0.9 if classes[y] == true else 0.01,
                    predicted_probability=0.9,
                    score=0.0,
                    disagrees=classes[y] != true,
                    policy="confident-joint-v1",
                    probabilities=[0.9 if c == true else 0.1 / (len(classes) - 1) for c in classes],
                    model_name="labelaudit",
                    model_version="1",
                    source="kafka",
                    topic="images",
                    partition=0,
                    offset=len(records),
                    created_at=night + timedelta(hours=1, seconds=i % 3600, milliseconds=j),
                )
            )
    store.write(records)
    store.close()
    return len(records)


def estimates(url: str, window, classes: list[str]) -> dict[str, tuple[dict[str, float], list[str], float]]:
    """Each estimator's identified rates (labeler -> rate), the labelers the report flags with it, and the
    report's seconds: the report as it is (Dawid–Skene) and with its one-coin fallback forced (the report before)."""
    from labelaudit.serving.core.store import open_store
    from labelaudit.serving.report import build

    out = {}
    store = open_store(url)
    try:
        for estimator, bound in (("dawid_skene", build.DS_MAX_WORK), ("one_coin", -1)):
            shipped, build.DS_MAX_WORK = build.DS_MAX_WORK, bound
            try:
                started = time.perf_counter()
                report = build.build_report(
                    store, window=window, store_kind="sqlite", classes=classes, class_source="bench"
                )
                seconds = time.perf_counter() - started
            finally:
                build.DS_MAX_WORK = shipped
            rates = {
                r.labeler_id: r.estimated_error.rate for r in report.labelers if r.estimated_error.source == "agreement"
            }
            out[estimator] = (rates, report.flag_test.flagged, seconds)
    finally:
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--multi", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--stream-images", type=int, default=10_000)
    args = ap.parse_args()
    from labelaudit.serving.report.job import night_window, span_window
    from labelaudit.training.datasets import fashion_mnist

    classes = list(fashion_mnist.CLASSES)
    rows = []
    points = [(seed, share) for seed in args.seeds for share in args.multi]
    for seed, share in track(points, description="streams", console=console):
        per_task, val_size, _ = SIZES["small"]
        data = WORK / f"report-small-seed{seed}-noise{args.noise}-test{args.stream_images}"
        if not (data / "task_b.jsonl").exists():  # bench/report.py's data: the same labels
            fashion_mnist.build(
                data, noise=args.noise, seed=seed, per_task=per_task, val_size=val_size, test_size=args.stream_images
            )
        stream = simulate_stream(data, noise=args.noise, seed=seed, multi=share, nights=args.nights)
        work = WORK / f"report-rates-seed{seed}-multi{share}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        url = f"sqlite:///{work / 'audit.db'}"
        records = fill_store(url, stream, classes)
        start = datetime.combine(FIRST_NIGHT, datetime.min.time(), UTC)
        scopes = {
            "last_night": (night_window(FIRST_NIGHT + timedelta(days=args.nights - 1)), {args.nights - 1}),
            "all_nights": (span_window(start, start + timedelta(days=args.nights)), set(range(args.nights))),
        }
        for scope, (window, nights) in scopes.items():
            errors = true_error_rates(stream, nights)
            truth, noisy = {a: w / n for a, (w, n) in errors.items()}, truly_noisy(errors)
            with LoadSampler() as load:
                found = estimates(url, window, classes)
            for estimator, (rates, flagged, seconds) in found.items():
                ids = sorted(a for a in rates if a in truth)
                estimate, true = np.array([rates[a] for a in ids]), np.array([truth[a] for a in ids])
                row = {
                    "seed": seed,
                    "multi": share,
                    "scope": scope,
                    "estimator": estimator,
                    "labelers": len(ids),
                    "mean_abs_error": round(float(np.abs(estimate - true).mean()), 4) if ids else None,
                    "spearman_vs_true_error": round(float(spearmanr(estimate, true).statistic), 4)
                    if len(ids) > 2
                    else None,
                    "per_labeler": {a: {"true_error": round(truth[a], 4), "estimate": round(rates[a], 4)} for a in ids},
                    "flagged": sorted(flagged),
                    "truly_noisy": noisy,
                    "flagged_equals_truly_noisy": sorted(flagged) == noisy,
                    "records": records,
                    "seconds": round(seconds, 2),  # the whole report (every query and statistic)
                    **load.summary(),
                    "git_commit": git_commit(),
                }
                rows.append(row)
                console.print({k: row[k] for k in ("seed", "multi", "scope", "estimator", "mean_abs_error")})
        shutil.rmtree(work, ignore_errors=True)
    write_results("report_rates", config=vars(args), rows=rows, device=device_name())
    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
