"""The model card's per-labeler error rates where images carry several labels, three estimators side by side
on the same trained networks and labels: the model's deconvolved disagreement alone, the one-coin fit to the
labelers' pair agreement (labelaudit.agreement, the card's source before), and Dawid–Skene over the images'
labels (labelaudit.dawid_skene, the card's source now). Writes bench/results/card_rates.json and the docs table.

    python -m bench.card_rates             # the runs bench/train_noise.py --multi left in bench/work

Each point is a run of ``bench/train_noise.py --name train_multi`` (its network predicts task B's training rows
as the card does; its confusion comes from the clean val split), scored against the recipe's truth
(labelers.json): mean absolute error and Spearman over the labelers. Minutes: no training.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from scipy.stats import spearmanr

from bench.common import WORK, checkpoint_probs, device_name, git_commit, write_results
from labelaudit import agreement, dawid_skene
from labelaudit.imaging.manifest import read_manifest
from labelaudit.training.checkpoint import load_checkpoint
from labelaudit.training.transition import confusion_counts, labeler_error_rates

console = Console()


@dataclass
class CardInputs:
    """What the card's labeler rates read, as training computes them: a checkpoint's labels for the manifest's
    untrusted labeled training rows (``predicted``), its confusion on the clean val split, the rows' labels and
    labelers."""

    meta: Any
    manifest: Any
    train: np.ndarray
    k: int
    predicted: np.ndarray
    confusion: np.ndarray
    labels: np.ndarray
    who: np.ndarray

    @staticmethod
    def of(checkpoint: Path, manifest: Path) -> CardInputs:
        meta = load_checkpoint(checkpoint)[1]
        m = read_manifest(manifest, classes=meta.classes)
        k = len(meta.classes)
        train = np.flatnonzero((m.splits == "train") & ~m.trusted & (m.labels >= 0))
        val = np.flatnonzero(m.splits == "val")
        probs = checkpoint_probs(checkpoint, manifest, np.r_[train, val])
        confusion = confusion_counts(m.labels[val], probs[len(train) :].argmax(1), k)
        return CardInputs(
            meta,
            m,
            train,
            k,
            probs[: len(train)].argmax(1),
            confusion,
            m.labels[train],
            m.labeler_ids[train].astype(str),
        )


def one_coin(labels: np.ndarray, who: np.ndarray, image: np.ndarray, k: int) -> dict[str, float]:
    """The one-coin fit to every two labelers' agreement on their shared images."""
    pairs: dict[tuple[str, str], list[int]] = {}
    order = np.argsort(image, kind="stable")
    for block in np.split(order, np.flatnonzero(np.diff(image[order])) + 1):
        for x, i in enumerate(block):
            for j in block[x + 1 :]:
                (a, y_a), (b, y_b) = sorted([(str(who[i]), labels[i]), (str(who[j]), labels[j])])
                cell = pairs.setdefault((a, b), [0, 0])
                cell[0] += int(y_a == y_b)
                cell[1] += 1
    est = agreement.estimate([(a, b, n_agree, n) for (a, b), (n_agree, n) in sorted(pairs.items())], k)
    return {a: float(e) for a, e in zip(est.labelers, est.error, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="crowdmix:mixup_alpha=0.3,student_rounds=1", help="the runs' train_noise spec")
    ap.add_argument("--multi", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--unlabeled", type=int, default=5000)
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        data = WORK / f"small-seed{seed}-noise0.4-unlabeled{args.unlabeled}-multi{args.multi}"
        run = WORK / f"runs/{data.name}-{args.method.replace(':', '-').replace(',', '-').replace('=', '')}"
        checkpoint = run / "checkpoint.pt"
        if not checkpoint.exists():
            console.print(f"[yellow]seed {seed}: no run in {run}; bench/train_noise.py --multi trains it")
            continue
        c = CardInputs.of(checkpoint, data / "task_b.jsonl")
        meta, k, predicted, confusion, labels, who = c.meta, c.k, c.predicted, c.confusion, c.labels, c.who
        image = np.unique(c.manifest.item_ids[c.train], return_inverse=True)[1]
        shared = dawid_skene.estimate(labels, who, image, k)
        estimates = {  # "card": what the card says now (Dawid-Skene where identified, else the model's)
            "model": {a: r.rate for a, r in labeler_error_rates(predicted, labels, who, confusion).items()},
            "one_coin": one_coin(labels, who, image, k),
            "dawid_skene": dict(zip(shared.labelers, shared.error.tolist(), strict=True)),
            "card": {a: r.rate for a, r in labeler_error_rates(predicted, labels, who, confusion, image).items()},
        }
        truth = {
            r["labeler_id"]: r["true_error_rate"] for r in json.loads((data / "labelers.json").read_text())["labelers"]
        }
        for estimator, rates in estimates.items():
            ids = sorted(a for a in rates if a in truth and np.isfinite(rates[a]))
            estimate, true = np.array([rates[a] for a in ids]), np.array([truth[a] for a in ids])
            row = {
                "seed": seed,
                "multi": args.multi,
                "estimator": estimator,
                "labelers": len(ids),
                "mean_abs_error": round(float(np.abs(estimate - true).mean()), 4),
                "spearman_vs_true_error": round(float(spearmanr(estimate, true).statistic), 4),
                "per_labeler": {a: {"true_error": truth[a], "estimate": round(rates[a], 4)} for a in ids},
                "run": run.name,
                "model_test_acc": meta.metrics.test_acc,
                "git_commit": git_commit(),
            }
            rows.append(row)
            console.print({key: row[key] for key in ("seed", "estimator", "mean_abs_error", "spearman_vs_true_error")})
    write_results("card_rates", config=vars(args), rows=rows, device=device_name())
    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
