"""Clean-test accuracy on task B for classifier A untouched, ce, glc, fasten and an oracle, over noise
levels and seeds, with a 1% trusted set. Writes bench/results/train_noise.json and the docs table.

    python bench/train_noise.py --quick      # minutes: tiny data, one seed, 40% noise
    python bench/train_noise.py              # small data, 3 seeds x 20/40/60% noise (CPU: about an hour)
    python bench/train_noise.py --size full --epochs-a 15 --epochs-b 30   # on a GPU

A method may carry TrainConfig overrides, a variant with its own row: ``fasten:rho=0.95,epochs=30``;
``no_trusted=1`` trains it on task B with the trusted rows removed (a team without a hand-checked set:
``mentormix:no_trusted=1`` against ``ce:no_trusted=1``); ``no_labelers=1`` with one labeler id for every row
(labels without the labeler's name: ``auto``'s cell for them); ``separate_labels=1`` gives each label of an
image an item id of its own (with ``--multi``: the same labels, not read together); ``class_conditional=1``
shuffles each labeler's labels among its rows of the same true class (its matrix kept, its errors untied from
the images: what the recipe's instance labeler costs a method, ``--name train_conditional``). ``--unlabeled N`` builds task B with N more
images without a label (the semi-supervised option trains on them: ``crowd:unlabeled_weight=1``; the
other methods ignore them). ``--multi S`` gives that share of the labeled images two more labels from two
other labelers (several labels per image: rows also score the model card's per-labeler error rates against
the truth); its rows go to their own file (``--name train_multi``). ``--qa S`` has a QA pass check that share
of the labeled images at random (a trusted row with the true label beside the labeler's: what a QA budget
spent on random checks adds to accuracy, ``--name train_qa``). Variants of what was tried go to their own file (``--name train_probes``),
not the main table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy.stats import spearmanr

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
    write_results,
)
from labelaudit.imaging.manifest import read_manifest
from labelaudit.training.checkpoint import load_checkpoint
from labelaudit.training.train import TrainConfig, train

console = Console()


def label_diagnostics(checkpoint: Path, manifest: Path, rho: float) -> dict:
    """How the trained model's labels relate to the truth on the untrusted training rows: the accuracy of
    the given labels, of FasTEN's corrected labels ``ŷ`` (the model's argmax where at least ``rho``
    confident, else the given label), and the mean diagonal of the true ``P(ŷ | truth)``, the matrix a
    method's ``T̂`` should match; and the diagonal of the final noisy head's ``T̂`` read off the clean
    ``val`` images, which training never fitted (next to the training-time ``T̂`` from the trusted rows,
    it shows whether those rows' memorised features bias the estimate)."""
    meta = load_checkpoint(checkpoint)[1]
    m = read_manifest(manifest, classes=meta.classes)
    rows = np.flatnonzero(m.mask(split="train", trusted=False, labeled=True))
    probs = checkpoint_probs(checkpoint, manifest, rows)
    truth, given = m.true_labels()[rows], m.labels[rows]
    corrected = np.where(probs.max(1) >= rho, probs.argmax(1), given)
    k = probs.shape[1]
    true_t = np.stack([np.bincount(corrected[truth == i], minlength=k) / max(1, (truth == i).sum()) for i in range(k)])
    changed = corrected != given
    heldout = {}
    if not meta.noisy_heads:  # one noisy head: its T̂ on images never trained on
        val = np.flatnonzero(m.mask(split="val"))
        noisy = checkpoint_probs(checkpoint, manifest, val, head="noisy")
        t_val = np.stack([noisy[m.labels[val] == i].mean(0) for i in range(k)])
        heldout = {"heldout_t_hat_diag_mean": round(float(np.diag(t_val).mean()), 4)}
    return heldout | {
        "label_acc": round(float((given == truth).mean()), 4),
        "corrected_label_acc": round(float((corrected == truth).mean()), 4),
        "corrections_right": round(float((corrected[changed] == truth[changed]).mean()), 4) if changed.any() else None,
        "true_t_diag_mean": round(float(np.diag(true_t).mean()), 4),
    }


def _each(change: Callable[[dict], dict | None]) -> Callable[[list[dict]], list[dict]]:
    """A variant that changes each row on its own (None: the row is left out)."""
    return lambda rows: [r for r in map(change, rows) if r is not None]


def class_conditional(rows: list[dict]) -> list[dict]:
    """Each labeler's labels shuffled among its labeled training rows of the same true class: every labeler's
    transition matrix (its counts of true class x given label) is kept exactly, but which image gets a wrong
    label no longer depends on the image. The recipe's instance labeler errs on hard images toward the class a
    network also confuses them with; shuffled, it errs as the methods' class-conditional matrices assume. What
    its image-tied errors cost a method is then the difference from the same method on the recipe's labels."""
    rng = np.random.default_rng(20261205)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.get("split") == "train" and "label" in row and not row.get("trusted"):
            groups[(row["labeler_id"], row["true_label"])].append(i)
    out = [dict(row) for row in rows]
    for key in sorted(groups):
        mine = groups[key]
        for i, j in zip(mine, rng.permutation(mine), strict=True):
            out[i]["label"] = rows[j]["label"]
    return out


VARIANTS = {  # variant keys of the benchmark itself, not TrainConfig fields: what each does to a manifest's rows
    "no_trusted": _each(lambda row: None if row.get("trusted") else row),  # a team with no hand-checked set
    # labels without the labeler's name (a label needs some labeler id): auto's "no labelers" cell
    "no_labelers": _each(lambda row: row | {"labeler_id": "unknown"} if "label" in row else row),
    # several labels of an image as if they were of different images (the same labels, not read together):
    # what reading them together adds (--multi)
    "separate_labels": _each(
        lambda row: (
            row | {"item_id": f"{row['item_id']}@{row['labeler_id']}"}
            if row.get("split") == "train" and "label" in row
            else row
        )
    ),
    "class_conditional": class_conditional,  # labelers' errors untied from the images (same matrices)
    # a wrong label removed (its image kept, without a label): with `oracle`, what the right labels alone are worth,
    # the most a method that only finds and drops the wrong labels could use of them
    "drop_wrong": _each(
        lambda row: (
            {k: v for k, v in row.items() if k not in ("label", "labeler_id")}
            if row.get("split") == "train"
            and "label" in row
            and not row.get("trusted")
            and row["label"] != row["true_label"]
            else row
        )
    ),
}
BENCH_KEYS = dict.fromkeys(VARIANTS, False)


def parse_method(spec: str) -> tuple[str, dict]:
    """``"fasten:rho=0.95,epochs=30"`` -> ``("fasten", {"rho": 0.95, "epochs": 30})``; each value takes
    the type of TrainConfig's field, an unknown field or a bad value fails before anything trains."""
    name, _, rest = spec.partition(":")
    defaults = vars(TrainConfig()) | BENCH_KEYS
    overrides: dict = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        if key not in defaults or key in ("method", "label_source", "seed"):
            raise SystemExit(f"{spec}: {key!r} is not a TrainConfig field a variant may set")
        kind = type(defaults[key])
        try:
            overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise SystemExit(f"{spec}: {key}={value!r} is not a {kind.__name__}") from None
    return name, overrides


def manifest_variant(manifest: Path, key: str) -> Path:
    """``manifest`` beside itself with each row as ``VARIANTS[key]`` makes it (written once)."""
    out = manifest.with_name(f"{manifest.stem}_{key}.jsonl")
    if not out.exists():
        rows = VARIANTS[key]([json.loads(line) for line in manifest.read_text().splitlines()])
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def labeler_rate_quality(rates: dict, data: Path) -> dict:
    """The model card's per-labeler error rates against the recipe's truth (labelers.json): mean absolute
    error and Spearman over the labelers both know; empty when the card has none."""
    truth = {
        r["labeler_id"]: r["true_error_rate"] for r in json.loads((data / "labelers.json").read_text())["labelers"]
    }
    ids = sorted(a for a in rates if truth.get(a) is not None)
    if len(ids) < 2:
        return {}
    estimate, true = [rates[a].rate for a in ids], [truth[a] for a in ids]
    return {
        "labeler_rates_mae": round(float(np.mean(np.abs(np.subtract(estimate, true)))), 4),
        "labeler_rates_spearman": round(float(spearmanr(estimate, true).statistic), 4),
    }


def untouched_test_acc(checkpoint: Path, manifest: Path) -> float:
    """Classifier A as it is, on task B's clean test split."""
    m = read_manifest(manifest, classes=load_checkpoint(checkpoint)[1].classes)
    rows = np.flatnonzero(m.mask(split="test"))
    return float((checkpoint_probs(checkpoint, manifest, rows).argmax(1) == m.labels[rows]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_args(ap)
    ap.add_argument("--methods", nargs="+", default=["ce", "glc", "fasten", "crowd", "oracle"])
    ap.add_argument("--arch", default="cnn_small")
    ap.add_argument("--name", default="train_noise")
    ap.add_argument("--unlabeled", type=int, default=0, help="task-B images without a label (data recipe)")
    ap.add_argument("--multi", type=float, default=0.0, help="share of labeled images with two more labels")
    ap.add_argument("--qa", type=float, default=0.0, help="share of labeled images a QA pass checks (trusted rows)")
    args = ap.parse_args()
    apply_quick(args)
    methods = {spec: parse_method(spec) for spec in args.methods}
    per_task, val_size, test_size = SIZES[args.size]
    config = vars(args) | {"trusted_fraction": 0.01, "per_task": per_task, "val_size": val_size}
    rows: list[dict] = []
    if args.append:  # keep every earlier point until this run has measured it again (a stopped run loses none)
        rows, earlier = kept_rows(args.name, lambda r: False)
        config = merged_config(config, earlier)
    device = device_name()
    git_commit()  # pin the commit the run started from

    def point(row: dict) -> tuple:
        return row["method"], row["seed"], row["noise_requested"], row.get("multi", 0.0), row.get("qa", 0.0)

    def record(**row) -> None:
        rows[:] = [r for r in rows if point(r) != point(row)]  # an earlier run's measurement of this point
        rows.append(row | {"git_commit": git_commit()})
        write_results(args.name, config=config, rows=rows, device=device)
        console.print(row)

    for seed in args.seeds:
        classifier_a = None
        for noise in args.noise:
            data, actual = task_data(args.size, seed, noise, args.unlabeled, args.multi, args.qa)
            if classifier_a is None:  # task A is the same for every noise level of a seed
                started = time.perf_counter()
                a = train(
                    data / "task_a.jsonl",
                    init=None,
                    out=WORK / f"runs/{args.size}-seed{seed}-a",
                    cfg=TrainConfig(method="ce", arch=args.arch, epochs=args.epochs_a, seed=seed),
                )
                classifier_a = a.checkpoint
                console.print(
                    f"classifier A seed {seed}: task A val {a.meta.metrics.val_acc:.4f} "
                    f"({time.perf_counter() - started:.0f}s)"
                )
            common = dict(
                noise=round(actual, 4),
                noise_requested=noise,
                seed=seed,
                trusted_fraction=0.01,
                unlabeled=args.unlabeled,
                **({"multi": args.multi} if args.multi else {}),
                **({"qa": args.qa} if args.qa else {}),
            )
            a_test_acc = untouched_test_acc(classifier_a, data / "task_b.jsonl")
            record(method="classifier_a", clean_test_acc=a_test_acc, epochs=0, train_images_per_s=None, **common)
            for method, (base, overrides) in methods.items():
                overrides = dict(overrides)
                manifest = data / "task_b.jsonl"
                for key in VARIANTS:
                    if overrides.pop(key, False):
                        manifest = manifest_variant(manifest, key)
                cfg = TrainConfig(
                    **{
                        "method": "ce" if base == "oracle" else base,
                        "label_source": "true_label" if base == "oracle" else "label",
                        "epochs": args.epochs_b,
                        "seed": seed,
                    }
                    | overrides
                )
                started = time.perf_counter()
                out = WORK / f"runs/{data.name}-{method.replace(':', '-').replace(',', '-').replace('=', '')}"
                with LoadSampler() as load:  # other work on the machine slows images/s
                    r = train(manifest, init=classifier_a, out=out, cfg=cfg)
                diagnostics = {}
                if cfg.method == "fasten":  # is T̂ as noisy as the labels it corrects for?
                    t_hat = r.meta.transition_matrix
                    diagnostics = label_diagnostics(r.checkpoint, data / "task_b.jsonl", cfg.rho) | {
                        "t_hat_diag_mean": round(float(np.diag(np.asarray(t_hat)).mean()), 4) if t_hat else None
                    }
                record(
                    method=method,
                    clean_test_acc=r.meta.metrics.test_acc,
                    val_acc=r.meta.metrics.val_acc,
                    epochs=cfg.epochs,
                    train_images_per_s=float(np.mean([h.images_per_s for h in r.history])),
                    # the clean val accuracy each phase (first round, cross-fit folds, student rounds) ended on
                    phase_val_acc=[h.val_acc for h in r.history[cfg.epochs - 1 :: cfg.epochs]],
                    seconds=round(time.perf_counter() - started, 1),
                    **load.summary(),
                    **diagnostics,
                    **labeler_rate_quality(r.meta.labeler_error_rates, data),
                    **common,
                    # the start this row was trained from (classifier A differs across machines: a row kept from an
                    # earlier run may sit beside another run's classifier_a row)
                    classifier_a_test_acc=a_test_acc,
                )

    from bench.tables import update_docs

    update_docs()


if __name__ == "__main__":
    main()
