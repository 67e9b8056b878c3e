"""From a Kafka record to an ``AuditItem`` (or the reason it is a dead letter), and back out to the
relabel and dead-letter topics. Pure functions: the consumer's loop is in ``consumer.py``."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from pydantic import ValidationError

from labelaudit.errors import LabelAuditError, describe_errors
from labelaudit.schemas.stream import (
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    DLQ_TRUNCATED,
    IMAGE_SCHEMA,
    ImageMessage,
    image_uri_path,
)
from labelaudit.serving.core.audit import AuditItem
from labelaudit.serving.core.payload import image_from_base64


class Record(Protocol):
    """What the stream reads of a Kafka consumer record (kafka-python's ``ConsumerRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


class BadMessage(LabelAuditError):
    """A message on the images topic that cannot be audited; it goes to the DLQ with ``reason``."""

    reason = "invalid_message"


def read_image_uri(uri: str, max_bytes: int) -> bytes:
    """A regular file named by a ``file://`` URI (or a plain absolute path), at most ``max_bytes`` read.

    The consumer never fetches from the network, and never reads what is not a regular file: a device
    (``/dev/zero``) or a FIFO has no size to check and an endless or blocking read. The errors name the
    cause, not the path (they travel in the DLQ's headers).
    """
    try:
        path = image_uri_path(uri)
    except ValueError as exc:
        raise BadMessage(str(exc), reason="unsupported_uri") from exc
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer. It changes nothing for a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise BadMessage(
            f"image_uri cannot be opened: {getattr(exc, 'strerror', None) or exc}", reason="image_unreadable"
        ) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise BadMessage(f"image_uri is {kind}, not a regular file", reason="image_unreadable")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)  # bounded even if the file grows after the check
        except OSError as exc:
            raise BadMessage(f"image_uri cannot be read: {exc.strerror}", reason="image_unreadable") from exc
    if len(data) > max_bytes:
        raise BadMessage(f"image_uri's file is above the limit of {max_bytes} bytes", reason="image_too_large")
    return data


def parse_record(record: Record, *, max_message_bytes: int, max_image_bytes: int) -> AuditItem:
    """A consumer record (key, value bytes) -> the item to audit; a ``LabelAuditError`` (``BadMessage``, or
    ``BadBase64`` as on HTTP) says why not, and its reason goes with the dead letter."""
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
        image = image_from_base64(message.image_b64, where="image_b64")
    else:  # ImageMessage.one_image: exactly one of image_b64 and image_uri
        image = read_image_uri(cast(str, message.image_uri), max_image_bytes)
    return AuditItem(
        item_id=message.item_id,
        labeler_id=message.labeler_id or "",
        label=message.label,
        image=image,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        answers=message.answers,
        image_uri=message.image_uri,
    )


# A dead letter the DLQ topic refuses whole (above the producer's max_request_size or the topic's
# max.message.bytes) is sent again with this much of its value and key, and DLQ_TRUNCATED set.
TRUNCATED_VALUE_BYTES, TRUNCATED_KEY_BYTES, TRUNCATED_HEADERS_BYTES = 16_384, 1_024, 16_384


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def dead_letter(record: Record, error: LabelAuditError, *, truncate: bool = False) -> DeadLetter:
    """The record for the DLQ: the original key, value and headers, then why it failed and where it came
    from. ``truncate``: for a record the DLQ cannot take whole, the first bytes of its value and key, its
    headers only if small, and ``DLQ_TRUNCATED`` giving the original value's size; the original stays
    on its topic (``DLQ_TOPIC``, ``DLQ_PARTITION``, ``DLQ_OFFSET``) for as long as the topic keeps it."""
    key, value, headers = record.key, record.value, list(record.headers or [])
    ours = {
        DLQ_REASON: error.reason,
        DLQ_ERROR: str(error)[:2000],
        DLQ_TOPIC: record.topic,
        DLQ_PARTITION: str(record.partition),
        DLQ_OFFSET: str(record.offset),
    }
    if truncate:
        ours[DLQ_TRUNCATED] = str(len(value or b""))
        key = key[:TRUNCATED_KEY_BYTES] if key is not None else None
        value = value[:TRUNCATED_VALUE_BYTES] if value is not None else None
        if sum(len(k) + len(v or b"") for k, v in headers) > TRUNCATED_HEADERS_BYTES:
            headers = []
    return DeadLetter(key, value, headers + [(k, v.encode()) for k, v in ours.items()])
