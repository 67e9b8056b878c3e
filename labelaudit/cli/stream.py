"""``labelaudit consume`` (the Kafka consumer that audits the stream) and ``labelaudit produce`` (a manifest's
labeled images into the images topic)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from labelaudit.cli.common import LOG_FORMAT, console, fail, progress_bars, settings_with
from labelaudit.errors import LabelAuditError


def consume(
    model_repo: Annotated[Path | None, typer.Option(help="Triton model repository (LABELAUDIT_MODEL_REPO).")] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS).")
    ] = None,
    store_url: Annotated[str | None, typer.Option(help="Audit store URL (LABELAUDIT_STORE_URL).")] = None,
    metrics_port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="Serve Prometheus metrics on PORT (0: off), at LABELAUDIT_METRICS_HOST."),
    ] = 0,
    stop_when_idle: Annotated[
        float | None, typer.Option(min=0, help="Exit after this many seconds without messages.")
    ] = None,
    max_messages: Annotated[int | None, typer.Option(min=1, help="Exit after this many messages.")] = None,
) -> None:
    """Join the consumer group on the images topic: audit every labeled image, commit after the store."""
    from labelaudit.serving.stream.consumer import consume as run_consumer

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = settings_with(model_repo=model_repo, kafka_bootstrap_servers=bootstrap, store_url=store_url)
    logging.getLogger("labelaudit.stream").info("settings: %s", settings.redacted())
    try:
        stats = run_consumer(
            settings, metrics_port=metrics_port, stop_when_idle_s=stop_when_idle, max_messages=max_messages
        )
    except LabelAuditError as exc:
        raise fail(exc) from exc
    console.print(
        f"audited {stats.audited} ({stats.new} new), dead letters {stats.dead_lettered}, "
        f"relabel requests {stats.relabels}"
    )


def produce(
    manifest: Annotated[Path, typer.Option(help="JSONL manifest of labeled images (e.g. data/task_b.jsonl).")],
    split: Annotated[str | None, typer.Option(help="Only rows of this split (train, val, test).")] = "train",
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many messages.")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Send the manifest this many times (item ids suffixed).")] = 1,
    by_uri: Annotated[bool, typer.Option(help="Send file:// URIs instead of the image bytes.")] = False,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions when the topic is created here.")] = 4,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (LABELAUDIT_KAFKA_BOOTSTRAP_SERVERS).")
    ] = None,
) -> None:
    """Stream a manifest's labeled images into the images topic, keyed by item_id."""
    from labelaudit.produce import image_messages
    from labelaudit.produce import produce as send

    settings = settings_with(kafka_bootstrap_servers=bootstrap)
    try:
        base = list(image_messages(manifest, split=split, by_uri=by_uri, limit=limit))
    except LabelAuditError as exc:
        raise fail(exc) from exc
    messages = (
        base
        if repeat == 1
        else [m.model_copy(update={"item_id": f"{m.item_id}#{n}"}) for n in range(repeat) for m in base]
    )
    with progress_bars() as progress:
        task = progress.add_task(f"producing to {settings.kafka_topic}", total=len(messages), info="")
        sent = send(settings, messages, partitions=partitions, on_sent=lambda n: progress.advance(task, n))
    console.print(f"sent {sent} messages to {settings.kafka_topic} at {settings.kafka_bootstrap_servers}")
