"""POST /v1/audit through the real app and model, the SQLite store's guarantees, and the policy's
verdicts recorded as they were answered."""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient

from labelaudit.schemas.audit import AuditRecord
from labelaudit.serving.core.store import SqliteStore, open_store
from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "audit.db"


@pytest.fixture
def client(model_repo, store_path):
    settings = Settings(model_repo=model_repo, ort_intra_op_threads=1, store_url=f"sqlite:///{store_path}")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def labeled(tiny_data) -> list[dict]:
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train" and not r["trusted"]][:12]
    for r in train:
        r["bytes"] = (tiny_data / r["image"]).read_bytes()
    return train


def _json(row: dict, **override) -> dict:
    body = {
        "item_id": row["item_id"],
        "labeler_id": row["labeler_id"],
        "label": row["label"],
        "image": base64.b64encode(row["bytes"]).decode(),
    }
    return body | override


def test_audit_records_the_verdict_once_per_item_labeler_and_model_version(client, labeled, store_path):
    first = client.post("/v1/audit", json=_json(labeled[0]))
    assert first.status_code == 200, first.text
    verdict = first.json()
    assert verdict["recorded"] is True and verdict["policy"] == "labeler-posterior-v1"  # auto: the card has matrices
    assert verdict["human_label"] == labeled[0]["label"] and 0 <= verdict["score"] <= 1
    again = client.post("/v1/audit", json=_json(labeled[0])).json()
    assert again["recorded"] is False and again["predicted_label"] == verdict["predicted_label"]
    other_labeler = client.post("/v1/audit", json=_json(labeled[0], labeler_id="someone-else")).json()
    assert other_labeler["recorded"] is True
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT item_id, labeler_id, disagrees, source FROM audit_records").fetchall()
    assert sorted(rows) == sorted(
        [
            (labeled[0]["item_id"], labeled[0]["labeler_id"], int(verdict["disagrees"]), "http"),
            (labeled[0]["item_id"], "someone-else", int(other_labeler["disagrees"]), "http"),
        ]
    )


