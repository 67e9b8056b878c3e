"""The model card's per-labeler error rates with one label per image, before and after a QA pass checks a random
share of the labeled images: the model's deconvolved disagreement (the card's source without checks) against
the checks read with the model as predictor (``labelaudit.audited``, the card's ``source: audit``). Writes
bench/results/card_audit.json and the docs table.

    python -m bench.card_audit          # 3 seeds x QA passes of 2%, 5%, 10% of the images, 20 draws each (minutes)

The networks are bench/report.py's (task B trained with ``--method auto`` on 60 epochs, one label per image;
trained there first if bench/work lacks them). The QA pass is simulated on their training rows: each draw
checks a random share of the labeled images (the check is the true class) and the card's estimate is computed
as training computes it (``training.transition.labeler_error_rates`` with ``checked``), against each labeler's
realised error rate on its training rows. The network is the one trained without the checks: a real QA pass
would also make the checked images trusted rows, which changes the network a little; the estimator is what
this measures. Each draw is a row: mean absolute error, Spearman, and how many true rates the intervals hold.
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.progress import track
from scipy.stats import spearmanr

from bench.card_rates import CardInputs
from bench.common import WORK, device_name, git_commit, write_results
from bench.report import prepare_model

console = Console()


def main() -> None:
    from labelaudit.training.items import NO_CHECK
    from labelaudit.training.transition import labeler_error_rates

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, one seed, 5 draws")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="images the QA pass checks")
    ap.add_argument("--draws", type=int, default=20, help="QA passes per share and seed")
    ap.add_argument("--name", default="card_audit")
    args = ap.parse_args()
    size, epochs, images = ("tiny", (3, 4), 2_000) if args.quick else ("small", (8, 60), 10_000)
    if args.quick:
        args.seeds, args.draws = args.seeds[:1], 5
        args.name = "card_audit_quick" if args.name == "card_audit" else args.name
    rows = []
    for seed in args.seeds:
        data, _ = prepare_model(size, seed, 0.4, images, epochs, "auto")
        checkpoint = WORK / f"runs/{data.name}-auto-epochs{epochs[1]}/checkpoint.pt"
        c = CardInputs.of(checkpoint, data / "task_b.jsonl")
        meta, predicted, confusion, labels, who = c.meta, c.predicted, c.confusion, c.labels, c.who
        truth = c.manifest.true_labels_or_missing[c.train]  # the recipe's ground truth (class indices)
        train = c.train
        realised = {a: float((labels[who == a] != truth[who == a]).mean()) for a in sorted(set(who))}
        common = dict(seed=seed, model_test_acc=meta.metrics.test_acc, run=checkpoint.parent.name)
        model = labeler_error_rates(predicted, labels, who, confusion)
        rows.append(dict(**common, share=0.0, draw=None, estimator="model", **_scored(model, realised)))
        rng = np.random.default_rng([seed, 17])
        for share in args.shares:
            for draw in track(range(args.draws), description=f"seed {seed}, QA of {share:.0%}", console=console):
                checked = np.where(rng.random(len(train)) < share, truth, NO_CHECK)
                rates = labeler_error_rates(predicted, labels, who, confusion, checked=checked)
                rows.append(dict(**common, share=share, draw=draw, estimator="card", **_scored(rates, realised)))
        write_results(
            args.name, config=vars(args), rows=[r | {"git_commit": git_commit()} for r in rows], device=device_name()
        )
    from bench.tables import update_docs

    update_docs()


def _scored(rates: dict, realised: dict[str, float]) -> dict:
    ids = sorted(realised)
    estimate, true = np.array([rates[a].rate for a in ids]), np.array([realised[a] for a in ids])
    return {
        "labelers": len(ids),
        "mean_abs_error": round(float(np.abs(estimate - true).mean()), 4),
        "spearman_vs_true_error": round(float(spearmanr(estimate, true).statistic), 4),
        "intervals_hold": int(sum(rates[a].low <= realised[a] <= rates[a].high for a in ids)),
        "sources": sorted({rates[a].source for a in ids}),
        "per_labeler": {
            a: {"true_error": round(realised[a], 4), "estimate": rates[a].rate, "source": rates[a].source} for a in ids
        },
    }


if __name__ == "__main__":
    main()
