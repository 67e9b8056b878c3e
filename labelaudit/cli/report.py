"""``labelaudit report``: the nightly label-disagreement report (report.html, report.json, relabel_queue.csv)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labelaudit.cli.common import console, fail, progress_bars, settings_with
from labelaudit.errors import LabelAuditError

if TYPE_CHECKING:
    from labelaudit.schemas.report import LabelerRow, Window


def write_report(
    window: Window,
    *,
    out: Path,
    store_url: str | None = None,
    images: Path | None = None,
    model_repo: Path | None = None,
    model_version: str | None = None,
    top: int = 50,
    nights: int = 14,
    alpha: float = 0.05,
    audit_sample_rate: float | None = None,
) -> None:
    """Write the report for ``window`` with a progress bar and print its headline and where it is.
    ``model_repo``: the model cards, for the classes' names and the labelers' error rates.
    ``audit_sample_rate``: default ``LABELAUDIT_AUDIT_SAMPLE_RATE``, the stream's."""
    from labelaudit.serving.core.model_repo import resolve_model
    from labelaudit.serving.report.job import STEPS, run_report

    settings = settings_with(store_url=store_url, audit_sample_rate=audit_sample_rate)
    classes, source = None, "the classes seen in the store (no --model-repo)"
    if model_repo is not None:
        served = resolve_model(model_repo, settings.model_name, model_version)
        classes, source = served.card.classes, f"the model card of {served.name} version {served.version}"
    with progress_bars() as progress:
        task = progress.add_task(f"report {window.label}", total=STEPS, info="")
        written = run_report(
            settings.store_url.get_secret_value(),
            window,
            out,
            images=images,
            classes=classes,
            class_source=source,
            model_version=model_version,
            model_repo=model_repo,
            nights_back=nights,
            top=top,
            alpha=alpha,
            step=lambda name: progress.update(task, advance=1, info=name),
            audit_sample_rate=settings.audit_sample_rate,
        )
        progress.update(task, completed=STEPS, info="done")
    h, answers = written.report.headline, written.report.relabel_answers
    rate = "-" if h.disagreement.rate is None else f"{h.disagreement.rate:.1%}"
    answered = (
        f" ({answers.answered:,} answered: {answers.precision.rate:.0%} gave the model's label)"
        if answers.answered and answers.precision.rate is not None
        else ""
    )
    console.print(
        f"{h.images_audited:,} images audited, disagreement {rate}, {h.relabel_requests:,} relabel requests"
        f"{answered}, flagged labelers: {', '.join(written.report.flag_test.flagged) or 'none'}"
    )
    _print_labelers(written.report.labelers)
    console.print(f"report: {written.html}\n        {written.json}\n        {written.csv}")
    for note in written.report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


TERMINAL_LABELERS = 20  # the terminal's table stops here (the page has them all)


def _print_labelers(rows: list[LabelerRow]) -> None:
    """The labelers with the most labels: their disagreement, estimated error rate and where it comes from."""
    from rich.table import Table

    from labelaudit.serving.report.render import estimate_source

    if not rows:
        return
    shown = rows[:TERMINAL_LABELERS]
    more = f" ({len(rows) - len(shown):,} more on the page)" if len(rows) > len(shown) else ""
    table = Table(title=f"labelers: disagreement with the model, estimated error rate{more}")
    for col in ("labeler", "labels", "disagrees", "error", "95% CI"):
        table.add_column(col)
    table.add_column("from", no_wrap=True)  # "disagreement" whole: it says the rate counts the model's mistakes
    table.add_column("flag")
    for r in shown:
        e = r.estimated_error
        known = e.rate is not None and e.low is not None and e.high is not None
        table.add_row(
            r.labeler_id or "(no id)",
            f"{r.labels:,}",
            "-" if r.disagreement.rate is None else f"{r.disagreement.rate:.3f}",
            f"{e.rate:.3f}" if known else "-",
            f"{e.low:.3f}-{e.high:.3f}" if known else "-",
            estimate_source(e),
            "yes" if r.flagged else ("" if r.test else "-"),  # "-": not tested (the page says why)
        )
    console.print(table)


def report(
    date: Annotated[
        str | None, typer.Option("--date", help="The night to report, YYYY-MM-DD (UTC); default: yesterday.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Instead of --date: window start, ISO-8601 (UTC if no zone).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="With --since: window end (exclusive).")] = None,
    store_url: Annotated[str | None, typer.Option(help="Audit store URL (LABELAUDIT_STORE_URL).")] = None,
    out: Annotated[Path, typer.Option(help="Folder under which the dated report folder is written.")] = Path("reports"),
    images: Annotated[
        Path | None,
        typer.Option(
            help="Thumbnails of images sent inline: a JSONL manifest (item_id, image) or a folder of <item_id>.png "
            "(an image_uri's file is found from the store)."
        ),
    ] = None,
    model_repo: Annotated[
        Path | None,
        typer.Option(
            help="The model cards: the classes' names (default: those in the store) and the model's "
            "confusion, which turns one-label-per-item disagreement into labelers' error rates."
        ),
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Report this model version (default: the window's latest).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Items in the relabel queue.")] = 50,
    nights: Annotated[int, typer.Option(min=0, help="Earlier nights in the trends.")] = 14,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Family-wise error rate of the labeler flag.")] = 0.05,
    audit_sample_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Labelers' error rates from shared items read only the random audit sample's items, the share the "
            "stream drew (default: LABELAUDIT_AUDIT_SAMPLE_RATE; 0 reads every shared item).",
        ),
    ] = None,
) -> None:
    """Write the label-disagreement report (report.html, report.json, relabel_queue.csv) for one night."""
    from datetime import date as date_type

    from labelaudit.serving.report.job import night_window, span_window

    try:
        if since or until:
            if date or not (since and until):
                raise ValueError("give --date, or both --since and --until")
            window = span_window(datetime.fromisoformat(since), datetime.fromisoformat(until))
        else:
            night = date_type.fromisoformat(date) if date else datetime.now(UTC).date() - timedelta(days=1)
            window = night_window(night)
        write_report(
            window,
            out=out,
            store_url=store_url,
            images=images,
            model_repo=model_repo,
            model_version=model_version,
            top=top,
            nights=nights,
            alpha=alpha,
            audit_sample_rate=audit_sample_rate,
        )
    except (LabelAuditError, ValueError) as exc:
        raise fail(exc) from exc
