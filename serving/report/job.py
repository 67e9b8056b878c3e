"""The nightly job behind ``labelaudit report``: pick the window, aggregate in the store, build the report,
and write ``<out>/<window>/report.html``, ``report.json`` and ``relabel_queue.csv``."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from labelaudit.deconvolve import ModelConfusion
from labelaudit.errors import LabelAuditError
from labelaudit.schemas.report import QueueItem, Report, Window
from labelaudit.serving.core.model_repo import ModelNotFound, resolve_model
from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.build import build_report
from labelaudit.serving.report.render import render_html
from labelaudit.serving.report.thumbnails import load_thumbnails

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula
STEPS = 11  # progress ticks: the build's eight steps (SQL), thumbnails, figures and page, files
# relabel_queue.csv: the queue's fields, rank first (the page's thumbnail flag is not a column).
QUEUE_COLUMNS = ("rank", *(name for name in QueueItem.model_fields if name not in ("rank", "thumbnail")))


def spreadsheet_cell(value: object) -> object:
    """``value`` for a CSV that people open in a spreadsheet: a string that starts like a formula gets a
    leading ``'`` so it stays text (OWASP's CSV injection rule; an item id like ``=HYPERLINK(...)`` would
    otherwise run). Numbers are written as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class ReportError(LabelAuditError):
    reason = "report_failed"


@dataclass(frozen=True)
class Written:
    folder: Path
    html: Path
    json: Path
    csv: Path
    report: Report


def night_window(night: date) -> Window:
    """The UTC day ``night`` (00:00 inclusive to the next 00:00 exclusive), folder ``YYYY-MM-DD``."""
    since = datetime(night.year, night.month, night.day, tzinfo=UTC)
    return Window(since=since, until=since + timedelta(days=1), label=night.isoformat())


def span_window(since: datetime, until: datetime) -> Window:
    """Any span; a time without a zone is UTC. Folder ``<since>--<until>`` (minutes, UTC)."""
    since, until = (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC) for t in (since, until))
    if until <= since:
        raise ReportError(f"--until ({until:%Y-%m-%d %H:%M}) must be after --since ({since:%Y-%m-%d %H:%M})")
    return Window(since=since, until=until, label=f"{since:%Y-%m-%dT%H%M}--{until:%Y-%m-%dT%H%M}")


def card_confusion(repo: Path | None) -> Callable[[str, str], ModelConfusion | None]:
    """``(name, version) ->`` the confusion in ``<repo>/<name>/<version>/model_card.json``; None without a
    repository, a card, or a confusion in it (cards exported before it was recorded)."""

    def lookup(name: str, version: str) -> ModelConfusion | None:
        if repo is None:
            return None
        try:
            card = resolve_model(repo, name, version).card
        except ModelNotFound:
            return None
        if card.confusion is None:
            return None
        return ModelConfusion(card.classes, np.asarray(card.confusion, dtype=float), card.thresholds_source)

    return lookup


def store_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:///") else "postgresql"


def check_sources(store_url: str, images: Path | None) -> None:
    """``ReportError`` for a SQLite store that is not there (opening one would create it empty) or an
    ``--images`` that names nothing."""
    if store_url.startswith("sqlite:///") and not Path(store_url.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no audit store at {store_url.removeprefix('sqlite:///')}")
    if images is not None and not images.exists():
        raise ReportError(f"--images {images}: no such manifest or folder")


def run_report(
    store_url: str,
    window: Window,
    out: Path,
    *,
    images: Path | None = None,
    classes: list[str] | None = None,
    class_source: str = "the classes seen in the store",
    model_version: str | None = None,
    model_repo: Path | None = None,
    nights_back: int = 14,
    top: int = 50,
    alpha: float = 0.05,
    step: Callable[[str], None] = lambda name: None,
    audit_sample_rate: float = 0.0,
) -> Written:
    """Aggregate the store for ``window`` and write the three files; returns where they are. ``model_repo``:
    where the reported model's card is, for its confusion (labelers' error rates from one label per item).
    ``audit_sample_rate``: labelers' rates from shared items read the random audit sample's items only."""
    check_sources(store_url, images)
    store = open_store(store_url)
    try:
        report = build_report(
            store,
            window=window,
            store_kind=store_kind(store_url),
            classes=classes,
            class_source=class_source,
            model_version=model_version,
            nights_back=nights_back,
            top=top,
            alpha=alpha,
            model_confusion=card_confusion(model_repo),
            step=step,
            audit_sample_rate=audit_sample_rate,
        )
        step("thumbnails")
        thumbs = load_thumbnails(images, [q.item_id for q in report.relabel_queue], store)
    finally:
        store.close()
    report.relabel_queue = [q.model_copy(update={"thumbnail": q.item_id in thumbs}) for q in report.relabel_queue]
    step("figures and page")
    html = render_html(report, thumbs)
    step("files")
    return _write(out / window.label, report, html)


def _write(folder: Path, report: Report, html: str) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "report.html", folder / "report.json", folder / "relabel_queue.csv"
    paths[0].write_text(html, encoding="utf-8")
    paths[1].write_text(report.model_dump_json(indent=2, by_alias=True) + "\n", encoding="utf-8")
    with paths[2].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*QUEUE_COLUMNS, "model_name", "model_version"])
        # No model only for an empty window, whose queue is empty.
        model = [report.model.model_name, report.model.model_version] if report.model is not None else ["", ""]
        for q in report.relabel_queue:
            cells = [getattr(q, c) for c in QUEUE_COLUMNS] + model
            writer.writerow([spreadsheet_cell(cell) for cell in cells])
    return Written(folder, *paths, report)
