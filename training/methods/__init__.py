"""Training methods. Each turns one batch into a loss; ``training.train`` runs the loop around them."""

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

__all__ = ["METHODS", "Method", "CrossEntropy", "CrowdForward", "CrowdMix", "GoldLossCorrection", "FasTEN", "MentorMix"]
