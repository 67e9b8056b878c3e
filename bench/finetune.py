"""Classifier A as teams have it: a torchvision and a timm network, trained on task A (clean labels) from
scratch, saved as a plain state dict the way a team's own code saves it, loaded back through
``--init torchvision:<arch>=a.pth`` / ``timm:<arch>=a.pth``, fine-tuned on task B's noisy labels (40%
labeler noise, 1% trusted) with each method. Fashion-MNIST at 28 px, converted to 3 channels.

Rows of ``bench/results/real_models.json`` with ``kind: finetune`` (other kinds kept)::

    python -m bench.finetune --quick     # tiny data, a few epochs
    python -m bench.finetune             # small data (6,000 images per task)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.common import SIZES, WORK, device_name, kept_rows, write_results
from labelaudit.training.backbones import build_backbone
from labelaudit.training.checkpoint import load_checkpoint
from labelaudit.training.datasets import fashion_mnist
from labelaudit.training.train import TrainConfig, train


def save_as_the_team_would(checkpoint: Path, out: Path) -> tuple[Path, dict]:
    """A labelaudit checkpoint of classifier A -> the architecture's own state dict (backbone keys plus
    the final layer under its own name) and a classes.txt beside it; returns the file and A's spec."""
    net, meta = load_checkpoint(checkpoint)
    head_key = build_backbone(meta.arch, 3).head_key
    state = {k.removeprefix("features."): v for k, v in net.state_dict().items() if k.startswith("features.")}
    state |= {f"{head_key}.weight": net.clean_head.weight.detach(), f"{head_key}.bias": net.clean_head.bias.detach()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "a.pth")
    (out / "classes.txt").write_text("\n".join(meta.classes) + "\n")
    spec = meta.preprocess.model_dump(include={"height", "width", "resize", "mean", "std", "channels"})
    return out / "a.pth", spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--archs", nargs="+", default=["torchvision:resnet18", "timm:resnet18"])
    ap.add_argument("--methods", nargs="+", default=["ce", "fasten", "crowd"])
    ap.add_argument("--epochs-a", type=int, default=6)
    ap.add_argument("--epochs-b", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.size, args.epochs_a, args.epochs_b = "tiny", 2, 2
    name = "real_models_quick" if args.quick else "real_models"
    rows, earlier = kept_rows(name, redone=lambda r: r.get("kind") == "finetune")
    config = earlier | {"finetune": vars(args) | {"noise": 0.4, "trusted_fraction": 0.01, "seed": 0}}
    per_task, val_size, test_size = SIZES[args.size]
    data = WORK / f"{args.size}-seed0-noise0.4"
    if not (data / "task_b.jsonl").exists():
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=per_task, val_size=val_size, test_size=test_size)
    for arch in args.archs:
        slug = arch.replace(":", "-")
        a = train(
            data / "task_a.jsonl",
            init=None,
            out=WORK / f"runs/finetune-{slug}-a",
            cfg=TrainConfig(method="ce", arch=arch, channels=3, epochs=args.epochs_a),
        )
        weights, spec = save_as_the_team_would(a.checkpoint, WORK / f"runs/finetune-{slug}-a/as-saved")
        for method in args.methods:
            started = time.perf_counter()
            b = train(
                data / "task_b.jsonl",
                init=f"{arch}={weights}",
                out=WORK / f"runs/finetune-{slug}-{method}",
                preprocess=spec,
                cfg=TrainConfig(method=method, epochs=args.epochs_b),
            )
            m = b.meta.metrics
            rows.append(
                {
                    "kind": "finetune",
                    "arch": arch,
                    "method": method,
                    "clean_test_acc": round(m.test_acc, 4),
                    "classifier_a_clean_test_acc": round(m.initial_test_acc, 4),
                    "clean_val_acc": round(m.val_acc, 4),
                    "epochs": args.epochs_b,
                    "classifier_a_epochs": args.epochs_a,
                    "size": args.size,
                    "train_images_per_s": round(max(h.images_per_s for h in m.history), 1),
                    "seconds": round(time.perf_counter() - started, 1),
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            )
            print(rows[-1], flush=True)
            write_results(name, config=config, rows=rows, device=device_name())


if __name__ == "__main__":
    main()
