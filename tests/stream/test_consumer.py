"""The consumer against a real Kafka broker and both real stores: nothing lost, nothing doubled.

Every test runs the consumer as its own process (``python -m labelaudit consume``), so kills and
signals are real, and reads the results back from the store, the broker's topics and the group's
committed offsets.
"""

from __future__ import annotations

import base64
import json
import random
import re
import signal
import threading
import time

import pytest

from labelaudit.produce import produce
from labelaudit.schemas.stream import DLQ_ERROR, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC, IMAGE_SCHEMA
from tests.stream.streamkit import (
    counts,
    good_messages,
    relabel_ids,
    store_count,
    store_disagreements,
    store_query,
    wait_for,
)


def test_ten_thousand_messages_make_exactly_ten_thousand_records(stream, tiny_data):
    n = 10_000
    produce(stream.settings(), good_messages(tiny_data, n), partitions=4)
    proc = stream.start_consumer("--max-messages", str(n))
    assert stream.wait(proc) == 0, stream.consumer_log(0)

    assert counts(stream.store_url) == (n, n)
    disagreements = store_disagreements(stream.store_url)
    assert 0 < len(disagreements) < n
    assert relabel_ids(stream.read_topic(stream.relabel_topic)) == disagreements
    assert stream.read_topic(stream.dlq_topic) == []
    assert stream.committed_total() == n


def test_kill_minus_nine_loses_and_doubles_nothing(stream, tiny_data):
    n, rng = 6_000, random.Random(7)
    messages = good_messages(tiny_data, n)
    settings = stream.settings()

    def flow():  # the stream keeps flowing while consumers die
        for i in range(0, n, 500):
            produce(settings, messages[i : i + 500], partitions=4)
            time.sleep(0.3)

    producer = threading.Thread(target=flow)
    producer.start()
    seen_mid_stream = []
    for _ in range(3):
        before = store_count(stream.store_url)
        proc = stream.start_consumer()
        wait_for(lambda b=before: store_count(stream.store_url) > b, 120, "the consumer to make progress")
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen_mid_stream.append(store_count(stream.store_url))
    producer.join()
    final = stream.start_consumer("--stop-when-idle", "8")
    assert stream.wait(final) == 0, stream.consumer_log(len(stream.procs) - 1)

    assert any(0 < c < n for c in seen_mid_stream), seen_mid_stream
    assert counts(stream.store_url) == (n, n)
    assert relabel_ids(stream.read_topic(stream.relabel_topic)) == store_disagreements(stream.store_url)
    assert stream.committed_total() == n


