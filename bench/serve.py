"""Serving under closed-loop load: requests/s and p50/p99 latency at several concurrencies, ours next to
the in-process limits and to two peer servers, side by side in one run, on one exported model and the
same real images. Two models (``--model``):

- ``fmnist`` (the default): a CE model trained a moment on task B, and task B's test PNGs (Fashion-MNIST,
  28x28 greyscale, a few hundred bytes each). Results in bench/results/serve.json.
- ``resnet18-224``: torchvision's ResNet-18 (``TwoHeadNet("torchvision:resnet18", 10, 3)``, seeded random
  weights, BatchNorm statistics taken from the photos so that answers vary by photo) behind an ImageNet-style
  card: 224x224 RGB, shorter side + centre crop with crop_pct 0.875 (shorter side to 256), bilinear,
  ImageNet mean/std, ``jpeg_draft`` off so the peers mirror it exactly. Saved as a labelaudit checkpoint and
  exported by ``export_model`` (parity on the 64 photos). The payload: 64 distinct 640x480 JPEG photos
  (quality 90), crops and rescales of the real photos that scikit-learn (``china.jpg``, ``flower.jpg``) and
  matplotlib (``grace_hopper.jpg``) ship; nothing is downloaded. One JPEG per request (``--multi-images``,
  4 by default here, per request in the extra rows). Results in bench/results/serve_resnet18.json, every
  row with ``model: "resnet18-224"``; model and photos are built once (about a minute) in
  bench/work/serve-resnet18. Defaults sized to ResNet-18 on 2 cores: concurrency 1, 8, 32; 15 s per point
  after 5 s of warm-up (a request of c x n images waits about c x n / 40 s, which the warm-up covers).

    python -m bench.serve --quick      # about 4 minutes: 3 s per point
    python -m bench.serve              # about 10 minutes: 10 s per point (writes bench/results/serve.json)
    python -m bench.serve --model resnet18-224   # about 11 minutes: 15 s per point after 5 s of warm-up

Systems (rows' ``system``; ``body`` says what travels):

- ``ort_tensors`` (body ``tensors``): in process, no HTTP. Each request is a ready (n, C, H, W) float32
  tensor ((n, 1, 28, 28) for fmnist, (n, 3, 224, 224) for resnet18-224) submitted to the gateway's own
  MicroBatcher (same settings) in front of the same onnxruntime backend. The limit: batching plus
  onnxruntime, nothing else.
- ``ort_decode`` (body ``bytes``): in process, no HTTP. Each request is the image bytes through the
  gateway's own InferenceCore (decode and preprocess in worker threads, then the MicroBatcher and onnxruntime) and
  its top-3: everything the gateway does except HTTP.
- ``gateway`` (body ``multipart``, the common client path, ``curl -F files=@x.png``; ``json`` rows send
  base64 in JSON): ``labelaudit serve`` as a user starts it (uvicorn subprocess, embedded onnxruntime,
  default settings) on a free loopback port; POST /v1/classify with top_k=3.
- ``peer_mlserver`` (body ``v2_json_base64``): MLServer from PyPI serving the same model.onnx with its
  adaptive batching (max_batch_size 64 requests, max_batch_time 2 ms: the gateway's defaults) through
  bench/peers/mlserver_runtime.py, which decodes the same image bytes (a KServe v2 BYTES input, base64 on
  REST) with the same preprocessing. POST /v2/models/labelaudit/infer.
- ``peer_bentoml`` (body ``multipart``): BentoML from PyPI, bench/peers/bentoml_service.py: the same
  model.onnx behind ``@bentoml.api(batchable=True, max_batch_size=64)``; BentoML opens the uploaded image
  (PNG or JPEG) as a Pillow image, the service preprocesses it the same way. POST /classify.

Peers run onnxruntime with the gateway's session options. Before timing, every system's probabilities
on the same images are checked against the in-process core's.

The load: ``concurrency`` workers (asyncio, one process), each sending its next request as soon as the
previous one answered (closed loop). Each point runs a warm-up, then a fixed window; a request counts
when it finishes inside the window (requests_per_s = those / window), latencies are those of the
successful ones, errors are counted by status (``n_429``...) or exception name. HTTP load comes from
one httpx.AsyncClient per point (pool = concurrency, keep-alive, ``Accept-Encoding: identity``), with
request bodies encoded once up front so the client spends as little CPU as it can. ``--duration`` and
``--warmup``, when given, override ``--quick``'s 3 s and 1 s.

Client and servers share the machine's cores (2 on the dev machines, shared with other work): every
HTTP row pays for its client too. Rows carry the CPU seconds the load generator and the server used per
request, so that cost can be read. Writes bench/results/serve.json (serve_quick.json with --quick); with
``--model resnet18-224``, serve_resnet18.json (serve_resnet18_quick.json); ``--name`` overrides either.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console

from bench.common import SIZES, WORK, cpu_name, write_results
from labelaudit.ports import free_ports

console = Console()
ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).parent / "peers"
SERVE_WORK = WORK / "serve"
RESNET_WORK = WORK / "serve-resnet18"
MODELS = {"fmnist": SERVE_WORK, "resnet18-224": RESNET_WORK}  # --model -> its work folder
RESULT_NAMES = {"fmnist": "serve", "resnet18-224": "serve_resnet18"}  # --model -> its results file
# --model -> the defaults of --duration, --warmup, --concurrency, --multi-images. ResNet-18 serves some 20 to 60
# images/s on 2 cores, so a closed loop of c requests of n images answers each in about c * n / 40 s: the
# warm-up has to cover that (steady state before the window), and the window a few times over.
DEFAULTS = {
    "fmnist": {"duration": 10.0, "warmup": 2.0, "concurrency": [1, 8, 32, 64], "multi_images": 8},
    "resnet18-224": {"duration": 15.0, "warmup": 5.0, "concurrency": [1, 8, 32], "multi_images": 4},
}
TOP_K = 3
Send = Callable[[int], Awaitable[int | str]]  # request number -> HTTP status (200 = ok) or exception name


# -- the model and the payloads ------------------------------------------------------------------------


def build_model(work: Path) -> tuple[Path, Path]:
    """Task B at tiny size and a CE model exported from it (the network is the same at every size)."""
    from labelaudit.training.datasets import fashion_mnist
    from labelaudit.training.export import export_model
    from labelaudit.training.train import TrainConfig, train

    data, repo = work / "data", work / "repo"
    if not (repo / "labelaudit" / "1" / "model_card.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        per_task, val_size, test_size = SIZES["tiny"]
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=per_task, val_size=val_size, test_size=test_size)
        result = train(data / "task_b.jsonl", init=None, out=work / "runs", cfg=TrainConfig(method="ce", epochs=2))
        export_model(result.checkpoint, manifest=data / "task_b.jsonl", repo=repo)
    return data, repo


def test_images(data: Path, n: int) -> list[bytes]:
    """The first ``n`` PNG files of task B's test split, as bytes."""
    rows = [json.loads(line) for line in (data / "task_b.jsonl").read_text().splitlines()]
    return [(data / r["image"]).read_bytes() for r in rows if r["split"] == "test"][:n]


