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
    from pydantic import ValidationError

    from labelaudit.serving.settings import Settings

    try:
        return Settings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:  # a bad LABELAUDIT_* value: say which and why, not a traceback
        secret = {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}

        def shown(error: dict) -> str:
            name = str(error["loc"][0]) if error["loc"] else ""
            value = "(secret)" if name in secret else repr(error.get("input"))
            return f"LABELAUDIT_{'_'.join(map(str, error['loc'])).upper()}={value}: {error['msg']}"

        raise fail(ValueError(f"bad setting: {'; '.join(map(shown, exc.errors()))}")) from None
