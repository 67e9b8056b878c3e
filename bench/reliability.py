"""Reliability at size: what tests/stream and tests/serving drive in small, driven long and hard. Not a test:
it runs for minutes to hours and reports what it saw, stalls and losses included.

    python -m bench.reliability --quick                      # a few minutes: both parts, small sizes
    python -m bench.reliability --quick --only crash --store sqlite
    python -m bench.reliability                              # full size (about 25 minutes on 2 cores)

**crash** (``--only crash``): ``--messages`` (100,000; quick 5,000) produced to the images topic (4
partitions) at ``--rate`` messages/s while two ``labelaudit consume`` processes in one group audit them
(real processes, real broker from scripts/kafka.sh, the store from ``--store``: PostgreSQL from
scripts/postgres.sh, or SQLite). At random moments of the production window: ``--kills`` (20; quick 3)
``kill -9`` of a consumer, each followed at once by a restart; one broker restart (scripts/kafka.sh stop,
start); one PostgreSQL restart (scripts/postgres.sh stop, start; none with SQLite). ``--poison`` (1%) of the
messages are bad, every kind in ``POISON_KINDS`` in turn: the poison of tests/stream/test_consumer.py, the
bad-image corpus of tests/serving/test_http.py (text, truncated and corrupt PNGs, a pixel bomb, an empty
file), a message above ``max_message_bytes`` (``--large-mb``, a few copies only), ``image_uri`` at
``file:///dev/zero``, at a FIFO nobody writes, at a missing file, NUL characters in ``item_id`` and in
``labeler_id``. At the end (or when stalled):

- ``lost``: good messages whose verdict is not in the store; ``duplicated``: store rows beyond one per
  (item_id, labeler_id, model_version);
- ``dead_lettered`` (records on the DLQ topic) and ``dead_lettered_by_reason`` (header
  ``labelaudit.dlq.reason``); ``poison_dead_lettered``: poison messages (told apart by their key) on the
  DLQ; ``poison_by_kind``: per kind how many were sent, dead-lettered (with which reasons) and stored;
  ``good_dead_lettered``: good messages on the DLQ (should be 0);
- ``relabel_matches_store``: the request ids on the relabel topic equal the store's disagreements;
- ``stalled``: the group's committed offsets made no progress for ``--stall-seconds`` (120) while the
  lag was above 0 (or the run passed ``--max-seconds``): the harness stops waiting and records it, with
  ``stall_suspects``, the poison kinds in the uncommitted window of each lagging partition;
- ``seconds``: wall time from the first message produced to the end of the wait.

**soak** (``--only soak``): ``labelaudit serve`` (real uvicorn workers, ``--workers`` 2) under a steady
open-loop load of ``--soak-rate`` requests/s for ``--soak-seconds`` (600; quick 60) after a warm-up, 10% of
them bad (``BAD_REQUESTS``: garbage and truncated bodies, bad base64, wrong content type, oversize bodies
declared and streamed, unknown labels and NUL ids on /v1/audit, the bad-image corpus, clients that hang up
mid-body). ``errors_5xx``: good requests answered 500-599 or not answered (connection error, timeout),
warm-up included; ``p99_ms_first_minute`` / ``p99_ms_last_minute``: good requests' p99 in the first and in
the last window of ``min(60 s, seconds / 3)`` after the warm-up; ``rss_growth``: the mean RSS of the
gateway's worker processes (psutil, every second) in the last window over the first, minus 1.

Every wait is bounded and every process the harness starts is killed in a ``finally``. Consumers run with
an address-space cap (``--consumer-memory-mb``) so that a message pointing at /dev/zero cannot take the
machine's memory with it. Writes bench/results/reliability.json (reliability_quick.json with --quick); a
run of one part keeps the other part's rows (and, for crash, the other store's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.common import WORK, cpu_name, git_commit, kept_rows, write_results
from labelaudit.ports import free_port

console = Console()
ROOT = Path(__file__).resolve().parents[1]
DLQ_REASON = "labelaudit.dlq.reason"
BATCH = 256  # the consumer's default consume_batch_size
INFLIGHT = 3  # and consume_max_inflight_batches: the uncommitted window is at most BATCH * INFLIGHT per consumer

# Every kind of bad message, in the order they are cycled through; the reason the consumer is expected to
# give is for the reader only (``poison_by_kind`` records what it did give).
POISON_KINDS = {
    "not_json": "bad_json",
    "not_utf8": "bad_json",
    "wrong_schema": "invalid_message",
    "missing_image": "invalid_message",
    "extra_field": "invalid_message",
    "empty_value": "empty_message",
    "key_mismatch": "key_mismatch",
    "bad_base64": "bad_base64",
    "text_not_image": "not_an_image",
    "broken_gif": "not_an_image",
    "truncated_png": "corrupt_image",
    "corrupt_png": "corrupt_image",
    "pixel_bomb": "too_many_pixels",
    "unknown_label": "unknown_label",
    "too_large": "message_too_large",
    "uri_http": "unsupported_uri",
    "uri_missing": "image_unreadable",
    "uri_empty_file": "empty_image",
    "uri_dev_zero": "image_unreadable or image_too_large",
    "uri_fifo": "image_unreadable",
    "nul_item_id": "invalid_message",
    "nul_labeler_id": "invalid_message",
}
MAX_LARGE = 5  # copies of the several-MB message, whatever the size: the rest of the poison cycles the others


# -- small helpers ---------------------------------------------------------------------------------------


def run_script(*args: str, timeout: float = 180) -> str:
    """scripts/kafka.sh or scripts/postgres.sh, bounded in time."""
    out = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def build_model(work: Path) -> tuple[Path, Path]:
    """Task B at tiny size and a CE model exported from it: the same recipe as bench/stream.py (whose
    builder imports torch, so it is called only when the model is not there yet)."""
    if (work / "repo" / "labelaudit" / "1" / "model.onnx").exists():
        return work / "data", work / "repo"
    from bench.stream import build_model as stream_model

    return stream_model(work)


def uncommitted_changes() -> list[str]:
    """The paths under serving/ and labelaudit/ that differ from the commit: the code that ran is not
    exactly ``git_commit`` when others are editing the tree."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "serving", "labelaudit", "schemas"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def device() -> str:
    import onnxruntime

    return f"{os.cpu_count()}-core CPU ({cpu_name()}), onnxruntime {onnxruntime.__version__} CPU provider, Kafka 3.9.1"


