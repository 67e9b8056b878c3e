"""How inference calls reach the backend: the runtime builds one ``Batcher`` per process (``batcher_for``).

``"dynamic"`` (the gateway): concurrent callers each submit their own few images. With the embedded backend a
``MicroBatcher`` gathers them into one inference call; Triton batches on its own side (config.pbtxt
``dynamic_batching``), so there ``InFlightLimit`` only bounds the images in flight. ``"caller"`` (the consumer):
the caller brings whole batches, and ``Chunked`` calls the backend once per ``max_batch_size`` rows.

``MicroBatcher`` releases a batch when it holds ``max_batch_size`` images ("full"), when its first request has
waited ``max_delay_s`` ("timeout"), or at once when no other request is waiting or on its way ("idle":
callers that decode before they submit announce themselves with ``coming()``, so a lone request never waits
for companions that are not there). Requests are never split across batches, so each caller gets back
exactly its own rows. Past ``max_queue_images`` waiting images, ``submit`` refuses at once with
``Overloaded`` (HTTP 429 with Retry-After) instead of letting latency pile up.

Callers with encoded images (the gateway's classify routes) hand them over as they are (``submit_encoded``):
the batch decodes them, all its requests' images in one hand-off to a worker thread (a few threads for a
batch of large photos), and then runs the model. One thread hand-off per request was, after HTTP itself, the
largest cost of a small image's request (issue 19): each one wakes a thread and takes the GIL twice.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from labelaudit.errors import ImageError
from labelaudit.serving.core.admission import Overloaded

if TYPE_CHECKING:
    from labelaudit.serving.core.backends import Backend
    from labelaudit.serving.settings import Settings

Batching = Literal["dynamic", "caller"]
Release = Literal["full", "timeout", "idle"]
Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]
Name = int | str  # an image's name in its errors: its place in the request, or its item id
# One encoded image -> its (C, H, W) input, or ``ImageError``; synchronous, run in a worker thread.
Decode = Callable[[Name, bytes], np.ndarray]
# Per image of an encoded request: its probabilities (K,) or why it could not be classified.
Outcome = np.ndarray | ImageError

SubmitEncoded = Callable[..., Awaitable[list[Outcome]]]  # MicroBatcher.submit_encoded

# A batch's images are decoded in one worker thread, or split among up to this many when they declare more
# than PIXELS_PER_DECODE_SLICE pixels (photos): Pillow releases the GIL, so the slices decode in parallel.
DECODE_SLICES = max(1, min(4, os.cpu_count() or 1))
PIXELS_PER_DECODE_SLICE = 1_000_000


class Batcher(Protocol):
    """What the inference core calls: ``submit`` images (n, C, H, W) for their probabilities (n, K), and
    ``coming()`` around the work before a submit (decoding), so a batch knows who is on the way."""

    queued_images: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, images: np.ndarray) -> np.ndarray: ...

    def coming(self) -> AbstractContextManager[None]: ...


class BatchObserver(Protocol):
    """Told about every released batch (the Prometheus metrics implement it)."""

    def batch_released(
        self, *, images: int, requests: int, reason: Release, queue_delay_s: float, queued_images: int
    ) -> None: ...


@dataclass
class _Pending:
    """One caller's images in the queue: ready tensors (``images``), or encoded files for the batch to decode
    (``encoded``, with their ``names`` and ``decode``). ``n``: how many images, either way."""

    n: int
    future: asyncio.Future[Any]  # its rows (n, K) for tensors; a list of Outcome for encoded images
    images: np.ndarray | None = None  # (n, C, H, W)
    encoded: list[bytes] | None = None
    names: list[Name] = field(default_factory=list)
    decode: Decode | None = None
    pixels: int = 0  # declared by the encoded images' headers: how much decoding they are
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        infer: Infer,
        *,
        max_batch_size: int = 64,
        max_delay_s: float = 0.002,
        max_queue_images: int = 1024,
        observer: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or max_queue_images < max_batch_size:
            raise ValueError("need 1 <= max_batch_size <= max_queue_images")
        self.infer, self.observer = infer, observer
        self.max_batch_size, self.max_delay_s, self.max_queue_images = max_batch_size, max_delay_s, max_queue_images
        self.queued_images = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None  # a request that did not fit the previous batch
        self._worker: asyncio.Task[None] | None = None
        self._mean_batch_s = 0.01  # running estimate of one batch's inference time, for Retry-After
        self.on_the_way = 0  # requests decoding their images, about to submit (see ``coming``)

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Around a caller's work before ``submit`` (decoding): while it runs, a batch waits for it (up to
        the delay); when nobody is on the way and nothing is queued, a batch is released at once."""
        self.on_the_way += 1
        try:
            yield
        finally:
            self.on_the_way -= 1

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue ``images`` (n, C, H, W); returns their probabilities (n, K) in the same order."""
        result: np.ndarray = await self._enqueue(_Pending(len(images), self._future(), images=images))
        return result

    async def submit_encoded(
        self, images: list[bytes], names: list[Name], decode: Decode, *, pixels: int = 0
    ) -> list[Outcome]:
        """Queue encoded ``images``; the batch decodes them with ``decode`` (in a worker thread) and runs the
        model on those that decoded. Returns per image its probabilities (K,) or its ``ImageError``."""
        pending = _Pending(len(images), self._future(), encoded=images, names=names, decode=decode, pixels=pixels)
        result: list[Outcome] = await self._enqueue(pending)
        return result

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, pending: _Pending) -> Any:
        if self.queued_images + pending.n > self.max_queue_images:
            batches_ahead = self.queued_images / self.max_batch_size + 1
            raise Overloaded(
                f"{self.queued_images} images are already waiting (limit {self.max_queue_images}); retry shortly",
                retry_after_s=max(1.0, batches_ahead * self._mean_batch_s),
            )
        self.queued_images += pending.n
        self._queue.put_nowait(pending)  # unbounded queue: put never waits (its bound is the check above)
        return await pending.future

    async def _next(self, timeout: float | None) -> _Pending:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    def _next_nowait(self) -> _Pending | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _gather(self) -> tuple[list[_Pending], Release]:
        """Up to ``max_batch_size`` images: whatever is already waiting, then more until the first
        request's delay is used up. Under a backlog the deadline is long past when a batch starts, so the
        batch is everything queued (never just its first request: that was a measured bug, batches of 1
        at concurrency 64)."""
        batch = [await self._next(None)]
        size = batch[0].n
        deadline = batch[0].enqueued + self.max_delay_s
        item: _Pending | None
        while size < self.max_batch_size:
            if not self.on_the_way and self._carry is None and self._queue.empty():
                return batch, "idle"  # nobody else is coming: waiting would only add latency
            remaining = deadline - time.perf_counter()
            if remaining > 0:
                try:
                    item = await self._next(remaining)
                except TimeoutError:
                    return batch, "timeout"
            elif (item := self._next_nowait()) is None:
                return batch, "timeout"
            if size + item.n > self.max_batch_size:
                self._carry = item  # never split a request: it opens the next batch
                return batch, "full"
            batch.append(item)
            size += item.n
        return batch, "full"

    async def _run(self) -> None:
        while True:
            batch, reason = await self._gather()
            images = sum(p.n for p in batch)
            self.queued_images -= images
            if self.observer:
                delay = time.perf_counter() - batch[0].enqueued
                self.observer.batch_released(
                    images=images,
                    requests=len(batch),
                    reason=reason,
                    queue_delay_s=delay,
                    queued_images=self.queued_images,
                )
            await self._infer_and_answer(batch)

    async def _infer_and_answer(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            decoded = await self._decode(batch)
            blocks = [p.images if p.images is not None else _stack_good(decoded[i]) for i, p in enumerate(batch)]
            present = [b for b in blocks if b is not None]
            probs = await self.infer(np.concatenate(present)) if present else np.empty((0, 0), np.float32)
        except Exception as exc:  # every caller of this batch hears why; the batcher goes on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._mean_batch_s = 0.9 * self._mean_batch_s + 0.1 * (time.perf_counter() - started)
        offset = 0
        for i, p in enumerate(batch):
            block = blocks[i]
            rows = probs[offset : offset + (0 if block is None else len(block))]
            offset += len(rows)
            if p.future.done():  # a caller that went away (cancelled) is skipped
                continue
            if p.images is not None:
                p.future.set_result(rows)
                continue
            answers = iter(rows)
            p.future.set_result([x if isinstance(x, ImageError) else next(answers) for x in decoded[i]])

    async def _decode(self, batch: list[_Pending]) -> dict[int, list[np.ndarray | ImageError]]:
        """The batch's encoded images (by place in the batch) decoded in worker threads: one hand-off for the
        whole batch, or a few in parallel when its images are large."""
        encoded = [(i, p) for i, p in enumerate(batch) if p.encoded is not None]
        if not encoded:
            return {}
        jobs = [
            (p.decode, name, data)
            for _, p in encoded
            if p.decode is not None and p.encoded is not None
            for name, data in zip(p.names, p.encoded, strict=True)
        ]
        pixels = sum(p.pixels for _, p in encoded)
        slices = max(1, min(len(jobs), DECODE_SLICES, pixels // PIXELS_PER_DECODE_SLICE))
        bounds = [len(jobs) * k // slices for k in range(slices + 1)]
        loop = asyncio.get_running_loop()  # run_in_executor: to_thread's context copy is per-call overhead
        parts = await asyncio.gather(
            *(loop.run_in_executor(None, _decode_jobs, jobs[a:b]) for a, b in itertools.pairwise(bounds))
        )
        flat = iter([x for part in parts for x in part])
        return {i: [next(flat) for _ in range(p.n)] for i, p in encoded}


def _decode_jobs(jobs: list[tuple[Decode, Name, bytes]]) -> list[np.ndarray | ImageError]:
    out: list[np.ndarray | ImageError] = []
    for decode, name, data in jobs:
        try:
            out.append(decode(name, data))
        except ImageError as exc:  # this image fails alone; its request hears why
            out.append(exc)
    return out


def _stack_good(inputs: list[np.ndarray | ImageError]) -> np.ndarray | None:
    good = [x for x in inputs if not isinstance(x, ImageError)]
    return np.stack(good) if good else None


class _NoWorker:
    """A batcher without a worker of its own: nothing to start or stop, nobody to wait for."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def coming(self) -> AbstractContextManager[None]:
        return nullcontext()


