"""The micro-batcher's own logic, with a fake model at the boundary: each caller gets its own rows,
batches respect the size limit and the delay, overload is refused at once, failures reach every caller; and
which batcher a process gets for its backend and its callers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labelaudit.serving.core.admission import Overloaded
from labelaudit.serving.core.batching import Chunked, InFlightLimit, MicroBatcher, batcher_for
from labelaudit.serving.settings import Settings


class FakeModel:
    """Returns each image's first pixel as a 'probability' row, so answers can be traced to inputs."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batch_sizes: list[int] = []
        self.delay, self.fail = delay, fail

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(images))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.repeat(images[:, 0, 0, :1], 3, axis=1)  # (n, 3)


class Observer:
    def __init__(self):
        self.events = []

    def batch_released(self, **event):
        self.events.append(event)


def _images(tag: int, n: int = 1) -> np.ndarray:
    return (
        np.full((n, 1, 2, 2), float(tag), dtype=np.float32) + np.arange(n, dtype=np.float32)[:, None, None, None] / 100
    )


async def _run(batcher: MicroBatcher, coro):
    await batcher.start()
    try:
        return await coro
    finally:
        await batcher.stop()


def test_concurrent_callers_each_get_exactly_their_own_rows():
    model, observer = FakeModel(delay=0.005), Observer()
    batcher = MicroBatcher(model, max_batch_size=16, max_delay_s=0.01, max_queue_images=4096, observer=observer)
    sizes = [1 + (i % 4) for i in range(200)]

    async def many():
        return await asyncio.gather(*(batcher.submit(_images(i, n)) for i, n in enumerate(sizes)))

    results = asyncio.run(_run(batcher, many()))

    for i, (n, rows) in enumerate(zip(sizes, results, strict=True)):
        assert rows.shape == (n, 3)
        np.testing.assert_allclose(rows[:, 0], i + np.arange(n) / 100, rtol=1e-6)
    assert max(model.batch_sizes) <= 16 and max(model.batch_sizes) > 1  # batched, within the limit
    assert sum(model.batch_sizes) == sum(sizes)
    assert {e["reason"] for e in observer.events} <= {"full", "timeout", "idle"}
    assert sum(e["images"] for e in observer.events) == sum(sizes)


def test_a_lone_request_waits_the_delay_only_while_someone_is_on_the_way():
    model, observer = FakeModel(), Observer()
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=0.005, observer=observer)

    async def lone_with_a_caller_still_decoding():
        with batcher.coming():  # announced, never submits: the batch waits for it until the delay
            return await batcher.submit(_images(7, 2))

    rows = asyncio.run(_run(batcher, lone_with_a_caller_still_decoding()))
    assert rows.shape == (2, 3) and model.batch_sizes == [2]
    assert observer.events[0]["reason"] == "timeout" and observer.events[0]["queue_delay_s"] >= 0.004


def test_a_lone_request_with_nobody_coming_is_released_at_once():
    model, observer = FakeModel(), Observer()
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=60.0, observer=observer)  # a delay never reached
    rows = asyncio.run(_run(batcher, asyncio.wait_for(batcher.submit(_images(7, 2)), 10)))
    assert rows.shape == (2, 3) and observer.events[0]["reason"] == "idle"


def test_a_batch_waits_for_the_callers_on_their_way_and_no_longer():
    model, observer = FakeModel(), Observer()
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=60.0, observer=observer)

    async def decoding(tag: int, steps: int):
        with batcher.coming():
            for _ in range(steps):  # "decoding": a few turns of the loop
                await asyncio.sleep(0)
            images = _images(tag)
        return await batcher.submit(images)

    async def three():
        with batcher.coming():  # the first caller announces itself too, like every caller of the core
            pass
        return await asyncio.gather(batcher.submit(_images(0)), decoding(1, 3), decoding(2, 6))

    results = asyncio.run(_run(batcher, asyncio.wait_for(three(), 10)))
    assert [float(r[0, 0]) for r in results] == [0.0, 1.0, 2.0]
    assert model.batch_sizes == [3] and observer.events[0]["reason"] == "idle"


def test_a_request_larger_than_the_batch_goes_alone_and_whole():
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=4, max_delay_s=0.001, max_queue_images=64)
    rows = asyncio.run(_run(batcher, batcher.submit(_images(3, 9))))
    assert rows.shape == (9, 3) and model.batch_sizes == [9]


def test_overload_is_refused_at_once_with_a_retry_hint():
    model = FakeModel(delay=0.05)
    batcher = MicroBatcher(model, max_batch_size=2, max_delay_s=0.001, max_queue_images=4)

    async def flood():
        tasks = [asyncio.create_task(batcher.submit(_images(i))) for i in range(12)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(_run(batcher, flood()))
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert refused and served and len(refused) + len(served) == 12
    assert all(r.status_code == 429 and r.retry_after_s >= 1 for r in refused)


def test_a_failed_batch_reaches_its_callers_and_the_batcher_goes_on():
    model = FakeModel(fail=True)
    batcher = MicroBatcher(model, max_batch_size=8, max_delay_s=0.002)

    async def scenario():
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.submit(_images(1))
        model.fail = False
        return await batcher.submit(_images(2))

    rows = asyncio.run(_run(batcher, scenario()))
    assert rows[0, 0] == pytest.approx(2.0)
    assert batcher.queued_images == 0


def test_a_backlog_is_batched_whole_not_one_request_at_a_time():
    """While one batch is in the model, requests pile up past their delay; the next batch takes them all
    (a regression: batches of 1 at concurrency 64, found by the serving benchmark)."""
    model = FakeModel(delay=0.05)
    batcher = MicroBatcher(model, max_batch_size=16, max_delay_s=0.001, max_queue_images=64)

    async def backlog():
        first = asyncio.create_task(batcher.submit(_images(0)))
        await asyncio.sleep(0.01)  # the first batch is now in the model
        waiting = [asyncio.create_task(batcher.submit(_images(k))) for k in range(1, 11)]
        return await asyncio.gather(first, *waiting)

    results = asyncio.run(_run(batcher, backlog()))
    assert [float(r[0, 0]) for r in results] == list(range(11))
    assert model.batch_sizes == [1, 10]


def test_a_caller_that_brings_whole_batches_gets_one_backend_call_per_max_batch_size_rows():
    model = FakeModel()
    images = _images(3, 10)
    rows = asyncio.run(Chunked(model, max_batch_size=4).submit(images))
    assert model.batch_sizes == [4, 4, 2]
    np.testing.assert_allclose(rows[:, 0], images[:, 0, 0, 0])


class FakeBackend:
    infer = FakeModel()


@pytest.mark.parametrize(
    ("backend", "batching", "expected"),
    [
        ("onnxruntime", "dynamic", MicroBatcher),
        ("triton", "dynamic", InFlightLimit),  # Triton gathers on its own side: only a bound here
        ("onnxruntime", "caller", Chunked),
        ("triton", "caller", Chunked),
    ],
)
def test_the_batcher_follows_the_backend_and_the_callers(backend, batching, expected):
    settings = Settings(backend=backend, max_batch_size=8, max_queue_images=32, max_batch_delay_ms=3)
    batcher = batcher_for(FakeBackend(), settings, batching)
    assert type(batcher) is expected
    if isinstance(batcher, MicroBatcher):
        assert (batcher.max_batch_size, batcher.max_queue_images, batcher.max_delay_s) == (8, 32, 0.003)
    if isinstance(batcher, InFlightLimit):
        assert batcher.max_queue_images == 32
    if isinstance(batcher, Chunked):
        assert batcher.max_batch_size == 8
