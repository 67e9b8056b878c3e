"""How well does the trained model find the wrong labels in task B's training set? Precision, recall
and F1 against the simulation's known truth, for labelaudit's two disagreement policies and for
cleanlab's ``find_label_issues`` on the SAME out-of-sample probabilities (2-fold cross-fitting: a model
from classifier A trained without a fold predicts that fold; the trusted rows are in both; ``--method``,
default ``crowd``, what ``auto`` picks for this data).

- ``labelaudit`` (``confident-joint-v1``): the per-class thresholds of the model that did not see the row.
- ``labelaudit-posterior`` (``labeler-posterior-v1``): the posterior that the label is right, from the
  model's probabilities and the labeler's matrix, each labeler's ``T_l`` estimated by Dawid-Skene EM on
  the rows the fold's model trained on (what a model card can carry), never on the judged fold.

    python bench/label_errors.py --quick
    python bench/label_errors.py          # small data, 3 seeds x 20/40/60% noise

Needs the bench extra (cleanlab, AGPL-3.0: benchmarks only). Writes bench/results/label_errors.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from rich.console import Console

from bench.common import (
    SIZES,
    WORK,
    add_grid_args,
    apply_quick,
    checkpoint_probs,
    device_name,
    git_commit,
    kept_rows,
    merged_config,
    task_data,
    write_results,
)
from labelaudit.imaging.manifest import read_manifest
from labelaudit.serving.core.policy import DisagreementPolicy, LabelerPosteriorPolicy
from labelaudit.training.train import TrainConfig, train

console = Console()


def prf(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((flagged & truth).sum())
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(truth.sum()))
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "flagged": int(flagged.sum()),
        "true_errors": int(truth.sum()),
    }


def posterior_policy(checkpoint: Path, manifest, manifest_path: Path, rows: np.ndarray) -> LabelerPosteriorPolicy:
    """labeler-posterior-v1 with each labeler's ``T_l`` over ``rows`` as training writes it into the model card
    (Dawid-Skene EM with the model's probabilities as the prior)."""
    from labelaudit.training.train import LABELER_EM_STEPS
    from labelaudit.training.transition import labeler_transition_matrices

    probs = checkpoint_probs(checkpoint, manifest_path, rows)
    ids = np.asarray(manifest.labeler_ids)[rows]
    matrices, counts = labeler_transition_matrices(
        probs, manifest.labels[rows], ids, probs.shape[1], em_steps=LABELER_EM_STEPS
    )
    return LabelerPosteriorPolicy.from_matrices(matrices, counts)


def cross_fit(data: Path, classifier_a: Path, *, seed: int, epochs: int, method: str, folds: int = 2):
    """Out-of-sample probabilities for every untrusted training row, the thresholds of each fold's model,
    each row's fold, and per fold the posterior policy from the labeler matrices its model estimated on its
    own training rows."""
    manifest = read_manifest(data / "task_b.jsonl")
    lines = (data / "task_b.jsonl").read_text().splitlines()
    untrusted = np.flatnonzero(manifest.mask(split="train", trusted=False))
    fold_of = np.random.default_rng(seed).integers(0, folds, size=len(untrusted))
    probs = np.zeros((len(untrusted), len(manifest.classes)))
    thresholds = np.zeros_like(probs)
    policies: list[LabelerPosteriorPolicy] = []
    for f in range(folds):
        held = set(untrusted[fold_of == f].tolist())
        subset = data / f"task_b_without_fold{f}.jsonl"
        subset.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in held))
        r = train(
            subset,
            init=classifier_a,
            out=WORK / f"runs/{data.name}-{method}-fold{f}",
            cfg=TrainConfig(method=method, epochs=epochs, seed=seed),
        )
        probs[fold_of == f] = checkpoint_probs(r.checkpoint, data / "task_b.jsonl", untrusted[fold_of == f])
        thresholds[fold_of == f] = r.meta.disagreement_thresholds
        policies.append(posterior_policy(r.checkpoint, manifest, data / "task_b.jsonl", untrusted[fold_of != f]))
    return manifest, untrusted, probs, thresholds, fold_of, policies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_args(ap)
    ap.add_argument("--name", default="label_errors")
    ap.add_argument("--method", default="crowd", help="the model whose probabilities judge the labels")
    args = ap.parse_args()
    apply_quick(args)
    per_task, val_size, test_size = SIZES[args.size]
    config = vars(args) | {
        "folds": 2,
        "per_task": per_task,
        "policies": [DisagreementPolicy((0.0,)).name, LabelerPosteriorPolicy({}, np.eye(2)).name],
    }
    rows: list[dict] = []
    if args.append:  # keep the other noise levels and seeds; the points of this run are measured again
        rows, earlier = kept_rows(args.name, lambda r: r["seed"] in args.seeds and r["noise_requested"] in args.noise)
        config = merged_config(config, earlier)
    device = device_name()
    git_commit()  # pin the commit the run started from
    for seed in args.seeds:
        classifier_a = None
        for noise in args.noise:
            data, actual = task_data(args.size, seed, noise)
            if classifier_a is None:
                a_ckpt = WORK / f"runs/{args.size}-seed{seed}-a/checkpoint.pt"
                if not a_ckpt.exists():
                    train(
                        data / "task_a.jsonl",
                        init=None,
                        out=a_ckpt.parent,
                        cfg=TrainConfig(method="ce", epochs=args.epochs_a, seed=seed),
                    )
                classifier_a = a_ckpt
            manifest, untrusted, probs, thresholds, fold_of, policies = cross_fit(
                data, classifier_a, seed=seed, epochs=args.epochs_b, method=args.method
            )
            labels = manifest.labels[untrusted]
            truth = labels != manifest.true_labels()[untrusted]
            # Each row judged by the thresholds of the model that did not see it.
            ours = np.array(
                [
                    DisagreementPolicy(tuple(t)).judge(p, y).disagrees
                    for p, y, t in zip(probs, labels, thresholds, strict=True)
                ]
            )
            ids = np.asarray(manifest.labeler_ids)[untrusted]
            posterior = np.zeros(len(untrusted), dtype=bool)
            for f, policy in enumerate(policies):  # each fold judged by the policy of the model that did not see it
                mine = fold_of == f
                posterior[mine] = policy.judge_batch(probs[mine], labels[mine], ids[mine].tolist())[0]
            theirs = find_label_issues(labels, probs)
            common = dict(
                noise=round(actual, 4), noise_requested=noise, seed=seed, items=len(untrusted), method=args.method
            )
            for detector, flagged in (("labelaudit", ours), ("labelaudit-posterior", posterior), ("cleanlab", theirs)):
                row = dict(detector=detector, **prf(flagged, truth), **common, git_commit=git_commit())
                rows.append(row)
                console.print(row)
                write_results(args.name, config=config, rows=rows, device=device)

    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