class InFlightLimit(_NoWorker):
    """For backends that batch on their own side (Triton): no gathering here, only a bound on the
    images in flight, past which callers get ``Overloaded`` at once. Same interface as MicroBatcher."""

    def __init__(self, infer: Infer, *, max_queue_images: int = 1024):
        self.infer, self.max_queue_images = infer, max_queue_images
        self.queued_images = 0

    async def submit(self, images: np.ndarray) -> np.ndarray:
        if self.queued_images + len(images) > self.max_queue_images:
            raise Overloaded(
                f"{self.queued_images} images already in flight (limit {self.max_queue_images})", retry_after_s=1.0
            )
        self.queued_images += len(images)
        try:
            return await self.infer(images)
        finally:
            self.queued_images -= len(images)


class Chunked(_NoWorker):
    """For callers that batch on their own (the consumer): one backend call per ``max_batch_size`` rows,
    in turn. Same interface as MicroBatcher; nothing queues here."""

    queued_images = 0

    def __init__(self, infer: Infer, *, max_batch_size: int):
        self.infer, self.max_batch_size = infer, max_batch_size

    async def submit(self, images: np.ndarray) -> np.ndarray:
        step = self.max_batch_size
        return np.concatenate([await self.infer(images[i : i + step]) for i in range(0, len(images), step)])


def batcher_for(
    backend: Backend, settings: Settings, batching: Batching, observer: BatchObserver | None = None
) -> Batcher:
    """The batcher a process with this backend and these callers needs (see the module's docstring)."""
    if batching == "caller":
        return Chunked(backend.infer, max_batch_size=settings.max_batch_size)
    if settings.backend != "onnxruntime":
        return InFlightLimit(backend.infer, max_queue_images=settings.max_queue_images)
    return MicroBatcher(
        backend.infer,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_batch_delay_ms / 1000,
        max_queue_images=settings.max_queue_images,
        observer=observer,
    )
