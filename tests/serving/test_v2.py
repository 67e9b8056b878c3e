"""The Open Inference Protocol on the gateway, driven by tritonclient's own HTTP client against a real
uvicorn server on loopback."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from labelaudit.imaging.preprocess import load_image, preprocess
from labelaudit.serving.core.model_repo import resolve_model


@pytest.fixture(scope="module")
def images(tiny_data):
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    return [(tiny_data / r["image"]) for r in rows if r["split"] == "test"][:6]


def test_server_and_model_metadata_and_readiness(gateway):
    client = triton.InferenceServerClient(gateway)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("labelaudit")
    meta = client.get_model_metadata("labelaudit")
    assert {i["name"] for i in meta["inputs"]} == {"image_bytes", "images"}
    assert meta["outputs"][0]["shape"] == [-1, 10]
    assert client.get_server_metadata()["name"] == "labelaudit"


def test_tritonclient_sends_raw_image_bytes_and_gets_the_in_process_answer(gateway, images, model_repo):
    client = triton.InferenceServerClient(gateway)
    encoded = np.array([p.read_bytes() for p in images], dtype=np.object_)
    inp = triton.InferInput("image_bytes", [len(encoded)], "BYTES")
    inp.set_data_from_numpy(encoded, binary_data=True)
    result = client.infer("labelaudit", [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    probs = result.as_numpy("probabilities")

    model = resolve_model(model_repo, "labelaudit")
    import onnxruntime as ort

    x = np.stack([preprocess(load_image(str(p)), model.card.preprocess) for p in images])
    expected = ort.InferenceSession(str(model.onnx_path)).run(["probabilities"], {"images": x})[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_ready_tensors(gateway, images, model_repo, binary):
    model = resolve_model(model_repo, "labelaudit")
    x = np.stack([preprocess(load_image(str(p)), model.card.preprocess) for p in images]).astype(np.float32)
    client = triton.InferenceServerClient(gateway)
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("probabilities", binary_data=binary)
    probs = client.infer("labelaudit", [inp], outputs=[out], request_id="r1").as_numpy("probabilities")
    assert probs.shape == (len(images), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_bad_v2_requests_are_4xx_with_a_reason(gateway):
    client = triton.InferenceServerClient(gateway)
    bad = triton.InferInput("image_bytes", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="image 0"):
        client.infer("labelaudit", [bad])
    with pytest.raises(InferenceServerException):
        client.infer("other-model", [bad])
    url = f"http://{gateway}/v2/models/labelaudit/infer"
    for body in (
        b"{",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}',
        b"[]",
        b'"inputs"',
        b'{"inputs": [{"name": "images", "parameters": []}]}',
        b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": "abc"}], "parameters": 5}',
        b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": ["p"]}',
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [[1], "a"]}]}',
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28], "data": []}]}',
    ):
        r = httpx.post(url, content=body)
        assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
