"""``labelaudit serve``: the HTTP gateway (start-up in ``serving/http/server.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import typer

from labelaudit.cli.common import LOG_FORMAT, fail, settings_with
from labelaudit.errors import LabelAuditError

HttpServer = Literal["uvicorn", "granian"]  # Settings.http_server's choices


def serve(
    model_repo: Annotated[Path | None, typer.Option(help="Triton model repository (LABELAUDIT_MODEL_REPO).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8080,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Gateway processes sharing the port; 0: one per usable CPU (LABELAUDIT_HTTP_WORKERS)."
        ),
    ] = None,
    server: Annotated[
        HttpServer | None,
        typer.Option(help="The HTTP server that runs the gateway (LABELAUDIT_HTTP_SERVER)."),
    ] = None,
) -> None:
    """Start the HTTP gateway (uvicorn or granian) on embedded defaults: onnxruntime in process."""
    from labelaudit.serving.http.server import run_gateway

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        settings = settings_with(model_repo=model_repo, http_workers=workers, http_server=server)
        run_gateway(settings, host=host, port=port)
    except (LabelAuditError, NotADirectoryError) as exc:
        raise fail(exc) from exc
