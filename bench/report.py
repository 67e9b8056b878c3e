"""Does the nightly report point at the right labelers, and does it stay cheap on a big store?

    python -m bench.report --quick     # tiny data, 100,000-record scale store (minutes)
    python -m bench.report             # small data, 10,000 streamed images, a 1,000,000-record store

1. Quality. Task B's clean test images (never trained on) are labeled by the recipe's five simulated
   labelers (``training/datasets/labelers.py``: reliable, sloppy, confuser, instance, spammer) at the
   requested noise; ``--multi`` of the items get two more labels from two other labelers. Over
   ``--nights`` nights, every label goes through the real ``Auditor`` (task B trained from classifier A with
   ``--method``, by default ``auto`` as a user would, exported to ONNX, onnxruntime) into SQLite and
   PostgreSQL, and ``labelaudit report`` runs on the last night and on the whole span. A labeler is *truly noisy* when the simulation made it noisy (every kind but
   "reliable"). (Session 2 defined it as "true error rate above the pool's"; at noise 0.4 the confuser's true
   rate sits within a few points of the pool's and lands on either side by chance, so that definition
   judged the draw, not the labeler. It is kept as the column ``above_pool_rate``.) Measured: Spearman between the report's per-labeler disagreement rate and the true error
   rate, and whether the report's flagged set equals the truly noisy set. Side by side: cleanlab's
   ``get_label_quality_multiannotator`` annotator quality on the same labels and the same model
   probabilities (all items, and only the items with several labels), and the report on those
   multi-labeled items alone.
2. Scale. A synthetic store of ``--scale-records`` records (``--nights`` nights, 20% of items with three
   labels), in SQLite and PostgreSQL: the report's seconds and peak RSS (VmHWM), in a fresh process, for the
   last night and for the whole store, next to the naive baseline that fetches every record's columns
   into Python (what the report never does).

Needs the bench extra (cleanlab, AGPL-3.0: benchmarks only). Writes bench/results/report.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy.stats import spearmanr

from bench.common import RESULTS, SIZES, WORK, LoadSampler, cpu_name, git_commit, write_results

console = Console()
ROOT = Path(__file__).resolve().parents[1]
FIRST_NIGHT = date(2026, 11, 15)


# -- the model -------------------------------------------------------------------------------------


def prepare_model(
    size: str, seed: int, noise: float, stream_images: int, epochs: tuple[int, int], method: str
) -> tuple[Path, Path]:
    """Task B data (with ``stream_images`` clean test images) and task B trained from classifier A with
    ``method``, exported. The model decides how much of a labeler's errors it shares (a model that learned a
    labeler's habits hides them from the single-label estimate), so the report is measured with what users run."""
    from labelaudit.training.datasets import fashion_mnist
    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    per_task, val_size, _ = SIZES[size]
    data = WORK / f"report-{size}-seed{seed}-noise{noise}-test{stream_images}"
    repo = data / f"model_repository-{method}-epochs{epochs[1]}"  # a cached model is reused only as trained
    if (repo / "labelaudit" / "1" / "model.onnx").exists():
        return data, repo
    if not (data / "task_b.jsonl").exists():
        fashion_mnist.build(data, noise=noise, seed=seed, per_task=per_task, val_size=val_size, test_size=stream_images)
    a = WORK / f"runs/{size}-seed{seed}-a/checkpoint.pt"  # the other benchmarks' classifier A (same task A)
    if not a.exists():
        train(data / "task_a.jsonl", init=None, out=a.parent, cfg=TrainConfig(method="ce", epochs=epochs[0], seed=seed))
    b = train(
        data / "task_b.jsonl",
        init=a,
        out=WORK / f"runs/{data.name}-{method}-epochs{epochs[1]}",
        cfg=TrainConfig(method=method, epochs=epochs[1], seed=seed),
    )
    export_model(b.checkpoint, manifest=data / "task_b.jsonl", repo=repo, force=True)
    return data, repo


# -- the simulated stream ------------------------------------------------------------------------


