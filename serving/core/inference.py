"""The inference core every transport calls: bytes in, probabilities out, preprocessing per the card.

Decoding and preprocessing run in worker threads (Pillow releases the GIL), never on the event loop: with the
gateway's micro-batcher, in the batch (``MicroBatcher.submit_encoded``: one thread hand-off for all the images
of a batch), otherwise per call (``inputs_each``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from labelaudit.errors import ImageError
from labelaudit.imaging.preprocess import normalize, pixels_from_bytes
from labelaudit.serving.core.admission import PixelBudget, declared_pixels
from labelaudit.serving.core.batching import DECODE_SLICES, SubmitEncoded
from labelaudit.serving.core.model_repo import ServedModel
from labelaudit.serving.settings import Settings


class InferenceCore:
    def __init__(
        self,
        model: ServedModel,
        infer: Callable[[np.ndarray], Awaitable[np.ndarray]],
        settings: Settings,
        *,
        budget: PixelBudget | None = None,
        coming: Callable[[], AbstractContextManager[None]] = nullcontext,
        submit_encoded: SubmitEncoded | None = None,
    ):
        self.model, self.infer, self.settings = model, infer, settings
        self.classes = model.card.classes
        # The gateway's admission by declared pixels (see admission.py); the consumer decodes one batch at
        # a time and needs none.
        self.budget = budget
        # Entered around decoding: the batcher's (MicroBatcher.coming), to know which requests are on their way.
        self.coming = coming
        # The micro-batcher's: hand it encoded images, it decodes them with the batch (see ``classify``).
        self.submit_encoded = submit_encoded

    def to_input(self, index: int | str, data: bytes) -> np.ndarray:
        """One encoded image -> its (C, H, W) model input; ``ImageError`` names the image by ``index``
        (its place in the request, or its item id)."""
        if len(data) > self.settings.max_image_bytes:
            raise ImageError(
                f"image {index}: {len(data)} bytes, above the limit of {self.settings.max_image_bytes}",
                reason="image_too_large",
                status_code=413,
            )
        try:
            spec = self.model.card.preprocess
            pixels = pixels_from_bytes(data, spec, max_pixels=self.settings.max_image_pixels)
            x: np.ndarray = normalize(pixels[None], spec)[0]
            return x
        except ImageError as exc:
            raise ImageError(f"image {index}: {exc}", reason=exc.reason, status_code=exc.status_code) from exc

    def decoding_pixels(self, images: list[bytes]) -> int:
        """The pixels decoding ``images`` will cost, from their headers: an image declaring more than
        ``max_image_pixels`` costs none, since the decoder refuses it (400, naming the image) before decoding."""
        limit = self.settings.max_image_pixels
        return sum(p for p in map(declared_pixels, images) if p <= limit)

    def _inputs_sync(self, names: list[int | str], images: list[bytes]) -> list[np.ndarray | ImageError]:
        out: list[np.ndarray | ImageError] = []
        for name, data in zip(names, images, strict=True):
            try:
                out.append(self.to_input(name, data))
            except ImageError as exc:
                out.append(exc)
        return out

    async def inputs_each(
        self, images: list[bytes], names: list[int | str] | None = None
    ) -> list[np.ndarray | ImageError]:
        """Per image its (C, H, W) input or its ``ImageError``, decoded in worker threads.

        One thread per slice of the batch (as many slices as cores), not one per image: every hand-off
        to a thread costs a GIL round trip, and under load (Kafka's client threads, HTTP parsing) those
        round trips, not the decoding, were what made a batch slow.
        """
        names = list(range(len(images))) if names is None else names
        if not images:
            return []
        if self.budget is None:
            with self.coming():
                return await self._decode(images, names)
        async with self.budget.hold(self.decoding_pixels(images)):
            with self.coming():
                return await self._decode(images, names)

    async def _decode(self, images: list[bytes], names: list[int | str]) -> list[np.ndarray | ImageError]:
        loop = asyncio.get_running_loop()  # run_in_executor: to_thread's context copy is per-request overhead
        if len(images) == 1:  # the common request: one hand-off, nothing to split or join
            return await loop.run_in_executor(None, self._inputs_sync, names, images)
        slices = min(len(images), DECODE_SLICES)
        bounds = [len(images) * i // slices for i in range(slices + 1)]
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(None, self._inputs_sync, names[a:b], images[a:b])
                for a, b in itertools.pairwise(bounds)
            )
        )
        return [x for part in parts for x in part]

    async def preprocess_all(self, images: list[bytes]) -> np.ndarray:
        """Decode and preprocess in worker threads: (n, C, H, W) float32; the first bad image raises."""
        arrays: list[np.ndarray] = []
        for a in await self.inputs_each(images):
            if isinstance(a, ImageError):
                raise a
            arrays.append(a)
        return np.stack(arrays)

    async def classify(self, images: list[bytes]) -> np.ndarray:
        """Probabilities (n, K) for encoded images; the first image that cannot be classified raises its
        ``ImageError``."""
        if self.submit_encoded is None:
            return await self.infer(await self.preprocess_all(images))
        names: list[int | str] = list(range(len(images)))
        if self.budget is None:
            outcomes = await self.submit_encoded(images, names, self.to_input)
        else:
            pixels = self.decoding_pixels(images)
            await self.budget.acquire(pixels)  # held until the batch has decoded and run them
            try:
                outcomes = await self.submit_encoded(images, names, self.to_input, pixels=pixels)
            finally:
                self.budget.release(pixels)
        rows: list[np.ndarray] = []
        for x in outcomes:
            if isinstance(x, ImageError):
                raise x
            rows.append(x)
        return np.stack(rows)

    def top_k(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        order = np.argsort(-probs, axis=1)[:, : min(k, probs.shape[1])]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]