def test_multipart_audit_and_the_stored_verdict_match_the_answer(client, labeled, store_path):
    answers = {}
    for row in labeled[1:8]:
        files = {"image": ("x.png", row["bytes"], "image/png")}
        data = {"item_id": row["item_id"], "labeler_id": row["labeler_id"], "label": row["label"]}
        response = client.post("/v1/audit", files=files, data=data)
        assert response.status_code == 200, response.text
        answers[row["item_id"]] = response.json()
    with sqlite3.connect(store_path) as db:
        stored = {
            r[0]: r[1:] for r in db.execute("SELECT item_id, predicted_label, disagrees, score FROM audit_records")
        }
    for item, a in answers.items():
        assert stored[item] == (a["predicted_label"], int(a["disagrees"]), pytest.approx(a["score"]))


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"json": {"item_id": "x", "labeler_id": "l", "label": "not-a-class", "image": "aGk="}}, 422, "unknown_label"),
        ({"json": {"item_id": "x", "labeler_id": "l", "label": "coat"}}, 422, "invalid_request"),
        ({"json": {"item_id": "x", "labeler_id": "l", "label": "coat", "image": "***"}}, 422, "bad_base64"),
        ({"json": {"item_id": "x", "labeler_id": "l", "label": "coat", "image": "aGVsbG8="}}, 400, "not_an_image"),
        ({"data": {"item_id": "x", "label": "coat"}, "files": {"image": ("a", b"x")}}, 422, "invalid_request"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        (
            {"json": {"item_id": "x", "labeler_id": "l", "label": "coat", "image": "aGk=", "answers": "y/l/1"}},
            422,
            "invalid_request",
        ),
        (
            {
                "data": {"item_id": "x", "labeler_id": "l", "label": "coat", "answers": "x/\x1b/1"},
                "files": {"image": ("a", b"x")},
            },
            422,
            "invalid_request",
        ),
    ],
    ids=[
        "unknown-label",
        "no-image",
        "bad-base64",
        "not-an-image",
        "missing-field",
        "text-plain",
        "answers-another-item",
        "answers-control-character",
    ],
)
def test_bad_audit_requests_are_4xx_and_write_nothing(client, store_path, kwargs, status, reason):
    response = client.post("/v1/audit", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason
    assert SqliteStore(store_path).count() == 0


def test_a_relabel_answer_is_audited_kept_as_the_answer_and_never_flagged(client, labeled, store_path):
    """Two reviewers answer a request about an item with the class the model finds least likely: as a plain
    label that is a confident disagreement; as an answer it is a verdict like any other, kept in relabel_answers
    with its request's reason, and never itself a relabel request."""
    row = labeled[0]
    ranked = client.post("/v1/classify", json={"images": [{"data": _json(row)["image"]}], "top_k": 100}).json()
    unlikely = ranked["results"][0]["top"][-1]["label"]
    plain = client.post("/v1/audit", json=_json(row, label=unlikely)).json()
    assert plain["disagrees"] is True  # the control: this label is flagged when it answers nothing
    request_id = f"{row['item_id']}/{row['labeler_id']}/{plain['model_version']}"
    answers = {}
    for labeler, form in (("reviewer", "json"), ("second-reviewer", "multipart")):
        if form == "json":
            response = client.post("/v1/audit", json=_json(row, labeler_id=labeler, label=unlikely, answers=request_id))
        else:
            data = {"item_id": row["item_id"], "labeler_id": labeler, "label": unlikely, "answers": request_id}
            response = client.post("/v1/audit", data=data, files={"image": ("x.png", row["bytes"], "image/png")})
        assert response.status_code == 200, response.text
        answers[labeler] = response.json()
    again = client.post("/v1/audit", json=_json(row, labeler_id="reviewer", label=unlikely, answers=request_id))
    assert again.json()["recorded"] is False  # a redelivered answer: stored once
    assert [a["disagrees"] for a in answers.values()] == [False, False]
    with sqlite3.connect(store_path) as db:
        stored = db.execute("SELECT request_id, reason, item_id, labeler_id, label FROM relabel_answers").fetchall()
        flags = dict(db.execute("SELECT labeler_id, disagrees FROM audit_records").fetchall())
    assert sorted(stored) == [
        (request_id, "disagreement", row["item_id"], labeler, unlikely) for labeler in ("reviewer", "second-reviewer")
    ]
    assert flags == {row["labeler_id"]: 1, "reviewer": 0, "second-reviewer": 0}


def _record(item: str, labeler: str = "l", version: str = "1") -> AuditRecord:
    return AuditRecord(
        item_id=item,
        labeler_id=labeler,
        human_label="coat",
        predicted_label="shirt",
        label_probability=0.1,
        predicted_probability=0.8,
        score=0.7,
        disagrees=True,
        policy="p",
        probabilities=[0.1, 0.8, 0.1],
        model_name="m",
        model_version=version,
        source="kafka",
        topic="images",
        partition=0,
        offset=1,
        created_at=datetime.now(UTC),
    )


def test_sqlite_store_is_wal_durable_and_unique(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert store.write([_record("a"), _record("b"), _record("a")]) == [True, True, False]
    assert store.write([_record("a"), _record("a", version="2"), _record("a", labeler="k")]) == [False, True, True]
    assert store.count() == 4
    store.close()
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://x")


def test_the_labeler_posterior_policy_judges_with_the_labelers_matrix_from_the_card(model_repo, labeled, tmp_path):
    """``audit_policy=labeler-posterior-v1``: each stored verdict is the posterior of its label under the card's
    matrix of that labeler, recomputed here from the record's own probabilities."""
    from labelaudit.serving.core.model_repo import resolve_model
    from labelaudit.serving.core.policy import LabelerPosteriorPolicy

    card = resolve_model(model_repo, "labelaudit").card
    policy = LabelerPosteriorPolicy.from_card(card)
    path = tmp_path / "a.db"
    settings = Settings(
        model_repo=model_repo,
        ort_intra_op_threads=1,
        store_url=f"sqlite:///{path}",
        audit_policy="labeler-posterior-v1",
    )
    with TestClient(create_app(settings)) as c:
        answers = [c.post("/v1/audit", json=_json(row)) for row in labeled]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {a.json()["policy"] for a in answers} == {"labeler-posterior-v1"}
    with sqlite3.connect(path) as db:
        records = db.execute(
            "SELECT labeler_id, human_label, probabilities, disagrees, score FROM audit_records"
        ).fetchall()
    assert len(records) == len(labeled)
    for labeler, human, probabilities, disagrees, score in records:
        p = np.array([json.loads(probabilities)])
        flags, scores, _ = policy.judge_batch(p, np.array([card.classes.index(human)]), [labeler])
        assert bool(disagrees) == bool(flags[0]) and score == pytest.approx(scores[0], abs=1e-4)


def test_the_labeler_posterior_policy_refuses_a_card_without_labeler_matrices(model_repo):
    from labelaudit.serving.core.model_repo import resolve_model
    from labelaudit.serving.core.policy import DisagreementPolicy, policy_for

    card = resolve_model(model_repo, "labelaudit").card
    assert isinstance(policy_for(card, "confident-joint-v1"), DisagreementPolicy)
    bare = card.model_copy(update={"labeler_transition_matrices": {}})
    assert isinstance(policy_for(bare, "auto"), DisagreementPolicy)  # no labeler ids in training: the other one
    with pytest.raises(ValueError, match="use confident-joint-v1"):
        policy_for(bare, "labeler-posterior-v1")
