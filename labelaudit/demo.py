"""The online half of ``labelaudit demo``: serve the exported model, stream task B's labeled images
through a real Kafka broker into the consumer, and measure the relabel requests against the truth the
simulation knows. Every part runs as it would in production: ``labelaudit serve`` and ``labelaudit
consume`` as processes, the broker from ``scripts/kafka.sh``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from labelaudit.errors import LabelAuditError
from labelaudit.ports import free_port

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # a checkout: scripts/ sits beside labelaudit/


class DemoError(LabelAuditError):
    reason = "demo_failed"


def kafka_script() -> Path:
    path = Path(os.environ.get("LABELAUDIT_KAFKA_SCRIPT", SOURCE_ROOT / "scripts" / "kafka.sh"))
    if not path.is_file():
        raise DemoError(f"{path} not found: run the demo from a labelaudit checkout, or set LABELAUDIT_KAFKA_SCRIPT")
    return path


@contextmanager
def local_broker(folder: Path):
    """A real single-node broker for the demo's lifetime (scripts/kafka.sh start/stop)."""
    script, port = kafka_script(), free_port(span=2)
    run = subprocess.run(["bash", str(script), "start", str(folder), str(port)], capture_output=True, text=True)
    if run.returncode != 0:
        raise DemoError(f"the Kafka broker did not start:\n{run.stdout}{run.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder)], capture_output=True, text=True)


@contextmanager
def gateway(repo: Path, store_url: str, log_path: Path):
    """``labelaudit serve`` on a free port, ready when /readyz says so."""
    port = free_port()
    env = dict(os.environ, LABELAUDIT_MODEL_REPO=str(repo), LABELAUDIT_STORE_URL=store_url)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelaudit", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the gateway did not become ready; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class GatewayCheck:
    url: str
    classified: list[tuple[str, str, float]]  # (item_id, top class, probability)
    audited: list[dict]


def check_gateway(url: str, manifest: Path, n: int = 3) -> GatewayCheck:
    """A few real requests: classify held-out images, audit their labels."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test"][:n]
    classified, audited = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in rows:
            image = (manifest.parent / r["image"]).read_bytes()
            top = client.post("/v1/classify", files={"files": (r["image"], image, "image/png")}).json()
            best = top["results"][0]["top"][0]
            classified.append((r["item_id"], best["label"], best["probability"]))
            body = {
                "item_id": r["item_id"],
                "labeler_id": "demo-curl",
                "label": r["label"],
                "image": base64.b64encode(image).decode(),
            }
            audited.append(client.post("/v1/audit", json=body).json())
    return GatewayCheck(url, classified, audited)


@dataclass
class StreamOutcome:
    sent: int
    audited: int
    disagreements: int
    truly_wrong_flagged: int
    truly_wrong: int
    seconds: float


def _consume(env: dict[str, str], messages: int, log_path: Path, progress: Callable[[], None]) -> float:
    """``labelaudit consume`` as a process until it has audited ``messages`` new ones; its seconds."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelaudit", "consume", "--max-messages", str(messages)],
            env=env,
            stdout=log,
            stderr=log,
        )
    while proc.poll() is None:
        progress()
        time.sleep(0.5)
    if proc.returncode != 0:
        raise DemoError(f"the consumer failed; see {log_path}")
    progress()
    return time.monotonic() - started


def _consumer_env(bootstrap: str, repo: Path, store_url: str, audit_sample_rate: float) -> dict[str, str]:
    return dict(
        os.environ,
        LABELAUDIT_MODEL_REPO=str(repo),
        LABELAUDIT_STORE_URL=store_url,
        LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        LABELAUDIT_AUDIT_SAMPLE_RATE=str(audit_sample_rate),
    )


def stream_task_b(
    bootstrap: str,
    repo: Path,
    manifest: Path,
    store_url: str,
    log_path: Path,
    on_progress: Callable[[int, int], None],
    *,
    audit_sample_rate: float = 0.0,
) -> StreamOutcome:
    """Produce task B's labeled training images, consume them into the store (asking a second opinion on
    ``audit_sample_rate`` of the items), score against the truth."""
    from labelaudit.produce import image_messages, produce
    from labelaudit.serving.settings import Settings

    settings = Settings(kafka_bootstrap_servers=bootstrap)
    messages = list(image_messages(manifest, split="train", by_uri=False, limit=None))
    sent = produce(settings, messages, partitions=4)
    store_path = store_url.removeprefix("sqlite:///")
    env = _consumer_env(bootstrap, repo, store_url, audit_sample_rate)
    seconds = _consume(env, sent, log_path, lambda: on_progress(_count(store_path), sent))

    truth = {}
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        if r["split"] == "train":
            truth[r["item_id"]] = r.get("true_label") is not None and r["true_label"] != r["label"]
    import sqlite3

    with sqlite3.connect(store_path) as conn:
        rows = conn.execute("SELECT item_id, disagrees FROM audit_records WHERE source = 'kafka'").fetchall()
    flagged = {item for item, d in rows if d}
    return StreamOutcome(
        sent=sent,
        audited=len(rows),
        disagreements=len(flagged),
        truly_wrong_flagged=sum(truth.get(i, False) for i in flagged),
        truly_wrong=sum(truth.values()),
        seconds=seconds,
    )


