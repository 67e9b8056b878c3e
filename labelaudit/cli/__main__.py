"""``python -m labelaudit.cli`` is the ``labelaudit`` command."""

from labelaudit.cli import app

app()
