"""Several processes, one run: ``torchrun --nproc-per-node N -m labelaudit train`` against one process with
the same global batch, same seed, fine-tuning classifier A (trained on task A once) on task B (40% labeler
noise, 1% trusted), as users run it. On CPU (gloo) each process normalises BatchNorm over its slice, so
the runs agree within a tolerance, not bit for bit; one process with another seed is measured beside
them, to show how far two honest runs fall apart anyway.

Rows of ``bench/results/real_models.json`` with ``kind: ddp`` (other kinds kept)::

    python -m bench.ddp --quick          # tiny data, 2 epochs
    python -m bench.ddp                  # small data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import SIZES, WORK, device_name, kept_rows, write_results
from labelaudit.training.datasets import fashion_mnist

TOLERANCE = 0.02  # clean test accuracy: |N processes - 1 process|


def run(manifest: Path, init: Path, out: Path, method: str, processes: int, epochs: int, seed: int = 0):
    """One training run as a user starts it; returns its metrics.json and the wall seconds."""
    args = [
        "-m",
        "labelaudit",
        "train",
        "--manifest",
        str(manifest),
        "--init",
        str(init),
        "--method",
        method,
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--seed",
        str(seed),
    ]
    if processes > 1:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", f"--nproc-per-node={processes}", *args]
    else:
        command = [sys.executable, *args]
    threads = max(1, (os.cpu_count() or 1) // processes)
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--methods", nargs="+", default=["fasten", "crowd"])
    ap.add_argument("--processes", type=int, nargs="+", default=[2])
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    if args.quick:
        args.size, args.epochs = "tiny", 2
    name = "real_models_quick" if args.quick else "real_models"
    rows, earlier = kept_rows(name, redone=lambda r: r.get("kind") == "ddp")
    config = earlier | {
        "ddp": vars(args) | {"tolerance": TOLERANCE, "backend": "nccl" if torch.cuda.is_available() else "gloo"}
    }
    per_task, val_size, test_size = SIZES[args.size]
    data = WORK / f"{args.size}-seed0-noise0.4"
    if not (data / "task_b.jsonl").exists():
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=per_task, val_size=val_size, test_size=test_size)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    a = WORK / "runs/ddp-classifier-a"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "labelaudit",
            "train",
            "--manifest",
            str(data / "task_a.jsonl"),
            "--method",
            "ce",
            "--epochs",
            str(args.epochs),
            "--out",
            str(a),
        ],
        check=True,
        capture_output=True,
    )
    init, b = a / "checkpoint.pt", data / "task_b.jsonl"
    for method in args.methods:
        single, seconds = run(b, init, WORK / f"runs/ddp-{method}-1", method, 1, args.epochs)
        acc1 = single["metrics"]["test_acc"]
        rows.append(
            {
                "kind": "ddp",
                "method": method,
                "processes": 1,
                "backend": "-",
                "clean_test_acc": round(acc1, 4),
                "agrees_with_single": True,
                "seconds": round(seconds, 1),
                "epochs": args.epochs,
                "seed": 0,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        other, seconds = run(b, init, WORK / f"runs/ddp-{method}-1-seed1", method, 1, args.epochs, seed=1)
        acc = other["metrics"]["test_acc"]
        rows.append(
            {
                "kind": "ddp",
                "method": method,
                "processes": 1,
                "backend": "-",
                "clean_test_acc": round(acc, 4),
                "agrees_with_single": abs(acc - acc1) <= TOLERANCE,
                "difference": round(acc - acc1, 4),
                "seconds": round(seconds, 1),
                "epochs": args.epochs,
                "seed": 1,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        for n in args.processes:
            multi, seconds = run(b, init, WORK / f"runs/ddp-{method}-{n}", method, n, args.epochs)
            acc = multi["metrics"]["test_acc"]
            rows.append(
                {
                    "kind": "ddp",
                    "method": method,
                    "processes": n,
                    "backend": backend,
                    "clean_test_acc": round(acc, 4),
                    "agrees_with_single": abs(acc - acc1) <= TOLERANCE,
                    "difference": round(acc - acc1, 4),
                    "seconds": round(seconds, 1),
                    "epochs": args.epochs,
                    "seed": 0,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            )
            print(rows[-2:], flush=True)
            write_results(name, config=config, rows=rows, device=device_name())


if __name__ == "__main__":
    main()