# -- resnet18-224: real JPEG photos and an ImageNet-style ResNet-18 ---------------------------------------

PHOTO_SIZE = (640, 480)
PHOTO_QUALITY = 90
N_PHOTOS = 64  # distinct photos: the payloads cycle over them, and export parity runs on all of them
SEED = 0
LOGIT_SPREAD = 2.0  # std of the logits across classes, mean over the photos: probabilities neither flat nor one-hot
# Imagenette's ten ImageNet classes, as names only: the weights are random, the answers mean nothing.
RESNET_CLASSES = [
    "tench",
    "english_springer",
    "cassette_player",
    "chain_saw",
    "church",
    "french_horn",
    "garbage_truck",
    "gas_pump",
    "golf_ball",
    "parachute",
]


def resnet_spec():
    """ImageNet-style eval preprocessing (torchvision's Resize(256) + CenterCrop(224)); no JPEG draft, so
    the peers' standalone mirror (bench/peers/preprocess.py) decodes exactly as labelaudit does."""
    from labelaudit.schemas.model_card import PreprocessSpec

    return PreprocessSpec(
        height=224,
        width=224,
        channels=3,
        resize="shorter_side_center_crop",
        crop_pct=0.875,
        resample="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        jpeg_draft=False,
    )


def source_photos() -> list[tuple[str, Image.Image]]:
    """The real photos installed packages ship: scikit-learn's china.jpg and flower.jpg (640x427) and
    matplotlib's grace_hopper.jpg (512x600). scikit-learn is found, not imported (its import is slow)."""
    import importlib.util

    import matplotlib

    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or not sklearn.origin:
        raise SystemExit("--model resnet18-224 needs scikit-learn's sample photos: pip install -e .[bench]")
    images = Path(sklearn.origin).parent / "datasets" / "images"
    grace_hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    paths = [images / "china.jpg", images / "flower.jpg", grace_hopper]
    return [(p.stem, Image.open(p).convert("RGB")) for p in paths]


