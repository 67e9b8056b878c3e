"""JPEG photos to the model's input, per core: plain Pillow next to the model card's ``jpeg_draft`` (Pillow's
``draft()``: libjpeg's DCT-domain scaling), measured side by side in one run.

    python -m bench.decode --quick   # under a minute: 3 short repetitions per point (real_models_quick.json)
    python -m bench.decode           # about 3 minutes: the decode rows of bench/results/real_models.json

What is timed: ``pixels_from_bytes(data, spec)``, the one path training (``load_pixels`` ->
``pixels_from_file``) and serving (``InferenceCore.to_input``) share, from JPEG bytes in memory to the
model's (224, 224, 3) uint8: decode, mode conversion, resize. One thread of one process: Pillow decodes and
resizes on the calling thread.

Specs: ``stretch`` to 224x224, and ``shorter_side_center_crop`` with crop_pct 0.875 (torchvision's eval
transform: shorter side to 256, centre 224x224), RGB, bilinear. The draft decodes at the smallest of 1, 1/2,
1/4, 1/8 that still covers what the resize needs: 224x224 for ``stretch``, the 256-short-side size for the
crop. A 640x427 photo cannot be drafted at all (427 / 2 < 224), nor can a 640x480 one for the crop
(480 / 2 < 256): there both paths decode the same pixels.

Sources (nothing is downloaded): the real photos scikit-learn ships, ``china.jpg`` and ``flower.jpg``
(640x427, ``pip install -e .[bench]``), as shipped; and made from them in a temp dir, JPEG quality 90, at
640x480, 1920x1080 and 4000x3000:

- ``upscaled``: each photo resized (bicubic) to the size. Smoother per pixel than a camera's photo, so
  cheap to entropy-decode, which favours the draft (it saves the inverse DCT, not the entropy decoding).
- ``tiled``: the two photos pasted side by side at their own scale to fill the size, so the bytes per pixel
  of a real photo: the harder case for the draft.

Decoders (rows' ``decoder``):

- ``pillow``: ``jpeg_draft=False``, the full decode (today's default).
- ``pillow-draft``: ``jpeg_draft=True``.
- ``simplejpeg`` (a reference, not a path labelaudit takes): libjpeg-turbo through simplejpeg from PyPI
  with its M/8 scaling to at least the same size, then the same conversion and resize. Measured to decide
  whether a SIMD decoder from PyPI is worth a dependency next to Pillow's draft (Pillow's wheels already
  bundle libjpeg-turbo).

Rows: ``kind`` ``decode``, ``decoder``, ``source`` (``as shipped``, ``upscaled``, ``tiled``),
``source_size``, ``resize``, ``decoded_size`` (what the decoder produced before the resize),
``images_per_s_per_core`` (images per CPU second of the timing thread, ``time.thread_time``: the time this
shared 2-core machine gives other processes does not count), ``wall_images_per_s`` beside it (both the
median over repetitions; the decoders take turns inside each repetition, in alternating order, so drift in
the machine's load hits them alike), ``vs_pillow`` (the ratio of ``images_per_s_per_core`` to plain
Pillow's on the same point), ``max_abs_diff`` (uint8 pixels against the training path's
``pixels_from_file`` for the same spec: 0 where it is the same path), ``mean_abs_diff_vs_full_decode`` and
``max_abs_diff_vs_full_decode`` (against plain Pillow's pixels), ``loadavg_1m`` (os.getloadavg at the end
of the point).

Other kinds of rows in real_models.json (``loader``, ``ddp``, ``finetune``) are kept: a run replaces only
the ``decode`` rows.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features
from rich.console import Console

from bench.common import cpu_name, kept_rows, write_results
from labelaudit.imaging import preprocess
from labelaudit.imaging.preprocess import draft_size, pixels_from_bytes, pixels_from_file
from labelaudit.schemas.model_card import PreprocessSpec

console = Console()
SIZES = [(640, 480), (1920, 1080), (4000, 3000)]
QUALITY = 90
TARGET = 224
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
SPECS = {
    "stretch": PreprocessSpec(height=TARGET, width=TARGET, channels=3, **IMAGENET),
    "shorter_side_center_crop": PreprocessSpec(
        height=TARGET, width=TARGET, channels=3, resize="shorter_side_center_crop", crop_pct=0.875, **IMAGENET
    ),
}


@dataclass
class Source:
    source: str
    size: tuple[int, int]
    images: list[bytes]


def real_photos() -> list[bytes]:
    """scikit-learn's two sample photos, read from the installed package (found, not imported: sklearn's
    import is slow and nothing else of it is needed)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.origin:
        raise SystemExit("bench.decode needs scikit-learn's sample photos: pip install -e .[bench]")
    folder = Path(spec.origin).parent / "datasets" / "images"
    return [(folder / name).read_bytes() for name in ("china.jpg", "flower.jpg")]


