"""``/v1/audit`` with ``http_publish_relabels`` on: a disagreeing verdict reaches the relabel topic of a real broker
before the gateway answers, as the consumer's do; an agreeing one does not (unless its item is in the audit
sample, which asks for a second opinion); with the broker away the answer is a
503 with its reason, the verdict stays recorded, and the client's retry publishes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from labelaudit.ports import free_port
from labelaudit.serving.core.store import open_store
from labelaudit.serving.http.app import create_app
from labelaudit.serving.stream.topics import ensure_topics
from tests.stream.streamkit import Stream


@pytest.fixture
def stream(broker, model_repo, tmp_path) -> Stream:
    """This test's relabel topic on the real broker, made beforehand as a deployment makes it; SQLite store."""
    s = Stream(broker, model_repo, f"sqlite:///{tmp_path / 'audit.db'}", tmp_path)
    ensure_topics(s.settings(), {s.relabel_topic: 1})
    yield s
    s.stop_all()


def _test_image(tiny_data) -> bytes:
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    return (tiny_data / next(r for r in rows if r["split"] == "test")["image"]).read_bytes()


def _labels_by_probability(client, image: bytes) -> list[str]:
    """The model's classes for ``image``, most probable first."""
    files = [("files", ("x.png", image, "image/png"))]
    top = client.post("/v1/classify", files=files, data={"top_k": "1000"}).json()["results"][0]["top"]
    return [t["label"] for t in sorted(top, key=lambda t: -t["probability"])]


def _audit(client, image: bytes, item: str, label: str):
    body = {"item_id": item, "labeler_id": "anna", "label": label, "image": base64.b64encode(image).decode()}
    return client.post("/v1/audit", json=body)


def _publishing(stream, **more):
    """The gateway's settings with relabel publishing on, judged by the per-class thresholds."""
    return stream.settings(
        model_repo=stream.model_repo,
        store_url=stream.store_url,
        http_publish_relabels=True,
        audit_policy="confident-joint-v1",
        **more,
    )


def test_the_gateway_publishes_the_relabel_requests_of_its_disagreements(stream, tiny_data):
    settings = _publishing(stream)
    image = _test_image(tiny_data)
    with TestClient(create_app(settings)) as client:
        labels = _labels_by_probability(client, image)
        agrees = _audit(client, image, "item-agrees", labels[0])
        disagrees = _audit(client, image, "item-disagrees", labels[-1])
    assert agrees.status_code == disagrees.status_code == 200, (agrees.text, disagrees.text)
    assert (agrees.json()["disagrees"], disagrees.json()["disagrees"]) == (False, True)

    [message] = stream.read_topic(stream.relabel_topic)
    request = json.loads(message.value)
    assert message.key == b"item-disagrees"
    assert request["schema"] == "labelaudit.relabel.v1"
    assert request["request_id"] == "item-disagrees/anna/1"
    answer = disagrees.json()
    for field in ("human_label", "predicted_label", "policy", "model_version"):
        assert request[field] == answer[field], field
    np.testing.assert_allclose(request["score"], answer["score"])


def test_the_gateway_asks_a_second_opinion_on_its_audit_sample_even_where_the_model_agrees(stream, tiny_data):
    from labelaudit.serving.core.relabel import in_audit_sample

    settings = _publishing(stream, audit_sample_rate=0.5)
    items = [f"item-{i}" for i in range(8)]
    sampled = [i for i in items if in_audit_sample(i, 0.5)]
    assert 0 < len(sampled) < len(items)
    image = _test_image(tiny_data)
    with TestClient(create_app(settings)) as client:
        top = _labels_by_probability(client, image)[0]
        answers = [_audit(client, image, item, top) for item in items]  # the model agrees with every label
    assert all(a.status_code == 200 and not a.json()["disagrees"] for a in answers), [a.text for a in answers]

    requests = [json.loads(m.value) for m in stream.read_topic(stream.relabel_topic)]
    assert sorted(r["request_id"] for r in requests) == sorted(f"{i}/audit-sample/1" for i in sampled)
    assert {r["reason"] for r in requests} == {"audit_sample"}


def test_an_answer_to_a_request_publishes_nothing_even_where_the_model_disagrees(stream, tiny_data):
    """Every item is in the audit sample and every label one the model finds least likely: the first labels ask
    for a relabel twice each; the reviewer's answers, the same labels naming the requests, ask for nothing."""
    settings = _publishing(stream, audit_sample_rate=1.0)
    image = _test_image(tiny_data)
    with TestClient(create_app(settings)) as client:
        unlikely = _labels_by_probability(client, image)[-1]
        first = [_audit(client, image, f"item-{i}", unlikely) for i in range(3)]
        asked = {json.loads(m.value)["request_id"] for m in stream.read_topic(stream.relabel_topic)}
        body = {"labeler_id": "reviewer", "label": unlikely, "image": base64.b64encode(image).decode()}
        answers = [
            client.post("/v1/audit", json=body | {"item_id": f"item-{i}", "answers": f"item-{i}/anna/1"})
            for i in range(3)
        ]
    assert all(r.json()["disagrees"] for r in first), [r.text for r in first]
    assert asked == {f"item-{i}/{who}/1" for i in range(3) for who in ("anna", "audit-sample")}
    assert [(a.status_code, a.json()["disagrees"]) for a in answers] == [(200, False)] * 3
    assert len(stream.read_topic(stream.relabel_topic)) == 6  # nothing more
    store = open_store(stream.store_url)
    try:
        assert len(store.select("SELECT request_id FROM relabel_answers")) == 3
    finally:
        store.close()


def test_a_broker_that_is_away_is_a_503_and_the_retry_publishes(stream, tiny_data):
    url = stream.store_url
    image = _test_image(tiny_data)
    back = stream.settings(
        model_repo=stream.model_repo, store_url=url, http_publish_relabels=True, audit_policy="confident-joint-v1"
    )
    nothing_listens = f"127.0.0.1:{free_port()}"
    away = back.model_copy(update={"kafka_bootstrap_servers": nothing_listens, "http_relabel_timeout_s": 1.0})
    with TestClient(create_app(away)) as client:
        label = _labels_by_probability(client, image)[-1]
        refused = _audit(client, image, "item-1", label)
    assert refused.status_code == 503 and refused.json()["error"] == "relabel_unavailable", refused.text
    assert "retry-after" in refused.headers
    store = open_store(url)
    try:
        assert store.count() == 1  # the verdict is recorded all the same
    finally:
        store.close()
    assert stream.read_topic(stream.relabel_topic) == []

    with TestClient(create_app(back)) as client:
        retried = _audit(client, image, "item-1", label)
    assert retried.status_code == 200 and retried.json()["recorded"] is False  # stored once, published now
    [message] = stream.read_topic(stream.relabel_topic)
    assert json.loads(message.value)["request_id"] == "item-1/anna/1"