@dataclass
class Stream:
    item_ids: list[str]
    images: list[Path]
    true: np.ndarray  # (N,) true class of each item
    labels: list[list[tuple[str, int]]]  # per item: (labeler_id, label) for each of its labelers
    night: np.ndarray  # (N,) night index
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # item_id -> (K,) the model's probabilities


def simulate_stream(data: Path, *, noise: float, seed: int, multi: float, nights: int) -> Stream:
    """The recipe's labelers on the test split: one label per item, two more on ``multi`` of the items."""
    from PIL import Image

    from labelaudit.training.datasets import labelers as lab
    from labelaudit.training.datasets.fashion_mnist import CLASSES, nearest_centroid_hardness

    rows = [json.loads(line) for line in (data / "task_b.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test"]
    k = len(CLASSES)
    true = np.array([CLASSES.index(r["true_label"]) for r in rows])
    pixels = np.stack([np.asarray(Image.open(data / r["image"])) for r in rows])
    hardness, confusable = nearest_centroid_hardness(pixels, true, k)
    rng = np.random.default_rng([seed, 7])
    first = lab.assign_labelers(len(rows), rng)
    severity = lab.solve_severity(noise, true, hardness, first, k)
    columns = [first, *lab.more_labelers(first, multi, rng)]
    labels: list[list[tuple[str, int]]] = [[] for _ in rows]
    for col in columns:
        has = np.flatnonzero(col >= 0)
        drawn = lab.simulate_labels(true[has], hardness[has], confusable[has], col[has], severity, k, rng)
        for i, y in zip(has, drawn, strict=True):
            labels[i].append((lab.POOL[col[i]].labeler_id, int(y)))
    return Stream(
        [r["item_id"] for r in rows],
        [data / r["image"] for r in rows],
        true,
        labels,
        rng.integers(0, nights, size=len(rows)),
    )


def true_error_rates(stream: Stream, nights: set[int], items: np.ndarray | None = None) -> dict[str, tuple[int, int]]:
    """labeler -> (wrong labels, labels) over the items of ``nights`` (and of ``items`` when given)."""
    out: dict[str, list[int]] = {}
    keep = np.isin(stream.night, list(nights)) if items is None else np.isin(stream.night, list(nights)) & items
    for i in np.flatnonzero(keep):
        for labeler, y in stream.labels[i]:
            c = out.setdefault(labeler, [0, 0])
            c[0] += int(y != stream.true[i])
            c[1] += 1
    return {a: (w, n) for a, (w, n) in out.items()}


def truly_noisy(errors: dict[str, tuple[int, int]]) -> list[str]:
    """The labelers the simulation made noisy: every kind but "reliable" (each errs at least three times as
    often as the reliable one at noise 0.2 and above: docs/data.md)."""
    from labelaudit.training.datasets.labelers import POOL

    kinds = {p.labeler_id: p.kind for p in POOL}
    return sorted(a for a in errors if kinds[a] != "reliable")


def above_pool_rate(errors: dict[str, tuple[int, int]]) -> list[str]:
    """The first definition (session 2): true error rate above the pool's (all labels in the scope). Kept as a
    column: it is not a property of the labeler but of the draw (the confuser's true rate sits within a
    few points of the pool's at noise 0.4, and falls on either side by chance)."""
    pool = sum(w for w, _ in errors.values()) / sum(n for _, n in errors.values())
    return sorted(a for a, (w, n) in errors.items() if w / n > pool)


# -- filling the stores through the real Auditor --------------------------------------------------


class Restamp:
    """The audit store, with each record's time moved to its simulated night (the Auditor stamps now)."""

    def __init__(self, stores, when: dict[str, datetime]):
        self.stores, self.when = stores, when

    def write(self, records, answers=()):
        records = [r.model_copy(update={"created_at": self.when[r.item_id]}) for r in records]
        new = [s.write(records, answers) for s in self.stores]
        return new[0]


async def audit_stream(stream: Stream, repo: Path, store_urls: list[str], classes: list[str]) -> int:
    from labelaudit.serving.core.audit import AuditItem, Auditor
    from labelaudit.serving.core.runtime import open_runtime
    from labelaudit.serving.core.store import open_store
    from labelaudit.serving.settings import Settings

    rng = np.random.default_rng(3)
    when = {
        item: datetime.combine(FIRST_NIGHT + timedelta(days=int(n)), datetime.min.time(), UTC)
        + timedelta(seconds=int(rng.integers(86_400)))
        for item, n in zip(stream.item_ids, stream.night, strict=True)
    }
    stores = [open_store(u) for u in store_urls]
    written = 0
    try:
        async with open_runtime(Settings(model_repo=repo, store_url=store_urls[0])) as rt:
            auditor = Auditor(rt.core, Restamp(stores, when))
            items = [
                AuditItem(item, labeler, classes[y], path.read_bytes())
                for item, path, ls in zip(stream.item_ids, stream.images, stream.labels, strict=True)
                for labeler, y in ls
            ]
            for start in range(0, len(items), 256):
                for record, _new in await auditor.audit(items[start : start + 256], source="kafka"):
                    stream.probs[record.item_id] = np.array(record.probabilities)
                    written += 1
    finally:
        for s in stores:
            s.close()
    return written


# -- measuring -------------------------------------------------------------------------------------


def report_json(store_url: str, window, out: Path, classes: list[str], repo: Path | None = None):
    """The report as ``labelaudit report --model-repo repo`` writes it (the model's confusion from its card)."""
    from labelaudit.serving.report.job import run_report

    t = time.perf_counter()
    written = run_report(store_url, window, out, classes=classes, class_source="the model card", model_repo=repo)
    return written.report, time.perf_counter() - t


def oracle_flagged(errors: dict[str, tuple[int, int]], alpha: float = 0.05) -> list[str]:
    """The report's step-down test run with Fisher exact tests on the TRUE error counts: what a perfect
    reference would flag."""
    from labelaudit.agreement import estimate
    from labelaudit.serving.report.build import step_down

    return sorted(step_down(errors, estimate([], 2), alpha).flagged)


def compare(rates: dict[str, float], errors: dict[str, tuple[int, int]], flagged: list[str] | None) -> dict:
    ids = sorted(errors)
    true = [errors[a][0] / errors[a][1] for a in ids]
    rho = float(spearmanr([rates[a] for a in ids], true).statistic)
    mae = float(np.mean([abs(rates[a] - t) for a, t in zip(ids, true, strict=True)]))
    noisy, oracle = truly_noisy(errors), oracle_flagged(errors)
    row = dict(
        labelers=len(ids),
        spearman_vs_true_error=round(rho, 4),
        mean_abs_error=round(mae, 4),
        truly_noisy=noisy,
        oracle_flagged=oracle,
        above_pool_rate=above_pool_rate(errors),
        per_labeler={
            a: {"true_error": round(t, 4), "estimate": round(rates[a], 4)} for a, t in zip(ids, true, strict=True)
        },
    )
    if flagged is not None:
        row |= dict(
            flagged=sorted(flagged),
            flagged_equals_truly_noisy=sorted(flagged) == noisy,
            flagged_equals_oracle=sorted(flagged) == oracle,
        )
    return row


def report_rates(report) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Per labeler: the report's estimated error rate, its disagreement rate, and the estimate's source."""
    rows = [x for x in report.labelers if x.labeler_id]
    return (
        {x.labeler_id: x.estimated_error.rate for x in rows},
        {x.labeler_id: x.disagreement.rate for x in rows},
        {x.labeler_id: x.estimated_error.source for x in rows},
    )


def labelaudit_row(report, errors: dict[str, tuple[int, int]]) -> dict:
    estimated, disagreement, source = report_rates(report)
    row = compare(estimated, errors, report.flag_test.flagged)
    ids = sorted(errors)
    rho = spearmanr([disagreement[a] for a in ids], [errors[a][0] / errors[a][1] for a in ids]).statistic
    for a in ids:
        row["per_labeler"][a] |= {"disagreement": round(disagreement[a], 4), "source": source[a]}
    return row | {"spearman_disagreement_vs_true_error": round(float(rho), 4)}


def cleanlab_rates(stream: Stream, keep: np.ndarray, classes: list[str]) -> dict[str, float]:
    """1 - cleanlab's annotator quality (so higher = worse, like an error rate) on the kept items."""
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    idx = np.flatnonzero(keep)
    ids = sorted({a for i in idx for a, _ in stream.labels[i]})
    table = np.full((len(idx), len(ids)), np.nan)
    for row, i in enumerate(idx):
        for a, y in stream.labels[i]:
            table[row, ids.index(a)] = y
    probs = np.stack([stream.probs[stream.item_ids[i]] for i in idx])
    probs = probs / probs.sum(1, keepdims=True)
    out = get_label_quality_multiannotator(pd.DataFrame(table, columns=ids), probs, verbose=False)
    quality = out["annotator_stats"]["annotator_quality"]
    return {a: 1.0 - float(quality[a]) for a in ids}


def measure_in_child(store_url: str, since: str, until: str, what: str, out: Path) -> dict:
    """Seconds and peak RSS of one report (or of the naive fetch-all) in a fresh Python process."""
    cmd = [sys.executable, "-m", "bench.report", "--child", what, store_url, since, until, str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (VmHWM). Not getrusage's ru_maxrss: Linux keeps that
    across fork and exec, so a child started from a big parent reports the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, store_url: str, since: str, until: str, out: str) -> None:
    from labelaudit.serving.core.store import open_store
    from labelaudit.serving.report.job import run_report, span_window

    t = time.perf_counter()
    marks: dict[str, float] = {}
    if what == "report":
        window = span_window(datetime.fromisoformat(since), datetime.fromisoformat(until))
        w = run_report(store_url, window, Path(out), step=lambda name: marks.setdefault(name, time.perf_counter()))
        rows = w.report.headline.records
    else:  # the naive way: every record's report columns in Python
        store = open_store(store_url)
        got = store.select(
            "SELECT item_id, labeler_id, human_label, predicted_label, label_probability,"
            " predicted_probability, score, disagrees, created_at FROM audit_records"
            " WHERE created_at >= ? AND created_at < ?",
            (since, until),
        )
        rows = len(got)
        store.close()
    seconds = time.perf_counter() - t
    sql = marks.get("thumbnails", t + seconds) - t
    rss = peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "sql_seconds": round(sql, 2),
                "peak_rss_mb": round(rss, 1),
                "window_records": rows,
            }
        )
    )


