"""The training loader at scale: does memory stay flat as the images grow from 10k to 100k+, how fast does it
decode, and does the in-memory cache still win for small images?

- ``stream`` rows: RGB JPEGs at 224 px (Debian's Fashion-MNIST resized, one distinct file per image), one
  pass of ``ImageLoader(mode="stream")`` in batches of 256, in a fresh process per size: peak RSS of the
  main process and of the largest worker, images per second.
- ``memory`` vs ``stream`` rows at 28 px (the demo's images): one pass each, same plan, same process kind.

Rows of ``bench/results/real_models.json`` with ``kind: loader`` (other kinds kept)::

    python -m bench.loader            # 10k and 100k at 224 px, 28 px cache vs stream (several minutes)
    python -m bench.loader --quick    # 2k and 20k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import WORK, cpu_name, kept_rows, write_results

PASS_SCRIPT = """
import json, resource, sys, time, numpy as np
from labelaudit.imaging.manifest import read_manifest
from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.training.loader import ImageLoader
manifest, size, mode, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
spec = PreprocessSpec(height=size, width=size, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
m = read_manifest(manifest)
loader = ImageLoader(m, spec, mode=mode, workers=workers)
if mode == "memory":  # the cache is filled once; the pass measured is the epoch after it
    list(loader.batches([np.arange(min(256, len(m)))]))
plan = [r for r in np.array_split(np.random.default_rng(0).permutation(len(m)), max(1, len(m) // 256))]
started = time.perf_counter()
seen = sum(len(f.pixels) for f in loader.batches(plan))
seconds = time.perf_counter() - started
loader.close()
print(json.dumps({"images": seen, "seconds": seconds,
                  "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_images(folder: Path, n: int, size: int) -> Path:
    """``n`` distinct RGB JPEGs at ``size`` px from Fashion-MNIST (cycling over its 60k images with a
    per-copy shift, so that no two files are the same) and a manifest naming them."""
    import numpy as np
    from PIL import Image

    from labelaudit.training.datasets import fashion_mnist

    manifest = folder / f"images-{n}-{size}.jsonl"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, _, _ = fashion_mnist.load_fashion_mnist()
    classes = fashion_mnist.CLASSES
    with manifest.open("w") as out:
        for i in range(n):
            path = folder / "img" / f"{i // 10_000:03d}" / f"{i}.jpg"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.roll(images[i % len(images)], i // len(images), axis=1)
                img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
                img.save(path, quality=90)
            row = {
                "item_id": f"i{i}",
                "image": str(path.relative_to(folder)),
                "label": classes[int(labels[i % len(labels)])],
                "labeler_id": "l",
                "split": "train",
            }
            out.write(json.dumps(row) + "\n")
    return manifest


def one_pass(manifest: Path, size: int, mode: str, workers: int) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PASS_SCRIPT, str(manifest), str(size), mode, str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    if args.quick:
        args.sizes = [2_000, 20_000]
    name = "real_models_quick" if args.quick else "real_models"
    rows, earlier = kept_rows(name, redone=lambda r: r.get("kind") == "loader")
    device = f"{os.cpu_count()}-core CPU ({cpu_name()})"
    config = earlier | {"loader": {"quick": args.quick, "sizes": args.sizes, "workers": args.workers, "batch": 256}}
    folder = WORK / "loader"
    points = [(n, 224, "stream") for n in args.sizes] + [(args.sizes[0], 28, "memory"), (args.sizes[0], 28, "stream")]
    for n, size, mode in points:
        manifest = make_images(folder / f"px{size}", max(args.sizes) if size == 224 else n, size)
        if size == 224 and n != max(args.sizes):  # the smaller run reads the first n rows of the big set
            small = folder / f"px{size}" / f"first-{n}.jsonl"
            small.write_text("".join(manifest.read_text().splitlines(keepends=True)[:n]))
            manifest = small
        started = time.perf_counter()
        got = one_pass(manifest, size, mode, 0 if mode == "memory" else args.workers)
        rows.append(
            {
                "kind": "loader",
                "mode": mode,
                "image_size": size,
                "images": got["images"],
                "workers": 0 if mode == "memory" else args.workers,
                "peak_rss_mb": round(got["rss_self_mb"], 1),
                "peak_worker_rss_mb": round(got["rss_worker_mb"], 1),
                "images_per_s": round(got["images"] / got["seconds"], 1),
                "wall_s": round(time.perf_counter() - started, 1),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        print(rows[-1], flush=True)
        write_results(name, config=config, rows=rows, device=device)


if __name__ == "__main__":
    main()
