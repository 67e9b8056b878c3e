"""The model repository lookup, the settings class and the in-process onnxruntime backend."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnxruntime as ort
import pytest

from labelaudit.imaging.preprocess import load_image, preprocess
from labelaudit.serving.core.backends import OnnxRuntimeBackend
from labelaudit.serving.core.model_repo import ModelNotFound, resolve_model
from labelaudit.serving.settings import Settings


def test_resolve_picks_the_highest_version_and_reads_the_card(model_repo, tmp_path):
    model = resolve_model(model_repo, "labelaudit")
    assert model.version == "1" and model.onnx_path.is_file()
    assert model.card.classes[0] == "t-shirt_top" and model.card.preprocess.height == 28


def test_resolve_says_what_is_missing(model_repo, tmp_path):
    with pytest.raises(ModelNotFound, match="no model 'nope'"):
        resolve_model(model_repo, "nope")
    with pytest.raises(ModelNotFound, match="model.onnx is missing"):
        (tmp_path / "m" / "3").mkdir(parents=True)
        resolve_model(tmp_path, "m")
    assert ModelNotFound("x").status_code == 503


def test_settings_come_from_prefixed_environment_and_hide_secrets(monkeypatch):
    monkeypatch.setenv("LABELAUDIT_BACKEND", "triton")
    monkeypatch.setenv("LABELAUDIT_API_KEY", "s3cret")
    monkeypatch.setenv("LABELAUDIT_ORT_INTRA_OP_THREADS", "2")
    settings = Settings()
    assert settings.backend == "triton" and settings.ort_intra_op_threads == 2
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in json.dumps(settings.redacted(), default=str)
    monkeypatch.setenv("LABELAUDIT_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="backend"):
        Settings()


def test_onnxruntime_backend_classifies_real_images_like_the_plain_session(model_repo, tiny_data):
    model = resolve_model(model_repo, "labelaudit")
    backend = OnnxRuntimeBackend(model, Settings(ort_intra_op_threads=1))
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"][:64]
    x = np.stack([preprocess(load_image(str(tiny_data / r["image"])), model.card.preprocess) for r in test])

    probs = asyncio.run(backend.infer(x))

    plain = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(probs, plain.run(["probabilities"], {"images": x})[0], atol=1e-6)
    assert probs.shape == (64, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert "CPUExecutionProvider" in backend.providers
    assert asyncio.run(backend.ready())
