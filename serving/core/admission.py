"""Admission by decoded pixels: the work an image costs before the batcher ever sees it.

Decoding is where a small request can cost the most: 64 one-bit PNGs of 6300 x 6300 are 314 KB on the
wire and 2.5 gigapixels to decode (issue 16's outside test saw 14.6 s of CPU per request on 2 cores).
The batcher's queue limit cannot see that work, because it counts images after they are decoded. ``PixelBudget`` counts the
pixels each image declares in its header (read without decoding) before any decoding starts: a request
above the whole budget is refused (413), requests that do not fit now wait, and when the pixels waiting
pass the budget as well, the next one is refused with 429 and Retry-After.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from PIL import Image, UnidentifiedImageError

from labelaudit.errors import ImageError, LabelAuditError


class Overloaded(LabelAuditError):
    """More work is waiting than the process takes on: HTTP 429 with Retry-After."""

    status_code = 429
    reason = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def declared_pixels(data: bytes) -> int:
    """Width x height from the image's header (Pillow reads no pixel data for this); 0 when Pillow cannot
    tell, in which case decoding fails later with the image's own error. A PNG's are read straight from its
    IHDR chunk, which the format puts first (Pillow's open costs about 20 us, a tenth of a small image's
    decoding, and this runs on the event loop). What a header declares is only admission's estimate: the
    decoder checks the real size against its own pixel limit."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width * height)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0


class PixelBudget:
    """At most ``capacity`` declared pixels decode at once in this process (one event loop)."""

    def __init__(self, capacity: int, *, decode_pixels_per_s: float = 50e6):
        self.capacity = capacity
        self.decode_pixels_per_s = decode_pixels_per_s  # a rough rate, only for Retry-After
        self.in_use = 0
        self.waiting = 0
        self._freed: asyncio.Condition | None = None  # made on first use, on the loop that uses it

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Decode ``pixels`` inside this block (``acquire`` before it, ``release`` after)."""
        await self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)

    async def acquire(self, pixels: int) -> None:
        """Take ``pixels`` of the budget: at once when they fit and nobody waits, else wait for room; refuses
        with 413 above the whole budget, and with 429 when as many pixels as the budget are already waiting.
        Every ``acquire`` that returns needs its ``release``."""
        if pixels > self.capacity:
            raise ImageError(
                f"the request's images declare {pixels:,} pixels in all, above the limit of {self.capacity:,} "
                "(LABELAUDIT_MAX_DECODING_PIXELS); send fewer or smaller images per request",
                reason="too_many_pixels",
                status_code=413,
            )
        if not self.waiting and self.in_use + pixels <= self.capacity:  # the common case: no lock, no waiting
            self.in_use += pixels
            return
        if self._freed is None:
            self._freed = asyncio.Condition()
        if self.in_use + pixels > self.capacity and self.waiting + pixels > self.capacity:
            raise Overloaded(
                f"{self.waiting:,} pixels are already waiting to be decoded; retry shortly",
                retry_after_s=(self.in_use + self.waiting) / self.decode_pixels_per_s,
            )
        self.waiting += pixels
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: self.in_use + pixels <= self.capacity)
                self.in_use += pixels
        finally:
            self.waiting -= pixels

    def release(self, pixels: int) -> None:
        """Give back what ``acquire`` took, and wake whoever waits for room."""
        self.in_use -= pixels
        if self.waiting and self._freed is not None:
            asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        assert self._freed is not None
        async with self._freed:
            self._freed.notify_all()
