"""Admission by declared pixels (issue 16, item 9): images that are small on the wire and huge to decode
are refused or queued before any decoding, so the gateway stays responsive for everyone else."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from labelaudit.errors import ImageError
from labelaudit.serving.core.admission import Overloaded, PixelBudget, declared_pixels
from labelaudit.serving.settings import Settings
from tests.serving.gatewaykit import bilevel_png, running_gateway, small_png


def classify(url: str, images: list[bytes]) -> httpx.Response:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return httpx.post(f"{url}/v1/classify", files=files, timeout=120)


def test_declared_pixels_reads_the_header_only():
    assert declared_pixels(bilevel_png(6300)) == 6300 * 6300
    assert declared_pixels(b"not an image") == 0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_declared_pixels_agree_with_pillow_for_every_format(fmt):
    """PNG's size is read from its IHDR chunk directly, the rest through Pillow: both as Pillow reads them; a
    truncated PNG header falls back to Pillow (which cannot tell either: 0)."""
    import io

    from PIL import Image

    for size in [(1, 1), (28, 28), (640, 427), (70000 // 7, 3)]:
        out = io.BytesIO()
        Image.new("L" if fmt != "WEBP" else "RGB", size).save(out, format=fmt)
        assert declared_pixels(out.getvalue()) == size[0] * size[1], (fmt, size)
    if fmt == "PNG":
        assert declared_pixels(out.getvalue()[:20]) == 0


def test_the_budget_refuses_above_itself_waits_when_full_and_refuses_past_a_full_queue():
    async def scenario():
        budget = PixelBudget(100)
        with pytest.raises(ImageError) as too_big:
            async with budget.hold(101):
                pass
        assert (too_big.value.status_code, too_big.value.reason) == (413, "too_many_pixels")
        order = []

        async def job(name: str, pixels: int, hold_s: float):
            async with budget.hold(pixels):
                order.append(name)
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(job("first", 80, 0.2))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(job("second", 60, 0))  # does not fit beside the first: waits
        await asyncio.sleep(0.01)
        assert order == ["first"] and budget.waiting == 60
        with pytest.raises(Overloaded) as overloaded:  # 60 waiting + 50 would pass the budget again
            async with budget.hold(50):
                pass
        assert overloaded.value.retry_after_s > 0
        async with budget.hold(20):  # fits beside the first at once
            order.append("small")
        await asyncio.gather(first, second)
        assert order == ["first", "small", "second"] and budget.in_use == 0 and budget.waiting == 0

    asyncio.run(scenario())


def test_a_request_of_pixel_bombs_is_refused_before_decoding(model_repo):
    bomb = bilevel_png(6300)  # 40 megapixels each, just under max_image_pixels
    with running_gateway(Settings(model_repo=model_repo, ort_intra_op_threads=1)) as url:
        response = classify(url, [bomb] * 64)
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "too_many_pixels"
        assert classify(url, [small_png()]).status_code == 200


def test_heavy_requests_queue_or_get_429_while_light_ones_are_answered(model_repo):
    bomb = bilevel_png(6300)
    settings = Settings(model_repo=model_repo, ort_intra_op_threads=1, max_decoding_pixels=80_000_000)
    with running_gateway(settings) as url, ThreadPoolExecutor(8) as pool:
        heavy = [pool.submit(classify, url, [bomb, bomb]) for _ in range(6)]
        time.sleep(0.05)
        light = classify(url, [small_png()])
        statuses = sorted(f.result().status_code for f in heavy)
    assert light.status_code == 200
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    refused = next(f.result() for f in heavy if f.result().status_code == 429)
    assert refused.json()["error"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
