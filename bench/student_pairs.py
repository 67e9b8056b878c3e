"""Student-round settings compared in pairs: one first round per data seed, saved, then every variant's
student round from that same teacher (``labelaudit train --teacher``) with several student seeds each.
Writes bench/results/student_pairs.json and the docs table.

    python -m bench.student_pairs --quick     # minutes: tiny data, one seed, 4 epochs
    python -m bench.student_pairs --seeds 2 --student-seeds 3 --epochs-b 60 --unlabeled 5000 \\
        --variants base student_trusted=rows student_labeled_threshold=0.8

Why pairs: issue 17's protocol rows train the first round and the student in one run, so a difference between
two student settings carries both rounds' run-to-run variation (about 0.3-0.4 points of test accuracy per run on
the small size), as large as what the settings change. Sharing the teacher removes the first round's part, and
several student seeds per variant give the rest's spread (``--reuse`` keeps a classifier A and a first round
already in the runs folder when they were trained on the same data and config: ~15 minutes a seed); the table shows each variant's mean and its
difference from ``base`` (the student as ``auto`` runs it) with the standard error of the paired differences.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from bench.common import (
    SIZES,
    WORK,
    LoadSampler,
    add_grid_args,
    apply_quick,
    device_name,
    git_commit,
    kept_rows,
    merged_config,
    task_data,
    trained,
    write_results,
)
from bench.train_noise import BENCH_KEYS, parse_method
from labelaudit.training.train import TrainConfig, train

console = Console()


def variant_settings(spec: str) -> dict:
    """``"student_trusted=rows,student_threshold=0.6"`` -> the TrainConfig overrides; ``"base"`` -> none. The
    benchmark's own data variants (``no_trusted``...) change the manifest, which the teacher was trained on:
    refused."""
    settings = {} if spec == "base" else parse_method(f"student:{spec}")[1]
    if any(key in BENCH_KEYS for key in settings):
        raise SystemExit(f"{spec}: a student variant may set TrainConfig fields only, not {', '.join(BENCH_KEYS)}")
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_args(ap)
    ap.add_argument("--first", default="crowdmix:mixup_alpha=0.3", help="the first round (a train_noise spec)")
    ap.add_argument("--variants", nargs="+", default=["base", "student_trusted=rows"])
    ap.add_argument("--student-seeds", type=int, default=3, help="student rounds per variant, seeds S..S+N-1")
    ap.add_argument("--first-student-seed", type=int, default=0, help="S: more seeds for variants already measured")
    ap.add_argument("--unlabeled", type=int, default=5000, help="task-B images without a label (data recipe)")
    ap.add_argument("--name", default="student_pairs")
    ap.add_argument("--arch", default="cnn_small")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep classifier A and the first round already trained in the runs folder on the same data and config",
    )
    ap.set_defaults(noise=[0.4], epochs_b=60)
    args = ap.parse_args()
    apply_quick(args)
    if args.quick:
        args.student_seeds, args.unlabeled = 2, 200
    first, first_settings = parse_method(args.first)
    variants = {spec: variant_settings(spec) for spec in args.variants}
    per_task, val_size, test_size = SIZES[args.size]
    config = vars(args) | {"trusted_fraction": 0.01, "per_task": per_task, "val_size": val_size}
    rows: list[dict] = []
    if args.append:
        rows, earlier = kept_rows(args.name, lambda r: False)
        config = merged_config(config, earlier)
    device = device_name()
    git_commit()

    def record(**row) -> None:
        point = ("variant", "seed", "student_seed", "noise_requested")
        rows[:] = [r for r in rows if any(r.get(k) != row.get(k) for k in point)]
        rows.append(row | {"git_commit": git_commit()})
        write_results(args.name, config=config, rows=rows, device=device)
        console.print(row)

    for seed in args.seeds:
        for noise in args.noise:
            data, _ = task_data(args.size, seed, noise, args.unlabeled)
            manifest = data / "task_b.jsonl"
            runs = WORK / f"runs/pairs-{data.name}"
            a = trained(
                data / "task_a.jsonl",
                init=None,
                out=runs / "a",
                cfg=TrainConfig(method="ce", arch=args.arch, epochs=args.epochs_a, seed=seed),
                reuse=args.reuse,
            )
            common = {"seed": seed, "noise_requested": noise, "unlabeled": args.unlabeled, "first": args.first}
            cfg = TrainConfig(method=first, epochs=args.epochs_b, seed=seed, **first_settings)
            teacher = trained(manifest, init=a.checkpoint, out=runs / "teacher", cfg=cfg, reuse=args.reuse)
            record(
                variant="teacher",
                student_seed=None,
                clean_test_acc=teacher.meta.metrics.test_acc,
                val_acc=teacher.meta.metrics.val_acc,
                classifier_a_test_acc=teacher.meta.metrics.initial_test_acc,
                **common,
            )
            for spec, settings in variants.items():
                for student_seed in range(args.first_student_seed, args.first_student_seed + args.student_seeds):
                    cfg = TrainConfig(
                        method=first,
                        epochs=args.epochs_b,
                        seed=student_seed,
                        teacher=str(teacher.checkpoint),
                        **{"student_rounds": 1} | first_settings | settings,  # a variant may ask for more rounds
                    )
                    started = time.perf_counter()
                    with LoadSampler() as load:
                        r = train(manifest, init=a.checkpoint, out=runs / f"student-{spec}-{student_seed}", cfg=cfg)
                    record(
                        variant=spec,
                        student_seed=student_seed,
                        clean_test_acc=r.meta.metrics.test_acc,
                        val_acc=r.meta.metrics.val_acc,
                        seconds=round(time.perf_counter() - started, 1),
                        **load.summary(),
                        **common,
                    )

    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
