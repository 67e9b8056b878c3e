"""``labelaudit produce``: stream a manifest's labeled images into the images topic (demo, load tests).

A tool above the transports, not part of one: the consumer only needs ``serving.stream.topics``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaProducer

from labelaudit.imaging.manifest import read_manifest
from labelaudit.schemas.stream import IMAGE_SCHEMA, ImageMessage
from labelaudit.serving.settings import Settings
from labelaudit.serving.stream.topics import ensure_topics


def image_messages(manifest: Path, *, split: str | None, by_uri: bool, limit: int | None) -> Iterable[ImageMessage]:
    """One ``ImageMessage`` per manifest row (of ``split``), the image inline or as a file:// URI."""
    rows = read_manifest(manifest).records
    rows = [r for r in rows if split is None or r.split == split][:limit]
    for r in rows:
        path = (manifest.parent / r.image).resolve()
        image = {"image_uri": path.as_uri()} if by_uri else {"image_b64": base64.b64encode(path.read_bytes()).decode()}
        yield ImageMessage.model_validate(
            {
                "schema": IMAGE_SCHEMA,
                "item_id": r.item_id,
                "label": r.label,
                "labeler_id": r.labeler_id,
                "sent_at": datetime.now(UTC),
                **image,
            }
        )


def produce(
    settings: Settings,
    messages: Iterable[ImageMessage],
    *,
    partitions: int = 4,
    on_sent: Callable[[int], None] = lambda n: None,
) -> int:
    """Send every message keyed by its item_id, wait for all acknowledgements; returns how many."""
    ensure_topics(settings, {settings.kafka_topic: partitions})
    producer = KafkaProducer(
        **settings.kafka_client_config(),
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        client_id="labelaudit-produce",
    )
    futures, sent = [], 0
    try:
        for message in messages:
            value = json.dumps(message.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()
            futures.append(producer.send(settings.kafka_topic, key=message.item_id.encode(), value=value))
            sent += 1
            if len(futures) >= 1000:
                for f in futures:
                    f.get(timeout=60)
                on_sent(len(futures))
                futures = []
        producer.flush()
        for f in futures:
            f.get(timeout=60)
        on_sent(len(futures))
    finally:
        producer.close(timeout=30)
    return sent