def test_poison_messages_go_to_the_dlq_with_their_reason(stream, tiny_data):
    good = good_messages(tiny_data, 20)
    image = base64.b64decode(good[0].image_b64)

    def message(item_id: str, **fields) -> bytes:
        body = {"schema": IMAGE_SCHEMA, "item_id": item_id, "image_b64": good[0].image_b64, "label": "coat"}
        body.update(fields)
        return json.dumps({k: v for k, v in body.items() if v is not None}).encode()

    poison = {
        b"p-json": (b"{not json", "bad_json"),
        b"p-image": (message("p-image", image_b64=base64.b64encode(b"GIF89a broken").decode()), "not_an_image"),
        b"p-truncated": (
            message("p-truncated", image_b64=base64.b64encode(image[: len(image) // 2]).decode()),
            "corrupt_image",
        ),
        b"p-missing": (json.dumps({"schema": IMAGE_SCHEMA, "item_id": "p-missing"}).encode(), "invalid_message"),
        b"p-schema": (message("p-schema", schema="labelaudit.image.v9"), "invalid_message"),
        b"p-label": (message("p-label", label="unicorn"), "unknown_label"),
        b"p-big": (message("p-big", image_b64="A" * 300_000), "message_too_large"),
        b"p-b64": (message("p-b64", image_b64="not*base64!"), "bad_base64"),
        b"p-empty": (None, "empty_message"),
        b"p-key": (message("another-id"), "key_mismatch"),
        b"p-uri": (message("p-uri", image_b64=None, image_uri="http://example.com/x.png"), "unsupported_uri"),
    }
    unlabeled = [
        m.model_copy(update={"label": None, "labeler_id": None}) for m in good_messages(tiny_data, 5, offset=100)
    ]
    raw = [
        (m.item_id.encode(), json.dumps(m.model_dump(mode="json", by_alias=True, exclude_none=True)).encode(), [])
        for m in good + unlabeled
    ]
    raw += [(key, value, [("trace", b"abc")]) for key, (value, _) in poison.items()]
    random.Random(3).shuffle(raw)
    stream.produce_raw(raw, partitions=2)

    proc = stream.start_consumer("--max-messages", str(len(raw)), LABELAUDIT_MAX_MESSAGE_BYTES="200000")
    assert stream.wait(proc) == 0, stream.consumer_log(0)

    dead = {r.key: r for r in stream.read_topic(stream.dlq_topic)}
    assert set(dead) == set(poison)
    for key, record in dead.items():
        headers = dict(record.headers)
        value, reason = poison[key]
        assert headers[DLQ_REASON].decode() == reason, (key, headers)
        assert record.value == value  # the original bytes, untouched
        assert headers["trace"] == b"abc"  # the original headers kept
        assert headers[DLQ_TOPIC].decode() == stream.topic and int(headers[DLQ_OFFSET]) >= 0
    assert counts(stream.store_url) == (25, 25)
    [(unlabeled_rows, flagged)] = store_query(
        stream.store_url, "SELECT COUNT(*), COALESCE(SUM(disagrees), 0) FROM audit_records WHERE human_label IS NULL"
    )
    assert (unlabeled_rows, flagged) == (5, 0)
    assert stream.committed_total() == len(raw)


def test_two_consumers_share_the_partitions(stream, tiny_data):
    from labelaudit.serving.stream.topics import ensure_topics

    n = 4_000
    ensure_topics(stream.settings(), {stream.topic: 4})
    first = stream.start_consumer("--stop-when-idle", "15")
    second = stream.start_consumer("--stop-when-idle", "15")

    def assigned(index: int) -> bool:
        return bool(re.search(r"assigned \[.*'" + re.escape(stream.topic), stream.consumer_log(index)))

    wait_for(lambda: assigned(0) and assigned(1), 90, "both consumers to get partitions")
    produce(stream.settings(), good_messages(tiny_data, n), partitions=4)
    assert stream.wait(first) == 0 and stream.wait(second) == 0

    new = [int(re.search(r"audited \d+ \((\d+) new\)", stream.consumer_log(i)).group(1)) for i in (0, 1)]
    assert all(k > 0 for k in new), new
    assert sum(new) == n
    assert counts(stream.store_url) == (n, n)
    assert stream.committed_total() == n


def test_a_broker_restart_mid_stream_is_survived(stream, tiny_data, broker):
    n = 5_000
    produce(stream.settings(), good_messages(tiny_data, n), partitions=4)
    proc = stream.start_consumer("--max-messages", str(n))
    wait_for(lambda: store_count(stream.store_url) > 300, 120, "the consumer to make progress")
    broker.stop()
    time.sleep(2)
    broker.start()
    assert stream.wait(proc) == 0, stream.consumer_log(0)
    assert counts(stream.store_url) == (n, n)
    assert relabel_ids(stream.read_topic(stream.relabel_topic)) == store_disagreements(stream.store_url)
    assert stream.committed_total() == n


def test_sigterm_finishes_the_batch_commits_and_exits(stream, tiny_data):
    n = 6_000
    produce(stream.settings(), good_messages(tiny_data, n), partitions=4)
    proc = stream.start_consumer()
    wait_for(lambda: store_count(stream.store_url) > 300, 120, "the consumer to make progress")
    proc.send_signal(signal.SIGTERM)
    assert stream.wait(proc, timeout=60) == 0, stream.consumer_log(0)
    written = store_count(stream.store_url)
    assert written < n, "stopped mid-stream"
    assert stream.committed_total() == written  # everything durable is committed, nothing more


@pytest.fixture(autouse=True)
def _quiet_kafka_logs():
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)


def test_a_random_audit_sample_gets_second_opinion_requests_beside_the_disagreements(stream, tiny_data):
    from labelaudit.serving.core.relabel import in_audit_sample

    n = 600
    produce(stream.settings(), good_messages(tiny_data, n), partitions=2)
    proc = stream.start_consumer("--max-messages", str(n), LABELAUDIT_AUDIT_SAMPLE_RATE="0.2")
    assert stream.wait(proc) == 0, stream.consumer_log(0)

    requests = [json.loads(r.value) for r in stream.read_topic(stream.relabel_topic)]
    by_reason = {
        reason: {r["request_id"] for r in requests if r["reason"] == reason}
        for reason in ("disagreement", "audit_sample")
    }
    assert by_reason["disagreement"] == store_disagreements(stream.store_url)
    rows = store_query(stream.store_url, "SELECT item_id, model_version FROM audit_records")
    sampled = {f"{item}/audit-sample/{version}" for item, version in rows if in_audit_sample(item, 0.2)}
    assert 0.1 * n < len(sampled) < 0.3 * n
    assert by_reason["audit_sample"] == sampled  # agreeing labels too: drawn at random, not by the model
    blind = ("human_label", "label_probability", "predicted_label", "predicted_probability", "score")
    samples = [r for r in requests if r["reason"] == "audit_sample"]
    assert all(r["labeler_id"] and all(r[name] is None for name in blind) for r in samples)  # who, but not what


def test_relabel_answers_are_kept_with_their_requests_and_ask_for_nothing(stream, tiny_data):
    """A relabel tool answers every request of a first pass (disagreements with the model's label, audit-sample
    items with the first label again), each answer delivered twice, plus one answer naming another item's
    request: the answers are stored once each with their request's reason, ask for no relabel themselves, and
    the mix-up goes to the DLQ with its cause."""
    n = 200
    messages = good_messages(tiny_data, n)
    produce(stream.settings(), messages, partitions=2)
    proc = stream.start_consumer("--max-messages", str(n), LABELAUDIT_AUDIT_SAMPLE_RATE="0.2")
    assert stream.wait(proc) == 0, stream.consumer_log(0)
    requests = [json.loads(r.value) for r in stream.read_topic(stream.relabel_topic)]
    assert {r["reason"] for r in requests} == {"disagreement", "audit_sample"}

    by_item = {m.item_id: m for m in messages}
    answers, expected = [], set()
    for r in requests:
        # an audit-sample request is blind: the tool answers with the label the message had
        label = r["predicted_label"] if r["reason"] == "disagreement" else by_item[r["item_id"]].label
        update = {"labeler_id": "reviewer", "label": label, "answers": r["request_id"], "sent_at": None}
        answers.append(by_item[r["item_id"]].model_copy(update=update))
        expected.add((r["request_id"], r["reason"], r["item_id"], "reviewer", label))
    mixed_up = messages[0].model_copy(update={"labeler_id": "reviewer", "answers": f"{messages[1].item_id}/x/1"})
    produce(stream.settings(), [*answers, *answers, mixed_up], partitions=2)
    proc = stream.start_consumer("--max-messages", str(2 * len(answers) + 1), LABELAUDIT_AUDIT_SAMPLE_RATE="0.2")
    assert stream.wait(proc) == 0, stream.consumer_log(1)

    stored = store_query(stream.store_url, "SELECT request_id, reason, item_id, labeler_id, label FROM relabel_answers")
    assert sorted(stored) == sorted(expected)
    [(reviewed, flagged)] = store_query(
        stream.store_url,
        "SELECT COUNT(*), COALESCE(SUM(disagrees), 0) FROM audit_records WHERE labeler_id = 'reviewer'",
    )
    assert (reviewed, flagged) == (len({r["item_id"] for r in requests}), 0)  # one verdict per item, none flagged
    assert len(stream.read_topic(stream.relabel_topic)) == len(requests)  # the answers asked for nothing
    [dead] = stream.read_topic(stream.dlq_topic)
    headers = dict(dead.headers)
    assert headers[DLQ_REASON].decode() == "invalid_message"
    assert "not a request about item" in headers[DLQ_ERROR].decode()


def test_an_image_uri_is_stored_with_its_record_and_an_inline_image_names_none(stream, tiny_data):
    """The report's thumbnails and `labelaudit harvest` find a streamed image through the stored URI."""
    from labelaudit.produce import image_messages

    by_uri = list(image_messages(tiny_data / "task_b.jsonl", split=None, by_uri=True, limit=40))
    inline = good_messages(tiny_data, 40, offset=40)
    produce(stream.settings(), [*by_uri, *inline], partitions=2)
    proc = stream.start_consumer("--max-messages", "80")
    assert stream.wait(proc) == 0, stream.consumer_log(0)
    stored = dict(store_query(stream.store_url, "SELECT item_id, image_uri FROM audit_records"))
    assert len(stored) == 80
    assert {m.item_id: stored[m.item_id] for m in by_uri} == {m.item_id: m.image_uri for m in by_uri}
    assert all(m.image_uri.startswith("file:///") for m in by_uri)
    assert all(stored[m.item_id] is None for m in inline)
