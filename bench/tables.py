"""Render docs/benchmarks.md from bench/results/*.json, so every number in the docs traces to a file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import RESULTS

DOCS = Path(__file__).parent.parent / "docs" / "benchmarks.md"
METHOD_ORDER = ["classifier_a", "ce", "glc", "fasten", "crowd", "oracle"]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def train_noise_table(result: dict) -> str:
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    speed: dict[str, list[float]] = defaultdict(list)
    for row in result["rows"]:
        cells[(row["method"], row["noise_requested"])].append(row["clean_test_acc"])
        if row.get("train_images_per_s"):
            speed[row["method"]].append(row["train_images_per_s"])
    noises = sorted({n for _, n in cells})
    methods = [m for m in METHOD_ORDER if any((m, n) in cells for n in noises)]
    head = "| method | " + " | ".join(f"noise {n:.0%}" for n in noises) + " | train images/s |"
    lines = [head, "|" + " --- |" * (len(noises) + 2)]
    for m in methods:
        accs = []
        for n in noises:
            v = cells.get((m, n), [])
            accs.append(f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f} (n={len(v)})" if v else "-")
        ips = f"{np.mean(speed[m]):.0f}" if speed.get(m) else "-"
        lines.append(f"| {m} | " + " | ".join(accs) + f" | {ips} |")
    c = result["config"]
    return (
        f"Clean-test accuracy (%) on task B, mean ± std over seeds, 1% trusted set. Size `{c.get('size')}` "
        f"({c.get('per_task')} images per task), epochs A/B {c.get('epochs_a')}/{c.get('epochs_b')}, "
        f"arch `{c.get('arch')}`. Device: {result['device']}. Commit {result['git_commit']}, {result['date']}.\n\n"
        + "\n".join(lines)
        + "\n"
        + (f"\nNote: {c['note']}\n" if c.get("note") else "")
        + aims_at_40(result)
    )


def aims_at_40(result: dict) -> str:
    """The issue's aims at 40% noise, as measured: gaps in accuracy points between method means."""
    mean = defaultdict(list)
    for row in result["rows"]:
        if row["noise_requested"] == 0.4:
            mean[row["method"]].append(100 * row["clean_test_acc"])
    m = {k: float(np.mean(v)) for k, v in mean.items()}
    if not {"ce", "glc", "oracle"} <= set(m):
        return ""
    lines = ["| method | minus glc (aim >= +2) | minus ce (aim >= +5) | oracle minus method (aim <= 5, stretch <= 2) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for method in ("fasten", "crowd"):
        if method in m:
            lines.append(
                f"| {method} | {m[method] - m['glc']:+.2f} | {m[method] - m['ce']:+.2f} | {m['oracle'] - m[method]:.2f} |"
            )
    return "\nAims at 40% noise (points, means over seeds):\n\n" + "\n".join(lines) + "\n"


def label_errors_table(result: dict) -> str:
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in result["rows"]:
        cells[(row["detector"], row["noise_requested"])].append(row)
    lines = ["| detector | noise | precision | recall | F1 | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for (detector, noise), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        stat = {k: np.mean([r[k] for r in rs]) for k in ("precision", "recall", "f1")}
        lines.append(
            f"| {detector} | {noise:.0%} | {stat['precision']:.3f} | {stat['recall']:.3f} | {stat['f1']:.3f} | {len(rs)} |"
        )
    return (
        f"Finding task B's wrong training labels from 2-fold out-of-sample FasTEN probabilities (the same "
        f"probabilities for both detectors). Device: {result['device']}. Commit {result['git_commit']}, "
        f"{result['date']}.\n\n" + "\n".join(lines) + "\n"
    )


def stream_table(result: dict) -> str:
    lines = ["| mode | store | consumers | messages | images/s | vs model only (aim e2e >= 0.7) | wall s | lost | duplicated |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r.get('store') or '-'} | {r.get('consumers', '-')} | {r['messages']:,} | "
            f"{r['images_per_s']:.0f} | {r.get('vs_model_only', float('nan')):.2f} | {r['seconds']:.1f} | "
            f"{r['lost']} | {r['duplicated']} |"
        )
    drains = [r for r in result["rows"] if r["mode"].startswith("drain") and r.get("lag_samples")]
    lag = ""
    if drains:
        samples = drains[0]["lag_samples"]
        lag = "\nThe consumer's `labelaudit_consumer_lag` while draining the backlog (seconds: messages behind): " + (
            ", ".join(f"{t:.0f}s: {v:,.0f}" for t, v in samples[:: max(1, len(samples) // 12)]) + ".\n"
        )
    return (
        f"Topic to store through `labelaudit consume` processes on a real broker, next to the same backend "
        f"without Kafka and store (`model_only`: decode + onnxruntime in batches of {result['config']['batch']}). "
        f"Device: {result['device']}. Commit {result['git_commit']}, {result['date']}.\n\n"
        + "\n".join(lines)
        + "\n"
        + lag
    )


def update_docs() -> None:
    sections = [
        "# Benchmarks\n",
        "Generated by `python -m bench.tables` from `bench/results/*.json`; do not edit by hand.\n",
    ]
    for name, title, render in [
        ("train_noise", "Training under label noise (`bench/train_noise.py`)", train_noise_table),
        ("train_noise_quick", "Training under label noise, quick (`bench/train_noise.py --quick`)", train_noise_table),
        ("label_errors", "Label-error detection (`bench/label_errors.py`)", label_errors_table),
        ("stream", "The Kafka stream (`bench/stream.py`)", stream_table),
    ]:
        result = _load(name)
        if result:
            sections.append(f"## {title}\n\n{render(result)}")
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text("\n".join(sections))


if __name__ == "__main__":
    update_docs()
