"""What every command shares: the console, its progress bars, the one way a command fails, and settings
from the environment with the options a user gave on top."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from labelaudit.serving.settings import Settings

console = Console()

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def fail(exc: Exception) -> typer.Exit:
    """Say why on the console; the command exits with status 2."""
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


def settings_with(**given: object) -> Settings:
    """The settings (``LABELAUDIT_*`` environment, then defaults) with each option the user gave (not None) on
    top: a command's ``--store-url`` wins over ``LABELAUDIT_STORE_URL``."""
    from labelaudit.serving.settings import Settings

    return Settings(**{name: value for name, value in given.items() if value is not None})
