"""The micro-batcher's own logic, with a fake model at the boundary: each caller gets its own rows,
batches respect the size limit and the delay, overload is refused at once, failures reach every caller; and
which batcher a process gets for its backend and its callers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labelaudit.errors import ImageError
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


def _decode(name, data: bytes) -> np.ndarray:
    """A fake decoder: b"7" -> a (1, 2, 2) image of 7s; anything not a number fails as a bad image does."""
    import threading

    DECODING_THREADS.add(threading.get_ident())
    try:
        return np.full((1, 2, 2), float(data), dtype=np.float32)
    except ValueError:
        raise ImageError(f"image {name}: not a number", reason="bad_image", status_code=422) from None


DECODING_THREADS: set[int] = set()


def test_encoded_requests_are_decoded_with_their_batch_and_a_bad_image_fails_alone():
    """Encoded callers get per image their own row or their own error; the whole batch is decoded in one
    hand-off to a worker thread (never on the event loop) and goes to the model in one call."""
    import threading

    model, observer = FakeModel(delay=0.02), Observer()
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=0.05, observer=observer)
    requests = [[b"1", b"2"], [b"3", b"oops", b"4"], [b"nope"], [b"5"]]

    async def scenario():
        first = asyncio.create_task(batcher.submit(_images(9)))  # ready tensors share the batches too
        await asyncio.sleep(0.005)  # the first batch is in the model: the encoded ones queue behind it
        encoded = [batcher.submit_encoded(r, list(range(len(r))), _decode) for r in requests]
        return await asyncio.gather(first, *encoded)

    DECODING_THREADS.clear()
    tensor_rows, *answers = asyncio.run(_run(batcher, scenario()))
    assert float(tensor_rows[0, 0]) == 9.0
    got = [[x.reason if isinstance(x, ImageError) else float(x[0]) for x in answer] for answer in answers]
    assert got == [[1.0, 2.0], [3.0, "bad_image", 4.0], ["bad_image"], [5.0]]
    assert "image 1" in str(answers[1][1])  # named by its place in its own request
    assert model.batch_sizes == [1, 5]  # the 7 encoded images in one batch, the 2 bad ones left out of the model
    assert threading.get_ident() not in DECODING_THREADS and len(DECODING_THREADS) == 1
    assert batcher.queued_images == 0 and [e["images"] for e in observer.events] == [1, 7]


def test_a_batch_of_only_bad_images_never_calls_the_model():
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_delay_s=0.001)
    answer = asyncio.run(_run(batcher, batcher.submit_encoded([b"x"], [0], _decode)))
    assert isinstance(answer[0], ImageError) and model.batch_sizes == []


def test_large_encoded_batches_are_decoded_in_parallel_slices_in_order(monkeypatch):
    """Photos (many declared pixels) are split among a few threads; answers still come back in order."""
    import labelaudit.serving.core.batching as batching

    monkeypatch.setattr(batching, "DECODE_SLICES", 3)
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=0.05)
    slices: list[int] = []
    real = batching._decode_jobs
    monkeypatch.setattr(batching, "_decode_jobs", lambda jobs: slices.append(len(jobs)) or real(jobs))
    images = [str(i).encode() for i in range(10)]

    async def small_then_big():
        small = await batcher.submit_encoded(images, list(range(10)), _decode, pixels=10)
        big = await batcher.submit_encoded(
            images, list(range(10)), _decode, pixels=batching.PIXELS_PER_DECODE_SLICE * 10
        )
        return small, big

    small, big = asyncio.run(_run(batcher, small_then_big()))
    assert [float(x[0]) for x in small] == [float(x[0]) for x in big] == list(range(10))
    assert slices == [10, 3, 3, 4]  # small: one hand-off; big: DECODE_SLICES of them


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


def test_a_caller_that_left_does_not_shift_the_rows_of_the_others():
    model = FakeModel(delay=0.02)
    batcher = MicroBatcher(model, max_batch_size=64, max_delay_s=0.05)

    async def scenario():
        first = asyncio.create_task(batcher.submit(_images(9)))
        await asyncio.sleep(0.005)  # the first batch is in the model; the next three queue behind it
        tasks = [asyncio.create_task(batcher.submit_encoded(r, [0, 1], _decode)) for r in ([b"1", b"2"], [b"3", b"4"])]
        tasks.insert(1, asyncio.create_task(batcher.submit(_images(7, 2))))
        await asyncio.sleep(0)
        tasks[0].cancel()  # the first caller of the next batch goes away
        await first
        return await asyncio.gather(*tasks[1:])

    tensor_rows, encoded = asyncio.run(_run(batcher, scenario()))
    np.testing.assert_allclose(tensor_rows[:, 0], [7.0, 7.01], rtol=1e-6)
    assert [float(x[0]) for x in encoded] == [3.0, 4.0]
    assert model.batch_sizes == [1, 6]
