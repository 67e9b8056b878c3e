"""Training throughput: our full pipeline (the loader, augmentation on the device, the method's step)
next to the bare step of the same network on random tensors already on the device. Meant for a lent GPU;
runs on CPU too (``--quick``). Writes bench/results/gpu_train.json.

    python -m bench.gpu_train --quick                  # CPU smoke run
    python -m bench.gpu_train --size full              # on the GPU: the demo's networks at 28 px
    python -m bench.gpu_train --photos 20000           # on the GPU: ResNet-50 at 224 px, bf16, batch 256,
                                                       # JPEGs decoded on the fly by the loader's workers
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.common import SIZES, WORK, device_name, kept_rows, write_results
from labelaudit.training.datasets import fashion_mnist
from labelaudit.training.networks import TwoHeadNet
from labelaudit.training.train import TrainConfig, pick_device, train


def raw_step_images_per_s(
    arch: str, batch: int, device: torch.device, steps: int, channels: int = 1, size: int = 28
) -> float:
    """Forward, cross-entropy, backward and SGD step on random (B, C, H, W) tensors on ``device``."""
    net = TwoHeadNet(arch, 10, channels).to(device)
    cuda = device.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up (cuDNN autotuning, allocator)
        step()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--archs", nargs="+", default=["cnn_small", "resnet_small"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--photos", type=int, default=0, help="ResNet-50 at 224 px on this many generated JPEGs")
    ap.add_argument("--photo-archs", nargs="+", default=["torchvision:resnet50"])
    args = ap.parse_args()
    if args.photos:
        photos(args)
        return
    if args.quick:
        args.size, args.archs, args.batch_sizes, args.epochs = "tiny", ["cnn_small"], [128], 1
    device = pick_device("auto")
    per_task, val_size, test_size = SIZES[args.size]
    data = WORK / f"{args.size}-seed0-noise0.4"
    if not (data / "task_b.jsonl").exists():
        fashion_mnist.build(data, noise=0.4, seed=0, per_task=per_task, val_size=val_size, test_size=test_size)
    rows = []
    for arch in args.archs:
        a = train(
            data / "task_a.jsonl",
            init=None,
            out=WORK / f"runs/gpu-{arch}-a",
            cfg=TrainConfig(method="ce", arch=arch, epochs=1),
        )
        for batch in args.batch_sizes:
            cfg = TrainConfig(method="fasten", epochs=args.epochs, batch_size=batch, trusted_per_class=10)
            r = train(data / "task_b.jsonl", init=a.checkpoint, out=WORK / f"runs/gpu-{arch}-{batch}", cfg=cfg)
            ours = max(h.images_per_s for h in r.history)  # the first epoch carries warm-up
            raw = raw_step_images_per_s(arch, batch + 100, device, steps=20 if args.quick else 200)
            rows.append(
                dict(
                    network=arch,
                    input_size="1x28x28",
                    batch_size=batch,
                    precision="bf16" if device.type == "cuda" else "fp32",
                    train_images_per_s=round(ours, 1),
                    raw_step_images_per_s=round(raw, 1),
                    ratio=round(ours / raw, 3),
                    device=device_name(),
                )
            )
            write_results(
                "gpu_train" if not args.quick else "gpu_train_quick", config=vars(args), rows=rows, device=device_name()
            )


def photos(args) -> None:
    """The issue's point: a 224 px network on JPEG photos decoded on the fly, bf16, batch 256, against the
    same network's bare step on random tensors on the GPU (aim: at least 0.7)."""
    from bench.loader import make_images

    device = pick_device("auto")
    manifest = make_images(WORK / "loader" / "px224", args.photos, 224)
    name = "gpu_train_quick" if args.quick else "gpu_train"  # a CPU smoke run never lands in gpu_train.json
    rows, _ = kept_rows(name, redone=lambda r: r.get("input_size") == "3x224x224")
    for arch in args.photo_archs:
        cfg = TrainConfig(
            method="ce",
            arch=arch,
            channels=3,
            image_size=224,
            batch_size=256,
            epochs=args.epochs,
            loader="stream",
            augment="crop-flip",
        )
        r = train(manifest, init=None, out=WORK / f"runs/gpu-photos-{arch.replace(':', '-')}", cfg=cfg)
        best = max(r.history, key=lambda h: h.images_per_s)  # the first epoch carries warm-up
        raw = raw_step_images_per_s(arch, 256, device, steps=10 if args.quick else 100, channels=3, size=224)
        rows.append(
            dict(
                network=arch,
                input_size="3x224x224",
                batch_size=256,
                precision="bf16" if device.type == "cuda" else "fp32",
                train_images_per_s=round(best.images_per_s, 1),
                step_images_per_s=round(best.step_images_per_s or 0, 1),
                loader_images_per_s=round(best.loader_images_per_s or 0, 1),
                raw_step_images_per_s=round(raw, 1),
                ratio=round(best.images_per_s / raw, 3),
                images=args.photos,
                device=device_name(),
            )
        )
        write_results(name, config=vars(args), rows=rows, device=device_name())


if __name__ == "__main__":
    main()
