"""``--method auto``: the method, and the settings it was measured with, for what the data has, as issue 17's
protocol ranks them (bench/results/train_protocol.json, docs/benchmarks.md: 40% labeler noise, 1% trusted,
5,000 unlabeled images, small size, 60 epochs, the last epoch's clean test accuracy).

What decides (task B's training rows):

- a trusted set (at least ``MIN_TRUSTED_PER_CLASS`` per class on average): what glc's and fasten's matrices
  are read from, and half of crowdmix's loss;
- labeler ids: at least two labelers with ``min_labeler_items`` untrusted items each, so that a matrix per
  labeler can be estimated by EM, with or without a trusted set;
- and before both: labels besides the trusted ones. Trusted labels alone (beside images without a label)
  leave no labelers' noise to model: ``ce``.

| trusted set | labelers | choice | the protocol's numbers (seed 0) |
| --- | --- | --- | --- |
| yes | yes | ``crowdmix``, ``mixup_alpha=0.3``, ``student_rounds=1`` | 83.35 (ce 79.45, the oracle 86.85; on another machine type's classifier A crowdmix alone 81.40, crowd 80.95); over 3 seeds 82.57 (ce 78.47, the oracle 87.05) |
| yes | no | ``crowdmix``, ``mixup_alpha=0.3``, ``student_rounds=1`` (one matrix for all) | seed 2: 80.10 with every labeler id replaced by one (``no_labelers=1``), ce 77.60 (81.85 with the ids); seed 0 (another machine type's classifier A): fasten 78.70 and fasten with the held-out T̂ 79.55, below that A's ce |
| no | yes | ``crowdmix``, ``mixup_alpha=0.3``, ``student_rounds=1`` (matrices from the labelers' EM alone) | seed 2 with the trusted rows removed (``no_trusted=1``): 82.15, ce 76.65, mentormix 77.30 |
| no | no | ``ce`` | ce without the trusted rows: seed 0 80.00 (mentormix 77.70), seed 2 76.65 (mentormix 77.30) |

A setting of the choice applies where the run left that setting at its default: a value the user gave
wins. Update ``CHOICES`` when the protocol's ranking changes; the test pins the table, not the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from labelaudit.training.config import TrainConfig
from labelaudit.training.methods.base import labelers_with_matrices

MIN_TRUSTED_PER_CLASS = 1.0


@dataclass(frozen=True)
class Choice:
    method: str
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields it was measured with
    reason: str = ""

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.method} ({extra})" if extra else self.method


CHOICES: dict[tuple[bool, bool], Choice] = {
    (True, True): Choice("crowdmix", {"mixup_alpha": 0.3, "student_rounds": 1}),
    (True, False): Choice("crowdmix", {"mixup_alpha": 0.3, "student_rounds": 1}),  # one matrix, all labels
    (False, True): Choice("crowdmix", {"mixup_alpha": 0.3, "student_rounds": 1}),  # the labelers' EM alone
    (False, False): Choice("ce"),
}


def choose_method(
    *,
    trusted: np.ndarray,
    labeler_ids: np.ndarray,
    classes: int,
    min_labeler_items: int,
    labeled: np.ndarray | None = None,
) -> Choice:
    """The method and its settings for task B's training rows: ``trusted`` (N,) bool, ``labeler_ids`` (N,)
    str ('' for none), ``classes`` K, ``labeled`` (N,) bool (False: an image without a label; default all
    labeled). Trusted labels alone (no labeler's label to model) -> ``ce``."""
    n_trusted = int(trusted.sum())
    noisy = ~trusted if labeled is None else labeled & ~trusted
    if not noisy.any():
        return Choice("ce", {}, f"auto: {n_trusted} trusted rows and no labeler's label: no noise to model -> ce")
    has_trusted = n_trusted >= MIN_TRUSTED_PER_CLASS * classes
    labelers = labelers_with_matrices(labeler_ids, np.flatnonzero(noisy), min_labeler_items)
    has_labelers = len(labelers) >= 2
    pick = CHOICES[(has_trusted, has_labelers)]
    trusted_text = (
        f"{n_trusted} trusted rows" if has_trusted else f"only {n_trusted} trusted rows (fewer than one per class)"
    )
    labeler_text = (
        f"{len(labelers)} labelers with at least {min_labeler_items} labels each"
        if has_labelers
        else "no two labelers with enough labels for a matrix each"
    )
    return Choice(pick.method, dict(pick.settings), f"auto: {trusted_text}, {labeler_text} -> {pick.describe()}")


def with_choice(cfg: TrainConfig, choice: Choice) -> TrainConfig:
    """``cfg`` running ``choice``: its method, what auto saw, and each of its settings that ``cfg`` left at
    the default (a value the user gave wins)."""
    defaults = TrainConfig()
    chosen = {k: v for k, v in choice.settings.items() if getattr(cfg, k) == getattr(defaults, k)}
    return replace(cfg, method=choice.method, method_choice=choice.reason, **chosen)
