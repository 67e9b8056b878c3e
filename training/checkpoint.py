"""The checkpoint: weights plus everything needed to rebuild, judge and export the model.

The resolved training config travels inside it, and so does what the model card needs (metrics, gate,
transition matrices, thresholds), so ``labelaudit export`` needs only the checkpoint and data to check
parity on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelaudit.schemas.model_card import GateResult, LabelerErrorRate, ModelMetrics, PreprocessSpec
from labelaudit.training.networks import TwoHeadNet

FORMAT = "labelaudit-checkpoint-v1"


class CheckpointMeta(BaseModel):
    """Everything in a checkpoint except the weights."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: str = FORMAT
    arch: str
    classes: list[str]
    preprocess: PreprocessSpec
    method: str
    init: str
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: ModelMetrics
    gate: GateResult
    transition_matrix: list[list[float]] | None = None
    labeler_transition_matrices: dict[str, list[list[float]]] = Field(default_factory=dict)
    labeler_counts: dict[str, int] = Field(default_factory=dict)
    disagreement_thresholds: list[float]
    thresholds_source: str
    confusion: list[list[int]] | None = None  # (K, K) counts of (true class, model's label) on held-out rows
    labeler_error_rates: dict[str, LabelerErrorRate] = Field(default_factory=dict)
    data_version: str
    manifest: str
    noisy_heads: list[str] = Field(
        default_factory=list, description="Labeler group of each noisy head; empty for a single shared head."
    )


def save_checkpoint(path: Path, net: TwoHeadNet, meta: CheckpointMeta) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}  # channels_last or not
    torch.save({"meta": meta.model_dump(mode="json"), "state_dict": state}, path)


def load_checkpoint(path: str | Path) -> tuple[TwoHeadNet, CheckpointMeta]:
    """Rebuild the network on CPU in eval mode, with its metadata."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    meta = CheckpointMeta.model_validate(blob["meta"])
    if meta.format != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.format!r}")
    net = TwoHeadNet(meta.arch, len(meta.classes), meta.preprocess.channels, noisy_heads=max(1, len(meta.noisy_heads)))
    net.load_state_dict(blob["state_dict"])
    return net.eval(), meta
