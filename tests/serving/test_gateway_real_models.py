"""The gateway serves a torchvision ResNet-18 fine-tuned from a user's classifier A (the ``resnet_repo``
fixture): real uvicorn, real requests, answers equal to the model's own on the same images."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from labelaudit.imaging.manifest import read_manifest, row_pixels
from labelaudit.imaging.preprocess import normalize
from labelaudit.schemas.model_card import ModelCard
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings

pytestmark = pytest.mark.slow


def test_the_gateway_serves_a_fine_tuned_resnet18_as_the_model_itself_answers(resnet_repo, tiny_data):
    from fastapi.testclient import TestClient

    card = ModelCard.model_validate_json((resnet_repo / "labelaudit" / "model_card.json").read_text())
    manifest = read_manifest(tiny_data / "task_b.jsonl")
    rows = np.flatnonzero(manifest.mask(split="test"))[:6]
    files = [("files", (f"{i}.png", manifest.image_path(int(r)).read_bytes(), "image/png")) for i, r in enumerate(rows)]
    session = ort.InferenceSession(str(resnet_repo / "labelaudit" / "1" / "model.onnx"))
    x = normalize(np.stack([row_pixels(manifest, int(r), card.preprocess) for r in rows]), card.preprocess)
    expected = session.run(["probabilities"], {"images": x})[0]

    with TestClient(create_app(Settings(model_repo=resnet_repo, ort_intra_op_threads=1))) as client:
        model = client.get("/v1/models").json()
        answer = client.post("/v1/classify", files=files, data={"top_k": "1"})

    assert model["architecture"] == "torchvision:resnet18" and model["preprocess"]["channels"] == 3
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    got = [r["top"][0] for r in results]
    assert [g["label"] for g in got] == [card.classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([g["probability"] for g in got], expected.max(1), atol=1e-5)
    assert answer.json()["model_name"] == "labelaudit"
