"""What one night's relabel answers are worth to the next training run: the demo's stream (a real Kafka broker,
the real consumer, a simulated reviewer answering the audit sample and the top disagreement requests), then
`labelaudit harvest`, then task B trained again from the same classifier A on the harvested manifest, beside
the same training on the manifest the stream started from. Writes bench/results/harvest.json and the docs table.

    python -m bench.harvest --quick            # minutes: tiny data, one seed
    python -m bench.harvest --seeds 0 1 2 --epochs-b 30
    python -m bench.harvest --seeds 1 2 --variants before after --append    # more rows beside the file's

Each seed runs `labelaudit demo` once (its classifier A, its model answering the stream, its store and the
harvested manifest, in bench/work/harvest-...), then trains `auto` for ``--epochs-b`` epochs on each variant:
``before`` (the demo's task_b.jsonl), ``after`` (the harvested manifest: the audit-sample answers as checked
rows, the disagreement answers as the reviewer's labels beside the labelers'), ``after_as_labels`` (harvested
with ``--checked-as label``: every answer an ordinary label). Rows: the clean test accuracy and what each
manifest holds (trusted rows, the reviewer's labels, how often the checked labels are right).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.common import (
    WORK,
    LoadSampler,
    device_name,
    git_commit,
    kept_rows,
    merged_config,
    trained,
    write_results,
)
from labelaudit.imaging.manifest import read_manifest
from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.harvest import harvest
from labelaudit.training.train import TrainConfig

console = Console()
VARIANTS = ("before", "after", "after_as_labels")
REVIEWER = "reviewer"  # labelaudit.demo's simulated reviewer


def run_demo(out: Path, *, size: str, seed: int, audit_sample_rate: float, qa_budget: int) -> None:
    """``labelaudit demo`` into ``out`` (its output in ``out``/demo.log), unless a finished one is there."""
    if (out / "next" / "task_b.jsonl").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "labelaudit", "demo", "--out", str(out), "--size", size, "--seed", str(seed)]
    command += ["--audit-sample-rate", str(audit_sample_rate), "--qa-budget", str(qa_budget)]
    with (out / "demo.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def manifest_of(variant: str, demo: Path) -> Path:
    """The variant's training manifest (``after_as_labels`` harvested here from the demo's store)."""
    if variant == "before":
        return demo / "data" / "task_b.jsonl"
    if variant == "after":
        return demo / "next" / "task_b.jsonl"
    out = demo / "next-as-labels" / "task_b.jsonl"
    if not out.exists():
        store = open_store(f"sqlite:///{demo / 'audit.db'}")
        try:
            base = demo / "data" / "task_b.jsonl"
            harvest(store, out, images=base, manifest=base, checked_as="label")
        finally:
            store.close()
    return out


def contents(manifest: Path, truth: dict[str, str]) -> dict:
    """What a manifest's training rows hold, scored against the items' true classes ``truth``."""
    m = read_manifest(manifest)
    train = m.splits == "train"
    labeled = train & (m.labels >= 0)
    right = np.array([m.classes[y] == truth.get(str(i)) for i, y in zip(m.item_ids, m.labels, strict=True)])
    trusted = labeled & m.trusted
    return {
        "trusted_rows": int(trusted.sum()),
        "trusted_right": round(float(right[trusted].mean()), 4),
        "labels": int((labeled & ~m.trusted).sum()),
        "labels_right": round(float(right[labeled & ~m.trusted].mean()), 4),
        "reviewer_labels": int((labeled & (m.labeler_ids == REVIEWER)).sum()),
        "images": len(np.unique(m.item_ids[labeled])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, one seed, 4 epochs")
    ap.add_argument("--size", choices=("tiny", "small"), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs-b", type=int, default=30, help="task B's epochs for every variant's training")
    ap.add_argument("--audit-sample-rate", type=float, default=0.05, help="the stream's random audit sample")
    ap.add_argument("--qa-budget", type=int, default=300, help="disagreement requests the reviewer answers")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--append", action="store_true", help="keep the rows of bench/results/harvest.json not measured again"
    )
    args = ap.parse_args()
    if args.quick:
        args.size, args.seeds, args.epochs_b = "tiny", [0], 4
    config = vars(args).copy()
    rows: list[dict] = []
    if args.append:  # every earlier point this run does not measure again
        rows, earlier = kept_rows("harvest", lambda r: r["seed"] in args.seeds and r["variant"] in args.variants)
        config = merged_config(config, earlier)
    for seed in args.seeds:
        demo = WORK / f"harvest-{args.size}-seed{seed}-audit{args.audit_sample_rate}-qa{args.qa_budget}"
        console.print(f"[bold]seed {seed}: the demo's stream and answers in {demo}")
        run_demo(demo, size=args.size, seed=seed, audit_sample_rate=args.audit_sample_rate, qa_budget=args.qa_budget)
        base = read_manifest(demo / "data" / "task_b.jsonl")
        truth = {str(i): base.classes[y] for i, y in zip(base.item_ids, base.true_labels_or_missing, strict=True)}
        classifier_a = demo / "runs" / "classifier_a" / "checkpoint.pt"
        for variant in args.variants:
            manifest = manifest_of(variant, demo)
            cfg = TrainConfig(method="auto", epochs=args.epochs_b, seed=seed)
            started = time.perf_counter()
            with LoadSampler() as load:
                r = trained(manifest, init=classifier_a, out=demo / f"runs-bench/{variant}-e{args.epochs_b}", cfg=cfg)
            row = {
                "seed": seed,
                "variant": variant,
                "clean_test_acc": r.meta.metrics.test_acc,
                "val_acc": r.meta.metrics.val_acc,
                "method": r.meta.config.get("method"),
                "epochs": args.epochs_b,
                "audit_sample_rate": args.audit_sample_rate,
                "qa_budget": args.qa_budget,
                "seconds": round(time.perf_counter() - started, 1),
                **contents(manifest, truth),
                **load.summary(),
                "git_commit": git_commit(),
            }
            rows.append(row)
            console.print(row)
            write_results("harvest", config=config, rows=rows, device=device_name())
    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
