"""How fast does the stream audit, end to end, next to the model alone? Topic -> consumer -> store.

    python -m bench.stream --quick
    python -m bench.stream              # 10,000 messages per e2e mode, a 100,000-message backlog drained

Modes, side by side in one run, on the same exported model and the same real task-B images:

- ``model_only``: the consumer's own model work without Kafka and store: decode + preprocess +
  onnxruntime in batches of ``consume_batch_size`` through the same InferenceCore, pipelined the way the
  consumer pipelines them (``model_only_tensors``: onnxruntime alone on ready tensors).
- ``e2e_1_consumer`` / ``e2e_2_consumers``: a backlog on the images topic (4 partitions), then
  ``labelaudit consume`` processes (real processes, real broker, SQLite store unless the row says
  ``postgres``); images/s is the slope of the store's record count between 10% and 90% of the
  messages (so process start and group join are left out; ``seconds`` has the whole wall time).
- ``drain_100k``: a 100,000-message backlog, one consumer: the wall time to drain it, and the consumer's
  own lag metric (``labelaudit_consumer_lag`` scraped from its /metrics) sampled along the way.

Writes bench/results/stream.json. The broker (scripts/kafka.sh) and the consumer share the machine's
cores with the load generator and the store: on a 2-core machine every mode is CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.common import WORK, cpu_name, write_results
from labelaudit.ports import free_port
from labelaudit.serving.settings import Settings

console = Console()
ROOT = Path(__file__).resolve().parents[1]
BATCH = 256  # the consumer's default consume_batch_size


def script(*args: str) -> str:
    return subprocess.run(["bash", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def build_model(work: Path) -> tuple[Path, Path]:
    """Task B data (tiny size; the network is the same at every size) and a CE model exported from it."""
    from labelaudit.training.datasets import fashion_mnist
    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    data, repo = work / "data", work / "repo"
    if not (repo / "labelaudit" / "1" / "model.onnx").exists():
        shutil.rmtree(work, ignore_errors=True)
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=1_500, val_size=300, test_size=500)
        result = train(data / "task_b.jsonl", init=None, out=work / "runs", cfg=TrainConfig(method="ce", epochs=2))
        export_model(result.checkpoint, manifest=data / "task_b.jsonl", repo=repo, parity_images=1000)
    return data, repo


def messages(data: Path, n: int, tag: str):
    from labelaudit.produce import image_messages

    base = list(image_messages(data / "task_b.jsonl", split=None, by_uri=False, limit=None))
    return [base[i % len(base)].model_copy(update={"item_id": f"{tag}-{i}"}) for i in range(n)]


async def model_only(repo: Path, images: list[bytes], in_flight: int = 3) -> list[dict]:
    """The consumer's model work without Kafka and store: batches of ``BATCH`` through the same
    InferenceCore and backend, ``in_flight`` at a time through the same stage gates (one batch decodes
    while the previous one is in the model), exactly as the consumer runs them."""
    from labelaudit.serving.core.audit import Stages
    from labelaudit.serving.core.runtime import open_runtime

    settings = Settings(model_repo=repo, store_url=f"sqlite:///{tempfile.mkdtemp()}/unused.db")
    rows = []
    async with open_runtime(settings) as rt:
        stages, gate = Stages.one_at_a_time(), asyncio.Semaphore(in_flight)

        async def one(batch: list[bytes]) -> None:
            async with gate:
                async with stages.decode:
                    inputs = await rt.core.inputs_each(batch)
                async with stages.infer:
                    await rt.core.infer(np.stack(inputs))

        await one(images[:BATCH])  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(images[i : i + BATCH]) for i in range(0, len(images), BATCH)))
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "mode": "model_only",
                "images_per_s": len(images) / seconds,
                "seconds": seconds,
                "load_avg_1m": os.getloadavg()[0],
            }
        )
        tensors = await rt.core.preprocess_all(images)
        t0 = time.perf_counter()
        for i in range(0, len(tensors), BATCH):
            await rt.backend.infer(tensors[i : i + BATCH])
        seconds = time.perf_counter() - t0
        rows.append({"mode": "model_only_tensors", "images_per_s": len(images) / seconds, "seconds": seconds})
    for r in rows:
        r |= {"messages": len(images), "audit_records": 0, "lost": 0, "duplicated": 0, "store": None}
    return rows


def store_counts(url: str) -> tuple[int, int]:
    sql = "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM audit_records"
    try:
        if url.startswith("sqlite:///"):
            import sqlite3

            with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as conn:
                return conn.execute(sql).fetchone()
        import psycopg

        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchone()
    except Exception:  # the consumer has not created the table yet
        return 0, 0


def scrape_lag(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("labelaudit_consumer_lag{")
    ]
    return sum(values) if values else None


def run_consumers(env: dict, n: int, consumers: int, url: str, work: Path, sample_lag: bool) -> dict:
    """Start ``consumers`` processes on a ready backlog of ``n``; sample the store until all n are in."""
    ports = [free_port() for _ in range(consumers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "labelaudit", "consume", "--metrics-port", str(port), "--stop-when-idle", "10"],
            env=env,
            stdout=open(work / f"consumer-{port}.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for port in ports
    ]
    start, samples, lag = time.monotonic(), [], []
    with console.status(f"{consumers} consumer(s) auditing {n:,} messages") as status:
        while True:
            total, distinct = store_counts(url)
            now = time.monotonic() - start
            samples.append((now, distinct))
            if sample_lag and (value := scrape_lag(ports[0])) is not None:
                lag.append((round(now, 1), value))
            status.update(f"{consumers} consumer(s): {distinct:,}/{n:,} audited")
            if distinct >= n or all(p.poll() is not None for p in procs) or now > 3600:
                break
            time.sleep(0.5)
    wall = time.monotonic() - start
    for p in procs:
        p.terminate()
        p.wait(timeout=120)
    total, distinct = store_counts(url)
    t, c = np.array([s[0] for s in samples]), np.array([s[1] for s in samples])
    lo, hi = np.searchsorted(c, 0.1 * n), np.searchsorted(c, 0.9 * n)
    rate = (c[hi] - c[lo]) / (t[hi] - t[lo]) if hi < len(c) and t[hi] > t[lo] else float("nan")
    row = {
        "images_per_s": float(rate),
        "seconds": wall,
        "messages": n,
        "audit_records": int(total),
        "lost": n - int(distinct),
        "duplicated": int(total) - int(distinct),
    }
    if sample_lag:
        step = max(1, len(lag) // 30)
        row["lag_samples"] = lag[::step] + ([lag[-1]] if lag and lag[-1] not in lag[::step] else [])
        row["max_lag"] = max((v for _, v in lag), default=None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages per e2e mode, a 10,000 backlog")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL row")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.backlog = 2_000, 10_000

    from labelaudit.produce import produce

    work = WORK / "stream"
    work.mkdir(parents=True, exist_ok=True)
    console.print("[bold]building the model[/] (tiny task B, CE, exported)")
    data, repo = build_model(work)
    import onnxruntime

    device = (
        f"{os.cpu_count()}-core CPU ({cpu_name()}), onnxruntime {onnxruntime.__version__} CPU provider, Kafka 3.9.1"
    )
    config = {
        "quick": args.quick,
        "ort_allow_spinning": Settings().ort_allow_spinning,
        "messages": args.messages,
        "backlog": args.backlog,
        "batch": BATCH,
        "partitions": 4,
        "kafka_python": __import__("kafka").__version__,
    }
    rows: list[dict] = []

    images = [base64.b64decode(m.image_b64) for m in messages(data, min(args.messages, 5_000), "m")]
    rows += asyncio.run(model_only(repo, images))
    console.print(f"model only: {rows[0]['images_per_s']:.0f} images/s (tensors: {rows[1]['images_per_s']:.0f})")
    write_results("stream", config=config, rows=rows, device=device)

    broker_dir, pg_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-")), tempfile.mkdtemp(prefix="bench-pg-")
    port = free_port(span=2)
    script("scripts/kafka.sh", "start", str(broker_dir), str(port))
    pg_url = None
    try:
        if not args.no_postgres:
            script("scripts/postgres.sh", "start", pg_dir, str(free_port()))
            pg_url = script("scripts/postgres.sh", "url", pg_dir).strip()
        plan = [("e2e_1_consumer", 1, args.messages, "sqlite"), ("e2e_2_consumers", 2, args.messages, "sqlite")]
        if pg_url:
            plan.append(("e2e_1_consumer", 1, args.messages, "postgres"))
        plan.append(
            ("drain_100k" if args.backlog == 100_000 else f"drain_{args.backlog // 1000}k", 1, args.backlog, "sqlite")
        )
        for k, (mode, consumers, n, store) in enumerate(plan):
            tag = f"{mode}-{store}-{k}"
            if store == "sqlite":
                url = f"sqlite:///{work / f'{tag}.db'}"
                Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
            else:
                import psycopg

                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS b{k}")
                    conn.execute(f"CREATE DATABASE b{k}")
                url = pg_url.rsplit("/", 1)[0] + f"/b{k}"
            settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_topic=f"images-{tag}")
            t0 = time.monotonic()
            produce(settings, messages(data, n, tag), partitions=4)
            console.print(f"{mode} ({store}): produced {n:,} in {time.monotonic() - t0:.1f}s")
            env = dict(
                os.environ,
                LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
                LABELAUDIT_KAFKA_TOPIC=f"images-{tag}",
                LABELAUDIT_KAFKA_GROUP_ID=f"bench-{tag}",
                LABELAUDIT_MODEL_REPO=str(repo),
                LABELAUDIT_STORE_URL=url,
                LABELAUDIT_CONSUME_BATCH_SIZE=str(BATCH),
            )
            row = {"mode": mode, "store": store, "consumers": consumers, "load_avg_1m": os.getloadavg()[0]}
            row |= run_consumers(env, n, consumers, url, work, sample_lag=mode.startswith("drain"))
            rows.append(row)
            console.print(
                f"{mode} ({store}): {row['images_per_s']:.0f} images/s, {row['seconds']:.1f}s wall, "
                f"lost {row['lost']}, duplicated {row['duplicated']}"
            )
            write_results("stream", config=config, rows=rows, device=device)
    finally:
        script("scripts/kafka.sh", "stop", str(broker_dir))
        if pg_url:
            script("scripts/postgres.sh", "stop", pg_dir)
        shutil.rmtree(broker_dir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_model_only"] = round(r["images_per_s"] / base, 3)
    path = write_results("stream", config=config, rows=rows, device=device)
    console.print(f"wrote {path} ({datetime.now():%H:%M})")


if __name__ == "__main__":
    main()