def make_photos(folder: Path, n: int = N_PHOTOS, seed: int = SEED) -> list[Path]:
    """``n`` distinct 640x480 JPEG photos (quality 90), taking the sources in turn: a random 4:3 box of each
    (60 to 100% of the largest that fits), rescaled (bicubic) to 640x480, mirrored half the time."""
    rng = np.random.default_rng(seed)
    sources = source_photos()
    out_w, out_h = PHOTO_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        stem, src = sources[i % len(sources)]
        box_w = min(src.width, src.height * out_w / out_h) * rng.uniform(0.6, 1.0)
        box_h = box_w * out_h / out_w
        left, top = rng.uniform(0, src.width - box_w), rng.uniform(0, src.height - box_h)
        img = src.resize(PHOTO_SIZE, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(folder / f"{i:02d}-{stem}.jpg")
        img.save(paths[-1], "JPEG", quality=PHOTO_QUALITY)
    if len({p.read_bytes() for p in paths}) != n:
        raise RuntimeError("the made photos are not all distinct")
    return paths


def _recipe() -> dict:
    """What the resnet18-224 work folder was built from: a change rebuilds it."""
    return {
        "version": 2,
        "photos": N_PHOTOS,
        "size": PHOTO_SIZE,
        "quality": PHOTO_QUALITY,
        "seed": SEED,
        "classes": RESNET_CLASSES,
        "logit_spread": LOGIT_SPREAD,
        "preprocess": resnet_spec().model_dump(mode="json"),
    }


def build_resnet18(work: Path) -> tuple[Path, list[Path]]:
    """The photos, a manifest of them (split ``test``, labels round the classes), a seeded random ResNet-18
    saved as a labelaudit checkpoint with a hand-built CheckpointMeta, exported by ``export_model`` with
    parity on all the photos. Returns (model repository, photo paths); built once per recipe."""
    recipe, repo, photos = work / "recipe.json", work / "repo", work / "photos"
    if recipe.exists() and json.loads(recipe.read_text()) == json.loads(json.dumps(_recipe())):
        if (repo / "labelaudit" / "1" / "model_card.json").exists():
            return repo, sorted(photos.glob("*.jpg"))
    import hashlib

    import torch

    from labelaudit.imaging.preprocess import normalize, pixels_from_file
    from labelaudit.schemas.model_card import GateResult, ModelMetrics
    from labelaudit.training.checkpoint import CheckpointMeta, save_checkpoint
    from labelaudit.training.export import export_model
    from labelaudit.training.networks import TwoHeadNet

    shutil.rmtree(work, ignore_errors=True)
    paths = make_photos(photos)
    manifest = photos / "manifest.jsonl"
    rows = [
        {
            "item_id": p.stem,
            "image": p.name,
            "label": RESNET_CLASSES[i % len(RESNET_CLASSES)],
            "labeler_id": "bench",
            "split": "test",
        }
        for i, p in enumerate(paths)
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = resnet_spec()
    x = torch.from_numpy(normalize(np.stack([pixels_from_file(str(p), spec) for p in paths]), spec))
    torch.manual_seed(SEED)
    net = TwoHeadNet("torchvision:resnet18", len(RESNET_CLASSES), spec.channels)
    calibrate(net, x)
    meta = CheckpointMeta(
        arch="torchvision:resnet18",
        classes=RESNET_CLASSES,
        preprocess=spec,
        method="untrained",
        init="scratch",
        config={
            "bench": "bench/serve.py --model resnet18-224",
            "seed": SEED,
            "weights": "seeded random init; BatchNorm statistics from the photos; clean head scaled to a logit "
            f"spread of {LOGIT_SPREAD}",
        },
        metrics=ModelMetrics(trusted_acc=0.0),
        gate=GateResult(
            passed=True,
            metric="trusted_acc",
            initial=None,
            final=0.0,
            reason="a benchmark model with random weights, exported only to time serving",
        ),
        disagreement_thresholds=[1 / len(RESNET_CLASSES)] * len(RESNET_CLASSES),
        thresholds_source="none: a benchmark model (1/K for every class)",
        data_version=hashlib.sha256(manifest.read_bytes()).hexdigest(),
        manifest=str(manifest),
    )
    checkpoint = work / "resnet18.pt"
    save_checkpoint(checkpoint, net, meta)
    export_model(checkpoint, manifest=manifest, repo=repo, parity_images=N_PHOTOS, min_images=N_PHOTOS)
    recipe.write_text(json.dumps(_recipe()))
    return repo, paths


def calibrate(net, x) -> None:
    """Random weights with BatchNorm's initial statistics (mean 0, var 1) answer nearly alike for every photo
    (seed 0: the same top class for all, at 0.39 to 0.41), unlike a trained model. So that the answers (and
    the parity checks' probabilities) vary by photo as a trained model's do: the BatchNorm statistics of one
    training-mode pass over ``x`` (momentum None: exactly that batch's), then
    the clean head's bias centred (every class's mean logit over ``x`` 0, so the top class varies) and the
    head scaled so the logits spread by LOGIT_SPREAD across classes; the noisy head copies it."""
    import torch
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train()(x)
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
        net.clean_head.bias.sub_(net(x).mean(dim=0))  # each class's mean logit over the photos 0: varied answers
        scale = LOGIT_SPREAD / float(net(x).std(dim=1).mean())
        net.clean_head.weight.mul_(scale)
        net.clean_head.bias.mul_(scale)
        net.reset_noisy_heads_to_clean()


@dataclass
class Workload:
    """The model repository to serve and the images to send, for one ``--model``."""

    repo: Path
    images: list[bytes]
    payload: str  # for the results' config


def workload(model: str, work: Path) -> Workload:
    if model == "fmnist":
        data, repo = build_model(work)
        images = test_images(data, 256)
        mean = np.mean([len(i) for i in images])
        return Workload(repo, images, f"task-B test PNGs, {len(images)} distinct, mean {mean:.0f} bytes")
    repo, paths = build_resnet18(work)
    images = [p.read_bytes() for p in paths]
    mean = np.mean([len(i) for i in images])
    payload = (
        f"{len(images)} distinct {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG photos (quality {PHOTO_QUALITY}, mean "
        f"{mean:.0f} bytes), crops and rescales of scikit-learn's china.jpg and flower.jpg and matplotlib's "
        "grace_hopper.jpg"
    )
    return Workload(repo, images, payload)


def groups(images: list[bytes], per_request: int, n: int) -> list[list[bytes]]:
    """``n`` request payloads of ``per_request`` images each, cycling over ``images``."""
    cycle = itertools.cycle(images)
    return [[next(cycle) for _ in range(per_request)] for _ in range(n)]


# -- the closed loop -----------------------------------------------------------------------------------


async def closed_loop(
    send: Send, *, concurrency: int, warmup_s: float, duration_s: float, cpu: Callable[[], dict] = dict
) -> dict:
    """``concurrency`` workers, each sending its next request when its last one answered. ``cpu()`` is
    read at the window's start and end (CPU seconds by name); the row gets the differences."""
    latencies: list[float] = []
    errors: Counter = Counter()
    numbers = itertools.count()
    start = time.perf_counter() + warmup_s
    end = start + duration_s

    async def worker() -> None:
        while (t0 := time.perf_counter()) < end:
            try:
                status = await send(next(numbers))
            except Exception as exc:  # a failed request is a counted error, never the end of the run
                status = getattr(exc, "status_code", None) or type(exc).__name__
            t1 = time.perf_counter()
            if start <= t1 <= end:
                if status == 200:
                    latencies.append(t1 - t0)
                else:
                    errors[status] += 1

    async def cpu_in_window() -> dict:
        await asyncio.sleep(start - time.perf_counter())
        before = cpu()
        await asyncio.sleep(end - time.perf_counter())
        return {k: v - before[k] if v is not None else None for k, v in cpu().items()}

    used, *_ = await asyncio.gather(cpu_in_window(), *(worker() for _ in range(concurrency)))
    lat_ms = np.asarray(latencies) * 1000
    done = len(latencies) + sum(errors.values())
    return {
        "requests": done,
        "requests_per_s": round(len(latencies) / duration_s, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2) if len(lat_ms) else None,
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 2) if len(lat_ms) else None,
        "mean_ms": round(float(lat_ms.mean()), 2) if len(lat_ms) else None,
        "errors": sum(errors.values()),
        **{f"n_{k}": v for k, v in sorted(errors.items(), key=str)},
        "duration_s": duration_s,
        "cpu_s": used,
    }


# -- CPU accounting (Linux /proc) ----------------------------------------------------------------------


def _tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants that are alive now."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(stats[p][1] for p in tree if p in stats)


def cpu_reader(server_pid: int | None) -> Callable[[], dict]:
    """CPU seconds so far of this process (the load generator; for in-process rows, everything) and of
    the server's process tree."""

    def read() -> dict:
        return {"client": time.process_time(), "server": _tree_cpu_s(server_pid) if server_pid else None}

    return read


# -- servers on loopback -------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base_url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and the workers it spawned
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(name: str, cmd: list[str], *, port: int, ready: str, env: dict, cwd: Path, work: Path) -> Server:
    """Start ``cmd`` in a session of its own and wait until ``ready`` (a path on ``port``) answers 200; its
    output goes to ``work``/<name>.log."""
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=os.environ | env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(server.base_url + ready, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _workers_note() -> str:
    from labelaudit.serving.settings import Settings, usable_cpus

    n = Settings().http_workers or usable_cpus()
    return f"{n} uvicorn worker{'s' if n != 1 else ''}"


def start_gateway(repo: Path, *, work: Path) -> Server:
    (port,) = free_ports(1)
    env = {"LABELAUDIT_STORE_URL": f"sqlite:///{work / 'gateway-audit.db'}"}  # never into the checkout
    cmd = [sys.executable, "-m", "labelaudit.cli", "serve", "--model-repo", str(repo), "--port", str(port)]
    return start_server("gateway", cmd, port=port, ready="/readyz", env=env, cwd=work, work=work)


def start_mlserver(venv: Path, onnx_path: Path, *, workers: int, work: Path) -> Server:
    root = work / "mlserver"
    shutil.rmtree(root, ignore_errors=True)
    (root / "labelaudit").mkdir(parents=True)
    http_port, grpc_port, metrics_port = free_ports(3)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": workers,
                "load_models_at_startup": True,
            }
        )
    )
    (root / "labelaudit" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "labelaudit",
                "implementation": "mlserver_runtime.DecodeOnnxModel",
                "max_batch_size": 64,
                "max_batch_time": 0.002,
                "parameters": {"uri": str(onnx_path), "version": "1"},
            }
        )
    )
    cmd = [str(venv / "bin" / "mlserver"), "start", str(root)]
    return start_server(
        "mlserver",
        cmd,
        port=http_port,
        ready="/v2/models/labelaudit/ready",
        env={"PYTHONPATH": str(PEERS_DIR)},
        cwd=root,
        work=work,
    )


