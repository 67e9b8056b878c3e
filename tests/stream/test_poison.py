"""One bad message never stops the stream, and a store that goes away is waited out (issue 16).

Real broker, real stores, the consumer as its own process. The poison here is what stalled the stream
before: a dead letter too large for the DLQ, image URIs that name a device or a FIFO, a record the store
itself refuses (a trigger: an error no input check knows about), and a PostgreSQL restart mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from labelaudit.produce import produce
from labelaudit.schemas.stream import DLQ_OFFSET, DLQ_REASON, DLQ_TRUNCATED, IMAGE_SCHEMA
from tests.stream.streamkit import counts, good_messages, refuse_in_store, run_script, store_count, wait_for


def raw(messages) -> list[tuple[bytes, bytes, list]]:
    return [
        (m.item_id.encode(), json.dumps(m.model_dump(mode="json", by_alias=True, exclude_none=True)).encode(), [])
        for m in messages
    ]


def test_one_bad_message_never_stops_the_stream(stream, tiny_data, tmp_path):
    good = good_messages(tiny_data, 60)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody ever writes to it: a blocking open or read would hang the consumer

    def message(item_id: str, **fields) -> bytes:
        body = {"schema": IMAGE_SCHEMA, "item_id": item_id, "image_b64": good[0].image_b64, "label": "coat"}
        body.update(fields)
        return json.dumps({k: v for k, v in body.items() if v is not None}).encode()

    huge = message("p-huge", image_b64="A" * 9_500_000)  # above max_message_bytes and the DLQ producer's limit
    poison = {
        b"p-huge": (huge, "message_too_large"),
        b"p-zero": (message("p-zero", image_b64=None, image_uri="file:///dev/zero"), "image_unreadable"),
        b"p-fifo": (message("p-fifo", image_b64=None, image_uri=fifo.as_uri()), "image_unreadable"),
        b"refused-1": (message("refused-1"), "processing_error"),
        b"p-nul": (message("p-nul", labeler_id="an\u0000na"), "invalid_message"),  # PostgreSQL refuses NUL
    }
    refuse_in_store(stream.store_url, "refused-")
    records = raw(good[:30]) + [(k, v, [("trace", b"t")]) for k, (v, _) in poison.items()] + raw(good[30:])
    stream.produce_raw(records, partitions=2)

    proc = stream.start_consumer(
        "--max-messages", str(len(records)), LABELAUDIT_CONSUME_RETRY_MAX_S="0.2", LABELAUDIT_CONSUME_BATCH_SIZE="16"
    )
    assert stream.wait(proc, timeout=240) == 0, stream.consumer_log(0)

    dead = {r.key: r for r in stream.read_topic(stream.dlq_topic)}
    assert set(dead) == set(poison), stream.consumer_log(0)
    for key, record in dead.items():
        headers = dict(record.headers)
        assert headers[DLQ_REASON].decode() == poison[key][1], (key, headers)
        assert int(headers[DLQ_OFFSET]) >= 0 and headers["trace"] == b"t"
        assert str(tmp_path) not in headers["labelaudit.dlq.error"].decode()  # the cause, not the host's path
    huge_letter = dead[b"p-huge"]
    assert int(dict(huge_letter.headers)[DLQ_TRUNCATED]) == len(huge)
    assert huge.startswith(huge_letter.value) and len(huge_letter.value) < 100_000
    for key in (b"p-zero", b"p-fifo"):
        assert dead[key].value == poison[key][0] and DLQ_TRUNCATED not in dict(dead[key].headers)
    assert counts(stream.store_url) == (60, 60)  # every good neighbour audited
    assert stream.committed_total() == len(records)


def test_sigterm_exits_while_a_batch_keeps_failing(stream, tiny_data):
    refuse_in_store(stream.store_url, "refused-")
    good = good_messages(tiny_data, 40)
    stuck = {"schema": IMAGE_SCHEMA, "item_id": "refused-9", "image_b64": good[0].image_b64, "label": "coat"}
    stream.produce_raw(raw(good[:20]) + [(b"refused-9", json.dumps(stuck).encode(), [])] + raw(good[20:]), partitions=1)
    # The refused record is tried (nearly) forever: only SIGTERM ends this.
    proc = stream.start_consumer(LABELAUDIT_CONSUME_POISON_ATTEMPTS="100000", LABELAUDIT_CONSUME_RETRY_MAX_S="5")
    wait_for(lambda: "failed alone (try 2 of" in stream.consumer_log(0), 120, "the record to be retried alone")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert stream.wait(proc, timeout=60) == 0, stream.consumer_log(0)
    assert time.monotonic() - started < 20, "a retrying batch held up the exit"
    assert "left uncommitted" in stream.consumer_log(0)
    # Its good records are durable, but nothing of the partition from the failing batch's start on is
    # committed: a restart replays it (and the store ignores the verdicts it already holds).
    assert store_count(stream.store_url) == 40
    assert stream.committed_total() <= 20


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_postgres_restart_mid_stream_is_waited_out(stream, tiny_data, own_postgres):
    stream.store_url = own_postgres["url"]
    n = 3_000
    produce(stream.settings(), good_messages(tiny_data, n), partitions=2)
    proc = stream.start_consumer("--max-messages", str(n), LABELAUDIT_CONSUME_RETRY_MAX_S="2")
    wait_for(lambda: store_count(stream.store_url) > 200, 120, "the consumer to make progress")
    run_script("scripts/postgres.sh", "stop", own_postgres["dir"])
    time.sleep(8)
    run_script("scripts/postgres.sh", "start", own_postgres["dir"], own_postgres["port"])
    assert stream.wait(proc, timeout=300) == 0, stream.consumer_log(0)
    assert counts(stream.store_url) == (n, n)
    assert stream.committed_total() == n
    assert "wait for the store" in stream.consumer_log(0)  # it did see the outage, and waited
    assert not any(r for r in stream.read_topic(stream.dlq_topic)), "an outage dead-lettered good messages"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_consumer_started_while_the_broker_is_down_waits_for_it(stream, tiny_data, broker):
    n = 200
    broker.stop()
    try:
        proc = stream.start_consumer("--max-messages", str(n), LABELAUDIT_CONSUME_RETRY_MAX_S="2")
        wait_for(lambda: "no broker at" in stream.consumer_log(0), 120, "the consumer to wait for the broker")
        assert proc.poll() is None, stream.consumer_log(0)  # waiting, not exited
    finally:
        broker.start()
    produce(stream.settings(), good_messages(tiny_data, n), partitions=2)
    assert stream.wait(proc, timeout=240) == 0, stream.consumer_log(0)
    assert counts(stream.store_url) == (n, n)
