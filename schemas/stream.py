"""The Kafka messages labelaudit reads and writes, versioned by their ``schema`` field.

- ``images`` (in): ``ImageMessage``, JSON, keyed by ``item_id``.
- ``relabel-requests`` (out): ``RelabelRequest``, JSON, keyed by ``item_id``; delivered at least once,
  ``request_id`` is the same on every redelivery, so a reader dedupes on it.
- ``images.dlq`` (out): the original key, value and headers byte for byte, plus ``DLQ_HEADERS``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Final, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelaudit.schemas.audit import ANSWERS_DESCRIPTION, RelabelReason
from labelaudit.schemas.fields import Identifier, RequestId, answer_problem

IMAGE_SCHEMA: Final = "labelaudit.image.v1"
RELABEL_SCHEMA: Final = "labelaudit.relabel.v1"

# Headers added to a dead letter (values are UTF-8): why it failed and where it came from.
DLQ_REASON, DLQ_ERROR = "labelaudit.dlq.reason", "labelaudit.dlq.error"
DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET = "labelaudit.dlq.topic", "labelaudit.dlq.partition", "labelaudit.dlq.offset"
# Set when the DLQ could not take the record whole: the original value's size in bytes; the value and key
# carried are their first bytes (the original stays at topic/partition/offset while the topic keeps it).
DLQ_TRUNCATED = "labelaudit.dlq.truncated"


def image_uri_path(uri: str) -> str:
    """The local absolute path an ``image_uri`` names: a ``file://`` URI (host empty or ``localhost``) or a plain
    absolute path. ValueError, naming the cause and not the path, for anything else. The file is not touched:
    the consumer reads it (``serving.stream.messages``), the report finds thumbnails and harvest finds images there."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"image_uri scheme {parsed.scheme!r} is not supported; use file://")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError("image_uri names another host; only local files are read")
    path = unquote(parsed.path)
    if not os.path.isabs(path):
        raise ValueError("image_uri must be an absolute path")
    return path


class ImageMessage(BaseModel):
    """One image on the ``images`` topic, with its human label when it has one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "schema": IMAGE_SCHEMA,
                    "item_id": "b-00042",
                    "image_b64": "iVBORw0KGgo...",
                    "label": "coat",
                    "labeler_id": "anna",
                }
            ]
        },
    )

    schema_: Literal["labelaudit.image.v1"] = Field(alias="schema", description="Message schema and version.")
    item_id: Identifier = Field(description="Also the message key.")
    image_b64: str | None = Field(default=None, min_length=1, description="The encoded image file, base64.")
    image_uri: str | None = Field(
        default=None, min_length=1, description="Instead of the bytes: a file:// URI the consumer can read."
    )
    label: Identifier | None = Field(default=None, description="The human label.")
    labeler_id: Identifier | None = None
    sent_at: datetime | None = None
    answers: RequestId | None = Field(default=None, description=ANSWERS_DESCRIPTION)

    @model_validator(mode="after")
    def one_image(self) -> ImageMessage:
        if (self.image_b64 is None) == (self.image_uri is None):
            raise ValueError("give exactly one of image_b64 and image_uri")
        if self.labeler_id is not None and self.label is None:
            raise ValueError("labeler_id without a label")
        if self.answers is not None and self.label is None:
            raise ValueError("answers without a label: an answer to a relabel request is a label")
        if (problem := answer_problem(self.item_id, self.answers)) is not None:
            raise ValueError(problem)
        return self


BLIND = ("human_label", "label_probability", "predicted_label", "predicted_probability", "score")


class RelabelRequest(BaseModel):
    """A human label the model confidently disagrees with, please look at this item again; or (``reason``
    ``audit_sample``) an item drawn at random for a second opinion, please have another labeler label it.

    The verdict's fields (``ModelVerdict``), except that an audit-sample request is blind: the fields in
    ``BLIND`` (the first label, the model's label, their probabilities and the score) are null, so that no
    tool can show them. A second opinion that has seen the first label or the model's leans toward it, and the
    report's labeler error rates, read off these answers, would lean low with it (docs/report.md, "With the
    audit sample answered"). Not a ``ModelVerdict`` for that reason: its verdict fields may be null."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    item_id: str
    labeler_id: str = Field(description="Who gave the label in question; empty when the image came without one.")
    policy: str
    model_name: str
    model_version: str
    schema_: Literal["labelaudit.relabel.v1"] = Field(default=RELABEL_SCHEMA, alias="schema")
    request_id: str = Field(
        description="item_id/labeler_id/model_version for a disagreement; item_id/audit-sample/model_version for "
        "an audit sample (one request per item, whichever of its labels asked): the same on every redelivery. "
        "The answer, a label on the images topic or POST /v1/audit, names it in its answers field."
    )
    reason: RelabelReason = Field(
        default="disagreement",
        description="disagreement: the model confidently disagrees with this label; audit_sample: the item is in "
        "the random audit sample (LABELAUDIT_AUDIT_SAMPLE_RATE); ask someone other than labeler_id, without "
        "showing the label, so that the report can measure every labeler from items shared at random.",
    )
    human_label: str | None = Field(description="The label in question; null on an audit-sample request (blind).")
    label_probability: float | None = Field(description="The model's probability of it; null when blind.")
    predicted_label: str | None = Field(description="The model's label; null when blind.")
    predicted_probability: float | None = Field(description="Its probability; null when blind.")
    score: float | None = Field(description="Disagreement score in [0, 1]; null when blind.")
    created_at: datetime

    @model_validator(mode="after")
    def blind_exactly_for_the_audit_sample(self) -> RelabelRequest:
        missing = [name for name in BLIND if getattr(self, name) is None]
        if self.reason == "audit_sample" and len(missing) < len(BLIND):
            raise ValueError(f"an audit-sample request is blind: {', '.join(sorted(set(BLIND) - set(missing)))} set")
        if self.reason == "disagreement" and missing:
            raise ValueError(f"a disagreement request needs {', '.join(missing)}")
        return self
