"""``labelaudit harvest``: the next training manifest from the audit store's labels and relabel answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labelaudit.cli.common import console, fail, progress_bars, settings_with
from labelaudit.errors import LabelAuditError

if TYPE_CHECKING:
    from labelaudit.serving.report.harvest import CheckedAs

STEPS = ("current manifest", "store", "images", "merge", "write", "check")


def write_next_manifest(
    out: Path,
    *,
    store_url: str | None,
    images: Path | None,
    manifest: Path | None,
    checked_as: CheckedAs = "trusted",
) -> None:
    """Write the next training manifest with a progress bar and print what it holds and what it left out."""
    from labelaudit.serving.core.store import open_store
    from labelaudit.serving.report.harvest import harvest
    from labelaudit.serving.report.job import check_sources

    settings = settings_with(store_url=store_url)
    check_sources(settings.store_url.get_secret_value(), images)
    store = open_store(settings.store_url.get_secret_value())
    try:
        with progress_bars() as progress:
            task = progress.add_task("harvest", total=len(STEPS), info="")
            done = harvest(
                store,
                out,
                images=images,
                manifest=manifest,
                checked_as=checked_as,
                step=lambda name: progress.update(task, advance=1, info=name),
            )
            progress.update(task, completed=len(STEPS), info="done")
    finally:
        store.close()
    console.print(done.summary())


def harvest(
    out: Annotated[Path, typer.Option(help="The next training manifest to write (JSONL).")],
    images: Annotated[
        Path | None,
        typer.Option(
            help="Where the images sent inline are (the store keeps the file an image_uri named, no image): a JSONL "
            "manifest (item_id, image) or a folder of <item_id>.png; new items whose image neither gives are left out."
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="The current training manifest: its rows first, its classes for the labels."),
    ] = None,
    store_url: Annotated[str | None, typer.Option(help="Audit store URL (LABELAUDIT_STORE_URL).")] = None,
    checked_as: Annotated[
        str,
        typer.Option(
            help="trusted: an audit-sample answer becomes the item's checked row (the trusted set grows); "
            "label: an ordinary label, for reviewers you would not take as the truth."
        ),
    ] = "trusted",
) -> None:
    """Write the next training manifest: the current one, plus every label and relabel answer the stream brought."""
    from labelaudit.serving.report.harvest import CHECKED_AS

    try:
        if checked_as not in CHECKED_AS:
            raise ValueError(f"--checked-as {checked_as!r}: one of {', '.join(CHECKED_AS)}")
        write_next_manifest(
            out,
            store_url=store_url,
            images=images,
            manifest=manifest,
            checked_as=checked_as,  # type: ignore[arg-type]  # checked above
        )
    except (LabelAuditError, ValueError) as exc:
        raise fail(exc) from exc
