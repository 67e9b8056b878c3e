"""The Triton backend against a real KServe-v2 server on loopback: MLServer (from PyPI, in its own
virtualenv made by scripts/peers.sh) serving the same exported ONNX model. Triton itself has no build
that installs here; the protocol is the same."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from labelaudit.ports import free_ports
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get("LABELAUDIT_PEERS_VENV", ROOT / ".venv-peers"))


@pytest.fixture(scope="module")
def kserve_server(model_repo, tmp_path_factory):
    mlserver = PEERS / "bin" / "mlserver"
    assert mlserver.exists(), f"MLServer not found at {mlserver}: run scripts/peers.sh (CI does)"
    root = tmp_path_factory.mktemp("mlserver")
    http_port, grpc_port, metrics_port = free_ports(3)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,
                "load_models_at_startup": True,
            }
        )
    )
    model_dir = root / "labelaudit"
    model_dir.mkdir()
    shutil.copy(Path(__file__).parent / "kserve_peer" / "onnx_runtime.py", model_dir / "onnx_runtime.py")
    onnx_path = model_repo / "labelaudit" / "1" / "model.onnx"
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "labelaudit",
                "implementation": "onnx_runtime.OnnxRuntimeModel",
                "parameters": {"uri": str(onnx_path), "version": "1"},
            }
        )
    )
    log = (root / "mlserver.log").open("w")
    proc = subprocess.Popen([str(mlserver), "start", str(root)], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/v2/models/labelaudit/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"MLServer did not come up:\n{(root / 'mlserver.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"proc": proc, "http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    proc.terminate()
    proc.wait(timeout=20)


def _classify(client: TestClient, images: list[bytes]):
    files = [("files", (f"{i}.png", img, "image/png")) for i, img in enumerate(images)]
    return client.post("/v1/classify", files=files, data={"top_k": "10"})


def _probs(response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [{t["label"]: t["probability"] for t in r["top"]} for r in response.json()["results"]]


@pytest.fixture(scope="module")
def images(tiny_data) -> list[bytes]:
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    return [(tiny_data / r["image"]).read_bytes() for r in rows if r["split"] == "test"][:5]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_backend_answers_like_the_embedded_one(model_repo, kserve_server, images, protocol):
    embedded = Settings(model_repo=model_repo, ort_intra_op_threads=1)
    # MLServer has no binary tensor extension on HTTP (Triton has): plain JSON tensors there.
    remote = Settings(
        model_repo=model_repo,
        backend="triton",
        triton_protocol=protocol,
        triton_url=kserve_server[protocol],
        triton_binary_data=False,
    )
    with TestClient(create_app(embedded)) as a, TestClient(create_app(remote)) as b:
        assert b.get("/readyz").status_code == 200
        local, far = _probs(_classify(a, images)), _probs(_classify(b, images))
    for x, y in zip(local, far, strict=True):
        assert x.keys() == y.keys()
        np.testing.assert_allclose([x[k] for k in x], [y[k] for k in x], atol=1e-5)


def test_triton_down_is_a_clear_503(model_repo, images):
    (dead_port,) = free_ports(1)
    settings = Settings(
        model_repo=model_repo,
        backend="triton",
        triton_protocol="grpc",
        triton_url=f"127.0.0.1:{dead_port}",
        triton_timeout_s=2,
    )
    with TestClient(create_app(settings)) as client:
        response = _classify(client, images[:1])
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "backend_unavailable" and "Traceback" not in response.text
        assert len(response.text) < 1000
        assert client.get("/readyz").status_code == 503
