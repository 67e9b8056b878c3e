"""The one preprocessing pipeline: decoding refusals, mode conversion, both resize rules, normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from labelaudit.errors import ImageError
from labelaudit.imaging.preprocess import decode_image, load_image, normalize, preprocess, to_pixels
from labelaudit.schemas.model_card import PreprocessSpec


def _encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _spec(height: int = 2, width: int = 2, channels: int = 3, **fields) -> PreprocessSpec:
    return PreprocessSpec(
        height=height, width=width, channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels, **fields
    )


def _noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    return _encode(Image.fromarray(rng.integers(0, 256, size=(*size[::-1], 3), dtype=np.uint8)))


# -- decode_image ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_image"),
        (b"hello, this is not an image", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "not_an_image"),  # a PNG signature and nothing usable
    ],
)
def test_decode_refuses_what_is_not_an_image(data, reason):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason == reason
    assert info.value.status_code == 400


def test_decode_refuses_a_truncated_png():
    data = _noise_png()
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.reason == "corrupt_image"
    assert "truncated" in str(info.value)


def test_decode_refuses_too_many_pixels_before_decoding_them():
    data = _noise_png((64, 32))
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=64 * 32 - 1)
    assert info.value.reason == "too_many_pixels"
    assert "64x32" in str(info.value)
    assert decode_image(data, max_pixels=64 * 32).size == (64, 32)  # the limit itself is allowed


def test_decode_and_load_image_return_a_fully_decoded_image(tmp_path):
    data = _noise_png((5, 3))
    (tmp_path / "x.png").write_bytes(data)
    for img in (decode_image(data), load_image(str(tmp_path / "x.png"))):
        assert img.size == (5, 3) and img.mode == "RGB"
        assert np.asarray(img).shape == (3, 5, 3)


# -- modes -----------------------------------------------------------------------------------------


def _palette_with_a_transparent_red() -> Image.Image:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # 0 = red (transparent), 1 = green
    img.putpixel((1, 0), 1)
    img.putpixel((1, 1), 1)
    return img


@pytest.mark.parametrize(
    ("img", "fmt", "options", "rgb"),
    [
        # alpha is composited over black: 200 * 128/255 = 100.4, 100 -> 50.2, 50 -> 25.1
        (Image.new("RGBA", (2, 2), (200, 100, 50, 128)), "PNG", {}, [[[100, 50, 25]] * 2] * 2),
        (Image.new("LA", (2, 2), (200, 128)), "PNG", {}, [[[100, 100, 100]] * 2] * 2),
        (_palette_with_a_transparent_red(), "PNG", {"transparency": 0}, [[[0, 0, 0], [0, 255, 0]]] * 2),
        (Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "TIFF", {}, [[[255, 0, 0]] * 2] * 2),
    ],
    ids=["RGBA", "LA", "P", "CMYK"],
)
def test_modes_convert_to_rgb(img, fmt, options, rgb):
    decoded = decode_image(_encode(img, fmt, **options))
    assert decoded.mode == img.mode

    got = to_pixels(decoded, _spec(channels=3))

    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got, rgb, atol=1)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "RGB"])
def test_every_mode_converts_to_one_channel(mode):
    img = Image.new(mode, (3, 2))
    got = to_pixels(img, _spec(height=2, width=3, channels=1, resample="nearest"))
    assert got.shape == (2, 3, 1) and got.dtype == np.uint8


def test_sixteen_bit_greyscale_is_rescaled_from_its_full_range():
    raw = np.array([[0, 1000], [60000, 30000]], dtype=np.uint16)
    decoded = decode_image(_encode(Image.fromarray(raw)))
    assert decoded.mode == "I;16"

    grey = to_pixels(decoded, _spec(channels=1))
    rgb = to_pixels(decoded, _spec(channels=3))

    # (v - 0) / 60000 * 255: 0, 4.25, 255, 127.5
    np.testing.assert_array_equal(grey[:, :, 0], [[0, 4], [255, 128]])
    np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=2))


def test_a_flat_sixteen_bit_image_becomes_black():
    flat = Image.fromarray(np.full((2, 2), 777, dtype=np.uint16))
    np.testing.assert_array_equal(to_pixels(flat, _spec(channels=1)), np.zeros((2, 2, 1)))


# -- resizing --------------------------------------------------------------------------------------


def _bars(width: int, height: int, *, vertical: bool) -> Image.Image:
    """White in the middle half along the long side, black in the outer quarters."""
    arr = np.zeros((height, width), dtype=np.uint8)
    if vertical:
        arr[height // 4 : 3 * height // 4, :] = 255
    else:
        arr[:, width // 4 : 3 * width // 4] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize(("height", "width", "channels"), [(8, 12, 1), (28, 28, 3), (5, 3, 3)])
def test_stretch_gives_the_spec_shape(height, width, channels):
    img = Image.new("RGB", (30, 20), (10, 20, 30))
    assert to_pixels(img, _spec(height, width, channels, resize="stretch")).shape == (height, width, channels)


@pytest.mark.parametrize(("size", "vertical"), [((40, 20), False), ((20, 40), True)])
def test_shorter_side_center_crop_keeps_the_centre(size, vertical):
    img = _bars(*size, vertical=vertical)
    crop = _spec(10, 10, 1, resize="shorter_side_center_crop", resample="nearest")
    stretch = _spec(10, 10, 1, resize="stretch", resample="nearest")

    cropped, stretched = to_pixels(img, crop), to_pixels(img, stretch)

    assert cropped.shape == stretched.shape == (10, 10, 1)
    assert (cropped == 255).all()  # scaled to 20 along the long side, the middle 10 are the white bar
    assert (stretched == 0).any() and (stretched == 255).any()


def test_shorter_side_center_crop_to_a_non_square_target():
    img = Image.new("L", (100, 100), 50)
    got = to_pixels(img, _spec(4, 16, 1, resize="shorter_side_center_crop"))
    assert got.shape == (4, 16, 1)
    assert (got == 50).all()


# -- normalize -------------------------------------------------------------------------------------


def test_normalize_by_hand():
    spec = PreprocessSpec(height=1, width=2, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    pixels = np.array([[[[255, 51, 0], [0, 102, 255]]]], dtype=np.uint8)  # (N=1, H=1, W=2, C=3)

    got = normalize(pixels, spec)

    assert got.shape == (1, 3, 1, 2) and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    # channel 0: (1 - 0.5) / 0.2, (0 - 0.5) / 0.2; channel 1: (0.2 - 0.4) / 0.25, (0.4 - 0.4) / 0.25;
    # channel 2: (0 - 0.3) / 0.5, (1 - 0.3) / 0.5
    expected = np.array([[[[2.5, -2.5]], [[-0.8, 0.0]], [[-0.6, 1.4]]]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_normalize_matches_a_plain_loop_on_a_batch():
    rng = np.random.default_rng(1)
    spec = PreprocessSpec(height=3, width=4, channels=1, mean=(0.286,), std=(0.353,))
    pixels = rng.integers(0, 256, size=(5, 3, 4, 1), dtype=np.uint8)

    got = normalize(pixels, spec)

    assert got.shape == (5, 1, 3, 4) and got.dtype == np.float32
    for n, h, w in np.ndindex(5, 3, 4):
        assert got[n, 0, h, w] == pytest.approx((pixels[n, h, w, 0] / 255 - 0.286) / 0.353, abs=1e-5)


@pytest.mark.parametrize(
    "shape",
    [(2, 2, 3), (1, 2, 2, 1), (1, 3, 2, 3), (1, 2, 3, 3), (2, 2, 2, 3, 1)],
    ids=["no batch axis", "wrong channels", "wrong height", "wrong width", "five axes"],
)
def test_normalize_refuses_the_wrong_pixel_shape(shape):
    with pytest.raises(ImageError) as info:
        normalize(np.zeros(shape, dtype=np.uint8), _spec(channels=3))
    assert info.value.reason == "bad_tensor_shape"
    assert str(shape) in str(info.value)


def test_preprocess_is_to_pixels_then_normalize():
    spec = PreprocessSpec(height=6, width=6, channels=1, mean=(0.5,), std=(0.25,))
    img = decode_image(_noise_png((9, 7)))

    got = preprocess(img, spec)

    assert got.shape == (1, 6, 6) and got.dtype == np.float32
    np.testing.assert_array_equal(got, normalize(to_pixels(img, spec)[None], spec)[0])
