"""The model card's ``jpeg_draft``: JPEGs decoded at a reduced DCT scale, no smaller than the resize needs,
through the one path training and serving share.

Real photos: matplotlib's ``grace_hopper.jpg`` (512x600; matplotlib is a base dependency), and scikit-learn's
``china.jpg`` and ``flower.jpg`` (640x427) where scikit-learn is installed (the bench extra). Generated JPEGs,
all Pillow-encoded (so without EXIF): a photo upscaled to 1920x1080 and 4000x3000, greyscale, CMYK,
progressive, quality 30 and 95, one smaller than the model's input, one truncated.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from labelaudit.errors import ImageError
from labelaudit.imaging.manifest import load_pixels, read_manifest, row_pixels
from labelaudit.imaging.preprocess import (
    decode_image,
    draft_size,
    normalize,
    pixels_from_bytes,
    pixels_from_file,
    to_pixels,
)
from labelaudit.schemas.model_card import ModelCard, PreprocessSpec
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.model_repo import ServedModel
from labelaudit.serving.settings import Settings

RULES = ["stretch", "shorter_side_center_crop"]
# Mean absolute difference, in 0..255 pixel levels, between the draft path and the full decode's pixels for
# the same spec. Measured: 0.4 to 2.3 on these images (largest for a 2x draft of a detailed photo with the
# centre crop); bilinear after a DCT-domain 1/s scale is not the same filter as bilinear from full size.
MEAN_ABS_DIFF_BOUND = 3.0


def _jpeg(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _spec(rule: str = "stretch", channels: int = 3, *, draft: bool = True, **fields) -> PreprocessSpec:
    # Not square, so that a swapped width and height shows up.
    fields = {"height": 160, "width": 224, "crop_pct": 0.875 if rule != "stretch" else 1.0} | fields
    return PreprocessSpec(
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        resize=rule,
        jpeg_draft=draft,
        **fields,
    )


def _real_photos() -> dict[str, bytes]:
    photos = {"grace_hopper.jpg": (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()}
    sklearn = importlib.util.find_spec("sklearn")  # located, not imported
    if sklearn is not None and sklearn.origin:
        for name in ("china.jpg", "flower.jpg"):
            photos[name] = (Path(sklearn.origin).parent / "datasets" / "images" / name).read_bytes()
    return photos


REAL = _real_photos()


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    """name -> JPEG bytes: the real photos and JPEGs encoded here from one of them."""
    photo = Image.open(io.BytesIO(REAL["grace_hopper.jpg"])).convert("RGB")
    big = photo.resize((1280, 960), Image.Resampling.BICUBIC)
    return REAL | {
        "1920x1080_q90": _jpeg(photo.resize((1920, 1080), Image.Resampling.BICUBIC), quality=90),
        "4000x3000_q90": _jpeg(photo.resize((4000, 3000), Image.Resampling.BICUBIC), quality=90),
        "greyscale": _jpeg(big.convert("L"), quality=85),
        "cmyk": _jpeg(big.convert("CMYK"), quality=85),
        "progressive": _jpeg(big, quality=80, progressive=True),
        "q30": _jpeg(big, quality=30),
        "q95_subsampling_444": _jpeg(big, quality=95, subsampling=0),
        "tiny_50x40": _jpeg(photo.resize((50, 40)), quality=90),
    }


def test_the_generated_jpegs_are_what_they_claim(jpegs):
    modes = {name: Image.open(io.BytesIO(data)).mode for name, data in jpegs.items()}
    assert modes["greyscale"] == "L" and modes["cmyk"] == "CMYK" and modes["q30"] == "RGB"
    assert Image.open(io.BytesIO(jpegs["progressive"])).info.get("progressive")
    assert all(not Image.open(io.BytesIO(d)).getexif() for d in jpegs.values())  # none carries EXIF
    assert all(isinstance(Image.open(io.BytesIO(d)), JpegImagePlugin.JpegImageFile) for d in jpegs.values())


# -- (a) shape, dtype, and the scale chosen -----------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rule", RULES)
def test_draft_gives_the_models_shape_and_dtype(jpegs, rule, channels):
    spec = _spec(rule, channels)
    for name, data in jpegs.items():
        out = pixels_from_bytes(data, spec)
        assert out.shape == (160, 224, channels), name
        assert out.dtype == np.uint8, name
        assert out.std() > 5, name  # a picture, not a blank


@pytest.mark.parametrize("rule", RULES)
def test_draft_decodes_at_the_smallest_scale_the_resize_allows(jpegs, rule):
    """At least ``draft_size`` in both directions, and one more halving would fall short."""
    spec = _spec(rule)
    scales = {}
    for name, data in jpegs.items():
        declared = Image.open(io.BytesIO(data)).size
        need = draft_size(*declared, spec)
        got = decode_image(data, draft_for=spec).size
        s = round(declared[0] / got[0])
        assert (got[0] >= need[0] and got[1] >= need[1]) or s == 1, (name, declared, need, got)
        assert s in (1, 2, 4, 8) and got == (-(-declared[0] // s), -(-declared[1] // s)), (name, got)
        if s < 8:
            half = (-(-declared[0] // (2 * s)), -(-declared[1] // (2 * s)))
            assert half[0] < need[0] or half[1] < need[1], (name, "could have been decoded smaller", half, need)
        scales[name] = s
    # The large ones are actually drafted, and the tiny one is not.
    assert scales["4000x3000_q90"] == 8 and scales["1920x1080_q90"] >= 4 and scales["tiny_50x40"] == 1


def test_the_crop_rule_needs_the_size_before_the_crop():
    stretch, crop = _spec("stretch"), _spec("shorter_side_center_crop", crop_pct=0.875)
    assert draft_size(4000, 3000, stretch) == (224, 160)
    # 224 / 4000 > 160 / 3000: the width decides, 0.056; / 0.875 for the crop's margin: 0.064.
    assert draft_size(4000, 3000, crop) == (256, 192)
    assert draft_size(3000, 4000, crop) == (256, 341)  # portrait: the width decides, 224 / 3000 / 0.875
    assert draft_size(4000, 3000, _spec("shorter_side_center_crop", crop_pct=1.0)) == (224, 168)


def test_one_channel_drafts_to_luma_and_three_to_rgb(jpegs):
    assert decode_image(jpegs["1920x1080_q90"], draft_for=_spec(channels=1)).mode == "L"
    assert decode_image(jpegs["1920x1080_q90"], draft_for=_spec(channels=3)).mode == "RGB"
    assert decode_image(jpegs["cmyk"], draft_for=_spec(channels=3)).mode == "CMYK"  # converted after, as always


# -- (b) close to the full decode, and the same as it where nothing is drafted ---------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rule", RULES)
def test_draft_is_close_to_the_full_decode(jpegs, rule, channels):
    for name, data in jpegs.items():
        fast = pixels_from_bytes(data, _spec(rule, channels)).astype(np.int16)
        full = pixels_from_bytes(data, _spec(rule, channels, draft=False)).astype(np.int16)
        diff = np.abs(fast - full)
        assert diff.mean() < MEAN_ABS_DIFF_BOUND, (name, float(diff.mean()))
        # Not a shifted picture: the same image, row against row (a one-pixel shift of a photo is far above).
        assert np.corrcoef(fast.ravel(), full.ravel())[0, 1] > 0.98, name


def test_draft_changes_the_pixels_of_a_large_jpeg(jpegs):
    """What makes the training-vs-serving test below mean something: the draft is not the full decode."""
    data = jpegs["1920x1080_q90"]
    assert not np.array_equal(pixels_from_bytes(data, _spec()), pixels_from_bytes(data, _spec(draft=False)))


def test_without_draft_the_path_is_the_full_decode(jpegs):
    for name, data in jpegs.items():
        spec = _spec("shorter_side_center_crop", draft=False)
        assert np.array_equal(pixels_from_bytes(data, spec), to_pixels(decode_image(data), spec)), name


def test_rgb_when_the_jpeg_needs_no_shrinking_is_the_full_decode(jpegs):
    """A JPEG smaller than the model's input: no DCT scale applies, the pixels are the full decode's."""
    data = jpegs["tiny_50x40"]
    assert np.array_equal(pixels_from_bytes(data, _spec()), pixels_from_bytes(data, _spec(draft=False)))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_draft_leaves_other_formats_alone(fmt):
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, size=(300, 450, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    data = buffer.getvalue()
    for rule in RULES:
        for channels in (1, 3):
            draft, plain = _spec(rule, channels), _spec(rule, channels, draft=False)
            assert np.array_equal(pixels_from_bytes(data, draft), pixels_from_bytes(data, plain))


# -- (c) training and serving decode alike ----------------------------------------------------------------


def _serving_core(spec: PreprocessSpec) -> InferenceCore:
    card = ModelCard(
        name="labelaudit",
        version="1",
        created_at="2026-01-01T00:00:00Z",
        classes=["a", "b"],
        preprocess=spec,
        architecture="test",
        method="ce",
        init="scratch",
        metrics={"trusted_acc": 0.5},
        gate={"passed": True, "metric": "trusted_acc", "initial": None, "final": 0.5, "reason": "test"},
        disagreement_thresholds=[0.5, 0.5],
        thresholds_source="test",
        data_version="0" * 64,
        code_version="test",
    )

    async def no_model(x):  # to_input never reaches the model
        raise AssertionError("not called")

    return InferenceCore(ServedModel("labelaudit", "1", Path("unused.onnx"), card), no_model, Settings())


@pytest.mark.parametrize("draft", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rule", RULES)
def test_training_and_serving_give_identical_tensors(jpegs, tmp_path, rule, channels, draft):
    """The training loader's two sources of pixels, the cache (``load_pixels``) and streaming
    (``row_pixels``, what its DataLoader workers call), and the gateway's ``InferenceCore.to_input`` on the
    same file's bytes: the same uint8 pixels, and after ``normalize`` the same float32 tensor, bit for bit."""
    spec = _spec(rule, channels, draft=draft)
    names = sorted(jpegs)
    lines = []
    for i, name in enumerate(names):
        (tmp_path / f"{i}.jpg").write_bytes(jpegs[name])
        lines.append(json.dumps({"item_id": str(i), "image": f"{i}.jpg", "label": "ab"[i % 2], "labeler_id": "x"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "m.jsonl")
    cached = load_pixels(manifest, spec, cache_dir=tmp_path / "cache")
    training = normalize(cached, spec)
    core = _serving_core(spec)
    for i, name in enumerate(names):
        served = core.to_input(i, jpegs[name])
        assert np.array_equal(cached[i], row_pixels(manifest, i, spec)), name
        assert served.dtype == training.dtype == np.float32
        assert np.array_equal(training[i], served), name
        # and the two public entry points, file and bytes, agree on the uint8 pixels
        assert np.array_equal(pixels_from_file(str(tmp_path / f"{i}.jpg"), spec), pixels_from_bytes(jpegs[name], spec))


def test_the_training_cache_is_keyed_by_jpeg_draft(jpegs, tmp_path):
    """A pixel cache filled without the draft is not served to a spec with it (the key holds the spec)."""
    (tmp_path / "0.jpg").write_bytes(jpegs["1920x1080_q90"])
    (tmp_path / "1.jpg").write_bytes(jpegs["4000x3000_q90"])
    rows = [{"item_id": str(i), "image": f"{i}.jpg", "label": "ab"[i], "labeler_id": "x"} for i in range(2)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = read_manifest(tmp_path / "m.jsonl")
    plain = load_pixels(manifest, _spec(draft=False), cache_dir=tmp_path / "cache")
    drafted = load_pixels(manifest, _spec(draft=True), cache_dir=tmp_path / "cache")
    assert not np.array_equal(plain, drafted)
    assert np.array_equal(drafted[0], pixels_from_bytes(jpegs["1920x1080_q90"], _spec(draft=True)))


# -- (d) the guards hold with the draft on ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_image"),
        (b"hello, this is not an image", "not_an_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 12, "not_an_image"),  # a JPEG signature and nothing usable
    ],
)
def test_draft_refuses_what_is_not_an_image(data, reason):
    for rule in RULES:
        with pytest.raises(ImageError) as info:
            pixels_from_bytes(data, _spec(rule))
        assert info.value.reason == reason
        assert info.value.status_code == 400


@pytest.mark.parametrize("name", ["1920x1080_q90", "progressive", "grace_hopper.jpg"])
def test_draft_refuses_a_truncated_jpeg(jpegs, name):
    data = jpegs[name]
    for channels in (1, 3):
        with pytest.raises(ImageError) as info:
            pixels_from_bytes(data[: len(data) // 2], _spec(channels=channels))
        assert info.value.reason == "corrupt_image"
        assert "truncated" in str(info.value)


def test_draft_refuses_the_declared_size_not_the_drafted_one(jpegs):
    """1920x1080 would decode at 480x270 with the draft; the limit still holds against 1920x1080."""
    data = jpegs["1920x1080_q90"]
    with pytest.raises(ImageError) as info:
        pixels_from_bytes(data, _spec(), max_pixels=1920 * 1080 - 1)
    assert info.value.reason == "too_many_pixels" and "1920x1080" in str(info.value)
    assert pixels_from_bytes(data, _spec(), max_pixels=1920 * 1080).shape == (160, 224, 3)  # the limit is allowed


def _with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0) claiming another size: the data is too short for it."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9 :]


def test_draft_refuses_an_oversized_jpeg_without_decoding_it(jpegs, monkeypatch):
    bomb = _with_declared_size(jpegs["tiny_50x40"], 6000, 5000)  # 30 Mpx declared, 50x40 of data
    assert Image.open(io.BytesIO(bomb)).size == (6000, 5000)
    loads = []
    real_load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", lambda self: loads.append(1) or real_load(self))
    with pytest.raises(ImageError) as info:
        pixels_from_bytes(bomb, _spec(), max_pixels=1_000_000)
    assert info.value.reason == "too_many_pixels" and "6000x5000" in str(info.value)
    assert loads == []  # refused on the header alone
    # Under the limit the same bytes are decoded (libjpeg pads the missing scan data): the spy does see loads.
    assert pixels_from_bytes(bomb, _spec(), max_pixels=40_000_000).shape == (160, 224, 3)
    assert loads