def kill_tree(proc: subprocess.Popen, *, term_wait: float = 0) -> None:
    """End a process this harness started (its own session: the group holds its children), by its id."""
    if proc.poll() is not None:
        return
    try:
        if term_wait:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=term_wait)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


# -- the poison ------------------------------------------------------------------------------------------


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class PoisonMaker:
    """Builds each kind of bad message from a good image, and the files the URI kinds point at."""

    good: dict  # a good message as JSON fields
    folder: Path
    large_bytes: int
    _bomb: str = ""

    def __post_init__(self) -> None:
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        self.empty_file = self.folder / "empty.png"
        self.empty_file.write_bytes(b"")
        self.fifo = self.folder / "nobody-writes.fifo"
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.image = base64.b64decode(self.good["image_b64"])
        # tests/serving/test_http.py's pixel bomb: 20,000 x 20,000 one-bit pixels in a few kB of PNG
        self._bomb = base64.b64encode(_png(Image.new("1", (20_000, 20_000)))).decode()

    def make(self, kind: str, item_id: str) -> tuple[bytes, bytes | None]:
        """(key, value) of one bad message; the key names it (and is the item_id where there is one)."""
        img = self.image

        def body(**fields) -> bytes:
            out = {**self.good, "item_id": item_id, **fields}
            return json.dumps({k: v for k, v in out.items() if v is not None}).encode()

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        key = item_id.encode()
        match kind:
            case "not_json":
                return key, b"{not json"
            case "not_utf8":
                return key, b"\xff\xfe\x00garbage\x80"
            case "wrong_schema":
                return key, body(schema="labelaudit.image.v9")
            case "missing_image":
                return key, body(image_b64=None)
            case "extra_field":
                return key, body(colour="blue")
            case "empty_value":
                return key, None
            case "key_mismatch":
                return key, body(item_id=f"{item_id}-other")
            case "bad_base64":
                return key, body(image_b64="not*base64!")
            case "text_not_image":
                return key, body(image_b64=b64(b"hello, I am not an image"))
            case "broken_gif":
                return key, body(image_b64=b64(b"GIF89a broken"))
            case "truncated_png":
                return key, body(image_b64=b64(img[: len(img) // 2]))
            case "corrupt_png":
                return key, body(image_b64=b64(img[:100] + bytes(b ^ 0xFF for b in img[100:300]) + img[300:]))
            case "pixel_bomb":
                return key, body(image_b64=self._bomb)
            case "unknown_label":
                return key, body(label="unicorn")
            case "too_large":
                return key, body(image_b64="A" * self.large_bytes)
            case "uri_http":
                return key, body(image_b64=None, image_uri="http://127.0.0.1:9/x.png")
            case "uri_missing":
                return key, body(image_b64=None, image_uri=(self.folder / "does-not-exist.png").as_uri())
            case "uri_empty_file":
                return key, body(image_b64=None, image_uri=self.empty_file.as_uri())
            case "uri_dev_zero":
                return key, body(image_b64=None, image_uri="file:///dev/zero")
            case "uri_fifo":
                return key, body(image_b64=None, image_uri=self.fifo.as_uri())
            case "nul_item_id":
                nul = f"{item_id}\x00nul"
                return nul.encode(), body(item_id=nul)
            case "nul_labeler_id":
                return key, body(labeler_id="lab\x00eler")
        raise ValueError(kind)


def poison_plan(n: int, fraction: float, kinds: list[str], rng: random.Random) -> dict[int, str]:
    """Which message indices are poison, and of which kind: every kind in turn (the large one a few times)."""
    count = round(n * fraction)
    if not count or not kinds:
        return {}
    large = [k for k in kinds if k == "too_large"][: 1 if count else 0]
    others = [k for k in kinds if k != "too_large"] or kinds
    n_large = min(MAX_LARGE, math.ceil(count / len(kinds))) if large else 0
    sequence = ["too_large"] * n_large + [others[i % len(others)] for i in range(count - n_large)]
    rng.shuffle(sequence)
    return dict(zip(sorted(rng.sample(range(n), count)), sequence, strict=True))


# -- the crash run ---------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What the producer thread got acknowledged, by message index: (partition, offset)."""

    where: dict[int, tuple[int, int]] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    send_retries: int = 0


class Producer(threading.Thread):
    """Produces the stream at ``rate`` messages/s in one-second chunks; a chunk's failed sends (the broker
    restarting) are sent again until acknowledged, for at most ``give_up_s`` per chunk."""

    def __init__(
        self, bootstrap: str, topic: str, value_of, n: int, rate: float, stop: threading.Event, give_up_s: float = 180
    ):
        super().__init__(name="bench-producer", daemon=True)
        self.bootstrap, self.topic, self.value_of, self.n, self.rate = bootstrap, topic, value_of, n, rate
        self.stop, self.give_up_s, self.sent = stop, give_up_s, Sent()

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=20,
                retries=5,
                max_request_size=32 * 1024 * 1024,
                request_timeout_ms=30_000,
                client_id="bench-reliability",
            )
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on to report it
            self.sent.error = f"{type(exc).__name__}: {exc}"
            self.sent.done.set()
            return
        t0, chunk = time.monotonic(), max(1, int(self.rate))
        try:
            for start in range(0, self.n, chunk):
                if self.stop.is_set():
                    break
                pending = list(range(start, min(self.n, start + chunk)))
                deadline = time.monotonic() + self.give_up_s
                while pending and not self.stop.is_set() and time.monotonic() < deadline:
                    futures = []
                    for i in pending:
                        key, value = self.value_of(i)
                        futures.append((i, producer.send(self.topic, key=key, value=value)))
                    failed = []
                    for i, f in futures:
                        try:
                            md = f.get(timeout=max(1.0, deadline - time.monotonic()))
                            self.sent.where[i] = (md.partition, md.offset)
                        except Exception:  # noqa: BLE001 - any failure: send again
                            failed.append(i)
                    if failed:
                        self.sent.send_retries += 1
                        time.sleep(1.0)
                    pending = failed
                self.sent.failed.update(pending)
                wait = t0 + min(self.n, start + chunk) / self.rate - time.monotonic()
                if wait > 0:
                    self.stop.wait(wait)
        except Exception as exc:  # noqa: BLE001
            self.sent.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                producer.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
            self.sent.done.set()


class Offsets:
    """The group's committed offsets and the topic's end offsets, read with short timeouts; None while the
    broker does not answer (the clients are made again on the next call)."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self._admin = self._consumer = None

    def _clients(self):
        from kafka import KafkaAdminClient, KafkaConsumer

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=8000, client_id="bench-monitor"
            )
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                request_timeout_ms=8000,
                client_id="bench-monitor",
            )
        return self._admin, self._consumer

    def read(self) -> tuple[dict[int, int], dict[int, int]] | None:
        """({partition: committed}, {partition: end}) or None."""
        from kafka.structs import TopicPartition

        try:
            admin, consumer = self._clients()
            committed = {
                tp.partition: max(0, o.offset)
                for tp, o in admin.list_consumer_group_offsets(self.group).items()
                if tp.topic == self.topic
            }
            parts = consumer.partitions_for_topic(self.topic) or set()
            ends = consumer.end_offsets([TopicPartition(self.topic, p) for p in parts])
            return {p: committed.get(p, 0) for p in parts}, {tp.partition: o for tp, o in ends.items()}
        except Exception:  # noqa: BLE001 - broker away: try again with fresh clients
            self.close()
            return None

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            try:
                if client is not None:
                    client.close()
            except Exception:  # noqa: BLE001
                pass
        self._admin = self._consumer = None


def read_topic(bootstrap: str, topic: str, timeout: float = 180) -> tuple[list, bool]:
    """Every record on ``topic`` up to its current end (messages of several MB included); and whether the
    read reached the end before ``timeout``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=30_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        receive_message_max_bytes=80 * 1024 * 1024,
        client_id="bench-reader",
    )
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        if not tps:
            return [], True
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records, deadline = [], time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                return records, False
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records, True
    finally:
        consumer.close()


def store_rows(url: str) -> list[tuple]:
    sql = "SELECT item_id, labeler_id, model_version, disagrees FROM audit_records"
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url, connect_timeout=30) as conn:
        return conn.execute(sql).fetchall()


