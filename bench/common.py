"""Shared by the benchmark scripts: the result file format of shared BENCH.md, and the machine's name."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
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


def write_results(name: str, *, config: dict, rows: list[dict], device: str) -> Path:
    """Write bench/results/<name>.json in the BENCH.md shape (rewritten after every row)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
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
