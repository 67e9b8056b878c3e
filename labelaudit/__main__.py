"""``python -m labelaudit`` is the ``labelaudit`` command."""

from labelaudit.cli import app

app()
