"""``labelaudit consume``: audit the labeled images on a Kafka topic, losing nothing.

The loop, per batch of polled records:

1. parse each record (``messages.parse_record``); a bad one becomes a dead letter with its reason;
2. audit the good ones through the shared ``Auditor`` (decode, classify, judge, write the verdicts to
   the store in one transaction, durable before it returns);
3. produce the dead letters (original key, value and headers plus the cause) and a relabel request for
   every disagreement (and every labeled item in the audit sample, ``audit_sample_rate``), and wait until the
   broker acknowledged all of them;
4. only then commit the batch's offsets.

A crash anywhere before 4 replays the batch: the store ignores verdicts it already holds (unique on
item, labeler and model version), so nothing is written twice; the relabel topic may see a request
again, with the same ``request_id``. Step 2 runs in a worker thread while the main thread keeps polling,
so at most ``consume_max_inflight_batches`` batches are in flight; past that the partitions are paused
and ``poll`` only keeps the group membership alive, so memory stays flat and a slow model or store never
gets the consumer thrown out of its group.

One bad message never stops the stream. A batch whose audit fails because the store or the backend is
away (``Unavailable``) is retried whole with backoff, never skipped. Any other failure is the batch's
content: the batch is split in halves until the record that fails is alone, that record is tried
``consume_poison_attempts`` times and then dead-lettered with reason ``processing_error``, and the rest
is audited. Retries wait on the worker's event loop, so the main thread keeps settling the batches that
are done and committing the partitions a failing batch does not hold. SIGTERM or SIGINT (or a
rebalance): batches in backoff give up, the others finish within ``consume_drain_timeout_s``, what is
done is committed, the rest is left for a replay; then the consumer leaves the group and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError, NoBrokersAvailable
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from labelaudit.errors import LabelAuditError, Unavailable
from labelaudit.serving.core.audit import AuditItem, Stages
from labelaudit.serving.core.relabel import relabel_requests
from labelaudit.serving.core.runtime import Runtime, open_runtime
from labelaudit.serving.core.store import AuditStore
from labelaudit.serving.settings import Settings
from labelaudit.serving.stream.messages import Record, dead_letter, parse_record
from labelaudit.serving.stream.topics import ensure_topics

if TYPE_CHECKING:
    from kafka.producer.future import FutureRecordMetadata

_T = TypeVar("_T")

log = logging.getLogger("labelaudit.stream")

MESSAGES = Counter("labelaudit_consumer_messages_total", "Records consumed, by outcome", ["outcome"])
BATCH_SECONDS = Histogram("labelaudit_consumer_batch_seconds", "Poll-to-commit time of one batch")
LAG = Gauge("labelaudit_consumer_lag", "Messages behind the partition's end", ["topic", "partition"])
PAUSED = Gauge("labelaudit_consumer_paused", "1 while the partitions are paused for back-pressure")
RETRIES = Counter("labelaudit_consumer_batch_retries_total", "Batches retried after a failed audit")
# The frame limit for fetches: above any topic's max.message.bytes we expect (the broker default is 1 MiB;
# teams raise it to a few MiB for images). kafka-python allocates per frame received, not this much.
RECORD_FRAME_MAX_BYTES = 128 * 1_048_576
SPLITS = Counter("labelaudit_consumer_batch_splits_total", "Failing batches split to isolate a poison record")


class ProcessingError(LabelAuditError):
    """A record whose audit failed alone, again and again, for a reason that is not a bad input we know."""

    reason = "processing_error"


class Abandoned(Exception):
    """A failing batch gave up because the consumer is stopping or losing its partitions."""


@dataclass
class ConsumerStats:
    audited: int = 0  # verdicts written or found already written
    new: int = 0  # of those, written by this process
    dead_lettered: int = 0
    relabels: int = 0
    batches: int = 0
    last_message_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchResult:
    records: list[Record]  # the consumer records, in poll order
    relabels: list[tuple[bytes, bytes]]
    dead: list[tuple[Record, LabelAuditError]]
    audited: int
    new: int

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            self.records + other.records,
            self.relabels + other.relabels,
            self.dead + other.dead,
            self.audited + other.audited,
            self.new + other.new,
        )


@dataclass
class _InFlight:
    records: list[Record]
    future: Future[BatchResult]
    polled_at: float = field(default_factory=time.monotonic)
    settled: bool = False  # produced and acknowledged; committed once no earlier batch holds its partitions
    abandoned: bool = False  # gave up while stopping: never committed here, replayed by the next owner
    produce_again_at: float = 0.0

    def __post_init__(self) -> None:
        # Per partition, the first offset and the offset to commit after it (records are in poll order).
        self.starts: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}
        for r in self.records:
            tp = TopicPartition(r.topic, r.partition)
            self.starts.setdefault(tp, r.offset)
            self.ends[tp] = r.offset + 1


class StreamConsumer:
    def __init__(
        self,
        settings: Settings,
        *,
        stop_when_idle_s: float | None = None,
        max_messages: int | None = None,
        store: AuditStore | None = None,
    ):
        """``store``: an audit store to write to instead of opening ``settings.store_url`` (its owner closes it)."""
        self.settings, self._store = settings, store
        self.stop_when_idle_s, self.max_messages = stop_when_idle_s, max_messages
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._giving_up = threading.Event()  # set while draining: batches in backoff stop retrying
        self._inflight: deque[_InFlight] = deque()
        self._committed: dict[TopicPartition, int] = {}  # what this process committed, for the lag metric
        self._loop = asyncio.new_event_loop()
        self._worker = threading.Thread(target=self._loop.run_forever, name="labelaudit-audit", daemon=True)
        self._runtime: Runtime | None = None
        self._exit = AsyncExitStack()

    # -- the audit side (worker thread) ---------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _open_runtime(self) -> None:
        self._runtime = await self._exit.enter_async_context(open_runtime(self.settings, store=self._store))
        self._stages = Stages.one_at_a_time()  # batches in flight overlap as a pipeline, not all at once

    async def _audit(self, records: list[Record]) -> BatchResult:
        if self._runtime is None:  # run() opens it before it polls
            raise RuntimeError("the consumer's runtime is not open")
        items: list[AuditItem] = []
        item_records: list[Record] = []
        dead: list[tuple[Record, LabelAuditError]] = []
        for record in records:
            try:
                items.append(
                    parse_record(
                        record,
                        max_message_bytes=self.settings.max_message_bytes,
                        max_image_bytes=self.settings.max_image_bytes,
                    )
                )
                item_records.append(record)
            except LabelAuditError as exc:
                dead.append((record, exc))
        outcomes = await self._runtime.auditor.audit_each(items, source="kafka", stages=self._stages) if items else []
        relabels: list[tuple[bytes, bytes]] = []
        audited, new = 0, 0
        for record, item, outcome in zip(item_records, items, outcomes, strict=True):
            if isinstance(outcome, LabelAuditError):
                dead.append((record, outcome))
                continue
            verdict, is_new = outcome
            audited, new = audited + 1, new + int(is_new)
            if item.answers is None:  # an answer to a relabel request asks for no relabel itself
                # also when not new: the crash may have come before the produce
                relabels += relabel_requests(verdict, self.settings.audit_sample_rate)
        return BatchResult(records, relabels, dead, audited, new)

    async def _audit_resilient(self, records: list[Record]) -> BatchResult:
        """``_audit``, waiting out a store or backend that is away and isolating the records that fail.

        ``Unavailable``: the same records again after a backoff, for as long as it lasts. Any other error:
        the batch is split in halves, recursively, until each failing record is alone; everything else is
        audited first, then each failing record is tried up to ``consume_poison_attempts`` times in all
        and dead-lettered if it still fails. Raises ``Abandoned`` when the consumer drains meanwhile.
        """
        try:
            return await self._audit_waiting(records)
        except Abandoned:
            raise
        except Exception as exc:
            result, failing = await self._isolate(records, exc)
        for record, error in failing:
            result += await self._retry_alone(record, error)
        return result

    async def _audit_waiting(self, records: list[Record]) -> BatchResult:
        waits = 0
        while True:
            try:
                return await self._audit(records)
            except Unavailable as exc:
                waits += 1
                RETRIES.inc()
                await self._pause(
                    waits, f"{len(records)} records wait for the {exc.reason.removesuffix('_unavailable')}: {exc}"
                )

    async def _isolate(
        self, records: list[Record], exc: Exception
    ) -> tuple[BatchResult, list[tuple[Record, Exception]]]:
        """A batch that failed with ``exc``, split until each failing record is alone: (what the good
        parts gave, the failing records with their errors, each tried once alone)."""
        if len(records) == 1:
            self._log_alone(records[0], 1, exc)
            return BatchResult([], [], [], 0, 0), [(records[0], exc)]
        SPLITS.inc()
        log.warning(
            "a batch of %d failed (%s: %s); splitting it to find the records that fail",
            len(records),
            type(exc).__name__,
            exc,
        )
        mid = len(records) // 2
        result = BatchResult([], [], [], 0, 0)
        failing: list[tuple[Record, Exception]] = []
        for half in (records[:mid], records[mid:]):
            try:
                result += await self._audit_waiting(half)
            except Abandoned:
                raise
            except Exception as half_exc:
                part, part_failing = await self._isolate(half, half_exc)
                result, failing = result + part, failing + part_failing
        return result, failing

    async def _retry_alone(self, record: Record, exc: Exception) -> BatchResult:
        """A record that failed alone once: tried again after a backoff until ``consume_poison_attempts``
        tries in all, then dead-lettered with reason ``processing_error``."""
        attempts = self.settings.consume_poison_attempts
        for attempt in range(2, attempts + 1):
            await self._pause(attempt - 1, "a record that failed alone is tried again")
            try:
                return await self._audit_waiting([record])
            except Abandoned:
                raise
            except Exception as again:
                exc = again
                self._log_alone(record, attempt, exc)
        # The cause's type only: its text may hold the host's paths or data (the log has it all).
        error = ProcessingError(f"failed {attempts} times alone: {type(exc).__name__}")
        return BatchResult([record], [], [(record, error)], 0, 0)

    def _log_alone(self, record: Record, attempt: int, exc: Exception) -> None:
        log.warning(
            "%s[%d]@%d failed alone (try %d of %d)",
            record.topic,
            record.partition,
            record.offset,
            attempt,
            self.settings.consume_poison_attempts,
            exc_info=exc,
        )

    def _backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt``: 0.5 s doubling, up to ``consume_retry_max_s``."""
        return min(self.settings.consume_retry_max_s, 0.5 * 2.0 ** min(attempt, 10))

    async def _pause(self, attempt: int, why: str) -> None:
        """Back off before retry ``attempt`` (0.5 s doubling, up to ``consume_retry_max_s``), on this event
        loop so the main thread goes on; ``Abandoned`` as soon as the consumer drains."""
        delay = self._backoff(attempt)
        log.error("%s; retrying in %.1fs (attempt %d)", why, delay, attempt)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._giving_up.is_set():
                raise Abandoned
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if self._giving_up.is_set():
            raise Abandoned

    # -- the Kafka side (main thread) -----------------------------------------------------------------

    def _clients(self) -> tuple[KafkaConsumer, KafkaProducer]:
        s, common = self.settings, self.settings.kafka_client_config()
        fetch_bytes = max(8 * 1_048_576, 2 * s.max_message_bytes)
        consumer = KafkaConsumer(
            **common,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.consume_batch_size,
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            fetch_max_bytes=fetch_bytes,
            max_partition_fetch_bytes=max(1_048_576, s.max_message_bytes + 1024),
            # kafka-python refuses network frames above 1 MB by default, whatever fetch_max_bytes says:
            # a fetch of several images would fail forever ("Invalid frame length"). The broker hands out
            # one record above the fetch sizes whole (to make progress), so the frame limit must also pass
            # the largest record a topic may hold, or that one record stalls the partition for good.
            receive_message_max_bytes=max(fetch_bytes, RECORD_FRAME_MAX_BYTES) + 1_048_576,
            client_id="labelaudit-consumer",
        )
        producer = KafkaProducer(
            **common,
            acks="all",
            retries=2_147_483_647,
            linger_ms=5,
            max_request_size=max(1_048_576, s.max_message_bytes + 65_536),
            client_id="labelaudit-consumer",
        )
        return consumer, producer

    def ensure_topics(self) -> None:
        """Create the relabel and dead-letter topics when missing (on a cluster that allows it)."""
        try:
            ensure_topics(self.settings, {self.settings.kafka_relabel_topic: 1, self.settings.kafka_dlq_topic: 1})
        except KafkaError as exc:
            log.warning("could not check or create the output topics (%s); they must exist", exc)

    def _produce(self, producer: KafkaProducer, result: BatchResult) -> None:
        """Send the dead letters and relabel requests and wait until the broker acknowledged every one
        (raises ``KafkaError`` if it did not). A dead letter too large for the DLQ whole (the producer's
        ``max_request_size`` or the topic's ``max.message.bytes``) is sent again truncated."""
        s = self.settings

        def send_dead(record: Record, exc: LabelAuditError, *, truncate: bool = False) -> FutureRecordMetadata:
            letter = dead_letter(record, exc, truncate=truncate)
            return producer.send(s.kafka_dlq_topic, key=letter.key, value=letter.value, headers=letter.headers)

        dead = [(send_dead(r, exc), r, exc) for r, exc in result.dead]
        relabels = [producer.send(s.kafka_relabel_topic, key=k, value=v) for k, v in result.relabels]
        producer.flush()
        again: list[FutureRecordMetadata] = []
        for future, r, exc in dead:
            try:
                future.get(timeout=60)
            except MessageSizeTooLargeError:
                log.warning(
                    "dead letter %s[%d]@%d is too large for the DLQ; sending it truncated",
                    r.topic,
                    r.partition,
                    r.offset,
                )
                again.append(send_dead(r, exc, truncate=True))
        producer.flush()
        for f in again + relabels:
            f.get(timeout=60)  # raises if the broker did not take it: then nothing is committed

    def _settle(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        """Produce the output of every finished batch, in any order, then commit what is contiguous."""
        for batch in self._inflight:
            if batch.settled or batch.abandoned or not batch.future.done():
                continue
            if time.monotonic() < batch.produce_again_at:
                continue
            try:
                result = batch.future.result()
            except Abandoned:
                batch.abandoned = True
                continue
            try:
                self._produce(producer, result)
            except KafkaError as exc:  # the broker did not acknowledge: produce again shortly, never skip
                RETRIES.inc()
                log.error("producing a batch's output failed (%s); trying again in 1s", exc)
                batch.produce_again_at = time.monotonic() + 1.0
                continue
            batch.settled = True
            self._count(result)
        self._commit(consumer)

    def _commit(self, consumer: KafkaConsumer) -> None:
        """Commit each partition up to the first record of its oldest batch not yet settled (a batch still
        retrying holds back its own partitions only), and forget the batches committed whole."""
        held: dict[TopicPartition, int] = {}  # partition -> first offset not yet settled
        for batch in self._inflight:
            if not batch.settled:
                for tp, start in batch.starts.items():
                    held[tp] = min(held.get(tp, start), start)
        offsets: dict[TopicPartition, int] = {}
        done: list[_InFlight] = []
        for batch in self._inflight:
            if not batch.settled:
                continue
            free = {tp: end for tp, end in batch.ends.items() if tp not in held or end <= held[tp]}
            for tp, end in free.items():
                offsets[tp] = max(offsets.get(tp, -1), end)
            if len(free) == len(batch.ends):
                done.append(batch)
        offsets = {tp: o for tp, o in offsets.items() if o > self._committed.get(tp, -1)}
        if offsets:
            try:
                consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
                self._committed.update(offsets)
            except CommitFailedError as exc:  # the group moved on; the partitions' new owner replays them
                log.warning(
                    "commit refused after a rebalance (%s); the new owner replays %d records",
                    exc,
                    sum(len(b.records) for b in done),
                )
            except KafkaError as exc:  # the broker is away: the batches stay, a later settle commits them
                log.error("committing failed (%s); trying again", exc)
                return
        for batch in done:
            self._inflight.remove(batch)
            BATCH_SECONDS.observe(time.monotonic() - batch.polled_at)

    def _count(self, result: BatchResult) -> None:
        for r, exc in result.dead:
            log.warning("dead letter %s[%d]@%d: %s: %s", r.topic, r.partition, r.offset, exc.reason, exc)
        MESSAGES.labels("audited").inc(result.audited)
        MESSAGES.labels("dead_lettered").inc(len(result.dead))
        st = self.stats
        st.audited, st.new = st.audited + result.audited, st.new + result.new
        st.dead_lettered, st.relabels, st.batches = (
            st.dead_lettered + len(result.dead),
            st.relabels + len(result.relabels),
            st.batches + 1,
        )

    def _drain(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        """Before stopping or giving up the partitions: let the batches running finish (up to
        ``consume_drain_timeout_s``), give up those waiting to retry, commit what is done, forget the rest
        (uncommitted, so replayed by whoever owns the partition next)."""
        self._giving_up.set()
        deadline = time.monotonic() + self.settings.consume_drain_timeout_s
        try:
            while time.monotonic() < deadline and any(not (b.settled or b.abandoned) for b in self._inflight):
                self._settle(consumer, producer)
                time.sleep(0.02)
            self._settle(consumer, producer)
            left = [b for b in self._inflight if not b.settled]
            if left:
                log.warning(
                    "%d batches (%d records) left uncommitted; they will be consumed again",
                    len(left),
                    sum(len(b.records) for b in left),
                )
            self._inflight.clear()
        finally:
            self._giving_up.clear()

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        """The group's lag as ``kafka-consumer-groups.sh`` shows it: log end offset minus committed offset."""
        assigned = list(consumer.assignment())
        if not assigned:
            return
        try:
            ends = consumer.end_offsets(assigned)
        except KafkaError as exc:  # the broker is away; the next update catches up
            log.debug("lag not updated: %s", exc)
            return
        for tp in assigned:
            if tp not in self._committed:
                self._committed[tp] = consumer.committed(tp) or 0
            LAG.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - self._committed[tp]))

    def request_stop(self, *_args: object) -> None:
        self._stop.set()

    def run(self) -> ConsumerStats:
        s = self.settings
        self._worker.start()
        self._submit(self._open_runtime()).result()
        self.ensure_topics()
        clients = self._connect()
        if clients is None:  # stopped before the broker answered
            self._close_runtime()
            return self.stats
        consumer, producer = clients
        outer = self

        class DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no types: Any
            def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
                outer._drain(consumer, producer)  # commit what we hold before another member takes it

            def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
                outer.stats.last_message_at = time.monotonic()  # idle time counts from the assignment
                log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

        consumer.subscribe([s.kafka_topic], listener=DrainOnRevoke())
        log.info("consuming %s as group %s from %s", s.kafka_topic, s.kafka_group_id, s.kafka_bootstrap_servers)
        last_report = last_lag = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._inflight:
                    self._settle(consumer, producer)
                full = len(self._inflight) >= s.consume_max_inflight_batches
                if full and not consumer.paused():
                    consumer.pause(*consumer.assignment())
                elif not full and consumer.paused():
                    consumer.resume(*consumer.paused())
                PAUSED.set(1 if full else 0)
                polled = consumer.poll(timeout_ms=20 if self._inflight else 500)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    self._inflight.append(_InFlight(records, self._submit(self._audit_resilient(records))))
                    self.stats.last_message_at = time.monotonic()
                if time.monotonic() - last_lag > 1:
                    self._update_lag(consumer)
                    last_lag = time.monotonic()
                if time.monotonic() - last_report > 10:
                    log.info(
                        "audited %d (new %d), dead letters %d, relabel requests %d",
                        self.stats.audited,
                        self.stats.new,
                        self.stats.dead_lettered,
                        self.stats.relabels,
                    )
                    last_report = time.monotonic()
                if self._should_stop(consumer):
                    break
            self._drain(consumer, producer)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=30)
            self._close_runtime()
        log.info("stopped: audited %d, dead letters %d", self.stats.audited, self.stats.dead_lettered)
        return self.stats

    def _connect(self) -> tuple[KafkaConsumer, KafkaProducer] | None:
        """The clients, once a broker answers: a consumer (re)started while the brokers are away waits for
        them with backoff instead of exiting. None if asked to stop meanwhile."""
        attempt = 0
        while not self._stop.is_set():
            try:
                return self._clients()
            except NoBrokersAvailable:
                attempt += 1
                delay = self._backoff(attempt)
                log.error(
                    "no broker at %s answers; trying again in %.1fs", self.settings.kafka_bootstrap_servers, delay
                )
                self._stop.wait(delay)
        return None

    def _close_runtime(self) -> None:
        self._giving_up.set()  # a batch still retrying gives up, so the runtime can close
        self._submit(self._exit.aclose()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _should_stop(self, consumer: KafkaConsumer) -> bool:
        if self.max_messages is not None and self.stats.audited + self.stats.dead_lettered >= self.max_messages:
            return not self._inflight
        if self.stop_when_idle_s is not None and not self._inflight and consumer.assignment():
            return time.monotonic() - self.stats.last_message_at > self.stop_when_idle_s
        return False


def consume(
    settings: Settings,
    *,
    metrics_port: int = 0,
    stop_when_idle_s: float | None = None,
    max_messages: int | None = None,
    store: AuditStore | None = None,
) -> ConsumerStats:
    """Run one consumer until SIGTERM/SIGINT (or the stop options) in this process."""
    consumer = StreamConsumer(settings, stop_when_idle_s=stop_when_idle_s, max_messages=max_messages, store=store)
    signal.signal(signal.SIGTERM, consumer.request_stop)
    signal.signal(signal.SIGINT, consumer.request_stop)
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
    return consumer.run()
