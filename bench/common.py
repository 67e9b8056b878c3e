"""Shared by the benchmark scripts: the result file format of shared BENCH.md, and the machine's name."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import threading
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work"


@functools.cache
def git_commit() -> str:
    """The commit the benchmark started from (cached: later commits during a long run don't count)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{os.cpu_count()}-core CPU ({cpu_name()}, {platform.machine()}), torch {torch.__version__} CPU"


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``every`` seconds while the block runs (a daemon
    thread). A long row's load at its end says little about the load it ran under; its mean and peak do.

    with LoadSampler() as load:
        ...
    row |= load.summary()  # loadavg_1m (at the end, as older rows have it), loadavg_1m_mean, loadavg_1m_max
    """

    def __init__(self, every: float = 15.0):
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {
            "loadavg_1m": round(self.samples[-1], 2),
            "loadavg_1m_mean": round(sum(self.samples) / len(self.samples), 2),
            "loadavg_1m_max": round(max(self.samples), 2),
        }


def kept_rows(name: str, redone) -> tuple[list[dict], dict]:
    """``--append``: the rows of bench/results/<name>.json that this run does not measure again (``redone(row)``
    is False), each keeping the commit it was measured at, and the earlier run's config."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return [], {}
    old = json.loads(path.read_text())
    rows = [r | {"git_commit": r.get("git_commit", old["git_commit"])} for r in old["rows"] if not redone(r)]
    return rows, old["config"]


def merged_config(config: dict, earlier: dict) -> dict:
    """An appending run's config: its own knobs, with the seeds and noise levels of both runs."""
    out = dict(config)
    for key in ("seeds", "noise"):
        if key in earlier:
            out[key] = sorted(set(earlier[key]) | set(config[key]))
    return out


def commits(result: dict) -> str:
    """ "Commit abc1234" or "Commits abc1234, def5678": what a result's rows were measured at (the rows of
    an appending run carry their own)."""
    found = sorted({r.get("git_commit", result["git_commit"]) for r in result["rows"]})
    return ("Commits " if len(found) > 1 else "Commit ") + ", ".join(found)


def devices(result: dict) -> str:
    """The machine a result's rows were measured on or, where several, each with the seeds it measured."""
    seeds: dict[str, set] = {}
    for row in result["rows"]:
        seeds.setdefault(row.get("device", result["device"]), set()).add(row.get("seed"))
    if len(seeds) == 1:
        return next(iter(seeds))
    parts = []
    for device, found in seeds.items():
        numbered = sorted(s for s in found if s is not None)
        which = f"seed{'s' if len(numbered) > 1 else ''} {', '.join(map(str, numbered))}" if numbered else ""
        parts.append(f"{device} ({which or 'the rows without a seed'})")
    return "; ".join(parts)


def write_results(name: str, *, config: dict, rows: list[dict], device: str) -> Path:
    """Write bench/results/<name>.json in the BENCH.md shape (rewritten after every row). Each row without a
    ``device`` gets this run's; the rows an appending run kept keep theirs, so a file that several machines
    added to says which measured what (the top-level ``device`` is the last run's)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.setdefault("device", device)
    path = RESULTS / f"{name}.json"
    payload = {
        "bench": name,
        "date": date.today().isoformat(),
        "git_commit": git_commit(),
        "device": device,
        "config": config,
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


SIZES = {"tiny": (1_500, 300, 1_000), "small": (6_000, 1_000, 2_000), "full": (30_000, 2_000, 10_000)}


def task_data(
    size: str, seed: int, noise: float, unlabeled: int = 0, multi: float = 0.0, qa: float = 0.0
) -> tuple[Path, float]:
    """One point's task A and B data, ``WORK/<size>-seed<s>-noise<n>[-unlabeled<u>][-multi<m>][-qa<q>]`` (built on first use by
    training.datasets.fashion_mnist, then reused by every benchmark), and the noise actually drawn."""
    from labelaudit.training.datasets import fashion_mnist

    per_task, val_size, test_size = SIZES[size]
    name = f"{size}-seed{seed}-noise{noise}" + (f"-unlabeled{unlabeled}" if unlabeled else "")
    data = WORK / (name + (f"-multi{multi}" if multi else "") + (f"-qa{qa}" if qa else ""))
    if not (data / "task_b.jsonl").exists():
        fashion_mnist.build(
            data,
            noise=noise,
            seed=seed,
            per_task=per_task,
            val_size=val_size,
            test_size=test_size,
            unlabeled=unlabeled,
            multi=multi,
            qa=qa,
        )
    return data, json.loads((data / "labelers.json").read_text())["noise_actual"]


def trained(manifest: Path, *, init, out: Path, cfg, reuse: bool = False):
    """``train(manifest, init=init, out=out, cfg=cfg)``; with ``reuse``, the run already in ``out`` instead
    when it was trained on this manifest (its data version) with this config (``git_commit`` in the
    row says which code trained it, not this one). Returns a ``TrainResult``."""
    from dataclasses import asdict

    from labelaudit.imaging.manifest import read_manifest
    from labelaudit.training.checkpoint import load_checkpoint
    from labelaudit.training.train import TrainResult, train

    checkpoint = out / "checkpoint.pt"
    if reuse and checkpoint.exists():
        meta = load_checkpoint(checkpoint)[1]
        # a setting added since that run, at its default, changed nothing it trained
        defaults = asdict(type(cfg)())
        same_config = all(meta.config.get(k, defaults[k]) == v for k, v in asdict(cfg).items())
        if same_config and meta.data_version == read_manifest(manifest).sha256:
            return TrainResult(checkpoint, meta, meta.metrics.history)
    return train(manifest, init=init, out=out, cfg=cfg)


def add_grid_args(ap) -> None:
    """The knobs every training benchmark shares: data size, seeds, noise levels, epochs."""
    ap.add_argument("--quick", action="store_true", help="tiny data, one seed, 40%% noise, few epochs")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    ap.add_argument("--epochs-a", type=int, default=8)
    ap.add_argument("--epochs-b", type=int, default=12)
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the result file's other rows; replace only the points this run measures",
    )


def apply_quick(args) -> None:
    if args.quick:
        args.size, args.seeds, args.noise, args.epochs_a, args.epochs_b = "tiny", [0], [0.4], 3, 4


def checkpoint_probs(checkpoint: Path, manifest: Path, rows, *, head: str = "clean"):
    """Clean-head (or the first noisy head's) probabilities (len(rows), K) of a checkpoint on manifest rows,
    eval mode, CPU."""
    import numpy as np
    import torch

    from labelaudit.imaging.manifest import load_pixels, read_manifest
    from labelaudit.imaging.preprocess import normalize
    from labelaudit.training.checkpoint import load_checkpoint

    net, meta = load_checkpoint(checkpoint)
    m = read_manifest(manifest, classes=meta.classes)
    x = torch.from_numpy(normalize(load_pixels(m, meta.preprocess)[np.asarray(rows)], meta.preprocess))
    k = len(meta.classes)

    def logits(chunk):
        return net(chunk) if head == "clean" else net.forward_both(chunk)[1][:, :k]

    with torch.no_grad():
        return torch.cat([torch.softmax(logits(x[i : i + 1024]), 1) for i in range(0, len(x), 1024)]).numpy()


# The serving benchmark's systems (bench/serve.py), in the order its tables list them (bench/tables.py).
SERVE_SYSTEMS = [
    "ort_tensors",
    "ort_decode",
    "gateway",
    "gateway_alt",
    "gateway_granian_asgi",
    "peer_mlserver",
    "peer_bentoml",
]
