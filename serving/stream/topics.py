"""The topics the stream reads and writes, made when missing."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from labelaudit.serving.settings import Settings


def ensure_topics(settings: Settings, partitions: dict[str, int]) -> None:
    """Create each missing topic with its number of partitions (replication 1: for a local broker;
    on a real cluster create them beforehand)."""
    admin = KafkaAdminClient(**settings.kafka_client_config(), client_id="labelaudit-admin")
    try:
        existing = set(admin.list_topics())
        for name, n in partitions.items():
            if name not in existing:
                try:
                    admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1)])
                except TopicAlreadyExistsError:
                    pass
    finally:
        admin.close()
