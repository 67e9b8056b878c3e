"""Helpers for the stream tests: the broker and PostgreSQL scripts, the consumer as a process, and
reading back what it did (store rows, topics, the group's committed offsets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> str:
    out = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


@dataclass
class Broker:
    dir: Path
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        run_script("scripts/kafka.sh", "start", str(self.dir), str(self.port))

    def stop(self) -> None:
        run_script("scripts/kafka.sh", "stop", str(self.dir))


def store_query(url: str, sql: str) -> list[tuple]:
    """Read the audit store behind ``url`` directly (SQL that both dialects accept)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


@dataclass
class Stream:
    """One test's topics and group on the shared broker, and the consumer processes it starts."""

    broker: Broker
    model_repo: Path
    store_url: str
    log_dir: Path
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"images-{self.name}"

    @property
    def relabel_topic(self) -> str:
        return f"relabel-{self.name}"

    @property
    def dlq_topic(self) -> str:
        return f"dlq-{self.name}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap,
            LABELAUDIT_KAFKA_TOPIC=self.topic,
            LABELAUDIT_KAFKA_RELABEL_TOPIC=self.relabel_topic,
            LABELAUDIT_KAFKA_DLQ_TOPIC=self.dlq_topic,
            LABELAUDIT_KAFKA_GROUP_ID=f"group-{self.name}",
            LABELAUDIT_MODEL_REPO=str(self.model_repo),
            LABELAUDIT_STORE_URL=self.store_url,
            LABELAUDIT_ORT_INTRA_OP_THREADS="1",
            **extra,
        )
        return env

    def settings(self, **extra):
        from labelaudit.serving.settings import Settings

        return Settings(
            kafka_bootstrap_servers=self.broker.bootstrap,
            kafka_topic=self.topic,
            kafka_relabel_topic=self.relabel_topic,
            kafka_dlq_topic=self.dlq_topic,
            **extra,
        )

    def start_consumer(self, *args: str, **env: str) -> subprocess.Popen:
        log = open(self.log_dir / f"consumer-{len(self.procs)}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelaudit", "consume", *args],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
        )
        self.procs.append(proc)
        return proc

    def consumer_log(self, index: int) -> str:
        return (self.log_dir / f"consumer-{index}.log").read_text()

    def wait(self, proc: subprocess.Popen, timeout: float = 300) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"no exit in {timeout}s:\n{self.consumer_log(self.procs.index(proc))}") from None

    def produce_raw(self, messages: list[tuple[bytes | None, bytes | None, list | None]], partitions: int = 4) -> None:
        """(key, value, headers) exactly as given: for poison messages."""
        from kafka import KafkaProducer

        from labelaudit.serving.stream.topics import ensure_topics

        ensure_topics(self.settings(), {self.topic: partitions})
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", max_request_size=20_000_000)
        futures = [producer.send(self.topic, key=k, value=v, headers=h) for k, v, h in messages]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
        producer.close()

    def read_topic(self, topic: str) -> list:
        """Every record on ``topic`` from the beginning to the current end."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, enable_auto_commit=False)
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            consumer.close()
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records, deadline = [], time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        consumer.close()
        return records

    def committed_total(self) -> int:
        """The group's committed offsets on the images topic, summed over partitions."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        offsets = admin.list_consumer_group_offsets(f"group-{self.name}")
        admin.close()
        return sum(o.offset for tp, o in offsets.items() if tp.topic == self.topic and o.offset > 0)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def relabel_ids(records) -> set[str]:
    return {json.loads(r.value)["request_id"] for r in records}


def good_messages(tiny_data, n: int, *, offset: int = 0):
    """``n`` distinct items cycling over task B's real images (item ids suffixed #round)."""
    from labelaudit.produce import image_messages

    base = list(image_messages(tiny_data / "task_b.jsonl", split=None, by_uri=False, limit=None))
    out = []
    for i in range(offset, offset + n):
        m = base[i % len(base)]
        out.append(m.model_copy(update={"item_id": f"{m.item_id}#{i // len(base)}"}))
    return out


def counts(url: str) -> tuple[int, int]:
    [(total, distinct)] = store_query(url, "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM audit_records")
    return total, distinct


def store_disagreements(url: str) -> set[str]:
    rows = store_query(url, "SELECT item_id, labeler_id, model_version FROM audit_records WHERE disagrees = 1")
    return {"/".join(row) for row in rows}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def store_count(url: str) -> int:
    try:
        return counts(url)[0]
    except Exception:  # the consumer has not created the table yet
        return 0


def refuse_in_store(url: str, item_prefix: str) -> None:
    """Make the store itself refuse verdicts whose item_id starts with ``item_prefix`` (a trigger that
    raises): a record that fails in processing for a reason no input check knows about."""
    from labelaudit.serving.core.store import open_store

    open_store(url).close()  # the table
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_records "
                f"WHEN NEW.item_id LIKE '{item_prefix}%' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.item_id LIKE '{item_prefix}%' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION refuse()")
