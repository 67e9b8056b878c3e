"""The training run's knobs, in one dataclass that imports no torch, so that the CLI can show every
default in ``--help`` without loading torch. Saved inside the checkpoint and the model card."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

LoaderMode = Literal["auto", "memory", "stream"]
SemiPool = Literal["unlabeled+doubted", "unlabeled", "doubted"]
StudentTrusted = Literal["half", "rows"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass
class TrainConfig:
    """Every knob that changes the result. Saved inside the checkpoint and the model card."""

    method: str = "auto"  # chosen from what the data has (training.methods.auto), or one of training.methods
    method_choice: str = ""  # what "auto" saw and chose, for the checkpoint and the model card
    arch: str = "cnn_small"  # used only when training from scratch; otherwise classifier A's
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    augment: str = "shift-flip"  # training.augment: none | flip | shift | shift-flip | crop-flip
    trusted_per_class: int = 0  # FasTEN: trusted samples per class per iteration; 0 = the whole set
    # crowd, crowdmix, student rounds: at most this many trusted rows per step, cycling through the set so each is
    # seen equally; a set no larger goes whole into every step. 0 = the whole set every step, however large
    trusted_per_step: int = 128
    # crowd, crowdmix, student rounds with student_trusted="half": the trusted rows' share of each step's loss
    trusted_weight: float = 0.5
    rho: float = 0.8  # FasTEN: confidence needed to correct a label
    noisy_weight: float = 0.5  # FasTEN: λ, the weight of the noisy head's loss
    trusted_trains_features: bool = True  # FasTEN: False = trusted rows train the heads only (unbiased T̂)
    held_out_estimate: bool = False  # FasTEN: T̂ from the trusted half the clean loss does not fit this epoch
    per_labeler: bool = False  # FasTEN: one noisy head (and T̂) per labeler with enough items
    min_labeler_items: int = 100  # FasTEN per_labeler: fewer items -> the pooled head
    consistency_weight: float = 0.0  # FasTEN: weight of the FixMatch-style loss on untrusted images; 0 = off
    pseudo_threshold: float = 0.95  # consistency (FasTEN's, the EMA teacher's): confidence a pseudo-label needs
    unlabeled_weight: float = 0.0  # semi-supervised: weight of the EMA teacher's consistency loss; 0 = off
    ema_decay: float = 0.99  # semi-supervised: the teacher's moving average of the weights, per step
    doubt_threshold: float = 0.5  # semi-supervised with crowd: posterior of its label below which a row is doubted
    semi_pool: SemiPool = "unlabeled+doubted"  # semi-supervised: which rows the teacher trains without labels
    mixup_alpha: float = 1.0  # crowdmix, mentormix: λ ~ Beta(α, α) per batch; 0 = no mixing
    posterior_weight: float = 0.0  # crowd, crowdmix: weight of cross-entropy to the sharpened label posterior
    trim_fraction: float = 0.0  # crowd, crowdmix: share of each batch's largest untrusted losses left out; 0 = off
    posterior_temperature: float = 0.5  # crowd, crowdmix: the posterior's sharpening, q^(1/T); 1 = none
    mentormix_gamma: float = 0.6  # mentormix: the loss quantile below which an example counts as clean
    mentormix_burn_in: float = 0.2  # mentormix: fraction of the epochs in which every example counts
    student_rounds: int = (
        0  # rounds of training again from classifier A on the last network's targets (training.student)
    )
    student_threshold: float = 0.5  # student rounds: rows whose target's top probability is below this sit out
    student_labeled_threshold: float = 0.0  # student rounds: the same, stricter, for the labeled rows' posteriors
    student_unlabeled_threshold: float = 0.0  # student rounds: the same, stricter, for the unlabeled rows' guesses
    student_trusted: StudentTrusted = "half"  # student rounds: "half" = the trusted set every step, half the loss
    # (as in the first round); "rows" = the trusted rows join the student's rows, their checked labels as targets
    student_crossfit: int = 0  # first student round: 0 = targets from the first network on its own rows; F >= 2 =
    # F networks, each trained without one fold of the labeled rows, give that fold's targets (none memorised)
    teacher: str = ""  # student rounds: a checkpoint of this manifest's first round to start from; "" = train it
    label_source: Literal["label", "true_label"] = "label"  # "true_label": the oracle (simulated data)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Precision = "auto"  # auto: bf16 autocast + channels_last on CUDA only
    image_size: int | None = None  # scratch only; default: the first image's size
    channels: int | None = None  # scratch only; default: 1 for greyscale images (3 for torchvision), else 3
    loader: LoaderMode = "auto"  # memory: decode once into a cache; stream: decode in workers; auto: by size
    workers: int | None = None  # stream: decoding processes; default: the usable CPUs, at most 8
    memory_budget_mb: float = 1024  # auto: the decoded images' size up to which the cache is used


# The settings that take one of a few words, and those words. Checked before a run starts (``unknown_choice``).
ALLOWED: dict[str, tuple[str, ...]] = {
    "semi_pool": get_args(SemiPool),
    "student_trusted": get_args(StudentTrusted),
    "precision": get_args(Precision),
    "loader": get_args(LoaderMode),
}


# The range each numeric setting must lie in: (low, high), each bound ``(value, inclusive)``; a high of
# ``None``: no upper bound. Checked before a run starts (``out_of_range``).
Bound = tuple[float, bool]
RANGES: dict[str, tuple[Bound, Bound | None]] = {
    "epochs": ((1, True), None),
    "batch_size": ((1, True), None),
    "lr": ((0, False), None),
    "momentum": ((0, True), (1, False)),
    "weight_decay": ((0, True), None),
    "warmup_epochs": ((0, True), None),
    "trusted_per_class": ((0, True), None),
    "trusted_per_step": ((0, True), None),
    "trusted_weight": ((0, True), (1, False)),
    "rho": ((0, True), None),  # above 1: no label is ever corrected (a documented use)
    "noisy_weight": ((0, True), None),
    "min_labeler_items": ((1, True), None),
    "consistency_weight": ((0, True), None),
    "pseudo_threshold": ((0, True), (1, True)),
    "unlabeled_weight": ((0, True), None),
    "ema_decay": ((0, True), (1, True)),
    "doubt_threshold": ((0, True), (1, True)),
    "mixup_alpha": ((0, True), None),
    "posterior_weight": ((0, True), (1, True)),
    "trim_fraction": ((0, True), (1, False)),
    "posterior_temperature": ((0, False), None),
    "mentormix_gamma": ((0, False), (1, True)),
    "mentormix_burn_in": ((0, True), (1, True)),
    "student_rounds": ((0, True), None),
    "student_threshold": ((0, True), (1, True)),
    "student_labeled_threshold": ((0, True), (1, True)),
    "student_unlabeled_threshold": ((0, True), (1, True)),
    "memory_budget_mb": ((0, True), None),
}


def _range_text(low: Bound, high: Bound | None) -> str:
    if high is None:
        return f"{'>=' if low[1] else '>'} {low[0]}"
    return f"in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}"


def out_of_range(cfg: TrainConfig) -> list[str]:
    """Each setting outside its range (``RANGES``), as ``name=value (must be ...)``; empty when all fit."""
    bad = []
    for name, (low, high) in RANGES.items():
        value = getattr(cfg, name)
        below = value < low[0] if low[1] else value <= low[0]
        above = high is not None and (value > high[0] if high[1] else value >= high[0])
        if below or above:
            bad.append(f"{name}={value} (must be {_range_text(low, high)})")
    return bad


def unknown_choice(cfg: TrainConfig) -> list[str]:
    """Each word setting that is none of its choices (``ALLOWED``), as ``name='value' (choose from ...)``."""
    return [
        f"{name}={getattr(cfg, name)!r} (choose from {', '.join(choices)})"
        for name, choices in ALLOWED.items()
        if getattr(cfg, name) not in choices
    ]
