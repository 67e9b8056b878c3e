"""Encoded images inside text payloads (JSON bodies, Kafka messages): one decoder, one error, for every transport."""

from __future__ import annotations

import base64
import binascii

from labelaudit.errors import LabelAuditError


class BadBase64(LabelAuditError):
    """An image field that is not base64: HTTP 422, a dead letter with reason ``bad_base64``."""

    status_code = 422
    reason = "bad_base64"


def image_from_base64(text: str, *, where: str) -> bytes:
    """The bytes of a base64 image field (strict: characters outside the alphabet are an error, not skipped);
    ``where`` names the field in the error (``images[2].data``)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64(f"{where} is not valid base64: {exc}") from None
