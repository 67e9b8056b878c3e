"""The consumer's own retry logic, with its audit and Kafka client replaced by fakes: a failing batch is
split until the failing record is alone, an outage is waited out whole, draining gives up on retries, and
offsets are committed per partition only up to the oldest batch not yet settled. The real-broker
versions of these are in test_poison.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from kafka.structs import TopicPartition

from labelaudit.errors import StoreUnavailable
from labelaudit.serving.settings import Settings
from labelaudit.serving.stream.consumer import Abandoned, BatchResult, StreamConsumer, _InFlight


def records(partition: int, offsets: range, *, topic: str = "images") -> list:
    return [
        SimpleNamespace(topic=topic, partition=partition, offset=o, key=f"{partition}-{o}".encode()) for o in offsets
    ]


def consumer(**settings) -> StreamConsumer:
    return StreamConsumer(Settings(**{"consume_retry_max_s": 0.01, **settings}))


def fake_audit(calls: list, *, fails=lambda batch: False):
    async def audit(batch: list) -> BatchResult:
        calls.append([r.key for r in batch])
        if fails(batch):
            raise RuntimeError("boom")
        return BatchResult(list(batch), [], [], len(batch), len(batch))

    return audit


def test_a_failing_record_is_isolated_and_dead_lettered_after_its_tries():
    c, calls = consumer(consume_poison_attempts=3), []
    batch = records(0, range(16))
    c._audit = fake_audit(calls, fails=lambda b: any(r.key == b"0-11" for r in b))
    result = asyncio.run(c._audit_resilient(batch))
    assert sorted(r.key for r in result.records) == sorted(r.key for r in batch)  # every record, once
    assert result.audited == 15
    [(record, error)] = result.dead
    assert record.key == b"0-11" and error.reason == "processing_error" and "RuntimeError" in str(error)
    assert calls.count([b"0-11"]) == 3  # tried alone exactly poison_attempts times
    assert len(calls) <= 3 + 2 * 4 + 1  # halving: about two calls per level, not one per record


def test_two_failing_records_in_one_batch_are_both_isolated():
    c, calls = consumer(consume_poison_attempts=1), []
    c._audit = fake_audit(calls, fails=lambda b: any(r.key in (b"0-0", b"0-7") for r in b))
    result = asyncio.run(c._audit_resilient(records(0, range(8))))
    assert sorted(r.key for r, _ in result.dead) == [b"0-0", b"0-7"] and result.audited == 6


def test_an_unavailable_store_is_waited_out_whole_and_never_dead_letters():
    c, calls = consumer(consume_poison_attempts=1), []
    audit = fake_audit(calls)

    async def flaky(batch):
        if len(calls) < 3:
            calls.append("down")
            raise StoreUnavailable("the database restarts")
        return await audit(batch)

    c._audit = flaky
    result = asyncio.run(c._audit_resilient(records(0, range(10))))
    assert calls[:3] == ["down"] * 3 and len(calls) == 4  # the whole batch each time: no splitting
    assert result.audited == 10 and result.dead == []


def test_draining_gives_up_on_a_batch_waiting_to_retry():
    c = consumer(consume_retry_max_s=30)

    async def down(batch):
        raise StoreUnavailable("away")

    c._audit = down
    c._giving_up.set()
    with pytest.raises(Abandoned):
        asyncio.run(asyncio.wait_for(c._audit_resilient(records(0, range(4))), 5))


class FakeKafka:
    def __init__(self):
        self.commits: list[dict] = []

    def commit(self, offsets):
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def in_flight(batch: list, *, settled: bool) -> _InFlight:
    future = Future()
    future.set_result(BatchResult(batch, [], [], len(batch), len(batch)))
    return _InFlight(batch, future, settled=settled)


def test_a_batch_still_retrying_holds_back_only_its_own_partitions():
    c, kafka = consumer(), FakeKafka()
    stuck = in_flight(records(0, range(0, 10)) + records(1, range(0, 5)), settled=False)
    later = in_flight(records(1, range(5, 10)) + records(2, range(0, 10)), settled=True)
    c._inflight.extend([stuck, later])
    c._commit(kafka)
    # partition 2 moves on; partition 1 stays at the stuck batch's first offset (nothing committed yet)
    assert kafka.commits == [{TopicPartition("images", 2): 10}]
    assert list(c._inflight) == [stuck, later]  # later still holds partition 1's records 5..9
    stuck.settled = True
    c._commit(kafka)
    assert kafka.commits[-1] == {TopicPartition("images", p): 10 for p in (0, 1)}  # 2 was committed already
    assert not c._inflight


def test_settled_batches_behind_a_stuck_one_in_the_same_partition_wait_for_it():
    c, kafka = consumer(), FakeKafka()
    c._inflight.extend(
        [
            in_flight(records(0, range(0, 4)), settled=True),
            in_flight(records(0, range(4, 8)), settled=False),
            in_flight(records(0, range(8, 12)), settled=True),
        ]
    )
    c._commit(kafka)
    assert kafka.commits == [{TopicPartition("images", 0): 4}] and len(c._inflight) == 2
