"""``labelaudit consume``: audit the labeled images on a Kafka topic, losing nothing.

The loop, per batch of polled records:

1. parse each record (``messages.parse_record``); a bad one becomes a dead letter with its reason;
2. audit the good ones through the shared ``Auditor`` (decode, classify, judge, write the verdicts to
   the store in one transaction, durable before it returns);
3. produce the dead letters (original key, value and headers plus the cause) and a relabel request for
   every disagreement, and wait until the broker acknowledged all of them;
4. only then commit the batch's offsets.

A crash anywhere before 4 replays the batch: the store ignores verdicts it already holds (unique on
item, labeler and model version), so nothing is written twice; the relabel topic may see a request
again, with the same ``request_id``. Step 2 runs in a worker thread while the main thread keeps polling,
so at most ``consume_max_inflight_batches`` batches are in flight; past that the partitions are paused
and ``poll`` only keeps the group membership alive, so memory stays flat and a slow model or store never
gets the consumer thrown out of its group. A batch whose audit fails as a whole (the backend or the
store unreachable) is retried with backoff, never skipped. SIGTERM or SIGINT: finish the batches in
flight, commit, leave the group, exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from labelaudit.errors import LabelAuditError
from labelaudit.serving.core.audit import Stages
from labelaudit.serving.core.runtime import Runtime, open_runtime
from labelaudit.serving.settings import Settings
from labelaudit.serving.stream.messages import dead_letter_headers, parse_record, relabel_request
from labelaudit.serving.stream.producer import ensure_topics

log = logging.getLogger("labelaudit.stream")

MESSAGES = Counter("labelaudit_consumer_messages_total", "Records consumed, by outcome", ["outcome"])
BATCH_SECONDS = Histogram("labelaudit_consumer_batch_seconds", "Poll-to-commit time of one batch")
LAG = Gauge("labelaudit_consumer_lag", "Messages behind the partition's end", ["topic", "partition"])
PAUSED = Gauge("labelaudit_consumer_paused", "1 while the partitions are paused for back-pressure")
RETRIES = Counter("labelaudit_consumer_batch_retries_total", "Batches retried after a failed audit")


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
    records: list  # the consumer records, in poll order
    relabels: list[tuple[bytes, bytes]]
    dead: list[tuple[object, LabelAuditError]]
    audited: int
    new: int


@dataclass
class _InFlight:
    records: list
    future: Future
    polled_at: float = field(default_factory=time.monotonic)
    attempts: int = 1


class StreamConsumer:
    def __init__(self, settings: Settings, *, stop_when_idle_s: float | None = None, max_messages: int | None = None):
        self.settings = settings
        self.stop_when_idle_s, self.max_messages = stop_when_idle_s, max_messages
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._inflight: deque[_InFlight] = deque()
        self._committed: dict[TopicPartition, int] = {}  # what this process committed, for the lag metric
        self._loop = asyncio.new_event_loop()
        self._worker = threading.Thread(target=self._loop.run_forever, name="labelaudit-audit", daemon=True)
        self._runtime: Runtime | None = None
        self._exit = AsyncExitStack()

    # -- the audit side (worker thread) ---------------------------------------------------------------

    def _submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _open_runtime(self) -> None:
        self._runtime = await self._exit.enter_async_context(open_runtime(self.settings))
        self._stages = Stages.one_at_a_time()  # batches in flight overlap as a pipeline, not all at once

    async def _audit(self, records: list) -> BatchResult:
        items, item_records, dead = [], [], []
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
        relabels, audited, new = [], 0, 0
        for record, outcome in zip(item_records, outcomes, strict=True):
            if isinstance(outcome, LabelAuditError):
                dead.append((record, outcome))
                continue
            verdict, is_new = outcome
            audited, new = audited + 1, new + int(is_new)
            if verdict.disagrees:  # also when not new: the crash may have come before the produce
                relabels.append(relabel_request(verdict))
        return BatchResult(records, relabels, dead, audited, new)

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
            # a fetch of several images would fail forever ("Invalid frame length").
            receive_message_max_bytes=fetch_bytes + 1_048_576,
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

    def _finish(self, consumer: KafkaConsumer, producer: KafkaProducer, result: BatchResult) -> None:
        """Produce, wait for the acknowledgements, then commit: in that order, or not at all."""
        s = self.settings
        futures = [
            producer.send(s.kafka_dlq_topic, key=r.key, value=r.value, headers=dead_letter_headers(r, exc))
            for r, exc in result.dead
        ]
        futures += [producer.send(s.kafka_relabel_topic, key=k, value=v) for k, v in result.relabels]
        producer.flush()
        for f in futures:
            f.get(timeout=60)  # raises if the broker did not take it: then nothing is committed
        offsets: dict[TopicPartition, int] = {}
        for r in result.records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        self._committed.update(offsets)
        for r, exc in result.dead:
            log.warning("dead letter %s[%d]@%d: %s: %s", r.topic, r.partition, r.offset, exc.reason, exc)
        MESSAGES.labels("audited").inc(result.audited)
        MESSAGES.labels("dead_lettered").inc(len(result.dead))
        st = self.stats
        st.audited, st.new = st.audited + result.audited, st.new + result.new
        st.dead_lettered, st.relabels, st.batches = (
            st.dead_lettered + len(result.dead), st.relabels + len(result.relabels), st.batches + 1,
        )  # fmt: skip

    def _settle_head(self, consumer, producer, *, block: bool) -> bool:
        """Finish the oldest batch if it is done (or wait for it); False when it is still running."""
        head = self._inflight[0]
        if not block and not head.future.done():
            return False
        try:
            result = head.future.result()
        except Exception as exc:  # the whole batch failed: backend or store down. Retry, never skip.
            RETRIES.inc()
            delay = min(30.0, 0.5 * 2 ** min(head.attempts, 6))
            log.error("batch of %d failed (attempt %d: %s); retrying in %.1fs", len(head.records), head.attempts,
                      exc, delay)  # fmt: skip
            time.sleep(delay)
            head.future, head.attempts = self._submit(self._audit(head.records)), head.attempts + 1
            return False
        try:
            self._finish(consumer, producer, result)
        except CommitFailedError as exc:  # the group moved on; the partition's new owner replays the batch
            log.warning("commit refused after a rebalance (%s); the new owner replays %d records", exc,
                        len(head.records))  # fmt: skip
        except KafkaError as exc:  # the broker did not acknowledge: produce and commit again later
            RETRIES.inc()
            log.error("producing or committing a batch failed (%s); retrying in 1s", exc)
            time.sleep(1.0)
            return False
        BATCH_SECONDS.observe(time.monotonic() - head.polled_at)
        self._inflight.popleft()
        return True

    def _drain(self, consumer, producer) -> None:
        while self._inflight:
            self._settle_head(consumer, producer, block=True)

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

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def run(self) -> ConsumerStats:
        s = self.settings
        self._worker.start()
        self._submit(self._open_runtime()).result()
        self.ensure_topics()
        consumer, producer = self._clients()
        outer = self

        class DrainOnRevoke(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                outer._drain(consumer, producer)  # commit what we hold before another member takes it

            def on_partitions_assigned(self, assigned):
                outer.stats.last_message_at = time.monotonic()  # idle time counts from the assignment
                log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

        consumer.subscribe([s.kafka_topic], listener=DrainOnRevoke())
        log.info("consuming %s as group %s from %s", s.kafka_topic, s.kafka_group_id, s.kafka_bootstrap_servers)
        last_report = last_lag = time.monotonic()
        try:
            while not self._stop.is_set():
                while self._inflight and self._settle_head(consumer, producer, block=False):
                    pass
                full = len(self._inflight) >= s.consume_max_inflight_batches
                if full and not consumer.paused():
                    consumer.pause(*consumer.assignment())
                elif not full and consumer.paused():
                    consumer.resume(*consumer.paused())
                PAUSED.set(1 if full else 0)
                polled = consumer.poll(timeout_ms=20 if self._inflight else 500)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    self._inflight.append(_InFlight(records, self._submit(self._audit(records))))
                    self.stats.last_message_at = time.monotonic()
                if time.monotonic() - last_lag > 1:
                    self._update_lag(consumer)
                    last_lag = time.monotonic()
                if time.monotonic() - last_report > 10:
                    log.info("audited %d (new %d), dead letters %d, relabel requests %d",
                             self.stats.audited, self.stats.new, self.stats.dead_lettered, self.stats.relabels)  # fmt: skip
                    last_report = time.monotonic()
                if self._should_stop(consumer):
                    break
            self._drain(consumer, producer)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=30)
            self._submit(self._exit.aclose()).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
        log.info("stopped: audited %d, dead letters %d", self.stats.audited, self.stats.dead_lettered)
        return self.stats

    def _should_stop(self, consumer: KafkaConsumer) -> bool:
        if self.max_messages is not None and self.stats.audited + self.stats.dead_lettered >= self.max_messages:
            return not self._inflight
        if self.stop_when_idle_s is not None and not self._inflight and consumer.assignment():
            return time.monotonic() - self.stats.last_message_at > self.stop_when_idle_s
        return False


def consume(settings: Settings, *, metrics_port: int = 0, **options) -> ConsumerStats:
    """Run one consumer until SIGTERM/SIGINT (or the stop options) in this process."""
    consumer = StreamConsumer(settings, **options)
    signal.signal(signal.SIGTERM, consumer.request_stop)
    signal.signal(signal.SIGINT, consumer.request_stop)
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
    return consumer.run()
