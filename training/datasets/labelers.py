"""Simulated human labelers with known, different kinds of noise.

A single severity ``s`` drives every labeler's noise; ``solve_severity`` finds the ``s`` whose expected
fraction of wrong labels over the pool equals the requested noise level. The recipe is fixed before any
method is benchmarked (docs/data.md) and never tuned to the methods.

Glossary: ``labels`` (N,) int true classes; ``K`` number of classes; ``hardness`` (N,) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fashion-MNIST class pairs people confuse: T-shirt/top<->Shirt, Pullover<->Coat, Sneaker<->Ankle boot.
MAX_SEVERITY = 1.5  # enough for 60% mixed noise with this pool

CONFUSED_PAIRS: tuple[tuple[int, int], ...] = ((0, 6), (2, 4), (7, 9))


@dataclass(frozen=True)
class LabelerProfile:
    labeler_id: str
    kind: str  # reliable | sloppy | confuser | instance | spammer
    share: float  # fraction of the untrusted training items this labeler labels
    description: str


POOL: tuple[LabelerProfile, ...] = (
    LabelerProfile("labeler-1", "reliable", 0.30, "symmetric noise at 0.2 s"),
    LabelerProfile("labeler-2", "sloppy", 0.20, "symmetric noise at min(s, 0.9)"),
    LabelerProfile("labeler-3", "confuser", 0.20, "swaps the confused pairs with probability min(0.8, 1.5 s)"),
    LabelerProfile("labeler-4", "instance", 0.20, "mislabels hard images: min(1, 2 s h) towards the nearest class"),
    LabelerProfile("labeler-5", "spammer", 0.10, "uniformly random labels, whatever s"),
)


def flip_probability(kind: str, s: float, labels: np.ndarray, hardness: np.ndarray, k: int) -> np.ndarray:
    """Per-item probability that this labeler's label is wrong. Shapes: (N,) -> (N,)."""
    n = len(labels)
    if kind == "reliable":
        return np.full(n, 0.2 * s)
    if kind == "sloppy":
        return np.full(n, min(s, (k - 1) / k))  # capped where symmetric noise becomes pure guessing
    if kind == "confuser":
        paired = np.isin(labels, [c for pair in CONFUSED_PAIRS for c in pair])
        return np.where(paired, min(0.8, 1.5 * s), 0.0)
    if kind == "instance":
        return np.minimum(1.0, 2.0 * s * hardness)
    if kind == "spammer":
        return np.full(n, (k - 1) / k)
    raise ValueError(f"unknown labeler kind {kind!r}")


def _partner(c: int) -> int:
    for a, b in CONFUSED_PAIRS:
        if c == a:
            return b
        if c == b:
            return a
    return c


def wrong_label(kind: str, labels: np.ndarray, confusable: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The label given when this labeler errs: another class (for the confuser, the pair's other class;
    outside the pairs the confuser never errs, so its true label comes back unchanged)."""
    if kind == "confuser":
        return np.array([_partner(int(c)) for c in labels])
    if kind == "instance":
        return confusable.copy()
    # symmetric: any other class, uniformly
    offset = rng.integers(1, k, size=len(labels))
    return (labels + offset) % k


def expected_noise(s: float, labels: np.ndarray, hardness: np.ndarray, assignment: np.ndarray, k: int) -> float:
    """Expected fraction of wrong labels over the items, given which labeler labels each."""
    total = 0.0
    for idx, profile in enumerate(POOL):
        mine = assignment == idx
        total += flip_probability(profile.kind, s, labels[mine], hardness[mine], k).sum()
    return total / len(labels)


def solve_severity(noise: float, labels: np.ndarray, hardness: np.ndarray, assignment: np.ndarray, k: int) -> float:
    """Bisection for the severity ``s`` in [0, MAX_SEVERITY] whose expected noise equals ``noise``."""
    lo, hi = 0.0, MAX_SEVERITY
    floor, ceiling = (expected_noise(x, labels, hardness, assignment, k) for x in (lo, hi))
    if not floor - 1e-9 <= noise <= ceiling + 1e-9:
        raise ValueError(f"noise {noise} is outside what this labeler pool can produce: [{floor:.3f}, {ceiling:.3f}]")
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_noise(mid, labels, hardness, assignment, k) < noise:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def assign_labelers(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which labeler labels each item: (N,) indices into POOL, in proportion to the shares."""
    shares = np.array([p.share for p in POOL])
    counts = np.floor(shares / shares.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    assignment = np.repeat(np.arange(len(POOL)), counts)
    rng.shuffle(assignment)
    return assignment


def more_labelers(first: np.ndarray, share: float, rng: np.random.Generator, extra: int = 2) -> list[np.ndarray]:
    """On a random ``share`` of the items, ``extra`` more labelers each, every one different from the item's
    labelers before it and drawn in proportion to the shares: ``extra`` columns (N,) of indices into POOL,
    -1 where an item gets no more labels. ``first`` (N,) the labeler each item already has."""
    shares = np.array([p.share for p in POOL])
    chosen = rng.random(len(first)) < share
    columns = [first]
    for _ in range(extra):
        col = np.full(len(first), -1)
        for i in np.flatnonzero(chosen):
            w = shares.copy()
            w[[c[i] for c in columns]] = 0
            col[i] = rng.choice(len(POOL), p=w / w.sum())
        columns.append(col)
    return columns[1:]


def simulate_labels(
    labels: np.ndarray,
    hardness: np.ndarray,
    confusable: np.ndarray,
    assignment: np.ndarray,
    s: float,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw each labeler's labels. Returns (N,) int noisy labels."""
    noisy = labels.copy()
    for idx, profile in enumerate(POOL):
        mine = np.flatnonzero(assignment == idx)
        if len(mine) == 0:
            continue
        p = flip_probability(profile.kind, s, labels[mine], hardness[mine], k)
        if profile.kind == "spammer":
            noisy[mine] = rng.integers(0, k, size=len(mine))
            continue
        flips = rng.random(len(mine)) < p
        wrong = wrong_label(profile.kind, labels[mine], confusable[mine], k, rng)
        noisy[mine] = np.where(flips, wrong, labels[mine])
    return noisy