def start_bentoml(venv: Path, model_dir: Path, *, workers: int, work: Path) -> Server:
    (port,) = free_ports(1)
    env = {
        "BENCH_MODEL_DIR": str(model_dir),
        "BENCH_WORKERS": str(workers),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(work / "bentoml_home"),
    }
    cmd = [
        str(venv / "bin" / "bentoml"),
        "serve",
        "bentoml_service:Classifier",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start_server("bentoml", cmd, port=port, ready="/readyz", env=env, cwd=PEERS_DIR, work=work)


# -- request bodies, encoded once ----------------------------------------------------------------------


@dataclass
class Http:
    """One HTTP system at one images-per-request: where to post, the bodies to cycle over, how to read
    the probabilities out of an answer (for the parity check only)."""

    path: str
    bodies: list[tuple[bytes, str]]  # (body, content type)
    probs: Callable[[dict], np.ndarray]


def _encoded(**request_kwargs) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", **request_kwargs)
    return request.read(), request.headers["content-type"]


def _file(i: int, img: bytes) -> tuple[str, bytes, str]:
    """A multipart file part: (file name, bytes, content type) as a client would send this image."""
    return (f"{i}.jpg", img, "image/jpeg") if img[:3] == b"\xff\xd8\xff" else (f"{i}.png", img, "image/png")


def _gateway_probs(answer: dict, classes: list[str]) -> np.ndarray:
    return np.asarray(
        [[{t["label"]: t["probability"] for t in r["top"]}.get(c, 0.0) for c in classes] for r in answer["results"]]
    )


def gateway_http(payloads: list[list[bytes]], classes: list[str], *, body: str, top_k: int = TOP_K) -> Http:
    if body == "multipart":
        bodies = [
            _encoded(files=[("files", _file(i, img)) for i, img in enumerate(p)], data={"top_k": str(top_k)})
            for p in payloads
        ]
    else:
        bodies = [
            _encoded(
                json={
                    "images": [{"id": str(i), "data": base64.b64encode(img).decode()} for i, img in enumerate(p)],
                    "top_k": top_k,
                }
            )
            for p in payloads
        ]
    return Http("/v1/classify", bodies, lambda a: _gateway_probs(a, classes))


def mlserver_http(payloads: list[list[bytes]]) -> Http:
    def v2(p: list[bytes]) -> dict:
        return {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [len(p)],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(img).decode() for img in p],
                }
            ]
        }

    def probs(a: dict) -> np.ndarray:
        out = a["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    return Http("/v2/models/labelaudit/infer", [_encoded(json=v2(p)) for p in payloads], probs)


def bentoml_http(payloads: list[list[bytes]]) -> Http:
    bodies = [_encoded(files=[("images", _file(i, img)) for i, img in enumerate(p)]) for p in payloads]
    return Http("/classify", bodies, lambda a: np.asarray(a, dtype=np.float32))


@asynccontextmanager
async def http_sender(base_url: str, http: Http, concurrency: int, *, client: str = "aiohttp"):
    """A ``Send`` over one client session whose pool holds ``concurrency`` keep-alive connections."""
    bodies = [(body, {"content-type": ctype, "accept-encoding": "identity"}) for body, ctype in http.bodies]
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as session:

            async def send(i: int) -> int:
                body, headers = bodies[i % len(bodies)]
                return (await session.post(http.path, content=body, headers=headers)).status_code

            yield send
        return
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def send(i: int) -> int:
            body, headers = bodies[i % len(bodies)]
            async with session.post(http.path, data=body, headers=headers) as response:
                await response.read()
                return response.status

        yield send


def http_parity(base_url: str, http: Http, expected: np.ndarray, name: str) -> None:
    """The system answers the first payloads like the in-process core (probabilities, atol 1e-4)."""
    got = []
    for body, content_type in http.bodies:
        r = httpx.post(base_url + http.path, content=body, headers={"content-type": content_type}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{name}: {r.status_code} {r.text[:500]}")
        got.append(http.probs(r.json()))
    got = np.concatenate(got)
    np.testing.assert_allclose(got, expected[: len(got)], atol=1e-4, err_msg=f"{name} disagrees with the core")


# -- in process ----------------------------------------------------------------------------------------


class BatchCounter:
    """A MicroBatcher observer: images and batches released (for the mean batch size of a point)."""

    def __init__(self) -> None:
        self.images = self.batches = 0

    def batch_released(self, *, images: int, requests: int, reason: str, queue_delay_s: float) -> None:
        self.images += images
        self.batches += 1


@asynccontextmanager
async def in_process(repo: Path):
    """The gateway's runtime as create_app opens it (same settings, same batching), minus HTTP."""
    from labelaudit.serving.core.runtime import open_runtime
    from labelaudit.serving.settings import Settings

    settings = Settings(model_repo=repo, store_url=f"sqlite:///{tempfile.mkdtemp()}/unused.db")
    counter = BatchCounter()
    async with open_runtime(settings, batching="dynamic", observer=counter) as runtime:
        yield runtime.core, runtime.batcher, counter


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Point:
    system: str
    body: str
    per_request: int


def plan(args) -> list[Point]:
    points = [
        Point("ort_tensors", "tensors", 1),
        Point("ort_decode", "bytes", 1),
        Point("gateway", "multipart", 1),
        Point("gateway", "json", 1),
        Point("peer_mlserver", "v2_json_base64", 1),
        Point("peer_bentoml", "multipart", 1),
    ]
    multi = args.multi_images
    if multi > 1:  # 0: requests without images only fail (a million errors in the workers runs); 1: the rows above
        points += [
            Point("ort_decode", "bytes", multi),
            Point("gateway", "multipart", multi),
            Point("peer_mlserver", "v2_json_base64", multi),
            Point("peer_bentoml", "multipart", multi),
        ]
    return [p for p in points if p.system in args.systems]


async def run(args) -> None:
    work = MODELS[args.model]
    work.mkdir(parents=True, exist_ok=True)
    load = workload(args.model, work)
    repo, images = load.repo, load.images
    model_dir = repo / "labelaudit" / "1"
    classes = json.loads((model_dir / "model_card.json").read_text())["classes"]
    import onnxruntime

    device = (
        f"{os.cpu_count()}-core CPU ({cpu_name()}, {platform.machine()}), onnxruntime {onnxruntime.__version__} "
        f"CPU provider; load generator and servers share these cores"
    )
    config = {k: v for k, v in vars(args).items()} | {
        "payload": load.payload,
        "gateway_settings": "defaults (max_batch_size 64, max_batch_delay_ms 2, max_queue_images 1024, http_workers "
        f"{os.environ.get('LABELAUDIT_HTTP_WORKERS', '0')}: {_workers_note()})",
        "peer_versions": peer_versions(args),
        "serving_tree": serving_tree(),
    }
    rows: list[dict] = []
    points = plan(args)
    servers: dict[str, Server] = {}
    try:
        async with in_process(repo) as runtime:
            expected = await runtime[0].classify(images[:8])
            servers = start_servers(args, repo, model_dir, {p.system for p in points}, work=work)
            https = check_parity(servers, points, images, classes, expected)
            for concurrency in args.concurrency:  # systems side by side at each concurrency
                for p in points:
                    if p.system.startswith("peer_") and p.system not in servers:
                        continue
                    row = await measure(p, concurrency, args, images, runtime, servers, https)
                    rows.append(row)
                    write_results(args.name, config=config, rows=rows, device=device)
                    console.print(row)
    finally:
        for server in servers.values():
            server.stop()
    from bench.tables import update_docs

    update_docs()


def serving_tree() -> str | None:
    """Uncommitted changes to the served code, named, so the commit in the results file does not overclaim."""
    res = subprocess.run(
        ["git", "status", "--porcelain", "--", "serving", "labelaudit", "schemas"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    changed = [line[3:] for line in res.stdout.splitlines() if line.strip()]
    return f"The served code had uncommitted changes in {', '.join(changed)}" if changed else None


def peer_versions(args) -> dict:
    out = {}
    for name, venv, module in [("mlserver", args.peers_venv, "mlserver"), ("bentoml", args.bentoml_venv, "bentoml")]:
        python = Path(venv) / "bin" / "python"
        if python.exists():
            code = f"import {module}, onnxruntime; print({module}.__version__, onnxruntime.__version__)"
            res = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
            if res.returncode == 0:
                version, ort_version = res.stdout.split()
                out[name] = {"version": version, "onnxruntime": ort_version}
    return out


def start_servers(args, repo: Path, model_dir: Path, systems: set[str], *, work: Path) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    try:
        if "gateway" in systems:
            servers["gateway"] = start_gateway(repo, work=work)
        for system, venv, start, workers in [
            ("peer_mlserver", Path(args.peers_venv), start_mlserver, args.mlserver_workers),
            ("peer_bentoml", Path(args.bentoml_venv), start_bentoml, args.bentoml_workers),
        ]:
            if system not in systems:
                continue
            if not (venv / "bin" / "python").exists():
                console.print(f"[yellow]{system}: no virtualenv at {venv} (run scripts/peers.sh); skipped")
                continue
            target = model_dir / "model.onnx" if system == "peer_mlserver" else model_dir
            servers[system] = start(venv, target, workers=workers, work=work)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def http_for(p: Point, payloads: list[list[bytes]], classes: list[str], top_k: int = TOP_K) -> Http:
    if p.system == "gateway":
        return gateway_http(payloads, classes, body=p.body, top_k=top_k)
    return mlserver_http(payloads) if p.system == "peer_mlserver" else bentoml_http(payloads)


def check_parity(servers, points, images, classes, expected) -> dict:
    """Every HTTP system answers like the core; returns the timed bodies per (system, body, n)."""
    https = {}
    for p in points:
        if p.system in servers:
            base = servers[p.system].base_url
            http_parity(base, http_for(p, groups(images[:8], 1, 8), classes, top_k=len(classes)), expected, p.system)
            https[(p.system, p.body, p.per_request)] = http_for(p, groups(images, p.per_request, 64), classes)
    return https


async def in_process_sender(p: Point, images: list[bytes], core, batcher) -> Send:
    if p.system == "ort_tensors":
        tensors = await core.preprocess_all(images)  # (N, C, H, W), decoded once before the clock starts
        payloads = [tensors[[(i * p.per_request + j) % len(tensors) for j in range(p.per_request)]] for i in range(64)]

        async def send(i: int) -> int:
            await batcher.submit(payloads[i % len(payloads)])
            return 200
    else:
        payloads = groups(images, p.per_request, 64)

        async def send(i: int) -> int:
            core.top_k(await core.classify(payloads[i % len(payloads)]), TOP_K)
            return 200

    return send


async def measure(p: Point, concurrency: int, args, images, runtime, servers, https) -> dict:
    """One point: warm-up, the timed window, CPU per request and the mean batch the batcher released."""
    core, batcher, counter = runtime
    loop = dict(concurrency=concurrency, warmup_s=args.warmup, duration_s=args.duration)
    if p.system in ("ort_tensors", "ort_decode"):
        send = await in_process_sender(p, images, core, batcher)
        before = (counter.images, counter.batches)
        result = await closed_loop(send, cpu=cpu_reader(None), **loop)
        after = (counter.images, counter.batches)
    else:
        server = servers[p.system]
        before = gateway_batches(server) if p.system == "gateway" else None
        http = https[(p.system, p.body, p.per_request)]
        async with http_sender(server.base_url, http, concurrency, client=args.client) as send:
            result = await closed_loop(send, cpu=cpu_reader(server.proc.pid), **loop)
        after = gateway_batches(server) if p.system == "gateway" else None
    mean_batch = (after[0] - before[0]) / max(1, after[1] - before[1]) if before else None
    return finish_row(p, concurrency, result, mean_batch, model=args.model)


def gateway_batches(server: Server) -> tuple[float, float]:
    """(images, batches) released so far, from the gateway's Prometheus metrics."""
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    found = dict(re.findall(r"^labelaudit_batch_images_(sum|count) (\S+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def finish_row(p: Point, concurrency: int, result: dict, mean_batch: float | None, *, model: str) -> dict:
    ok = result["requests_per_s"] * result["duration_s"]
    per_request = {
        f"{k}_cpu_ms_per_request": round(1000 * v / ok, 3) if v is not None and ok else None
        for k, v in result.pop("cpu_s").items()
    }
    return {
        "model": model,
        "system": p.system,
        "body": p.body,
        "concurrency": concurrency,
        "images_per_request": p.per_request,
        "requests_per_s": result["requests_per_s"],
        "images_per_s": round(result["requests_per_s"] * p.per_request, 1),
        **{k: v for k, v in result.items() if k != "requests_per_s"},
        "mean_batch_images": round(mean_batch, 2) if mean_batch is not None else None,
        **per_request,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was, for the reader
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="fmnist",
        help="fmnist: task B's 28 px PNGs (default); resnet18-224: ResNet-18 on 640x480 JPEG photos",
    )
    ap.add_argument("--quick", action="store_true", help="3 s per point, 1 s warm-up (unless given)")
    ap.add_argument(
        "--duration", type=float, default=None, help="seconds measured per point (default 10, 15 for resnet18-224)"
    )
    ap.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before each window (default 2, 5 for resnet18-224)"
    )
    ap.add_argument(
        "--concurrency", type=int, nargs="+", default=None, help="default 1 8 32 64 (fmnist), 1 8 32 (resnet18-224)"
    )
    ap.add_argument(
        "--multi-images",
        type=int,
        default=None,
        help="images per request of the extra rows (0 or 1: none; default 8, 4 for resnet18-224)",
    )
    ap.add_argument(
        "--systems", nargs="+", default=["ort_tensors", "ort_decode", "gateway", "peer_mlserver", "peer_bentoml"]
    )
    ap.add_argument("--peers-venv", default=str(ROOT / ".venv-peers"), help="MLServer's (scripts/peers.sh)")
    ap.add_argument("--bentoml-venv", default=str(ROOT / ".venv-peers-bentoml"), help="BentoML's (scripts/peers.sh)")
    ap.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (its default: 1)")
    ap.add_argument("--bentoml-workers", type=int, default=1, help="BentoML service workers (its default: 1)")
    ap.add_argument(
        "--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the load generator's HTTP client"
    )
    ap.add_argument(
        "--name",
        default=None,
        help="results file name (default serve or serve_resnet18 by --model, with _quick after it with --quick)",
    )
    args = ap.parse_args()
    defaults = DEFAULTS[args.model] | ({"duration": 3.0, "warmup": 1.0} if args.quick else {})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or RESULT_NAMES[args.model] + ("_quick" if args.quick else "")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
