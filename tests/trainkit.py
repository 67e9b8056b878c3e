"""Training helpers for the tests: one torch thread around a fixture's training, and classifier A as teams
have it (a torchvision or timm network trained a moment on task A by a bare torch loop, no labelaudit
code, saved as the team would save it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors train faster on one thread, and OpenMP spin-waits badly on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TASK_A_PREPROCESS = {"height": 28, "width": 28, "resize": "stretch", "mean": (0.29,) * 3, "std": (0.35,) * 3}
CLASSIFIER_A = {"torchvision": ("torchvision:resnet18", "a.pth"), "timm": ("timm:resnet10t", "a.safetensors")}


def train_raw_classifier_a(family: str, task_a: Path, out: Path, steps: int = 60) -> Path:
    """Train ``family``'s network from scratch on task A with a bare torch loop (no labelaudit code, as a
    team's own training would), save its state dict and a classes.txt beside it; return the weights file."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from labelaudit.imaging.manifest import load_pixels, read_manifest
    from labelaudit.imaging.preprocess import normalize
    from labelaudit.schemas.model_card import PreprocessSpec

    arch, filename = CLASSIFIER_A[family]
    manifest = read_manifest(task_a)
    spec = PreprocessSpec(channels=3, **TASK_A_PREPROCESS)
    x = torch.from_numpy(normalize(np.asarray(load_pixels(manifest, spec)), spec))
    y = torch.as_tensor(manifest.labels)
    torch.manual_seed(0)
    if family == "torchvision":
        import torchvision

        net = torchvision.models.get_model(arch.split(":")[1], weights=None, num_classes=len(manifest.classes))
    else:
        import timm

        net = timm.create_model(arch.split(":")[1], pretrained=False, num_classes=len(manifest.classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    weights = out / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    else:
        torch.save(net.state_dict(), weights)
    (out / "classes.txt").write_text("\n".join(manifest.classes) + "\n")
    return weights
