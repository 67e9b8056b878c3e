"""The systems the serving benchmark measures: the gateway and the peer servers as processes on loopback, and
the gateway's runtime in process (see bench/serve.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from labelaudit.ports import free_ports

# -- servers on loopback -------------------------------------------------------------------------------

PEERS_DIR = Path(__file__).parent / "peers"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base_url: str
    log: Path
    scratch: list[Path] = field(default_factory=list)  # files of this run only, removed when it stops

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and the workers it spawned
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for path in self.scratch:
            path.unlink(missing_ok=True)


def start_server(name: str, cmd: list[str], *, port: int, ready: str, env: dict, cwd: Path, work: Path) -> Server:
    """Start ``cmd`` in a session of its own and wait until ``ready`` (a path on ``port``) answers 200; its
    output goes to ``work``/<name>.log."""
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=os.environ | env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(server.base_url + ready, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def workers_note() -> str:
    from labelaudit.serving.settings import Settings, usable_cpus

    n = Settings().http_workers or usable_cpus()
    return f"{n} uvicorn worker{'s' if n != 1 else ''}"


def start_gateway(repo: Path, *, work: Path, name: str = "gateway", env: dict[str, str] | None = None) -> Server:
    """``labelaudit serve`` on a free port, with default settings but for ``env`` (e.g.
    ``LABELAUDIT_HTTP_SERVER``). With ``BENCH_GATEWAY_SOURCE`` set to another checkout (a git worktree of an
    earlier commit), the gateway runs that tree's code, for before/after records of a change."""
    (port,) = free_ports(1)
    # A store of this run's own (never the checkout's), new: the audit rows time writes, never repeats. Named by
    # the port so that two runs in one work folder keep apart; removed when the gateway stops.
    store = work / f"gateway-audit-{port}.db"
    scratch = [store, *(store.with_name(store.name + tail) for tail in ("-wal", "-shm", "-journal"))]
    for path in scratch:
        path.unlink(missing_ok=True)
    env = {"LABELAUDIT_STORE_URL": f"sqlite:///{store}", **(env or {})}
    if source := os.environ.get("BENCH_GATEWAY_SOURCE"):
        env["PYTHONPATH"] = source
    cmd = [sys.executable, "-m", "labelaudit.cli", "serve", "--model-repo", str(repo), "--port", str(port)]
    server = start_server(name, cmd, port=port, ready="/readyz", env=env, cwd=work, work=work)
    server.scratch = scratch
    return server


def start_mlserver(venv: Path, onnx_path: Path, *, workers: int, work: Path) -> Server:
    root = work / "mlserver"
    shutil.rmtree(root, ignore_errors=True)
    (root / "labelaudit").mkdir(parents=True)
    http_port, grpc_port, metrics_port = free_ports(3)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": workers,
                "load_models_at_startup": True,
            }
        )
    )
    (root / "labelaudit" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "labelaudit",
                "implementation": "mlserver_runtime.DecodeOnnxModel",
                "max_batch_size": 64,
                "max_batch_time": 0.002,
                "parameters": {"uri": str(onnx_path), "version": "1"},
            }
        )
    )
    cmd = [str(venv / "bin" / "mlserver"), "start", str(root)]
    return start_server(
        "mlserver",
        cmd,
        port=http_port,
        ready="/v2/models/labelaudit/ready",
        env={"PYTHONPATH": str(PEERS_DIR)},
        cwd=root,
        work=work,
    )


def start_bentoml(venv: Path, model_dir: Path, *, workers: int, work: Path) -> Server:
    (port,) = free_ports(1)
    env = {
        "BENCH_MODEL_DIR": str(model_dir),
        "BENCH_WORKERS": str(workers),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(work / "bentoml_home"),
    }
    cmd = [
        str(venv / "bin" / "bentoml"),
        "serve",
        "bentoml_service:Classifier",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start_server("bentoml", cmd, port=port, ready="/readyz", env=env, cwd=PEERS_DIR, work=work)


# -- in process ----------------------------------------------------------------------------------------


class BatchCounter:
    """A MicroBatcher observer: images and batches released (for the mean batch size of a point)."""

    def __init__(self) -> None:
        self.images = self.batches = 0

    def batch_released(self, *, images: int, **_) -> None:
        self.images += images
        self.batches += 1


@asynccontextmanager
async def in_process(repo: Path):
    """The gateway's runtime as create_app opens it (same settings, same batching), minus HTTP."""
    from labelaudit.serving.core.runtime import open_runtime
    from labelaudit.serving.settings import Settings

    settings = Settings(model_repo=repo, store_url=f"sqlite:///{tempfile.mkdtemp()}/unused.db")
    counter = BatchCounter()
    async with open_runtime(settings, batching="dynamic", observer=counter) as runtime:
        yield runtime.core, runtime.batcher, counter
