"""How inference calls reach the backend: the runtime builds one ``Batcher`` per process (``batcher_for``).

``"dynamic"`` (the gateway): concurrent callers each submit their own few images. With the embedded backend a
``MicroBatcher`` gathers them into one inference call; Triton batches on its own side (config.pbtxt
``dynamic_batching``), so there ``InFlightLimit`` only bounds the images in flight. ``"caller"`` (the consumer):
the caller brings whole batches, and ``Chunked`` calls the backend once per ``max_batch_size`` rows.

``MicroBatcher`` releases a batch when it holds ``max_batch_size`` images ("full"), when its first request has
waited ``max_delay_s`` ("timeout"), or at once when no other request is waiting or on its way ("idle":
callers announce themselves with ``coming()`` while they decode, so a lone request never waits for
companions that are not there). Requests are never split across batches, so each caller gets back
exactly its own rows. Past ``max_queue_images`` waiting images, ``submit`` refuses at once with
``Overloaded`` (HTTP 429 with Retry-After) instead of letting latency pile up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from labelaudit.serving.core.admission import Overloaded

if TYPE_CHECKING:
    from labelaudit.serving.core.backends import Backend
    from labelaudit.serving.settings import Settings

Batching = Literal["dynamic", "caller"]
Release = Literal["full", "timeout", "idle"]
Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


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

    def batch_released(self, *, images: int, requests: int, reason: Release, queue_delay_s: float) -> None: ...


@dataclass
class _Pending:
    images: np.ndarray  # (n, C, H, W)
    future: asyncio.Future[np.ndarray]
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
        n = len(images)
        if self.queued_images + n > self.max_queue_images:
            batches_ahead = self.queued_images / self.max_batch_size + 1
            raise Overloaded(
                f"{self.queued_images} images are already waiting (limit {self.max_queue_images}); retry shortly",
                retry_after_s=max(1.0, batches_ahead * self._mean_batch_s),
            )
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        self.queued_images += n
        await self._queue.put(pending)
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
        size = len(batch[0].images)
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
            if size + len(item.images) > self.max_batch_size:
                self._carry = item  # never split a request: it opens the next batch
                return batch, "full"
            batch.append(item)
            size += len(item.images)
        return batch, "full"

    async def _run(self) -> None:
        while True:
            batch, reason = await self._gather()
            images = sum(len(p.images) for p in batch)
            self.queued_images -= images
            if self.observer:
                delay = time.perf_counter() - batch[0].enqueued
                self.observer.batch_released(images=images, requests=len(batch), reason=reason, queue_delay_s=delay)
            await self._infer_and_answer(batch)

    async def _infer_and_answer(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            probs = await self.infer(np.concatenate([p.images for p in batch]))
        except Exception as exc:  # every caller of this batch hears why; the batcher goes on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._mean_batch_s = 0.9 * self._mean_batch_s + 0.1 * (time.perf_counter() - started)
        offset = 0
        for p in batch:
            rows = probs[offset : offset + len(p.images)]
            offset += len(p.images)
            if not p.future.done():  # a caller that went away (cancelled) is skipped
                p.future.set_result(rows)


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
