"""From a Kafka record to an ``AuditItem`` (or the reason it is a dead letter), and back out to the
relabel and dead-letter topics. Pure functions: the consumer's loop is in ``consumer.py``."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from labelaudit.errors import LabelAuditError, describe_errors
from labelaudit.schemas.audit import AuditRecord
from labelaudit.schemas.stream import (
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    IMAGE_SCHEMA,
    ImageMessage,
    RelabelRequest,
)
from labelaudit.serving.core.audit import AuditItem


class BadMessage(LabelAuditError):
    """A message on the images topic that cannot be audited; it goes to the DLQ with ``reason``."""

    reason = "invalid_message"


def read_image_uri(uri: str, max_bytes: int) -> bytes:
    """``file://`` URIs (or plain absolute paths) only: the consumer never fetches from the network."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise BadMessage(f"image_uri scheme {parsed.scheme!r} is not supported; use file://", reason="unsupported_uri")
    path = Path(unquote(parsed.path))
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise BadMessage(f"{path}: {size} bytes, above the limit of {max_bytes}", reason="image_too_large")
        return path.read_bytes()
    except OSError as exc:
        raise BadMessage(f"cannot read {path}: {exc.strerror}", reason="image_unreadable") from exc


def parse_record(record, *, max_message_bytes: int, max_image_bytes: int) -> AuditItem:
    """A consumer record (key, value bytes) -> the item to audit; ``BadMessage`` says why not."""
    value = record.value
    if not value:
        raise BadMessage("empty message value", reason="empty_message")
    if len(value) > max_message_bytes:
        raise BadMessage(f"{len(value)} bytes, above the limit of {max_message_bytes}", reason="message_too_large")
    try:
        message = ImageMessage.model_validate_json(value)  # parsed and checked in one pass (pydantic-core)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadMessage(f"value is not JSON: {exc.errors()[0]['msg']}", reason="bad_json") from exc
        raise BadMessage(f"not a {IMAGE_SCHEMA} message: {describe_errors(exc.errors(), whole='value')}") from exc
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    if key is not None and key != message.item_id:
        raise BadMessage(f"message key {key!r} differs from item_id {message.item_id!r}", reason="key_mismatch")
    if message.image_b64 is not None:
        try:
            image = base64.b64decode(message.image_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadMessage(f"image_b64 is not valid base64: {exc}", reason="bad_base64") from exc
    else:
        image = read_image_uri(message.image_uri, max_image_bytes)
    return AuditItem(
        item_id=message.item_id,
        labeler_id=message.labeler_id or "",
        label=message.label,
        image=image,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


def dead_letter_headers(record, error: LabelAuditError) -> list[tuple[str, bytes]]:
    """The original headers, then why it failed and where it came from."""
    ours = {
        DLQ_REASON: error.reason,
        DLQ_ERROR: str(error)[:2000],
        DLQ_TOPIC: record.topic,
        DLQ_PARTITION: str(record.partition),
        DLQ_OFFSET: str(record.offset),
    }
    return list(record.headers or []) + [(k, v.encode()) for k, v in ours.items()]


def relabel_request(record: AuditRecord) -> tuple[bytes, bytes]:
    """(key, value) for the relabel-requests topic."""
    request = RelabelRequest.model_construct(  # built from a validated record: no second validation
        request_id=f"{record.item_id}/{record.labeler_id}/{record.model_version}",
        item_id=record.item_id,
        labeler_id=record.labeler_id,
        human_label=record.human_label,
        predicted_label=record.predicted_label,
        predicted_probability=record.predicted_probability,
        label_probability=record.label_probability,
        score=record.score,
        policy=record.policy,
        model_name=record.model_name,
        model_version=record.model_version,
        created_at=record.created_at,
    )
    return record.item_id.encode(), request.model_dump_json(by_alias=True).encode()
