"""Images for training, at the model's size, in the batches a method plans: decoded once and held in a
memory-mapped cache (small images), or read and decoded on the fly by worker processes (data larger
than memory). Either way the pixels come from ``labelaudit.imaging`` (serving's own decoding) as
(B, H, W, C) uint8; normalising and augmenting happen on the training device (``training.train``).

Memory does not grow with the number of images when streaming: a worker holds one batch, the rows are
numpy columns (no Python object per row, so forked workers share them without copy-on-write growth),
and only ``resident`` rows (the small trusted set, which rides in every batch) stay decoded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from labelaudit.imaging.manifest import Manifest, load_pixels, row_pixels
from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.training.config import LoaderMode


@dataclass
class Fetched:
    """One batch from the loader: ``pixels`` (B, H, W, C) uint8 and the worker's seconds spent on it."""

    pixels: torch.Tensor
    seconds: float

    def pin_memory(self) -> Fetched:  # the DataLoader's pinning thread calls it (CUDA only)
        return Fetched(self.pixels.pin_memory(), self.seconds)


class ManifestImages(Dataset):
    """Row -> (H, W, C) uint8. ``__getitems__`` serves a whole batch (the DataLoader calls it with the
    batch's rows), from ``cache`` (N, H, W, C) when given, else ``resident`` rows from memory and the
    rest decoded from their files."""

    def __init__(self, manifest: Manifest, spec: PreprocessSpec, *, cache: np.ndarray | None = None):
        self.manifest, self.spec, self.cache = manifest, spec, cache
        self.slot = np.full(len(manifest), -1, dtype=np.int64)  # row -> index into resident, or -1
        self.resident = np.empty((0, spec.height, spec.width, spec.channels), dtype=np.uint8)

    def keep_resident(self, rows: np.ndarray) -> None:
        """Decode ``rows`` now and serve them from memory from then on (before workers start)."""
        rows = np.unique(rows)
        if not len(rows):
            return
        self.resident = np.stack([row_pixels(self.manifest, int(r), self.spec) for r in rows])
        self.slot[rows] = np.arange(len(rows))

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, row: int) -> np.ndarray:
        if self.cache is not None:
            return np.asarray(self.cache[row])
        slot = self.slot[row]
        return self.resident[slot] if slot >= 0 else row_pixels(self.manifest, int(row), self.spec)

    def __getitems__(self, rows: list[int]) -> Fetched:
        started = time.perf_counter()
        index = np.asarray(rows, dtype=np.int64)
        if self.cache is not None:
            order = np.argsort(index)  # a memory map reads fastest in file order
            out = np.empty((len(index), *self.cache.shape[1:]), dtype=np.uint8)
            out[order] = self.cache[index[order]]
        else:
            out = (
                np.stack([self[r] for r in index]) if len(index) else np.empty((0, *self.resident.shape[1:]), np.uint8)
            )
        return Fetched(torch.from_numpy(out), time.perf_counter() - started)


def _as_is(fetched: Fetched) -> Fetched:
    return fetched


class _Plan:
    """A batch sampler whose batches are set before each pass (the method plans each epoch anew)."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_mode(mode: LoaderMode, images: int, spec: PreprocessSpec, memory_budget_mb: float) -> str:
    """``memory`` or ``stream``: ``auto`` caches when the decoded images fit ``memory_budget_mb``."""
    if mode != "auto":
        return mode
    decoded_mb = images * spec.height * spec.width * spec.channels / 2**20
    return "memory" if decoded_mb <= memory_budget_mb else "stream"


class ImageLoader:
    """Batches of pixels for planned row batches, in plan order.

    ``mode``: ``memory`` decodes every image once into a memory-mapped cache beside the manifest and
    serves batches from it in this process; ``stream`` decodes in ``workers`` processes (default: the
    usable CPUs, at most 8) with ``resident`` rows held in memory; ``auto`` picks ``memory`` when the
    decoded set fits ``memory_budget_mb``.
    """

    def __init__(
        self,
        manifest: Manifest,
        spec: PreprocessSpec,
        *,
        mode: LoaderMode = "auto",
        workers: int | None = None,
        memory_budget_mb: float = 1024,
        resident: np.ndarray | None = None,
        pin_memory: bool = False,
        progress: Callable[[int], None] | None = None,
    ):
        self.mode = loader_mode(mode, len(manifest), spec, memory_budget_mb)
        if self.mode == "memory":
            self.workers = 0
            self.dataset = ManifestImages(manifest, spec, cache=load_pixels(manifest, spec, progress=progress))
        else:
            self.workers = min(8, usable_cpus()) if workers is None else workers
            self.dataset = ManifestImages(manifest, spec)
            if resident is not None:
                self.dataset.keep_resident(resident)
        self.pin_memory = pin_memory
        self._loaders: dict[str, tuple[DataLoader, _Plan]] = {}

    def _loader(self, purpose: str) -> tuple[DataLoader, _Plan]:
        """One DataLoader per purpose (training batches, evaluation), each with its own persistent
        workers, so that evaluating in the middle of a pass does not reset the pass."""
        if purpose not in self._loaders:
            plan = _Plan()
            extra = {"persistent_workers": True, "prefetch_factor": 4} if self.workers else {}
            loader = DataLoader(
                self.dataset,
                batch_sampler=plan,
                num_workers=self.workers,
                collate_fn=_as_is,
                pin_memory=self.pin_memory,
                **extra,
            )
            self._loaders[purpose] = (loader, plan)
        return self._loaders[purpose]

    def batches(self, plan: list[np.ndarray], *, purpose: str = "train") -> Iterator[Fetched]:
        """The pixels of each planned batch of rows, in order."""
        if not plan:
            return
        if not self.workers:  # in this process: no DataLoader, which would also draw from torch's RNG
            for rows in plan:
                yield self.dataset.__getitems__(rows.tolist())
            return
        loader, sampler = self._loader(purpose)
        sampler.batches = plan
        yield from loader

    def close(self) -> None:
        """Stop the worker processes."""
        self._loaders.clear()


class TensorImages:
    """Model inputs already in memory, (N, C, H, W) float32, served in planned batches: for unit tests
    and for callers that hold tensors rather than files."""

    workers = 0

    def __init__(self, x: torch.Tensor):
        self.x = x

    def batches(self, plan: list[np.ndarray], *, purpose: str = "train") -> Iterator[Fetched]:
        for rows in plan:
            yield Fetched(self.x[torch.as_tensor(rows, dtype=torch.int64)], 0.0)

    def close(self) -> None:
        pass
