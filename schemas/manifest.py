"""The training manifest: one JSON object per line, one line per image."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "val", "test"]


class ManifestRecord(BaseModel):
    """One labeled image of a task.

    ``trusted`` marks the small hand-checked set: its ``label`` is taken as the truth. Every other
    ``train`` label is the labeler's and may be wrong. ``val`` and ``test`` rows are clean held-out
    images (their labels are checked), used for reporting and for the audit thresholds, never for fitting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1, description="Stable id of the image, unique within the manifest.")
    image: str = Field(min_length=1, description="Path of the image file, relative to the manifest's folder.")
    label: str = Field(min_length=1, description="The class name the labeler gave (or the checked label).")
    labeler_id: str = Field(min_length=1, description="Who gave the label.")
    trusted: bool = Field(default=False, description="True for the hand-checked (clean) set.")
    split: Split = Field(default="train")
    true_label: str | None = Field(
        default=None,
        description="Simulation only: the known true class, written by `labelaudit data` so benchmarks can "
        "score label-error detection. Training never reads it.",
    )
