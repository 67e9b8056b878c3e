"""The audit record: one verdict of the model on one human label, as stored and as reported."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelaudit.schemas.fields import Identifier, RequestId, answer_problem

Source = Literal["http", "kafka"]
"""The transport an audit record came through."""

RelabelReason = Literal["disagreement", "audit_sample"]
"""Why a relabel request was sent (``RelabelRequest.reason``)."""


class Verdict(BaseModel):
    """The model's verdict on one human label: what every view of it (the stored record, the HTTP answer,
    a disagreement's relabel request, the report's queue) shows, named and typed once here."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    item_id: str
    labeler_id: str = Field(description="Empty when the image came without a labeler.")
    human_label: str | None = Field(description="None for an unlabeled image: classified, nothing to judge.")
    predicted_label: str
    predicted_probability: float
    label_probability: float | None = Field(description="The model's probability of the human label.")
    score: float = Field(description="Disagreement score in [0, 1]; ranks the relabel queue.")


class ModelVerdict(Verdict):
    """A verdict with the model and the policy that gave it."""

    policy: str
    model_name: str
    model_version: str


class AuditRecord(ModelVerdict):
    """Unique on (item_id, labeler_id, model_version): a replayed message writes nothing twice."""

    disagrees: bool
    probabilities: list[float] = Field(description="All K class probabilities, in the card's class order.")
    source: Source
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    created_at: datetime
    image_uri: str | None = Field(
        default=None,
        description="The file the stream message's image_uri named (the report's thumbnails and `labelaudit "
        "harvest` find the image there); None for an image sent inline. The last column: stores made before it "
        "gain it when opened.",
    )


class RelabelAnswer(BaseModel):
    """A label that answers a relabel request, stored beside its audit record (``relabel_answers``) in the same
    transaction: the report measures how often the second person agreed with the model, and keeps answers to
    disagreement requests (items the model picked) out of the labelers' error rates."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    reason: RelabelReason = Field(description="The answered request's reason, read off its id.")
    item_id: str
    labeler_id: str
    label: str
    created_at: datetime


ANSWERS_DESCRIPTION = (
    "The request_id of the relabel request this label answers (a relabel tool sets it). Such a label is audited "
    "like any other, asks for no relabel itself, and is kept in relabel_answers for the report."
)


class AuditFields(BaseModel):
    """The human side of ``POST /v1/audit``, the same in both of its forms."""

    item_id: Identifier
    labeler_id: Identifier
    label: Identifier = Field(description="The human label, one of the model's classes.")
    answers: RequestId | None = Field(default=None, description=ANSWERS_DESCRIPTION)

    @model_validator(mode="after")
    def answers_its_item(self) -> AuditFields:
        if (problem := answer_problem(self.item_id, self.answers)) is not None:
            raise ValueError(problem)
        return self


class AuditRequest(AuditFields):
    """JSON form of ``POST /v1/audit``: one image with its human label."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"item_id": "b-00042", "labeler_id": "anna", "label": "coat", "image": "iVBORw0KGgo..."}]
        },
    )

    image: str = Field(min_length=1, description="The encoded image file, base64.")


class AuditForm(AuditFields):
    """multipart/form-data form of ``POST /v1/audit``: a file part ``image`` and the three text fields."""

    image: bytes = Field(description="The encoded image file (PNG, JPEG, ...).")


class AuditResponse(ModelVerdict):
    """``POST /v1/audit``'s answer: the verdict on the one label sent (always labeled)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "b-00042",
                    "labeler_id": "anna",
                    "human_label": "coat",
                    "predicted_label": "pullover",
                    "predicted_probability": 0.94,
                    "label_probability": 0.03,
                    "score": 0.91,
                    "policy": "confident-joint-v1",
                    "model_name": "labelaudit",
                    "model_version": "1",
                    "disagrees": True,
                    "recorded": True,
                }
            ]
        },
    )

    human_label: str
    label_probability: float
    disagrees: bool
    recorded: bool = Field(description="False when this (item, labeler, model version) was already audited.")
