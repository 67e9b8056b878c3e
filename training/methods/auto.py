"""``--method auto``: the method for what the data has, as the benchmarks rank them.

What decides (task B's training rows):

- a trusted set (at least ``MIN_TRUSTED_PER_CLASS`` per class on average): the transition-matrix methods
  become possible;
- labeler ids: at least two labelers with ``min_labeler_items`` untrusted items each, so that a matrix per
  labeler can be estimated.

The choices and the measurements behind them (bench/results/train_noise.json, docs/benchmarks.md; 40%
labeler noise, 1% trusted, small size, 3 seeds, 12 epochs: ce 76.3, fasten 76.8, crowd 79.1):

| trusted set | labelers | method | why |
| --- | --- | --- | --- |
| yes | yes | ``crowd`` | best measured: +2.8 over ``ce``, +2.3 over ``fasten`` |
| yes | no | ``fasten`` | the published method; +0.5 over ``ce`` |
| no | - | ``mentormix`` | the one method here that needs no trusted set |

Update ``CHOICES`` when the benchmark's ranking changes; the test pins the table, not the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TRUSTED_PER_CLASS = 1.0

CHOICES = {
    (True, True): "crowd",
    (True, False): "fasten",
    (False, True): "mentormix",
    (False, False): "mentormix",
}


@dataclass(frozen=True)
class Choice:
    method: str
    reason: str


def choose_method(*, trusted: np.ndarray, labeler_ids: np.ndarray, classes: int, min_labeler_items: int) -> Choice:
    """The method for task B's training rows: ``trusted`` (N,) bool, ``labeler_ids`` (N,) str ('' for
    none), ``classes`` K."""
    n_trusted = int(trusted.sum())
    has_trusted = n_trusted >= MIN_TRUSTED_PER_CLASS * classes
    ids, counts = np.unique(labeler_ids[~trusted].astype(str), return_counts=True)
    labelers = [i for i, c in zip(ids, counts, strict=True) if i and c >= min_labeler_items]
    has_labelers = len(labelers) >= 2
    method = CHOICES[(has_trusted, has_labelers)]
    trusted_text = (
        f"{n_trusted} trusted rows" if has_trusted else f"only {n_trusted} trusted rows (fewer than one per class)"
    )
    labeler_text = (
        f"{len(labelers)} labelers with at least {min_labeler_items} labels each"
        if has_labelers
        else "no two labelers with enough labels for a matrix each"
    )
    return Choice(method, f"auto: {trusted_text}, {labeler_text} -> {method}")
