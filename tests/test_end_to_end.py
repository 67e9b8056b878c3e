"""The whole offline job through the real CLI on real Fashion-MNIST files: data -> classifier A ->
FasTEN on noisy task B -> export -> onnxruntime on image files, preprocessed by the serving code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from labelaudit.imaging.manifest import read_manifest
from labelaudit.imaging.preprocess import load_image, preprocess
from labelaudit.schemas.model_card import ModelCard
from labelaudit.serving.core.relabel import in_audit_sample
from labelaudit.training.methods.auto import CHOICES

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labelaudit.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={
            "COLUMNS": "200",
            "PATH": "/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
        },  # HOME: the broker jars
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    ok(cli("data", "--out", str(data), "--size", "tiny", "--noise", "0.4"))
    ok(
        cli(
            "train",
            "--manifest",
            str(data / "task_a.jsonl"),
            "--init",
            "scratch",
            "--method",
            "ce",
            "--epochs",
            "2",
            "--out",
            str(root / "a"),
            "--device",
            "cpu",
        )
    )
    ok(
        cli(
            "train",
            "--manifest",
            str(data / "task_b.jsonl"),
            "--init",
            str(root / "a" / "checkpoint.pt"),
            "--method",
            "fasten",
            "--epochs",
            "2",
            "--out",
            str(root / "b"),
            "--device",
            "cpu",
        )
    )
    ok(cli("export", "--checkpoint", str(root / "b" / "checkpoint.pt"), "--repo", str(root / "repo")))
    return {"root": root, "data": data, "repo": root / "repo"}


def test_export_writes_a_triton_repository_and_card(pipeline):
    model_dir = pipeline["repo"] / "labelaudit"
    assert (model_dir / "1" / "model.onnx").is_file()
    assert 'platform: "onnxruntime_onnx"' in (model_dir / "config.pbtxt").read_text()
    assert (model_dir / "labels.txt").read_text().split() == (pipeline["data"] / "classes.txt").read_text().split()
    card = ModelCard.model_validate_json((model_dir / "1" / "model_card.json").read_text())
    assert card.method == "fasten" and card.parity is not None
    assert card.parity.images >= 1000 and card.parity.argmax_agreement == 1.0
    assert len(card.metrics.history) == 2 and card.metrics.history[-1].transition_matrix is not None
    assert {"labeler-1", "labeler-5", "qa"} <= set(card.labeler_transition_matrices)


def test_onnx_model_classifies_image_files_with_the_cards_preprocessing(pipeline):
    model_dir = pipeline["repo"] / "labelaudit"
    card = ModelCard.model_validate_json((model_dir / "1" / "model_card.json").read_text())
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = [json.loads(line) for line in (pipeline["data"] / "task_b.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"][:300]
    x = np.stack([preprocess(load_image(str(pipeline["data"] / r["image"])), card.preprocess) for r in test])
    probs, _ = session.run(None, {"images": x})
    assert probs.shape == (len(test), len(card.classes))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    truth = np.array([card.classes.index(r["label"]) for r in test])
    accuracy = float((probs.argmax(1) == truth).mean())
    assert accuracy > 0.4, f"test accuracy {accuracy:.3f} is barely above chance (0.1)"


def test_train_reports_a_bad_manifest_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"item_id": "x", "image": "nope.png", "label": "a", "labeler_id": "l"}\n')
    result = cli("train", "--manifest", str(tmp_path / "m.jsonl"), "--method", "ce", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "m.jsonl:1" in result.stdout and "nope.png" in result.stdout


def test_export_refuses_an_existing_version(pipeline):
    result = cli(
        "export", "--checkpoint", str(pipeline["root"] / "b" / "checkpoint.pt"), "--repo", str(pipeline["repo"])
    )
    assert result.returncode == 2 and "already exists" in result.stdout


def test_demo_runs_the_whole_job_and_prints_where_everything_is(tmp_path):
    """The README's first command at tiny size: offline training and export, then the gateway and the
    stream through a real broker into the store."""
    import sqlite3

    result = ok(cli("demo", "--out", str(tmp_path / "demo"), "--size", "tiny", "--audit-sample-rate", "0.2"))
    assert (tmp_path / "demo" / "model_repository" / "labelaudit" / "1" / "model.onnx").is_file()
    for text in (
        "classifier A, untouched",
        "auto: ",
        f"{CHOICES[(True, True)].method} + ",  # the method auto chose on the recipe's data, then its student round
        "student round from classifier A",
        "labeler-5",
        "Triton model repository",
        "the gateway at http://127.0.0.1",
        "relabel requests:",
        "truly wrong labels",
        "report.html",
    ):
        assert text in result.stdout, result.stdout
    rows = [json.loads(line) for line in (tmp_path / "demo/data/task_b.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    with sqlite3.connect(tmp_path / "demo" / "audit.db") as conn:
        by_source = dict(conn.execute("SELECT source, COUNT(*) FROM audit_records GROUP BY source").fetchall())
        answers = conn.execute("SELECT reason, labeler_id, COUNT(*) FROM relabel_answers GROUP BY 1, 2").fetchall()
    # the reviewer answered the whole audit sample (a fifth of the items, drawn by id) and the QA budget's top
    # disagreement requests about other items (fewer where there are fewer)
    by_reason = {reason: (reviewer, n) for reason, reviewer, n in answers}
    (reviewer, sampled), (reviewer_too, answered) = by_reason["audit_sample"], by_reason["disagreement"]
    assert reviewer == reviewer_too == "reviewer" and 0 < answered <= 300
    assert sampled == sum(in_audit_sample(r["item_id"], 0.2) for r in train_rows)
    assert by_source == {"kafka": len(train_rows) + sampled + answered, "http": 3}
    assert f"streamed {len(train_rows):,} labeled images" in result.stdout
    assert f"answered the {sampled:,} audit-sample requests" in result.stdout
    assert f"a reviewer answered the {answered:,} highest-scoring relabel requests" in result.stdout
    assert f"({answered:,} answered: " in result.stdout  # the report's line
    [html] = (tmp_path / "demo" / "reports").glob("*/report.html")
    page = html.read_text()
    assert "labeler-5" in page and f"{answered:,} answers to disagreement requests" in page
    # the labelers with enough answered labels are read from the answers, on the page and on the terminal
    report = json.loads((html.parent / "report.json").read_text())
    estimates = {r["labeler_id"]: r["estimated_error"] for r in report["labelers"]}
    assert estimates["labeler-1"]["source"] == "audit" and estimates["labeler-1"]["answers"] >= 20
    assert f"audit of {estimates['labeler-1']['answers']:,}" in page
    assert "audit of" in result.stdout and "estimated error rate" in result.stdout
    # the reviewer's labels are its answers: the yardstick of the audit rates, not one of the crew to flag
    reviewer_row = next(r for r in report["labelers"] if r["labeler_id"] == "reviewer")
    assert reviewer_row["test"] is None and not reviewer_row["flagged"] and "a reviewer" in reviewer_row["note"]
    # the next training manifest (labelaudit harvest): task B's rows with the reviewer's answers beside them, its
    # audit-sample answers as the items' checked rows where an item had none; the trainer's reader accepts it
    following = read_manifest(tmp_path / "demo/next/task_b.jsonl")
    by_reviewer = following.labeler_ids == "reviewer"
    assert by_reviewer.sum() == sampled + answered and len(following) == len(rows) + sampled + answered
    checked_before = {r["item_id"] for r in train_rows if r["trusted"]}
    in_sample = {r["item_id"] for r in train_rows if in_audit_sample(r["item_id"], 0.2)}
    assert set(following.item_ids[by_reviewer & following.trusted]) == in_sample - checked_before
    said = " ".join(result.stdout.split())  # as the console wrapped it
    assert f"labels added: {sampled + answered:,}; new items: 0; labels changed: 0" in said
    assert f"audit-sample answers as checked rows: {len(in_sample - checked_before):,}" in said