def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def _tiled(photos: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """The photos side by side at their own scale, row after row, until ``size`` is covered; each image
    starts with a different photo so that the two sources differ."""
    canvas = Image.new("RGB", size)
    i = 0
    for top in range(0, size[1], photos[0].height):
        for left in range(0, size[0], photos[0].width):
            canvas.paste(photos[i % len(photos)], (left, top))
            i += 1
    return canvas


def make_sources() -> list[Source]:
    shipped = real_photos()
    photos = [Image.open(io.BytesIO(d)).convert("RGB") for d in shipped]
    out = [Source("as shipped", photos[0].size, shipped)]
    for size in SIZES:
        out.append(Source("upscaled", size, [_jpeg(p.resize(size, Image.Resampling.BICUBIC)) for p in photos]))
    for size in SIZES:
        out.append(Source("tiled", size, [_jpeg(_tiled(photos[k:] + photos[:k], size)) for k in range(len(photos))]))
    return out


# -- decoders ----------------------------------------------------------------------------------------------


def simplejpeg_pixels(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """simplejpeg's scaled decode to at least ``draft_size``, then labelaudit's conversion and resize over the
    whole source's box (so the geometry is the full decode's, as with the draft)."""
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    need_w, need_h = draft_size(width, height, spec)
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need_w, min_height=need_h)
    out_h, out_w = arr.shape[:2]
    box = None
    if (out_w, out_h) != (width, height):  # libjpeg-turbo's scale num/8: out = ceil(size * num / 8)
        num = next(n for n in range(1, 9) if -(-width * n // 8) == out_w and -(-height * n // 8) == out_h)
        box = (0.0, 0.0, width * num / 8, height * num / 8)
    return preprocess._to_pixels(Image.fromarray(arr), spec, box)  # the shared resize, with the box


def decoders(spec: PreprocessSpec) -> dict[str, Callable[[bytes], np.ndarray]]:
    plain, draft = spec.model_copy(update={"jpeg_draft": False}), spec.model_copy(update={"jpeg_draft": True})
    out = {
        "pillow": lambda data: pixels_from_bytes(data, plain),
        "pillow-draft": lambda data: pixels_from_bytes(data, draft),
    }
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        console.print("[yellow]simplejpeg is not installed (pip install -e .[bench]): no reference row[/]")
    else:
        out["simplejpeg"] = lambda data: simplejpeg_pixels(data, draft)
    return out


def decoded_size(decoder: str, data: bytes, spec: PreprocessSpec) -> str:
    if decoder == "simplejpeg":
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        w, h = draft_size(width, height, spec)
        shape = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=w, min_height=h).shape
        return f"{shape[1]}x{shape[0]}"
    img = preprocess.decode_image(data, draft_for=spec if decoder == "pillow-draft" else None)
    return f"{img.width}x{img.height}"


# -- timing ------------------------------------------------------------------------------------------------


def timed(fn: Callable[[bytes], np.ndarray], images: list[bytes], min_cpu_s: float) -> tuple[float, float]:
    """Whole passes over ``images`` until ``min_cpu_s`` of this thread's CPU time: (images per CPU second,
    images per wall second)."""
    n, cpu0, wall0 = 0, time.thread_time(), time.perf_counter()
    while True:
        for data in images:
            fn(data)
        n += len(images)
        cpu = time.thread_time() - cpu0
        if cpu >= min_cpu_s:
            return n / cpu, n / (time.perf_counter() - wall0)


def measure_point(src: Source, rule: str, *, reps: int, min_cpu_s: float, folder: Path) -> list[dict]:
    spec = SPECS[rule]
    fns = decoders(spec)
    names = list(fns)
    for name in names:  # warm-up, and the pixels for the differences
        fns[name](src.images[0])
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            c, w = timed(fns[name], src.images, min_cpu_s)
            cpu[name].append(c)
            wall[name].append(w)
    load = round(os.getloadavg()[0], 2)

    # The training path on the same files: pixels_from_file with the same spec (draft on for the fast paths).
    paths = []
    for i, data in enumerate(src.images):
        paths.append(folder / f"{src.source.replace(' ', '_')}_{src.size[0]}x{src.size[1]}_{i}.jpg")
        paths[-1].write_bytes(data)
    full = [pixels_from_bytes(d, spec.model_copy(update={"jpeg_draft": False})).astype(np.int16) for d in src.images]
    base = statistics.median(cpu["pillow"])
    rows = []
    for name in names:
        train_spec = spec.model_copy(update={"jpeg_draft": name != "pillow"})
        out = [fns[name](d).astype(np.int16) for d in src.images]
        train = [pixels_from_file(str(p), train_spec).astype(np.int16) for p in paths]
        rows.append(
            {
                "kind": "decode",
                "decoder": name,
                "source": src.source,
                "source_size": f"{src.size[0]}x{src.size[1]}",
                "images": len(src.images),
                "resize": rule,
                "target": f"{TARGET}x{TARGET}x3",
                "decoded_size": decoded_size(name, src.images[0], spec),
                "images_per_s_per_core": round(statistics.median(cpu[name]), 1),
                "wall_images_per_s": round(statistics.median(wall[name]), 1),
                "images_per_s_per_core_min_max": [round(min(cpu[name]), 1), round(max(cpu[name]), 1)],
                "vs_pillow": round(statistics.median(cpu[name]) / base, 2),
                "reps": reps,
                "max_abs_diff": int(max(np.abs(a - b).max() for a, b in zip(out, train, strict=True))),
                "mean_abs_diff_vs_full_decode": round(
                    float(np.mean([np.abs(a - b).mean() for a, b in zip(out, full, strict=True)])), 3
                ),
                "max_abs_diff_vs_full_decode": int(max(np.abs(a - b).max() for a, b in zip(out, full, strict=True))),
                "loadavg_1m": load,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repetitions of 0.1 s CPU per decoder and point")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per point (default 7, 3 with --quick)")
    ap.add_argument("--min-cpu-s", type=float, default=None, help="CPU seconds per timing (0.4; 0.1 with --quick)")
    ap.add_argument("--name", default=None, help="results file (default real_models, real_models_quick with --quick)")
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    min_cpu_s = args.min_cpu_s or (0.1 if args.quick else 0.4)
    name = args.name or ("real_models_quick" if args.quick else "real_models")

    rows, earlier = kept_rows(name, redone=lambda r: r.get("kind") == "decode")
    try:
        import simplejpeg

        sj = f", simplejpeg {simplejpeg.__version__}"
    except ImportError:
        sj = ""
    device = (
        f"{os.cpu_count()}-core CPU ({cpu_name()}, {platform.machine()}), one thread; Pillow {PIL.__version__} "
        f"(libjpeg-turbo {features.version('libjpeg_turbo')}){sj}"
    )
    config = earlier | {
        "decode": {
            "quick": args.quick,
            "reps": reps,
            "min_cpu_s": min_cpu_s,
            "jpeg_quality_of_made_sources": QUALITY,
            "target": f"{TARGET}x{TARGET}x3",
            "specs": {rule: spec.model_dump(mode="json") for rule, spec in SPECS.items()},
            "timed": "pixels_from_bytes(data, spec) on bytes in memory; images/s per CPU second of the one thread",
        }
    }
    sources = make_sources()
    with tempfile.TemporaryDirectory(prefix="labelaudit-decode-") as tmp:
        for src in sources:
            for rule in SPECS:
                new = measure_point(src, rule, reps=reps, min_cpu_s=min_cpu_s, folder=Path(tmp))
                rows += new
                write_results(name, config=config, rows=rows, device=device)
                console.print(
                    f"{src.source:>10} {src.size[0]}x{src.size[1]} {rule:>24}: "
                    + ", ".join(
                        f"{r['decoder']} {r['images_per_s_per_core']:.0f}/s ({r['vs_pillow']:.2f}x)" for r in new
                    )
                    + f"  load {new[0]['loadavg_1m']}",
                    soft_wrap=True,
                )
    console.print(f"wrote bench/results/{name}.json")


if __name__ == "__main__":
    main()