# -- the synthetic scale store -----------------------------------------------------------------------


def fill_synthetic(store_url: str, n: int, nights: int, classes: list[str], seed: int = 0) -> int:
    """``n`` records over ``nights`` nights: 50 labelers, 20% of items with three labels, a plausible model."""
    from labelaudit.schemas.audit import AuditRecord
    from labelaudit.serving.core.store import open_store

    rng = np.random.default_rng(seed)
    k, batch = len(classes), 2_000
    store = open_store(store_url)
    written = item = 0
    while written < n:
        m = min(batch, n - written)
        copies = np.where(rng.random(m) < 0.2, 3, 1)  # 20% of items carry three labels
        owner = np.repeat(np.arange(len(copies)), copies)[:m]  # (m,) item of each record
        position = np.arange(m) - np.searchsorted(owner, owner)  # 0, 1, 2 within an item
        true = rng.integers(0, k, size=len(copies))[owner]
        logits = rng.normal(0, 1, (m, k)) + 3.0 * np.eye(k)[true]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labeler = (rng.integers(0, 50, size=len(copies))[owner] + 17 * position) % 50  # distinct within an item
        human = np.where(rng.random(m) < 0.1 + 0.01 * (labeler % 10), rng.integers(0, k, size=m), true)
        pred = p.argmax(1)
        night = FIRST_NIGHT + timedelta(days=int(written * nights // n))
        base = datetime.combine(night, datetime.min.time(), UTC)
        records = [
            AuditRecord.model_construct(
                item_id=f"s-{item + owner[j]:08d}",
                labeler_id=f"labeler-{labeler[j]:02d}",
                human_label=classes[human[j]],
                predicted_label=classes[pred[j]],
                label_probability=float(p[j, human[j]]),
                predicted_probability=float(p[j, pred[j]]),
                score=float(max(0.0, p[j, pred[j]] - p[j, human[j]])),
                disagrees=bool(pred[j] != human[j] and p[j, pred[j]] > 0.5),
                policy="confident-joint-v1",
                probabilities=p[j].round(6).tolist(),
                model_name="labelaudit",
                model_version="1",
                source="kafka",
                topic="images",
                partition=0,
                offset=written + j,
                created_at=base + timedelta(seconds=int(rng.integers(86_400))),
            )
            for j in range(m)
        ]
        # Items split across nights would have their labels counted in two windows; rare at this size.
        store.write(records)
        written += m
        item += len(copies)
    store.close()
    return written


# -- PostgreSQL for the benchmark -----------------------------------------------------------------------


def start_postgres(where: Path) -> str:
    """A throwaway cluster in ``where`` (under /tmp: as root the server runs as the postgres user)."""
    from bench.stream import free_port, script

    script("scripts/postgres.sh", "start", str(where), str(free_port()))
    return script("scripts/postgres.sh", "url", str(where)).strip()


def fresh_database(base_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return base_url.rsplit("/", 1)[0] + f"/{name}"


# -- the run -------------------------------------------------------------------------------------------


def quality(args, pg_base: str, record) -> None:
    for seed in args.seeds:
        data, repo = prepare_model(
            args.size, seed, args.noise, args.stream_images, (args.epochs_a, args.epochs_b), args.method
        )
        for multi in args.multi:
            quality_run(args, pg_base, record, data, repo, seed, multi)


def quality_run(args, pg_base: str, record, data: Path, repo: Path, seed: int, share: float) -> None:
    """One simulated stream (``share`` of its items with three labels) through the Auditor, then the report."""
    from labelaudit.training.datasets.fashion_mnist import CLASSES

    classes = list(CLASSES)
    stream = simulate_stream(data, noise=args.noise, seed=seed, multi=share, nights=args.nights)
    work = WORK / f"report-quality-seed{seed}-multi{share}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    multi = np.array([len(ls) > 1 for ls in stream.labels])
    urls = {"sqlite": f"sqlite:///{work / 'audit.db'}", "postgres": fresh_database(pg_base, f"quality{seed}")}
    multi_url = f"sqlite:///{work / 'multi.db'}"
    audited = asyncio.run(audit_stream(stream, repo, list(urls.values()), classes))
    console.print(f"seed {seed}, multi {share}: {audited:,} labels audited into sqlite and postgres")
    _copy_multi(urls["sqlite"], multi_url, [i for i, m in zip(stream.item_ids, multi, strict=True) if m])
    scopes = report_scopes(args.nights)
    card = json.loads((repo / "labelaudit" / "model_card.json").read_text())
    common = dict(
        kind="quality",
        seed=seed,
        noise=args.noise,
        multi=share,
        model_method=card["method"],
        model_test_acc=card["metrics"].get("test_acc"),
    )
    for scope, (window, nights) in scopes.items():
        errors = true_error_rates(stream, nights)
        timed = {store: report_json(url, window, work / store, classes, repo) for store, url in urls.items()}
        same = _comparable(timed["sqlite"][0]) == _comparable(timed["postgres"][0])
        for store, (r, secs) in timed.items():
            record(
                **common,
                detector="labelaudit",
                data="all",
                scope=scope,
                store=store,
                records=r.headline.records,
                seconds=round(secs, 2),
                peak_rss_mb=None,
                same_report_sqlite_postgres=same,
                **labelaudit_row(r, errors),
            )
        if not multi.any():  # every item has one label: no agreement to use, no multi-annotator baseline
            continue
        for row in _multi_rows(stream, multi, nights, multi_url, window, work, classes, scope, common, repo):
            record(**row)


def report_scopes(nights: int) -> dict:
    """The windows a stream of ``nights`` is reported over: ``{name: (window, the nights in it)}``."""
    from labelaudit.serving.report.job import night_window, span_window

    start = datetime.combine(FIRST_NIGHT, datetime.min.time(), UTC)
    return {
        "last_night": (night_window(FIRST_NIGHT + timedelta(days=nights - 1)), {nights - 1}),
        "all_nights": (span_window(start, start + timedelta(days=nights)), set(range(nights))),
    }


def _multi_rows(stream, multi, nights, multi_url, window, work, classes, scope, common, repo) -> list[dict]:
    in_scope = np.isin(stream.night, list(nights))
    rows = []
    r, secs = report_json(multi_url, window, work / "multi", classes, repo)
    errors_m = true_error_rates(stream, nights, multi)
    rows.append(
        dict(
            **common,
            detector="labelaudit",
            data="multi_labeled_only",
            scope=scope,
            store="sqlite",
            records=r.headline.records,
            seconds=round(secs, 2),
            peak_rss_mb=None,
            **labelaudit_row(r, errors_m),
        )
    )
    for data, keep, errors in (
        ("all", in_scope, true_error_rates(stream, nights)),
        ("multi_labeled_only", in_scope & multi, errors_m),
    ):
        t = time.perf_counter()
        rates = cleanlab_rates(stream, keep, classes)
        rows.append(
            dict(
                **common,
                detector="cleanlab",
                data=data,
                scope=scope,
                store="in-memory",
                records=int(sum(len(stream.labels[i]) for i in np.flatnonzero(keep))),
                seconds=round(time.perf_counter() - t, 2),
                peak_rss_mb=None,
                **compare(rates, errors, None),
            )
        )
    return rows


def _copy_multi(src_url: str, dst_url: str, items: list[str]) -> None:
    """The records of the multi-labeled items alone, in a store of their own (the same verdicts)."""
    import sqlite3

    from labelaudit.serving.core.store import open_store

    open_store(dst_url).close()  # the schema
    with sqlite3.connect(dst_url.removeprefix("sqlite:///")) as dst:
        dst.execute("ATTACH DATABASE ? AS src", (src_url.removeprefix("sqlite:///"),))
        dst.execute("CREATE TEMP TABLE keep (item_id TEXT PRIMARY KEY)")
        dst.executemany("INSERT INTO keep VALUES (?)", [(i,) for i in items])
        dst.execute(
            "INSERT INTO audit_records SELECT * FROM src.audit_records WHERE item_id IN (SELECT item_id FROM keep)"
        )


def _comparable(report) -> dict:
    return report.model_dump(mode="json", exclude={"generated_at", "store"})


def answer_disagreements(store_url: str, share: float, seed: int = 0) -> int:
    """A reviewer answers ``share`` of the store's relabel requests with the model's label, each answer naming
    its request (an answer record beside the questioned one, and its ``relabel_answers`` row); how many."""
    from labelaudit.schemas.audit import AuditRecord, RelabelAnswer
    from labelaudit.serving.core.relabel import request_id
    from labelaudit.serving.core.store import COLUMNS, open_store

    rng = np.random.default_rng([seed, 11])
    store = open_store(store_url)
    questioned = store.select(f"SELECT {', '.join(COLUMNS)} FROM audit_records WHERE disagrees = 1 ORDER BY id")
    picked = [row for row in questioned if rng.random() < share]
    for start in range(0, len(picked), 2_000):
        records, answers = [], []
        for row in picked[start : start + 2_000]:
            r = dict(zip(AuditRecord.model_fields, row, strict=True))
            when = datetime.fromisoformat(r["created_at"]) + timedelta(seconds=1)
            reviewer = f"labeler-{(int(r['labeler_id'].rsplit('-', 1)[1]) + 1) % 50:02d}"
            asked = request_id(r["item_id"], r["labeler_id"], r["model_version"])
            records.append(
                AuditRecord.model_construct(
                    **r
                    | {
                        "labeler_id": reviewer,
                        "human_label": r["predicted_label"],
                        "label_probability": r["predicted_probability"],
                        "score": 0.0,
                        "disagrees": False,
                        "probabilities": json.loads(r["probabilities"]),
                        "created_at": when,
                    }
                )
            )
            answers.append(
                RelabelAnswer(
                    request_id=asked,
                    reason="disagreement",
                    item_id=r["item_id"],
                    labeler_id=reviewer,
                    label=r["predicted_label"],
                    created_at=when,
                )
            )
        store.write(records, answers)
    store.close()
    return len(picked)


def scale(args, pg_base: str, record) -> None:
    from labelaudit.training.datasets.fashion_mnist import CLASSES

    start = datetime.combine(FIRST_NIGHT, datetime.min.time(), UTC)
    end = start + timedelta(days=args.nights)
    last = end - timedelta(days=1)
    for store in ("sqlite", "postgres"):
        if store == "sqlite":
            path = WORK / "report-scale" / f"scale-{args.scale_records}.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        else:
            url = fresh_database(pg_base, "scale")
        t = time.perf_counter()
        n = fill_synthetic(url, args.scale_records, args.nights, list(CLASSES))
        console.print(f"{store}: {n:,} synthetic records written in {time.perf_counter() - t:.0f}s")
        answered = 0
        for modes in (("report", "fetch_all"), ("report",)):  # the second time with relabel answers in the store
            if answered == 0 and len(modes) == 1:
                t = time.perf_counter()
                answered = answer_disagreements(url, args.scale_answers)
                n += answered
                console.print(f"{store}: {answered:,} relabel answers written in {time.perf_counter() - t:.0f}s")
            for scope, since in (("last_night", last), ("all_nights", start)):
                for what in modes:
                    with LoadSampler() as load:  # other work on the machine slows both modes
                        m = measure_in_child(
                            url, since.isoformat(), end.isoformat(), what, WORK / "report-scale" / store
                        )
                    record(
                        kind="scale",
                        mode=what,
                        scope=scope,
                        store=store,
                        records=n,
                        relabel_answers=answered,
                        labelers=50,
                        spearman_vs_true_error=None,
                        flagged=None,
                        truly_noisy=None,
                        **m,
                        **load.summary(),
                    )


def kept_rows(name: str, *, skipped: set[str]) -> list[dict]:
    """A run that skips a part keeps that part's rows from the previous file (each row names its commit)."""
    path = RESULTS / f"{name}.json"
    if not skipped or not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r.get("kind") in skipped]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny data, 2,000 stream images, 100,000-record store")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument(
        "--multi", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5], help="shares of items with two more labels"
    )
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--stream-images", type=int, default=10_000)
    ap.add_argument("--epochs-a", type=int, default=8)
    ap.add_argument("--epochs-b", type=int, default=60, help="task B's schedule: issue 17's protocol's")
    ap.add_argument("--method", default="auto", help="task B's training method (auto: what `labelaudit train` picks)")
    ap.add_argument("--scale-records", type=int, default=1_000_000)
    ap.add_argument(
        "--scale-answers", type=float, default=0.5, help="share of the scale store's relabel requests answered"
    )
    ap.add_argument("--skip", choices=["quality", "scale"], nargs="*", default=[])
    ap.add_argument("--name", default="report")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.size, args.seeds, args.stream_images, args.epochs_a, args.epochs_b = "tiny", [0], 2_000, 3, 4
        args.scale_records = 100_000
    config = {k: v for k, v in vars(args).items() if k != "child"} | {
        "truly_noisy": "the labelers the simulation made noisy (every kind but reliable); session 2's definition "
        "(true rate above the pool's) is kept as the column above_pool_rate",
        "flag_test": "step-down: one-sided test vs the pooled rate of the labelers not yet flagged (agreement "
        "z-test where identified, else Fisher exact), Holm-Bonferroni per round, alpha 0.05",
    }
    device = f"2-core CPU ({cpu_name()}); SQLite {__import__('sqlite3').sqlite_version}, PostgreSQL (Debian)"
    rows = kept_rows(args.name, skipped=set(args.skip))

    def record(**row) -> None:
        rows.append(row | {"git_commit": git_commit()})
        write_results(args.name, config=config, rows=rows, device=device)
        console.print({k: v for k, v in row.items() if k != "per_labeler"})

    pg_dir = Path(tempfile.mkdtemp(prefix="labelaudit-bench-pg-"))
    pg_base = start_postgres(pg_dir)
    try:
        if "quality" not in args.skip:
            quality(args, pg_base, record)
        if "scale" not in args.skip:
            scale(args, pg_base, record)
    finally:
        from bench.stream import script

        script("scripts/postgres.sh", "stop", str(pg_dir))
        shutil.rmtree(pg_dir, ignore_errors=True)
    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
