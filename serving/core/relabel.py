"""Relabel requests: a verdict that disagrees with its human label becomes a message on the relabel topic,
whichever transport audited it; so does a labeled item drawn for the random audit sample
(``audit_sample_rate``), asking for a second opinion.

The consumer sends them with its dead letters and waits for the broker before it commits the batch's
offsets (``serving/stream/consumer.py``). The gateway, when ``http_publish_relabels`` is on, publishes
through the runtime's ``KafkaRelabelPublisher``: the verdicts are in the store first, then the requests are
acknowledged, then ``/v1/audit`` answers. A broker that does not take them is a 503 (``relabel_unavailable``,
the verdict stays recorded) and the client's retry publishes again: at least once, as on the stream, with
the same ``request_id`` on every delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from labelaudit.errors import Unavailable
from labelaudit.schemas.audit import AuditRecord, ModelVerdict, RelabelReason
from labelaudit.schemas.stream import BLIND, RelabelRequest

if TYPE_CHECKING:
    from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.relabel")


class RelabelUnavailable(Unavailable):
    """The relabel topic's broker did not acknowledge a request in time (the verdict is stored)."""

    reason = "relabel_unavailable"


AUDIT_DRAW_BITS = 60  # the draw: the first 60 bits of sha256(item id), which a bigint holds in either store


def audit_draw(item_id: str) -> int:
    """The item's draw in [0, 2**60): the first 60 bits of the SHA-256 of its id (UTF-8). The stores compute the
    same number in SQL (``AuditStore.audit_draw_sql``), so the report can select the audit sample's items."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") >> (64 - AUDIT_DRAW_BITS)


def audit_sample_bound(rate: float) -> int:
    """Items whose draw is below this are in the audit sample of share ``rate``."""
    return int(round(rate * 2**AUDIT_DRAW_BITS))


def in_audit_sample(item_id: str, rate: float) -> bool:
    """Whether ``item_id`` is in the random audit sample of share ``rate``: a hash of the id, so every label of
    the item, every redelivery, every replica and the report all draw the same answer."""
    return audit_draw(item_id) < audit_sample_bound(rate)


AUDIT_SAMPLE_PART = "audit-sample"  # the middle part of an audit-sample request's id, where a labeler id goes


def request_id(item_id: str, asker: str, model_version: str) -> str:
    """The id of the request about ``item_id`` under ``model_version``: ``asker`` is the questioned label's
    labeler for a disagreement, ``AUDIT_SAMPLE_PART`` for the audit sample (the stores' SQL builds the same form,
    ``report.aggregate._request_id``)."""
    return f"{item_id}/{asker}/{model_version}"


def request_reason(item_id: str, request_id: str) -> RelabelReason:
    """The reason of the request ``request_id`` about ``item_id``, read off the id's form (``relabel_requests``):
    ``item/audit-sample/version`` for the audit sample, ``item/labeler/version`` for a disagreement."""
    return "audit_sample" if request_id.startswith(f"{item_id}/{AUDIT_SAMPLE_PART}/") else "disagreement"


def relabel_requests(record: AuditRecord, audit_sample_rate: float = 0.0) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for the relabel topic, keyed by item id: a request where the verdict disagrees,
    and one for a second opinion where the labeled item is in the audit sample (``in_audit_sample``; blind:
    no label, no model label, no score). The second has one ``request_id`` per item and model version,
    whichever label asked: a reader dedupes it as it dedupes a redelivery, and the second opinion's own label
    asks nothing new."""
    requests: list[tuple[RelabelReason, str]] = []
    if record.disagrees:
        requests.append(("disagreement", request_id(record.item_id, record.labeler_id, record.model_version)))
    if record.human_label is not None and in_audit_sample(record.item_id, audit_sample_rate):
        requests.append(("audit_sample", request_id(record.item_id, AUDIT_SAMPLE_PART, record.model_version)))
    fields = {name: getattr(record, name) for name in ModelVerdict.model_fields}
    blind = fields | dict.fromkeys(BLIND)  # a second opinion must not see the first, nor the model's
    return [
        (
            record.item_id.encode(),
            RelabelRequest.model_construct(  # built from a validated record: no second validation
                request_id=asked,
                reason=reason,
                created_at=record.created_at,
                **(blind if reason == "audit_sample" else fields),
            )
            .model_dump_json(by_alias=True)
            .encode(),
        )
        for reason, asked in requests
    ]


class RelabelPublisher(Protocol):
    """Where the core sends the relabel requests of the verdicts it has stored."""

    async def publish(self, records: list[AuditRecord]) -> None: ...

    def close(self) -> None: ...


class KafkaRelabelPublisher:
    """Relabel requests to ``settings.kafka_relabel_topic``, each acknowledged by the broker (acks=all)
    within ``settings.http_relabel_timeout_s`` or ``RelabelUnavailable``. The producer is made on first use
    (and again after a failure), so a gateway starts while the broker is away and recovers when it is back."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()  # one producer, made once, by whichever worker thread comes first

    async def publish(self, records: list[AuditRecord]) -> None:
        messages = [m for r in records for m in relabel_requests(r, self.settings.audit_sample_rate)]
        if messages:
            await asyncio.to_thread(self._send, messages)

    def _send(self, messages: list[tuple[bytes, bytes]]) -> None:
        from kafka.errors import KafkaError

        timeout = self.settings.http_relabel_timeout_s
        try:
            producer = self._connected()
            futures = [producer.send(self.settings.kafka_relabel_topic, key=k, value=v) for k, v in messages]
            producer.flush(timeout=timeout)
            for future in futures:
                future.get(timeout=timeout)
        except KafkaError as exc:
            self._drop()
            raise RelabelUnavailable(f"the relabel topic's broker did not take the request: {exc}") from exc

    def _connected(self) -> Any:
        from kafka import KafkaProducer

        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    **self.settings.kafka_client_config(),
                    acks="all",
                    linger_ms=0,
                    request_timeout_ms=int(self.settings.http_relabel_timeout_s * 1000),
                    max_block_ms=int(self.settings.http_relabel_timeout_s * 1000),
                    client_id="labelaudit-gateway",
                )
            return self._producer

    def _drop(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=1)

    def close(self) -> None:
        self._drop()
