"""Several processes, one run: torch.distributed as ``torchrun`` starts it (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` in the environment), NCCL on GPUs and gloo on CPUs.

What is global and what is per rank:

- every rank plans the same batches (same seed), then trains on its slice of each global batch
  (``shard``); the trusted rows of a batch are the same on every rank; DistributedDataParallel averages
  the gradients, so ``--batch-size`` is the global batch whatever the number of processes;
- predictions over many rows (held-out accuracy, ``crowd``'s E-step, GLC's estimate, the final
  per-labeler matrices) are computed on a slice per rank and gathered (``gather_rows``), so every rank
  holds the same numbers and takes the same decisions;
- FasTEN's label corrections are gathered after every step, so that a row corrected on one rank is
  trained on its corrected label wherever it lands next epoch;
- rank 0 alone reports progress and writes the checkpoint, metrics and model card.

On CUDA, BatchNorm layers become SyncBatchNorm (statistics over the global batch); on CPU (gloo),
PyTorch has no SyncBatchNorm, so each rank normalises over its own slice: results agree with one
process within a tolerance, not bit for bit (tests/training/test_distributed.py states it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes (1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of ``rows`` (slices differ in size by at most one)."""
        return np.array_split(rows, self.world)[self.rank] if self.active else rows

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's ``local`` (its ``shard`` of ``total`` rows, first axis) concatenated in row order,
        on every rank."""
        if not self.active:
            return local
        sizes = [len(part) for part in np.array_split(np.arange(total), self.world)]
        padded = torch.cat([local, local.new_zeros((max(sizes) - len(local), *local.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def gather_pairs(self, rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (rows, values) pairs, on every rank (sizes may differ between ranks)."""
        if not self.active:
            return rows, values
        count = torch.tensor([len(rows)], device=rows.device)
        counts = [torch.empty_like(count) for _ in range(self.world)]
        dist.all_gather(counts, count)
        most = int(max(c.item() for c in counts))
        both = torch.stack([rows, values.to(rows.dtype)])  # (2, n)
        both = torch.cat([both, both.new_zeros((2, most - len(rows)))], dim=1)
        parts = [torch.empty_like(both) for _ in range(self.world)]
        dist.all_gather(parts, both)
        joined = torch.cat([p[:, : int(c.item())] for p, c in zip(parts, counts, strict=True)], dim=1)
        return joined[0], joined[1].to(values.dtype)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def start(device: str) -> tuple[Ranks, torch.device | None, bool]:
    """Join the process group ``torchrun`` describes in the environment (no-op for one process).
    Returns the ranks, this rank's device when distributed (``cuda:<local rank>`` or the CPU), and
    whether this call created the group (then ``stop`` ends it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), None, False
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device != "cpu" and torch.cuda.is_available()
    created = not dist.is_initialized()
    if created:
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return ranks, torch.device(f"cuda:{ranks.local_rank}") if cuda else torch.device("cpu"), created


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_now(code: int = 0) -> NoReturn:
    """End a rank whose work is written without the interpreter's finalization (``os._exit``).

    gloo's worker threads outlive ``destroy_process_group`` and may still hold a finished collective's work
    (a barrier holding the gather before it, and that gather Python-owned tensors). When the interpreter is
    finalizing as such a thread drops it, the decref takes the GIL, the thread is unwound and the process
    aborts ("terminate called without an active exception", exit -6) although the run finished: one run in
    ten of a two-rank script on a busy 2-core machine, a core dump showing ``~AsyncBarrierWork`` ->
    ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit`` (PyTorch issue 190489). Exiting without
    finalization leaves no window for that; the checkpoint, metrics and model card are closed files by now,
    and the standard streams are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap(net: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module training calls: DistributedDataParallel around ``net`` when distributed (SyncBatchNorm
    on CUDA), else ``net`` itself. Parameters that need no gradient (a head a method does not train) are
    left out of the synchronisation."""
    if not ranks.active:
        return net
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
