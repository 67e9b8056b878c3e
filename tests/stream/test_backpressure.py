"""A store slower than the stream: the consumer pauses its partitions instead of piling up work, keeps
polling so it stays in its group (a poll interval far shorter than the whole backlog takes), and still
audits every message once. The slow store is a wrapper of ours around the real SQLite store."""

from __future__ import annotations

import logging
import time

from labelaudit.produce import produce
from labelaudit.serving.core.store import open_store
from labelaudit.serving.stream.consumer import StreamConsumer
from tests.stream.streamkit import Stream, counts, good_messages


class SlowStore:
    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def write(self, records, answers=()):
        time.sleep(self.delay_s)
        return self.inner.write(records, answers)

    def count(self):
        return self.inner.count()

    def close(self):
        self.inner.close()


def test_a_slow_store_pauses_the_partitions_and_the_group_holds(
    broker, model_repo, tiny_data, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="labelaudit.stream")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    stream = Stream(broker, model_repo, url, tmp_path)
    n, poll_interval_s = 1_200, 4.0
    produce(stream.settings(), good_messages(tiny_data, n), partitions=2)

    settings = stream.settings(
        model_repo=model_repo,
        store_url=url,
        kafka_group_id=f"group-{stream.name}",
        consume_batch_size=50,
        consume_max_inflight_batches=2,
        kafka_max_poll_interval_ms=int(poll_interval_s * 1000),
        ort_intra_op_threads=1,
    )
    store = SlowStore(open_store(url), delay_s=0.7)
    consumer = StreamConsumer(settings, stop_when_idle_s=3, store=store)
    most_in_flight, paused_seen = [0], [False]
    update_lag = consumer._update_lag

    def watch(kafka_consumer):  # the consumer's loop calls this about once a second
        most_in_flight[0] = max(most_in_flight[0], len(consumer._inflight))
        paused_seen[0] |= bool(kafka_consumer.paused())
        update_lag(kafka_consumer)

    monkeypatch.setattr(consumer, "_update_lag", watch)
    started = time.monotonic()
    try:
        stats = consumer.run()
    finally:
        store.close()

    assert time.monotonic() - started > 3 * poll_interval_s  # the backlog took several poll intervals...
    assignments = [r for r in caplog.records if r.getMessage().startswith("assigned")]
    assert len(assignments) == 1, [r.getMessage() for r in assignments]  # ...and the group never dropped us
    assert paused_seen[0] and most_in_flight[0] <= 2
    assert (stats.audited, stats.new) == (n, n)
    assert counts(url) == (n, n)