def consumer_limits(memory_mb: int):
    """preexec_fn: an address-space cap, so that reading /dev/zero ends in MemoryError, not in the OOM killer."""

    def apply() -> None:
        if memory_mb:
            cap = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


@dataclass
class CrashPlan:
    store: str
    messages: int
    rate: float
    kills: int
    poison: float
    kinds: list[str]
    stall_seconds: float
    max_seconds: float
    memory_mb: int
    large_mb: float
    seed: int
    consumers: int = 2
    partitions: int = 4


def crash_run(plan: CrashPlan, data: Path, repo: Path, work: Path, pg_dir: str | None, pg_url: str | None) -> dict:
    from labelaudit.produce import image_messages
    from labelaudit.serving.settings import Settings
    from labelaudit.serving.stream.topics import ensure_topics

    rng = random.Random(plan.seed)
    tag = f"rel-{plan.store}-{uuid.uuid4().hex[:6]}"
    topic, relabel_topic, dlq_topic, group = f"images-{tag}", f"relabel-{tag}", f"dlq-{tag}", f"group-{tag}"
    logs = work / "logs" / tag
    logs.mkdir(parents=True, exist_ok=True)

    base = [
        m.model_dump(mode="json", by_alias=True, exclude_none=True)
        for m in image_messages(data / "task_b.jsonl", split=None, by_uri=False, limit=None)
    ]
    for b in base:
        b.pop("sent_at", None)
    plan_poison = poison_plan(plan.messages, plan.poison, plan.kinds, rng)
    maker = PoisonMaker(base[0], work / "poison-files", int(plan.large_mb * 1024 * 1024))
    poison_key: dict[bytes, str] = {}  # key -> kind
    poison_item: dict[str, str] = {}  # item_id -> kind, for poison that reaches the store
    for i, kind in plan_poison.items():
        item_id = f"{tag}-p{i}-{kind}"
        key, _ = maker.make(kind, item_id)
        poison_key[key] = kind
        poison_item[key.decode("utf-8", "replace")] = kind
    poison_item.update({f"{tag}-p{i}-{kind}-other": kind for i, kind in plan_poison.items() if kind == "key_mismatch"})

    def good_item(i: int) -> tuple[str, str]:
        b = base[i % len(base)]
        return f"{tag}-g{i}", b.get("labeler_id", "")

    def value_of(i: int) -> tuple[bytes, bytes | None]:
        if i in plan_poison:
            return maker.make(plan_poison[i], f"{tag}-p{i}-{plan_poison[i]}")
        item_id = good_item(i)[0]
        return item_id.encode(), json.dumps({**base[i % len(base)], "item_id": item_id}).encode()

    # the store
    if plan.store == "sqlite":
        url = f"sqlite:///{work / f'{tag}.db'}"
    else:
        import psycopg

        db = tag.replace("-", "_")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db}")
        url = pg_url.rsplit("/", 1)[0] + f"/{db}"

    broker_dir = Path(tempfile.mkdtemp(prefix="bench-rel-kafka-"))
    port = free_port(span=2)
    bootstrap = f"127.0.0.1:{port}"
    env = dict(
        os.environ,
        LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        LABELAUDIT_KAFKA_TOPIC=topic,
        LABELAUDIT_KAFKA_RELABEL_TOPIC=relabel_topic,
        LABELAUDIT_KAFKA_DLQ_TOPIC=dlq_topic,
        LABELAUDIT_KAFKA_GROUP_ID=group,
        LABELAUDIT_MODEL_REPO=str(repo),
        LABELAUDIT_STORE_URL=url,
        LABELAUDIT_ORT_INTRA_OP_THREADS="1",
        LABELAUDIT_CONSUME_BATCH_SIZE=str(BATCH),
    )

    procs: list[subprocess.Popen | None] = [None] * plan.consumers
    started: list[subprocess.Popen] = []
    log_files: list = []
    events: list[dict] = []
    counts = Counter()

    def start_consumer(slot: int) -> None:
        log = open(logs / f"consumer-{slot}-{len(started)}.log", "w")  # noqa: SIM115 (closed in the finally)
        log_files.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelaudit", "consume"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logs,
            start_new_session=True,
            preexec_fn=consumer_limits(plan.memory_mb),
        )
        procs[slot] = proc
        started.append(proc)

    stop = threading.Event()
    producer: Producer | None = None
    offsets: Offsets | None = None
    row: dict = {"kind": "crash", "store": plan.store, "consumers": plan.consumers, "messages": plan.messages}
    t_start = time.monotonic()
    stalled, stall_reason, stall_suspects = False, None, []
    last_committed, last_progress = -1, time.monotonic()
    loads = []
    result_offsets: tuple[dict, dict] | None = None
    try:
        run_script("scripts/kafka.sh", "start", str(broker_dir), str(port))
        settings = Settings(kafka_bootstrap_servers=bootstrap, kafka_topic=topic)
        ensure_topics(settings, {topic: plan.partitions})
        for slot in range(plan.consumers):
            start_consumer(slot)
        production_s = plan.messages / plan.rate
        schedule = [(rng.uniform(0.05, 0.95) * production_s, "kill") for _ in range(plan.kills)]
        schedule.append((rng.uniform(0.3, 0.5) * production_s, "broker_restart"))
        if plan.store == "postgres":
            schedule.append((rng.uniform(0.6, 0.8) * production_s, "store_restart"))
        schedule.sort()
        producer = Producer(bootstrap, topic, value_of, plan.messages, plan.rate, stop)
        offsets = Offsets(bootstrap, topic, group)
        t_start = last_progress = time.monotonic()
        producer.start()
        columns = (
            TextColumn("[bold]crash[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"({plan.store})", total=plan.messages, note="")
            while True:
                now = time.monotonic() - t_start
                while schedule and schedule[0][0] <= now:
                    _, what = schedule.pop(0)
                    event = {"at_s": round(now, 1), "event": what}
                    if what == "kill":
                        slot = rng.randrange(plan.consumers)
                        victim = procs[slot]
                        if victim is not None and victim.poll() is None:
                            os.kill(victim.pid, signal.SIGKILL)
                            counts["kills"] += 1
                            try:
                                victim.wait(timeout=30)
                            except subprocess.TimeoutExpired:
                                event["not_reaped"] = victim.pid
                        start_consumer(slot)
                        event["consumer"] = slot
                    else:  # a restart that fails is recorded; the stall detection then says what it did
                        try:
                            if what == "broker_restart":
                                run_script("scripts/kafka.sh", "stop", str(broker_dir))
                                time.sleep(2)
                                run_script("scripts/kafka.sh", "start", str(broker_dir))
                            else:
                                run_script("scripts/postgres.sh", "stop", pg_dir, timeout=120)
                                time.sleep(2)
                                run_script("scripts/postgres.sh", "start", pg_dir, timeout=120)
                            counts[f"{what}s"] += 1
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            event["error"] = str(exc)[-500:]
                    event["took_s"] = round(time.monotonic() - t_start - now, 1)
                    events.append(event)
                for slot, proc in enumerate(procs):  # a consumer that exits by itself is a finding: restart it
                    if proc is not None and proc.poll() is not None and counts["unexpected_exits"] < 50:
                        counts["unexpected_exits"] += 1
                        events.append(
                            {
                                "at_s": round(now, 1),
                                "event": "consumer_exited",
                                "consumer": slot,
                                "returncode": proc.returncode,
                            }
                        )
                        start_consumer(slot)
                read = offsets.read()
                loads.append(os.getloadavg()[0])
                if read is not None:
                    result_offsets = read
                    committed, ends = sum(read[0].values()), sum(read[1].values())
                    if committed > last_committed:
                        last_committed, last_progress = committed, time.monotonic()
                    lag = ends - committed
                    progress.update(
                        task,
                        completed=min(committed, plan.messages),
                        note=f"lag {lag:,}, kills {counts['kills']}, events {len(events)}",
                    )
                    if producer.sent.done.is_set() and lag <= 0 and ends >= len(producer.sent.where):
                        break
                    if lag <= 0:
                        last_progress = time.monotonic()  # caught up with the producer: nothing to wait for
                if time.monotonic() - last_progress > plan.stall_seconds:
                    stalled, stall_reason = True, f"no committed progress for {plan.stall_seconds:.0f} s with lag > 0"
                    break
                if time.monotonic() - t_start > plan.max_seconds:
                    stalled, stall_reason = True, f"still not done after --max-seconds {plan.max_seconds:.0f}"
                    break
                time.sleep(1.0)
        seconds = time.monotonic() - t_start
        stop.set()
        producer.join(timeout=60)
        where = dict(producer.sent.where)  # a snapshot: a producer still waiting on a send may yet add to it
        if stalled and result_offsets:
            stall_suspects = suspects(result_offsets, where, plan_poison, plan.consumers)
            console.print(f"[red]stalled[/]: {stall_reason}; poison in the uncommitted windows: {stall_suspects}")
        for proc in procs:  # SIGTERM: finish, commit, leave; bounded
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    counts["unclean_stops"] += 1
                    kill_tree(proc)
        final = offsets.read() or result_offsets

        # -- what happened
        sent = producer.sent
        good_sent = [i for i in where if i not in plan_poison]
        poison_sent = [i for i in where if i in plan_poison]
        try:
            rows = store_rows(url)
            store_error = None
        except Exception as exc:  # noqa: BLE001 - the store may be what failed
            rows, store_error = [], f"{type(exc).__name__}: {exc}"
        triples = Counter((r[0], r[1], r[2]) for r in rows)
        stored_pairs = {(r[0], r[1]) for r in rows}
        lost = sum(1 for i in good_sent if good_item(i) not in stored_pairs)
        disagreements = {f"{r[0]}/{r[1]}/{r[2]}" for r in rows if r[3]}
        try:
            dead, dead_complete = read_topic(bootstrap, dlq_topic)
            relabels, relabel_complete = read_topic(bootstrap, relabel_topic)
        except Exception as exc:  # noqa: BLE001 - the broker may be what failed
            console.print(f"[red]could not read the output topics[/]: {exc}")
            dead, dead_complete, relabels, relabel_complete = [], False, [], False
        relabel_ids = {json.loads(r.value)["request_id"] for r in relabels}
        by_reason = Counter(dict(r.headers).get(DLQ_REASON, b"?").decode() for r in dead)
        good_keys = {good_item(i)[0].encode() for i in good_sent}
        per_kind: dict[str, dict] = {}
        for i in poison_sent:
            kind = plan_poison[i]
            per_kind.setdefault(
                kind, {"expected": POISON_KINDS[kind], "sent": 0, "dead_lettered": 0, "reasons": {}, "stored": 0}
            )["sent"] += 1
        dead_poison_keys = set()
        for r in dead:
            kind = poison_key.get(r.key)
            if kind is None:
                continue
            if r.key not in dead_poison_keys:
                per_kind[kind]["dead_lettered"] += 1
            dead_poison_keys.add(r.key)
            reason = dict(r.headers).get(DLQ_REASON, b"?").decode()
            per_kind[kind]["reasons"][reason] = per_kind[kind]["reasons"].get(reason, 0) + 1
        for item_id, *_ in rows:
            if (kind := poison_item.get(item_id)) is not None and kind in per_kind:
                per_kind[kind]["stored"] += 1
        row |= {
            "kills": counts["kills"],
            "broker_restarts": counts["broker_restarts"],
            "store_restarts": counts["store_restarts"],
            "lost": lost,
            "duplicated": sum(c - 1 for c in triples.values()),
            "good_sent": len(good_sent),
            "poison_sent": len(poison_sent),
            "poison_dead_lettered": len(dead_poison_keys),
            "dead_lettered": len(dead),
            "dead_lettered_by_reason": dict(sorted(by_reason.items())),
            "good_dead_lettered": len({r.key for r in dead if r.key in good_keys}),
            "relabel_matches_store": relabel_ids == disagreements and relabel_complete,
            "relabel_requests": len(relabels),
            "relabel_missing": len(disagreements - relabel_ids),
            "relabel_extra": len(relabel_ids - disagreements),
            "stalled": stalled,
            "stall_reason": stall_reason,
            "stall_suspects": stall_suspects,
            "seconds": round(seconds, 1),
            "store_rows": len(rows),
            "store_error": store_error,
            "committed": sum(final[0].values()) if final else None,
            "end_offset": sum(final[1].values()) if final else None,
            "unsent": plan.messages - len(where),
            "producer_error": sent.error,
            "producer_retries": sent.send_retries,
            "unexpected_exits": counts["unexpected_exits"],
            "unclean_stops": counts["unclean_stops"],
            "consumer_processes": len(started),
            "topics_read_completely": dead_complete and relabel_complete,
            "events": events,
            "poison_by_kind": dict(sorted(per_kind.items())),
            "consumer_errors": consumer_errors(logs),
            "rate": plan.rate,
            "load_avg_1m": load_avg(),
            "load_avg_1m_max": round(max(loads, default=0.0), 2),
        }
        return row
    finally:
        stop.set()
        for proc in started:
            kill_tree(proc)
        for log in log_files:
            log.close()
        if offsets is not None:
            offsets.close()
        try:
            run_script("scripts/kafka.sh", "stop", str(broker_dir))
        except Exception as exc:  # noqa: BLE001
            console.print(f"[red]could not stop the broker[/]: {exc}")
        import shutil

        shutil.rmtree(broker_dir, ignore_errors=True)
        console.print(f"consumer logs: {logs}")


def consumer_errors(logs: Path, top: int = 8) -> dict[str, int]:
    """The consumers' own ERROR lines (labelaudit's, not the Kafka client's), numbers blanked, most frequent
    first: why a run stalled, in the consumers' words."""
    import re

    found = Counter()
    for path in sorted(logs.glob("consumer-*.log")):
        lines = path.read_text(errors="replace").splitlines()
        messages = [line.split(": ", 1)[1] for line in lines if " ERROR labelaudit" in line]
        last = next((line for line in reversed(lines) if line.strip()), "")
        if re.match(r"[A-Za-z_.]+: ", last):  # the exception a consumer exited with
            messages.append(f"exited: {last}")
        for message in messages:
            found[re.sub(r"\d+(\.\d+)?", "N", message)[:200]] += 1
    return dict(found.most_common(top))


def suspects(
    read: tuple[dict, dict], where: dict[int, tuple[int, int]], plan_poison: dict[int, str], consumers: int
) -> list[str]:
    """The poison kinds sitting in each lagging partition's uncommitted window (from its committed offset,
    as far as a consumer may have polled ahead): a stalled batch holds one of them."""
    committed, ends = read
    window = BATCH * INFLIGHT * consumers
    found = Counter()
    for i, kind in plan_poison.items():
        if i not in where:
            continue
        partition, offset = where[i]
        if committed.get(partition, 0) < ends.get(partition, 0) and 0 <= offset - committed.get(partition, 0) < window:
            found[kind] += 1
    return sorted(found)


# -- the soak --------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    "garbage_json",
    "bad_base64",
    "wrong_content_type",
    "truncated_multipart",
    "no_boundary",
    "oversize_declared",
    "oversize_chunked",
    "unknown_label",
    "nul_item_id",
    "nul_labeler_id",
    "bad_image",
    "disconnect_mid_body",
]


def bad_image_corpus(good: bytes) -> dict[str, bytes]:
    """tests/serving/test_http.py's BAD_IMAGES."""
    from PIL import Image

    return {
        "empty": b"",
        "text": b"hello, I am not an image",
        "truncated": good[: len(good) // 2],
        "corrupt": good[:100] + bytes(b ^ 0xFF for b in good[100:300]) + good[300:],
        "bomb": _png(Image.new("1", (20_000, 20_000))),
    }


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "benchboundary") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename:
            out.write(b"Content-Type: image/png\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    t: float  # send time, seconds from the end of the warm-up (negative: warm-up)
    ms: float
    good: bool
    kind: str
    outcome: str  # the HTTP status, or the exception's name


class Load:
    """Request bodies and how to send each kind; one per soak."""

    def __init__(self, images: list[tuple[str, bytes]], classes: list[str], body_limit: int, seed: int):
        self.images, self.classes, self.body_limit = images, classes, body_limit
        self.corpus = bad_image_corpus(images[0][1])
        self.rng = random.Random(seed)
        self.item = 0

    def request(self, bad: str | None) -> tuple[str, str, dict]:
        """(kind, path, httpx keyword arguments) of the next request."""
        rng = self.rng
        label, image = self.images[rng.randrange(len(self.images))]
        self.item += 1
        audit = {
            "item_id": f"soak-{self.item}",
            "labeler_id": f"labeler-{self.item % 7}",
            "label": label,
            "image": base64.b64encode(image).decode(),
        }
        if bad is None:
            roll = rng.random()
            if roll < 0.7:
                content, ctype = multipart([("files", "x.png", image), ("top_k", None, b"3")])
                return "classify_multipart", "/v1/classify", {"content": content, "headers": {"content-type": ctype}}
            if roll < 0.8:
                body = {"images": [{"data": audit["image"], "id": "x"}], "top_k": 3}
                return "classify_json", "/v1/classify", {"json": body}
            return "audit_json", "/v1/audit", {"json": audit}
        match bad:
            case "garbage_json":
                return (
                    bad,
                    "/v1/classify",
                    {"content": rng.randbytes(300), "headers": {"content-type": "application/json"}},
                )
            case "bad_base64":
                return bad, "/v1/classify", {"json": {"images": [{"data": "!!not base64!!"}]}}
            case "wrong_content_type":
                return bad, "/v1/classify", {"content": image, "headers": {"content-type": "text/plain"}}
            case "truncated_multipart":
                content, ctype = multipart([("files", "x.png", image)])
                return (
                    bad,
                    "/v1/classify",
                    {"content": content[: len(content) // 2], "headers": {"content-type": ctype}},
                )
            case "no_boundary":
                return bad, "/v1/classify", {"content": b"--b\r\n", "headers": {"content-type": "multipart/form-data"}}
            case "oversize_declared":
                return (
                    bad,
                    "/v1/classify",
                    {"content": b"x" * (self.body_limit + 1), "headers": {"content-type": "application/json"}},
                )
            case "oversize_chunked":
                limit = self.body_limit

                async def chunks():
                    sent = 0
                    while sent <= limit:
                        yield b"y" * 65_536
                        sent += 65_536

                return bad, "/v1/classify", {"content": chunks(), "headers": {"content-type": "application/json"}}
            case "unknown_label":
                return bad, "/v1/audit", {"json": audit | {"label": "unicorn"}}
            case "nul_item_id":
                return bad, "/v1/audit", {"json": audit | {"item_id": f"soak-{self.item}\x00nul"}}
            case "nul_labeler_id":
                return bad, "/v1/audit", {"json": audit | {"labeler_id": "lab\x00eler"}}
            case "bad_image":
                name = rng.choice(sorted(self.corpus))
                content, ctype = multipart([("files", f"{name}.png", self.corpus[name])])
                return f"bad_image_{name}", "/v1/classify", {"content": content, "headers": {"content-type": ctype}}
        raise ValueError(bad)


async def hang_up_mid_body(port: int, image: bytes) -> str:
    """A client that declares a body, sends half of it and closes the connection."""
    content, ctype = multipart([("files", "x.png", image)])
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(content)}\r\n\r\n"
    ).encode()
    writer.write(head + content[: len(content) // 2])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, TimeoutError):
        pass
    return "hung_up"


def _proc_children(pid: int) -> list[int]:
    """Linux without psutil: every descendant of ``pid`` from /proc/PID/task/*/children."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in task.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_proc_children(kid)]
    return out


def _proc_rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def gateway_rss(proc) -> tuple[float, int]:
    """(MB, processes): the workers' resident memory summed (the process itself when it has no children).
    psutil when it is installed, /proc otherwise."""
    try:
        import psutil
    except ImportError:
        targets = _proc_children(proc.pid) or [proc.pid]
        return sum(_proc_rss(pid) for pid in targets) / 1_048_576, len(targets)
    try:
        parent = psutil.Process(proc.pid)
        children = parent.children(recursive=True)
        # uvicorn --workers N: a supervisor and N workers (and multiprocessing's resource tracker, tiny)
        targets = children or [parent]
        total = 0
        for p in targets:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 1_048_576, len(targets)
    except psutil.Error:
        return float("nan"), 0


async def soak_load(
    port: int,
    load: Load,
    proc,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    bad_fraction: float,
    concurrency: int,
    progress,
    task,
) -> tuple[list[Answer], list[tuple[float, float, int]]]:
    import httpx

    answers: list[Answer] = []
    rss: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30.0) as client:
        t0 = time.monotonic() + warmup  # the measured window starts after the warm-up
        start = time.monotonic()
        stop_rss = asyncio.Event()

        async def sample_rss() -> None:
            while not stop_rss.is_set():
                mb, n = gateway_rss(proc)
                rss.append((time.monotonic() - t0, mb, n))
                try:
                    await asyncio.wait_for(stop_rss.wait(), 1.0)
                except TimeoutError:
                    pass

        async def one(bad: str | None) -> None:
            async with gate:
                sent = time.monotonic()
                if bad == "disconnect_mid_body":
                    kind = bad
                    try:
                        outcome = await hang_up_mid_body(port, load.images[0][1])
                    except Exception as exc:  # noqa: BLE001
                        outcome = type(exc).__name__
                else:
                    kind, path, kwargs = load.request(bad)
                    try:
                        response = await client.post(path, **kwargs)
                        outcome = str(response.status_code)
                    except Exception as exc:  # noqa: BLE001 - connection error, timeout: recorded by name
                        outcome = type(exc).__name__
                answers.append(Answer(sent - t0, 1000 * (time.monotonic() - sent), bad is None, kind, outcome))
                progress.update(task, completed=min(seconds + warmup, time.monotonic() - start))

        sampler = asyncio.create_task(sample_rss())
        tasks, k = set(), 0
        rng = random.Random(7)
        total = int((seconds + warmup) * rate)
        while k < total:
            due = start + k / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            bad = rng.choice(BAD_REQUESTS) if rng.random() < bad_fraction else None
            t = asyncio.create_task(one(bad))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        for t in tasks:
            t.cancel()
        stop_rss.set()
        await sampler
    return answers, rss


def soak_run(args, data: Path, repo: Path, work: Path, store_url: str) -> dict:
    import httpx

    rows = [json.loads(line) for line in (data / "task_b.jsonl").read_text().splitlines()]
    images = [(r["label"], (data / r["image"]).read_bytes()) for r in rows if r["split"] == "test"][:200]
    classes = json.loads((repo / "labelaudit" / "1" / "model_card.json").read_text())["classes"]
    port = free_port()
    env = dict(
        os.environ,
        LABELAUDIT_MODEL_REPO=str(repo),
        LABELAUDIT_STORE_URL=store_url,
        LABELAUDIT_MAX_BODY_BYTES=str(args.soak_body_limit),
        LABELAUDIT_HTTP_ACCESS_LOG="false",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = work / "logs" / f"gateway-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelaudit", "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited ({proc.returncode}); see {log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready in 180 s; see {log_path}")
            time.sleep(0.5)
        load = Load(images, classes, args.soak_body_limit, args.seed)
        columns = (
            TextColumn("[bold]soak[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f} s"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"{args.soak_rate:.0f} req/s", total=args.soak_seconds + args.soak_warmup)
            answers, rss = asyncio.run(
                soak_load(
                    port,
                    load,
                    proc,
                    rate=args.soak_rate,
                    seconds=args.soak_seconds,
                    warmup=args.soak_warmup,
                    bad_fraction=args.bad_fraction,
                    concurrency=args.soak_concurrency,
                    progress=progress,
                    task=task,
                )
            )
        alive = proc.poll() is None
    finally:
        kill_tree(proc, term_wait=20)
        log.close()

    window = min(60.0, args.soak_seconds / 3)
    good = [a for a in answers if a.good]

    def failed(a: Answer) -> bool:
        return not a.outcome.isdigit() or 500 <= int(a.outcome) <= 599

    def p99(lo: float, hi: float) -> float | None:
        ms = [a.ms for a in good if lo <= a.t < hi and a.outcome == "200"]
        return round(float(np.percentile(ms, 99)), 1) if ms else None

    def rss_mean(lo: float, hi: float) -> float | None:
        mb = [m for t, m, _ in rss if lo <= t < hi and not math.isnan(m)]
        return round(float(np.mean(mb)), 1) if mb else None

    first, last = rss_mean(0, window), rss_mean(args.soak_seconds - window, args.soak_seconds + 1)
    measured = [a for a in good if 0 <= a.t and a.outcome == "200"]
    errors = Counter(f"{a.kind}: {a.outcome}" for a in good if failed(a))
    bad_by_kind: dict[str, Counter] = defaultdict(Counter)
    for a in answers:
        if not a.good:
            bad_by_kind[a.kind][a.outcome] += 1
    return {
        "kind": "soak",
        "store": "sqlite" if store_url.startswith("sqlite") else "postgres",
        "workers": args.workers,
        "seconds": args.soak_seconds,
        "warmup_s": args.soak_warmup,
        "window_s": window,
        "rate": args.soak_rate,
        "requests": len(answers),
        "good_requests": len(good),
        "bad_requests": len(answers) - len(good),
        "errors_5xx": sum(1 for a in good if failed(a)),
        "errors_by_kind": dict(sorted(errors.items())),
        "bad_5xx": sum(1 for a in answers if not a.good and a.outcome.isdigit() and 500 <= int(a.outcome) <= 599),
        "n_429": sum(1 for a in answers if a.outcome == "429"),
        "bad_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(bad_by_kind.items())},
        "p50_ms": round(float(np.percentile([a.ms for a in measured], 50)), 1) if measured else None,
        "p99_ms": round(float(np.percentile([a.ms for a in measured], 99)), 1) if measured else None,
        "p99_ms_first_minute": p99(0, window),
        "p99_ms_last_minute": p99(args.soak_seconds - window, args.soak_seconds + 1),
        "rss_mb_first_minute": first,
        "rss_mb_last_minute": last,
        "rss_growth": round(last / first - 1, 4) if first and last else None,
        "rss_processes": max((n for _, _, n in rss), default=0),
        "gateway_alive_at_end": alive,
        "load_avg_1m": load_avg(),
    }


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 cores")
    ap.add_argument("--only", choices=["crash", "soak"], help="run one part (the other's rows are kept)")
    ap.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--name", help="results file name (default reliability, or reliability_quick with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", help="a sentence for the docs' table (the conditions of the run)")
    crash = ap.add_argument_group("crash")
    crash.add_argument("--messages", type=int, help="messages produced (100,000; quick 5,000)")
    crash.add_argument("--rate", type=float, help="messages/s produced (250; quick 50)")
    crash.add_argument("--kills", type=int, help="kill -9 of a consumer, each followed by a restart (20; quick 3)")
    crash.add_argument("--poison", type=float, default=0.01, help="fraction of bad messages (0.01)")
    crash.add_argument("--poison-kinds", nargs="+", choices=sorted(POISON_KINDS), help="only these kinds")
    crash.add_argument(
        "--stall-seconds", type=float, default=120.0, help="no committed progress this long while lag > 0: stalled"
    )
    crash.add_argument("--max-seconds", type=float, help="give up waiting after this long (7200; quick 900)")
    crash.add_argument("--consumer-memory-mb", type=int, default=4096, help="address-space cap per consumer (0: none)")
    crash.add_argument("--large-mb", type=float, default=6.0, help="size of the message above max_message_bytes")
    soak = ap.add_argument_group("soak")
    soak.add_argument("--soak-seconds", type=float, help="measured load (600; quick 60)")
    soak.add_argument("--soak-warmup", type=float, help="load before the measured window (30; quick 10)")
    soak.add_argument("--soak-rate", type=float, default=50.0, help="requests/s, open loop (50)")
    soak.add_argument("--soak-concurrency", type=int, default=16, help="HTTP connections (16)")
    soak.add_argument("--bad-fraction", type=float, default=0.1)
    soak.add_argument(
        "--soak-body-limit",
        type=int,
        default=2_000_000,
        help="the gateway's LABELAUDIT_MAX_BODY_BYTES in the soak (oversize bodies go past it)",
    )
    soak.add_argument("--workers", type=int, default=2, help="gateway processes (2)")
    args = ap.parse_args()
    q = args.quick
    args.messages = args.messages or (5_000 if q else 100_000)
    args.rate = args.rate or (50.0 if q else 250.0)
    args.kills = args.kills if args.kills is not None else (3 if q else 20)
    args.max_seconds = args.max_seconds or (900.0 if q else 7200.0)
    args.soak_seconds = args.soak_seconds or (60.0 if q else 600.0)
    args.soak_warmup = args.soak_warmup if args.soak_warmup is not None else (10.0 if q else 30.0)
    name = args.name or ("reliability_quick" if q else "reliability")
    parts = [args.only] if args.only else ["crash", "soak"]

    work = WORK / "reliability"
    work.mkdir(parents=True, exist_ok=True)
    console.print("[bold]the model[/] (tiny task B, CE, exported; built once in bench/work/reliability)")
    data, repo = build_model(work)

    def redone(row: dict) -> bool:
        return row["kind"] in parts and (row["kind"] != "crash" or row.get("store") == args.store)

    rows, _ = kept_rows(name, redone)
    config = {
        "quick": q,
        "parts": parts,
        "store": args.store,
        "messages": args.messages,
        "rate": args.rate,
        "kills": args.kills,
        "poison": args.poison,
        "poison_kinds": args.poison_kinds or sorted(POISON_KINDS),
        "large_mb": args.large_mb,
        "stall_seconds": args.stall_seconds,
        "max_seconds": args.max_seconds,
        "consumer_memory_mb": args.consumer_memory_mb,
        "partitions": 4,
        "consumers": 2,
        "batch": BATCH,
        "soak_seconds": args.soak_seconds,
        "soak_warmup": args.soak_warmup,
        "soak_rate": args.soak_rate,
        "soak_concurrency": args.soak_concurrency,
        "bad_fraction": args.bad_fraction,
        "soak_body_limit": args.soak_body_limit,
        "workers": args.workers,
        "seed": args.seed,
        "kafka_python": __import__("kafka").__version__,
        "uncommitted_changes": uncommitted_changes(),
        **({"note": args.note} if args.note else {}),
        "rss_sampler": "psutil" if importlib.util.find_spec("psutil") else "/proc",
    }
    dev = device()

    pg_dir, pg_url = None, None
    try:
        if args.store == "postgres":
            pg_dir = tempfile.mkdtemp(prefix="bench-rel-pg-")
            run_script("scripts/postgres.sh", "start", pg_dir, str(free_port()))
            pg_url = run_script("scripts/postgres.sh", "url", pg_dir).strip()
        if "crash" in parts:
            kinds = args.poison_kinds or list(POISON_KINDS)
            plan = CrashPlan(
                store=args.store,
                messages=args.messages,
                rate=args.rate,
                kills=args.kills,
                poison=args.poison,
                kinds=kinds,
                stall_seconds=args.stall_seconds,
                max_seconds=args.max_seconds,
                memory_mb=args.consumer_memory_mb,
                large_mb=args.large_mb,
                seed=args.seed,
            )
            row = crash_run(plan, data, repo, work, pg_dir, pg_url)
            rows.append(row | {"git_commit": git_commit(), "uncommitted_changes": config["uncommitted_changes"]})
            write_results(name, config=config, rows=rows, device=dev)
            console.print(
                f"crash ({args.store}): lost {row['lost']}, duplicated {row['duplicated']}, kills {row['kills']}, "
                f"broker restarts {row['broker_restarts']}, store restarts {row['store_restarts']}, poison "
                f"{row['poison_dead_lettered']}/{row['poison_sent']} dead-lettered, stalled {row['stalled']}, "
                f"relabel topic matches the store: {row['relabel_matches_store']}, {row['seconds']:.0f} s"
            )
        if "soak" in parts:
            if pg_url:
                import psycopg

                db = f"soak_{uuid.uuid4().hex[:6]}"
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {db}")
                store_url = pg_url.rsplit("/", 1)[0] + f"/{db}"
            else:
                store_url = f"sqlite:///{work / f'soak-{uuid.uuid4().hex[:6]}.db'}"
            row = soak_run(args, data, repo, work, store_url)
            rows.append(row | {"git_commit": git_commit(), "uncommitted_changes": config["uncommitted_changes"]})
            write_results(name, config=config, rows=rows, device=dev)
            console.print(
                f"soak: {row['requests']:,} requests, errors_5xx {row['errors_5xx']}, p99 first/last window "
                f"{row['p99_ms_first_minute']}/{row['p99_ms_last_minute']} ms, rss_growth {row['rss_growth']}"
            )
    finally:
        if pg_dir:
            try:
                run_script("scripts/postgres.sh", "stop", pg_dir, timeout=120)
            except Exception as exc:  # noqa: BLE001
                console.print(f"[red]could not stop PostgreSQL[/]: {exc}")
            import shutil

            shutil.rmtree(pg_dir, ignore_errors=True)
    path = write_results(name, config=config, rows=rows, device=dev)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
