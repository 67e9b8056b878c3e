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
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rich.console import Console

from bench.common import (
    SIZES,
    WORK,
    LoadSampler,
    add_grid_args,
    apply_quick,
    checkpoint_probs,
    device_name,
    git_commit,
    kept_rows,
    merged_config,
    task_data,
    trained,
    write_results,
)
from bench.train_noise import BENCH_KEYS, parse_method
from labelaudit.imaging.manifest import read_manifest
from labelaudit.training.checkpoint import load_checkpoint
from labelaudit.training.config import TrainConfig
from labelaudit.training.student import teacher_targets
from labelaudit.training.train import train

console = Console()


def variant_settings(spec: str) -> dict:
    """``"student_trusted=rows,student_threshold=0.6"`` -> the TrainConfig overrides; ``"base"`` -> none. The
    benchmark's own data variants (``no_trusted``...) change the manifest, which the teacher was trained on:
    refused."""
    settings = {} if spec == "base" else parse_method(f"student:{spec}")[1]
    if any(key in BENCH_KEYS for key in settings):
        raise SystemExit(f"{spec}: a student variant may set TrainConfig fields only, not {', '.join(BENCH_KEYS)}")
    return settings


def target_diagnostics(checkpoint: Path, manifest: Path, min_labeler_items: int) -> dict:
    """How often the student's targets from this teacher are right, against the recipe's true classes: per
    labeler, the share of its rows whose label is right (``label``), whose teacher argmax is (``teacher``),
    whose target (the class posterior through the labeler's EM matrix, ``training.student.teacher_targets``)
    is (``target``), and the accuracy the EM believes the labeler has (``em_label``: mean posterior of the given
    label); for the images without a label, ``teacher`` (their target is the teacher's guess). Row counts in
    ``rows``. It shows where the targets fall short of the truth the oracle trains on. Each row is read as an
    image of its own (one label per image, as in issue 17's protocol)."""
    meta = load_checkpoint(checkpoint)[1]
    m = read_manifest(manifest, classes=meta.classes)
    untrusted = np.flatnonzero(m.mask(split="train", trusted=False, labeled=True))
    unlabeled = np.flatnonzero(m.mask(split="train", labeled=False))
    both = torch.from_numpy(checkpoint_probs(checkpoint, manifest, np.concatenate([untrusted, unlabeled])))
    probs = [both[: len(untrusted)], both[len(untrusted) :]]  # one pass over the images for both kinds of row
    data = SimpleNamespace(  # the fields of TaskData that teacher_targets reads
        untrusted_rows=untrusted,
        unlabeled_rows=unlabeled,
        labels=torch.as_tensor(m.labels),
        labeler_ids=m.labeler_ids,
        items=None,
        k=len(m.classes),
    )
    trainer = SimpleNamespace(data=data, cfg=TrainConfig(min_labeler_items=min_labeler_items))
    rows, targets = teacher_targets(trainer, teacher=(probs[0], probs[1]))  # untrusted rows first, as given
    truth = m.true_labels()
    n_l = len(untrusted)
    given = torch.as_tensor(m.labels[untrusted])
    label_right = m.labels[untrusted] == truth[untrusted]
    teacher_right = probs[0].argmax(1).numpy() == truth[untrusted]
    target_right = targets[:n_l].argmax(1).numpy() == truth[rows[:n_l]]
    em_label = targets[np.arange(n_l), given].numpy()  # the posterior of each row's own label

    def summary(mask: np.ndarray) -> dict:
        return {"rows": int(mask.sum())} | {
            name: round(float(values[mask].mean()), 4)
            for name, values in (
                ("label", label_right),
                ("teacher", teacher_right),
                ("target", target_right),
                ("em_label", em_label),
            )
        }

    ids = m.labeler_ids[untrusted].astype(str)
    out = {name or "(no labeler id)": summary(ids == name) for name in sorted(set(ids))}
    out["all labeled"] = summary(np.ones(n_l, dtype=bool))
    if len(unlabeled):
        guessed = probs[1].argmax(1).numpy() == truth[unlabeled]
        out["unlabeled"] = {"rows": len(unlabeled), "teacher": round(float(guessed.mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_args(ap)
    ap.add_argument("--first", default="crowdmix:mixup_alpha=0.3", help="the first round (a train_noise spec)")
    ap.add_argument(
        "--variants", nargs="*", default=["base", "student_trusted=rows"], help="none: the teacher row alone"
    )
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
                targets=target_diagnostics(teacher.checkpoint, manifest, cfg.min_labeler_items),
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
