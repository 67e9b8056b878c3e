"""One small family of errors. Each carries what its transport needs: an HTTP status, a DLQ reason."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def describe_errors(errors: Iterable[Mapping[str, Any]], *, whole: str = "body") -> str:
    """pydantic's ``exc.errors()`` as one line: ``field.path: message; ...`` (``whole`` names the root)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in errors)


class LabelAuditError(Exception):
    """Base of every error labelaudit raises on purpose.

    ``status_code`` is what the HTTP layer answers; ``reason`` is a short machine-readable cause
    (the DLQ record carries it); the message is for people.
    """

    status_code: int = 400
    reason: str = "invalid_input"

    def __init__(self, message: str, *, reason: str | None = None, status_code: int | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if status_code is not None:
            self.status_code = status_code


class Unavailable(LabelAuditError):
    """Something the audit depends on is away for now (the store, the inference server): nothing is wrong
    with the input. HTTP answers 503 with ``Retry-After``; the consumer retries the whole batch with backoff
    and never dead-letters for it."""

    status_code = 503
    reason = "unavailable"

    def __init__(self, message: str, *, reason: str | None = None, retry_after_s: float = 5.0):
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class StoreUnavailable(Unavailable):
    """The audit store cannot be reached or lost its connection (a database restart, a network cut)."""

    reason = "store_unavailable"


class ImageError(LabelAuditError):
    """An image that cannot be decoded or converted to the model's input."""

    reason = "bad_image"


class ManifestError(LabelAuditError):
    """A training manifest that cannot be used; the message names the line."""

    reason = "bad_manifest"


class ExportRefused(LabelAuditError):
    """The export was stopped: a failed gate, a failed parity check, or an invalid Triton config."""

    reason = "export_refused"


class ClassifierAError(LabelAuditError):
    """Classifier A cannot be used: an unknown architecture, or a weights file that does not fit it."""

    reason = "bad_classifier_a"
