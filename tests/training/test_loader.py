"""The training loader: streamed pixels equal cached ones, the device normalisation equals serving's,
bad images name their line, and memory does not grow with the number of images."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import read_manifest
from labelaudit.imaging.preprocess import normalize
from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.training.loader import ImageLoader
from labelaudit.training.train import SilentReporter, TaskData, TrainConfig, Trainer, train

SPEC = PreprocessSpec(height=28, width=28, channels=1, mean=(0.29,), std=(0.35,))


def _plan(n: int, batch: int, seed: int = 0) -> list[np.ndarray]:
    rows = np.random.default_rng(seed).permutation(n)
    return [rows[i : i + batch] for i in range(0, n, batch)]


def test_streamed_batches_equal_cached_batches_in_plan_order(tiny_data):
    manifest = read_manifest(tiny_data / "task_b.jsonl")
    plan = _plan(len(manifest), 37)
    memory = ImageLoader(manifest, SPEC, mode="memory")
    stream = ImageLoader(manifest, SPEC, mode="stream", workers=2, resident=np.arange(0, 50))
    try:
        got = [f.pixels for f in stream.batches(plan)]
        want = [f.pixels for f in memory.batches(plan)]
        again = [f.pixels for f in stream.batches(plan[:3], purpose="eval")]  # a second pass, other loader
    finally:
        stream.close()
    assert stream.mode == "stream" and memory.mode == "memory"
    assert [g.shape for g in got] == [(len(p), 28, 28, 1) for p in plan]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert all(torch.equal(a, w) for a, w in zip(again, want, strict=False))


def test_auto_caches_small_images_and_streams_when_they_do_not_fit(tiny_data):
    manifest = read_manifest(tiny_data / "task_b.jsonl")
    assert ImageLoader(manifest, SPEC, mode="auto").mode == "memory"
    streamed = ImageLoader(manifest, SPEC, mode="auto", memory_budget_mb=0.1, workers=0)
    assert streamed.mode == "stream"


def test_the_device_normalisation_is_serving_s_bit_for_bit(tiny_data):
    manifest = read_manifest(tiny_data / "task_b.jsonl")
    pixels = next(ImageLoader(manifest, SPEC, mode="memory").batches([np.arange(64)])).pixels
    data = TaskData(
        images=None,
        labels=torch.zeros(1, dtype=torch.int64),
        is_trusted=torch.zeros(1, dtype=bool),
        k=10,
        train_rows=np.arange(1),
        trusted_rows=np.arange(0),
        untrusted_rows=np.arange(1),
        val_rows=np.arange(0),
        test_rows=np.arange(0),
        labeler_ids=np.array(["a"]),
        spec=SPEC,
    )
    trainer = Trainer(TrainConfig(device="cpu"), torch.nn.Linear(1, 1), data, SilentReporter())

    assert np.array_equal(trainer.to_inputs(pixels).numpy(), normalize(pixels.numpy(), SPEC))


def test_a_bad_image_in_a_streamed_batch_names_its_line(tiny_data, tmp_path):
    lines = (tiny_data / "task_b.jsonl").read_text().splitlines()[:20]
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["image"] = str((tiny_data / r["image"]).resolve())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows[7]["image"] = str(broken)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loader = ImageLoader(read_manifest(tmp_path / "m.jsonl"), SPEC, mode="stream", workers=1)
    try:
        with pytest.raises(ManifestError, match=r"m\.jsonl:8: .*broken\.png"):
            list(loader.batches([np.arange(20)]))
    finally:
        loader.close()


@pytest.mark.slow
def test_a_streamed_run_trains_exactly_as_a_cached_run(tiny_data, tmp_path, one_thread):
    cfg = dict(method="fasten", epochs=1, device="cpu", augment="none", seed=3)
    cached = train(tiny_data / "task_b.jsonl", init=None, out=tmp_path / "m", cfg=TrainConfig(loader="memory", **cfg))
    streamed = train(
        tiny_data / "task_b.jsonl", init=None, out=tmp_path / "s", cfg=TrainConfig(loader="stream", workers=2, **cfg)
    )

    assert streamed.meta.metrics.val_acc == cached.meta.metrics.val_acc
    assert streamed.meta.metrics.history[0].train_loss == pytest.approx(cached.meta.metrics.history[0].train_loss)
    assert streamed.meta.preprocess == cached.meta.preprocess
    assert streamed.meta.config["loader"] == "stream"


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_number_of_images(tiny_data, tmp_path):
    """One streamed pass over 2,000 and over 20,000 rows (the same images under other ids): the main
    process's peak RSS differs by less than the 20,000 decoded images would take (15 MB at 28x28)."""
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = str((tiny_data / r["image"]).resolve())
    script = textwrap.dedent(
        """
        import resource, sys, numpy as np
        from labelaudit.imaging.manifest import read_manifest
        from labelaudit.schemas.model_card import PreprocessSpec
        from labelaudit.training.loader import ImageLoader
        spec = PreprocessSpec(height=28, width=28, channels=1, mean=(0.29,), std=(0.35,))
        m = read_manifest(sys.argv[1])
        loader = ImageLoader(m, spec, mode="stream", workers=2)
        plan = [np.arange(i, min(i + 256, len(m))) for i in range(0, len(m), 256)]
        seen = sum(len(f.pixels) for f in loader.batches(plan))
        loader.close()
        assert seen == len(m)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        """
    )
    peaks = {}
    for n in (2_000, 20_000):
        manifest = tmp_path / f"m{n}.jsonl"
        manifest.write_text("".join(json.dumps(rows[i % len(rows)] | {"item_id": f"x{i}"}) + "\n" for i in range(n)))
        run = subprocess.run([sys.executable, "-c", script, str(manifest)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        peaks[n] = float(run.stdout.strip().splitlines()[-1])
    decoded_mb = 20_000 * 28 * 28 / 2**20
    assert peaks[20_000] - peaks[2_000] < decoded_mb, peaks
