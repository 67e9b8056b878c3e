"""The training manifest: one JSON object per line, one line per image."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Split = Literal["train", "val", "test"]


class ManifestRecord(BaseModel):
    """One image of a task, with its label or (a ``train`` row only) without one.

    ``trusted`` marks the small hand-checked set: its ``label`` is taken as the truth. Every other
    ``train`` label is the labeler's and may be wrong. A ``train`` row without ``label`` is an unlabeled
    image (a stream has far more of them than labels): the semi-supervised option trains on it, nothing
    else reads it. ``val`` and ``test`` rows are clean held-out images (their labels are checked), used
    for reporting and for the audit thresholds, never for fitting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1, description="Stable id of the image, unique within the manifest.")
    image: str = Field(min_length=1, description="Path of the image file, relative to the manifest's folder.")
    label: str | None = Field(
        default=None,
        min_length=1,
        description="The class name the labeler gave (or the checked label); none: unlabeled.",
    )
    labeler_id: str | None = Field(default=None, min_length=1, description="Who gave the label (required with one).")
    trusted: bool = Field(default=False, description="True for the hand-checked (clean) set.")
    split: Split = Field(default="train")
    true_label: str | None = Field(
        default=None,
        description="Simulation only: the known true class, written by `labelaudit data` so benchmarks can "
        "score label-error detection. Training never reads it.",
    )

    @model_validator(mode="after")
    def labeled_unless_an_unlabeled_training_image(self) -> ManifestRecord:
        if self.label is None:
            if self.split != "train" or self.trusted:
                raise ValueError("only untrusted train rows may come without a label")
            if self.labeler_id is not None:
                raise ValueError("labeler_id without a label")
        elif self.labeler_id is None:
            raise ValueError("labeler_id is required with a label")
        return self
