"""Relabel requests: a verdict that disagrees with its human label becomes a message on the relabel topic,
whichever transport audited it.

The consumer sends them with its dead letters and waits for the broker before it commits the batch's
offsets (``serving/stream/consumer.py``). The gateway, when ``http_publish_relabels`` is on, publishes
through the runtime's ``KafkaRelabelPublisher``: the verdicts are in the store first, then the requests are
acknowledged, then ``/v1/audit`` answers. A broker that does not take them is a 503 (``relabel_unavailable``,
the verdict stays recorded) and the client's retry publishes again: at least once, as on the stream, with
the same ``request_id`` on every delivery.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from labelaudit.errors import Unavailable
from labelaudit.schemas.audit import AuditRecord, ModelVerdict
from labelaudit.schemas.stream import RelabelRequest

if TYPE_CHECKING:
    from labelaudit.serving.settings import Settings

log = logging.getLogger("labelaudit.relabel")


class RelabelUnavailable(Unavailable):
    """The relabel topic's broker did not acknowledge a request in time (the verdict is stored)."""

    reason = "relabel_unavailable"


def relabel_request(record: AuditRecord) -> tuple[bytes, bytes]:
    """(key, value) for the relabel topic: the verdict's fields, keyed by item id."""
    request = RelabelRequest.model_construct(  # built from a validated record: no second validation
        request_id=f"{record.item_id}/{record.labeler_id}/{record.model_version}",
        created_at=record.created_at,
        **{name: getattr(record, name) for name in ModelVerdict.model_fields},
    )
    return record.item_id.encode(), request.model_dump_json(by_alias=True).encode()


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
        messages = [relabel_request(r) for r in records if r.disagrees]
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