@dataclass
class Answered:
    answered: int  # disagreement requests answered
    changed: int  # answers that gave the model's label
    changed_right: int  # of those, answers that are the true class (the simulation knows)
    reviewer_error: float
    audit_sample: int = 0  # audit-sample requests answered
    audit_changed: int = 0  # of those, answers unlike the first label


REVIEWER, REVIEWER_ERROR = "reviewer", 0.05  # the demo's careful second pair of eyes, and how often it errs


def answer_requests(
    bootstrap: str,
    repo: Path,
    manifest: Path,
    store_url: str,
    log_path: Path,
    *,
    budget: int,
    seed: int,
    audit_sample_rate: float = 0.0,
) -> Answered:
    """What a relabel tool does with a QA budget: read the relabel topic, take every audit-sample request (the
    random second opinions) and the ``budget`` disagreement requests with the highest scores about other items,
    have a reviewer label each item again (the simulation's true class, another class ``REVIEWER_ERROR`` of the
    time) and send the answers to ``images`` naming their requests (``answers``); the consumer audits them and
    the store keeps them for the report."""
    import random

    from labelaudit.produce import image_messages, produce
    from labelaudit.serving.settings import Settings

    settings = Settings(kafka_bootstrap_servers=bootstrap)
    requests = _relabel_requests(settings)  # a redelivery has the same id
    sampled = [r for r in requests.values() if r["reason"] == "audit_sample"]
    asked = {r["item_id"] for r in sampled}  # one answer per item: the random sample's comes first
    doubted = [r for r in requests.values() if r["reason"] == "disagreement" and r["item_id"] not in asked]
    chosen = sorted(doubted, key=lambda r: -r["score"])[:budget]

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    truth = {r["item_id"]: r["true_label"] for r in rows if r["split"] == "train"}
    first = {(r["item_id"], r.get("labeler_id")): r.get("label") for r in rows if r["split"] == "train"}
    classes = sorted(set(truth.values()))
    images = {m.item_id: m for m in image_messages(manifest, split="train", by_uri=False, limit=None)}
    rng = random.Random(seed)
    answers = []
    for r in [*sampled, *chosen]:
        label = truth[r["item_id"]]
        if rng.random() < REVIEWER_ERROR:
            label = rng.choice([c for c in classes if c != label])
        update = {"label": label, "labeler_id": REVIEWER, "answers": r["request_id"]}
        answers.append(images[r["item_id"]].model_copy(update=update))
    if answers:
        produce(settings, answers, partitions=4)
        env = _consumer_env(bootstrap, repo, store_url, audit_sample_rate)
        _consume(env, len(answers), log_path, lambda: None)
    to_sample, to_doubts = answers[: len(sampled)], answers[len(sampled) :]
    changed = [(a, r) for a, r in zip(to_doubts, chosen, strict=True) if a.label == r["predicted_label"]]
    return Answered(
        answered=len(to_doubts),
        changed=len(changed),
        changed_right=sum(a.label == truth[a.item_id] for a, _ in changed),
        reviewer_error=REVIEWER_ERROR,
        audit_sample=len(to_sample),
        # the request is blind (no first label in it): the manifest has the label it asked about
        audit_changed=sum(
            a.label != first[r["item_id"], r["labeler_id"]] for a, r in zip(to_sample, sampled, strict=True)
        ),
    )


def _relabel_requests(settings) -> dict[str, dict]:
    """Every request on the relabel topic so far, by ``request_id``."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(**settings.kafka_client_config(), enable_auto_commit=False)
    partitions = [
        TopicPartition(settings.kafka_relabel_topic, p)
        for p in reader.partitions_for_topic(settings.kafka_relabel_topic) or ()
    ]
    requests: dict[str, dict] = {}
    if partitions:
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        end, deadline = reader.end_offsets(partitions), time.monotonic() + 60
        while any(reader.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=500).values():
                for record in batch:
                    request = json.loads(record.value)
                    requests[request["request_id"]] = request
    reader.close()
    return requests


def _count(store_path: str) -> int:
    import sqlite3

    try:
        with sqlite3.connect(store_path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM audit_records WHERE source = 'kafka'").fetchone()[0]
    except sqlite3.Error:
        return 0
