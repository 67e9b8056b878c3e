"""The one entry point, ``labelaudit``, a module per job; each command parses its options and calls library code.

- ``data``: task A and task B from Debian's Fashion-MNIST, with simulated noisy labelers (``data.py``)
- ``train``: fine-tune classifier A on task B with a noise-robust method; ``export``: ONNX, the Triton
  repository and the model card (``train.py``)
- ``serve``: the HTTP gateway (``serve.py``, start-up in ``serving/http/server.py``)
- ``consume``: the Kafka consumer that audits the stream; ``produce``: a manifest into the images topic (``stream.py``)
- ``report``: the nightly label-disagreement report (``report.py``)
- ``harvest``: the next training manifest from the store's labels and relabel answers (``harvest.py``)
- ``demo``: all of it on real data, with a real broker (``demo.py``)

The top floor: nothing imports it (an import-linter contract, pyproject.toml).
"""

from __future__ import annotations

import typer

from labelaudit.cli import data, demo, harvest, report, serve, stream, train

app = typer.Typer(
    help="Serve an image classifier and audit the noisy labels that stream in with it.", no_args_is_help=True
)
for command in (
    data.data,
    train.train,
    train.export,
    serve.serve,
    stream.consume,
    stream.produce,
    report.report,
    harvest.harvest,
    demo.demo,
):
    app.command()(command)
