"""Training methods. Each turns one batch into a loss; ``training.train`` runs the loop around them."""

from labelaudit.training.config import TrainConfig
from labelaudit.training.methods.base import Method
from labelaudit.training.methods.ce import CrossEntropy
from labelaudit.training.methods.crowd import CrowdForward, CrowdMix
from labelaudit.training.methods.fasten import FasTEN
from labelaudit.training.methods.glc import GoldLossCorrection
from labelaudit.training.methods.mentormix import MentorMix

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "glc": GoldLossCorrection,
    "fasten": FasTEN,
    "crowd": CrowdForward,
    "crowdmix": CrowdMix,
    "mentormix": MentorMix,
}

# Settings of the optional parts of a run: the student rounds (training.student, which mixes its batches too)
# and the EMA teacher's consistency on unlabeled images (training.semi). Each applies only when switched on;
# ``doubt_threshold`` only with a method that doubts labels (``Method.doubted_rows``: crowd, crowdmix).
STUDENT_SETTINGS = frozenset(
    {
        "student_threshold",
        "student_labeled_threshold",
        "student_unlabeled_threshold",
        "student_trusted",
        "student_crossfit",
        "mixup_alpha",
        "trusted_per_step",
        "trusted_weight",
    }
)
SEMI_SETTINGS = frozenset({"ema_decay", "semi_pool", "pseudo_threshold"})


def ignored_settings(cfg: TrainConfig, method: type[Method]) -> dict[str, list[str]]:
    """The settings ``cfg`` gives a value other than the default that nothing in a run of ``method`` reads,
    each with what would read it: another method's knob (``trim_fraction`` with ``ce``), a student round's
    without a student round, the EMA teacher's with ``unlabeled_weight`` 0."""
    semi = cfg.unlabeled_weight > 0
    doubts = method.doubted_rows is not Method.doubted_rows
    parts = [(name, cls.settings, cls is method) for name, cls in sorted(METHODS.items())]
    parts += [
        ("student_rounds >= 1", STUDENT_SETTINGS, cfg.student_rounds > 0),
        ("unlabeled_weight > 0", SEMI_SETTINGS, semi),
        ("unlabeled_weight > 0 with crowd or crowdmix", frozenset({"doubt_threshold"}), semi and doubts),
    ]
    defaults = TrainConfig()
    given = {s for _, settings, _ in parts for s in settings if getattr(cfg, s) != getattr(defaults, s)}
    read = {s for _, settings, on in parts if on for s in settings}
    return {s: [who for who, settings, _ in parts if s in settings] for s in sorted(given - read)}


__all__ = ["METHODS", "Method", "CrossEntropy", "CrowdForward", "CrowdMix", "GoldLossCorrection", "FasTEN", "MentorMix"]
