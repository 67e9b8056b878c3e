"""Several labels of one image: which training rows are labels of the same item.

A manifest may label an item more than once, one row per label (``labelaudit.imaging.manifest``): two or
three labelers on a share of the items, or a labeler's label beside a checked (``trusted``) one from a QA
pass. Training keeps one row per label (the crowd losses read each label through its own labeler's
matrix, which is the crowd layer's sum over an item's labels), and reads the item's labels TOGETHER wherever
it asks what an item's true class is:

- the posterior ``q(i) ∝ p(i | x) · Π_a T_a[i, ȳ_a]`` over the item's labels (Dawid-Skene's E step), so that
  the labelers' matrices are estimated from agreement and not only against the model: a labeler whose
  errors coincide with the model's (instance-dependent noise) is visible only this way;
- an item with a checked label has that label as its truth, so a QA pass measures its labelers directly.

With one row per item nothing here changes a number: ``Items`` is ``None`` and every caller takes the
single-label path it always took.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NO_CHECK = -1


@dataclass(frozen=True)
class Items:
    """``of_row`` (N,) each manifest row's item in ``[0, count)``; ``checked`` (N,) the checked label of the
    row's item (from its trusted row), ``NO_CHECK`` where the item has none."""

    of_row: np.ndarray
    checked: np.ndarray
    count: int

    def describe(self, rows: np.ndarray) -> str:
        """``several labels: 495 of 4,950 images carry 2-3 (1,485 labels; 12 of these images checked), read together``."""
        images, first, per_image = np.unique(self.of_row[rows], return_index=True, return_counts=True)
        several = per_image > 1
        checked = int((self.checked[rows[first]][several] != NO_CHECK).sum())
        counts = per_image[several]
        spread = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
        return (
            f"several labels: {several.sum():,} of {len(images):,} images carry {spread} "
            f"({counts.sum():,} labels; {checked:,} of these images checked), read together"
        )

    def rows_first(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` keeping the first row of each item, in their order."""
        _, first = np.unique(self.of_row[rows], return_index=True)
        return rows[np.sort(first)]


def find_items(item_ids: np.ndarray, labels: np.ndarray, trusted: np.ndarray) -> Items | None:
    """The items of a manifest's rows (``item_ids``, ``labels``, ``trusted``, all (N,)); ``None`` when every
    item has one row."""
    names, of_row = np.unique(item_ids, return_inverse=True)
    if len(names) == len(item_ids):
        return None
    checked_of_item = np.full(len(names), NO_CHECK, dtype=np.int64)
    checked_of_item[of_row[trusted]] = labels[trusted]
    return Items(of_row=of_row.astype(np.int64), checked=checked_of_item[of_row], count=len(names))


def with_checks(probs: torch.Tensor, items: Items | None, rows: np.ndarray) -> torch.Tensor:
    """The model's ``probs`` (len(rows), K) for ``rows``, with a one-hot of the checked label where a row's
    item has one: the prior of the item posterior."""
    if items is None:
        return probs
    checked = torch.as_tensor(items.checked[rows], device=probs.device)
    known = checked != NO_CHECK
    if not known.any():
        return probs
    probs = probs.clone()
    probs[known] = torch.nn.functional.one_hot(checked[known], probs.shape[1]).to(probs.dtype)
    return probs


def pooled(likelihood: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """Each row's item likelihood: the product of ``likelihood`` (N, K) (what each label says about each
    class, ``T_a[i, ȳ]``) over the rows of the row's item, ``items`` (N,) item indices; up to a factor per
    item, which a posterior normalises away. ``items`` None: every row its own item, ``likelihood`` as is."""
    if items is None:
        return likelihood
    logs = torch.zeros(int(items.max()) + 1, likelihood.shape[1], dtype=likelihood.dtype, device=likelihood.device)
    logs.index_add_(0, items, likelihood.clamp_min(1e-300).log())
    logs = logs - logs.max(1, keepdim=True).values
    return logs.exp()[items]


def row_items(items: Items | None, rows: np.ndarray, device) -> torch.Tensor | None:
    """``rows``' item indices as a tensor for ``pooled``, or None (one label per item)."""
    return None if items is None else torch.as_tensor(items.of_row[rows], device=device)
