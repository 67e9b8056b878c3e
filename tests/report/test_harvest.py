"""``labelaudit harvest``: the audit store's labels and relabel answers, and the current manifest, written as the
next training manifest that the trainer's own reader accepts; both stores alike (``store_url``: SQLite and a
real PostgreSQL), and through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelaudit.cli import app
from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import read_manifest
from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.harvest import harvest
from tests.report.reportkit import CLASSES, fill, record
from tests.report.test_report_answers import answer

CAT = {"cat": 0.8, "dog": 0.1, "fox": 0.1}


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(path)


@pytest.fixture
def current(tmp_path):
    """The current training manifest (classes.txt beside it) and a folder of the stream's new images."""
    data = tmp_path / "data"
    rows = [
        dict(item_id="b1", label="cat", labeler_id="anna"),
        dict(item_id="b2", label="dog", labeler_id="ben"),
        dict(item_id="b3"),  # unlabeled
        dict(item_id="t1", label="fox", labeler_id="qa", trusted=True),
        dict(item_id="v1", label="cat", labeler_id="qa", split="val"),
    ]
    for row in rows:
        row["image"] = f"images/{row['item_id']}.png"
        _image(data / row["image"])
    (data / "task_b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for item in ("n1", "n3", "n4", "n5"):  # n2 has no image
        _image(tmp_path / "stream" / f"{item}.png")
    return data / "task_b.jsonl", tmp_path / "stream"


RECORDS = [
    record("b1", "anna", "cat", "dog", CAT, flag=True, at="2026-11-21T10:00:00"),  # anna corrects it below
    record("b2", "cleo", "fox", "dog", CAT),  # a second label
    record("b3", "dan", "cat", "cat", CAT),  # the unlabeled image gets one
    record("t1", "anna", "dog", "fox", CAT),  # beside the checked row, which stays
    record("v1", "anna", "dog", "cat", CAT),  # a held-out item: left out
    record("n1", "anna", "cat", "cat", CAT),  # a new item
    record("n2", "ben", "dog", "dog", CAT),  # a new item without an image: left out
    record("n3", "anna", "fox", "fox", CAT, version="2", at="2026-11-21T09:00:00"),  # model 2 saw it first ...
    record("n3", "anna", "dog", "fox", CAT, version="3", at="2026-11-21T11:00:00"),  # ... anna's latest label wins
    record("n4", "ben", "cat", "dog", CAT),
    record("n4", "rita", "dog", "dog", CAT),  # answers n4's audit-sample request
    record("n5", "ben", "cat", "cat", CAT),
    record("n5", "rita", "dog", "cat", CAT),  # two audit-sample answers that disagree
    record("n5", "sam", "fox", "cat", CAT),
]
ANSWERS = [
    answer("b1/anna/1", "anna", "dog"),  # stored only as an answer: b1/anna/1's audit record exists
    answer("n4/audit-sample/1", "rita", "dog"),
    answer("n5/audit-sample/1", "rita", "dog"),
    answer("n5/audit-sample/1", "sam", "fox"),
]


def _labels(path):
    """``{(item, labeler): (label, trusted)}`` of a manifest as the trainer reads it."""
    m = read_manifest(path)
    return {(r.item_id, r.labeler_id): (r.label, r.trusted) for r in m.records if r.label is not None}, m


def test_the_next_manifest_holds_the_streams_labels_and_answers(tmp_path, store_url, current):
    manifest, stream = current
    fill(store_url, RECORDS, ANSWERS)
    store = open_store(store_url)
    try:
        done = harvest(store, tmp_path / "next" / "task_b.jsonl", images=stream, manifest=manifest)
    finally:
        store.close()
    labels, m = _labels(done.out)
    assert m.classes == CLASSES  # classes.txt written beside it
    assert labels == {
        ("b1", "anna"): ("dog", False),  # anna's answer on her own label replaced it
        ("b2", "ben"): ("dog", False),
        ("b2", "cleo"): ("fox", False),
        ("b3", "dan"): ("cat", False),
        ("t1", "qa"): ("fox", True),
        ("t1", "anna"): ("dog", False),
        ("v1", "qa"): ("cat", False),
        ("n1", "anna"): ("cat", False),
        ("n3", "anna"): ("dog", False),
        ("n4", "ben"): ("cat", False),
        ("n4", "rita"): ("dog", True),  # the audit-sample answer is n4's checked row
        ("n5", "ben"): ("cat", False),
        ("n5", "rita"): ("dog", False),  # two answers that disagree: ordinary labels
        ("n5", "sam"): ("fox", False),
    }
    assert set(m.item_ids) == {"b1", "b2", "b3", "t1", "v1", "n1", "n3", "n4", "n5"}  # b3 no longer unlabeled
    assert (m.splits[m.item_ids == "v1"] == "val").all()
    assert (done.added, done.updated, done.new_items, done.checked, done.conflicting_checks) == (10, 1, 4, 1, 1)
    assert (done.without_image, done.held_out, done.unknown_class, done.from_manifest) == (1, 1, 0, 5)
    assert (done.rows, done.items, done.several) == (14, 9, 4)
    # the images resolve from the new manifest's folder
    assert all(m.image_path(r).is_file() for r in range(len(m)))


def test_checked_as_label_keeps_the_audit_answers_ordinary(tmp_path, current):
    manifest, stream = current
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", RECORDS, ANSWERS)
    store = open_store(url)
    try:
        done = harvest(store, tmp_path / "next.jsonl", images=stream, manifest=manifest, checked_as="label")
    finally:
        store.close()
    labels, _ = _labels(done.out)
    assert labels[("n4", "rita")] == ("dog", False)
    assert [k for k, (_, trusted) in labels.items() if trusted] == [("t1", "qa")]
    assert done.checked == 0


def test_without_a_current_manifest_labels_outside_its_classes_and_stale_outputs(tmp_path, current):
    manifest, stream = current
    wolf = record("n1", "ben", "cat", "cat", CAT)
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", [*RECORDS, wolf.model_copy(update={"human_label": "wolf"})], ANSWERS)
    store = open_store(url)
    try:
        alone = harvest(store, tmp_path / "alone" / "next.jsonl", images=stream)  # the stream's items only
        with_classes = harvest(store, tmp_path / "next.jsonl", images=stream, manifest=manifest)
        with pytest.raises(ValueError, match="is the current manifest"):
            harvest(store, manifest, images=stream, manifest=manifest)
    finally:
        store.close()
    labels, m = _labels(alone.out)
    assert set(m.item_ids) == {"n1", "n3", "n4", "n5"}  # b1..v1 have no image in the stream folder
    assert ("n1", "ben") in labels and "wolf" in m.classes  # no classes known: the labels seen, sorted
    assert with_classes.unknown_class == 1  # with the manifest's classes, wolf is left out
    assert ("n1", "ben") not in _labels(with_classes.out)[0]


def test_a_stream_that_sent_image_uris_needs_no_images_folder(tmp_path, store_url, current):
    """The store keeps the file each message named: new items find their images there."""
    manifest, stream = current
    uri = {item: (stream / f"{item}.png").as_uri() for item in ("n1", "n3", "n4")}
    records = [r.model_copy(update={"image_uri": uri.get(r.item_id)}) for r in RECORDS]  # n5 came inline
    store = open_store(fill(store_url, records, ANSWERS))
    try:
        got = harvest(store, tmp_path / "next.jsonl", images=None, manifest=manifest)
    finally:
        store.close()
    m = read_manifest(got.out)
    new = {r.item_id: r.image for r in m.records if r.item_id.startswith("n")}
    assert {item: str(m.path.parent / image) for item, image in new.items()} == {
        item: str(stream / f"{item}.png") for item in ("n1", "n3", "n4")
    }
    assert got.new_items == 3 and got.without_image == 2  # n2 (no file) and n5 (sent inline, no --images)


def test_a_broken_current_manifest_is_a_clear_error(tmp_path, current):
    manifest, stream = current
    manifest.write_text(manifest.read_text() + "{not json\n")
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", RECORDS, ANSWERS)
    store = open_store(url)
    try:
        with pytest.raises(ManifestError, match="task_b.jsonl:6"):
            harvest(store, tmp_path / "next.jsonl", images=stream, manifest=manifest)
    finally:
        store.close()


def test_the_command_writes_it_and_says_what_it_left_out(tmp_path, current):
    manifest, stream = current
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", RECORDS, ANSWERS)
    out = tmp_path / "next.jsonl"
    args = ["harvest", "--store-url", url, "--images", str(stream), "--manifest", str(manifest), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # as the console wrapped it
    assert "new items without an image: 1" in said and "audit-sample answers as checked rows: 1" in said
    assert len(read_manifest(out)) == 14
    bad = CliRunner().invoke(app, [*args, "--checked-as", "maybe"])
    assert bad.exit_code == 2 and "--checked-as" in bad.output


def test_nothing_to_harvest_and_a_missing_store_are_clear_errors(tmp_path, current):
    _, stream = current
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", RECORDS, ANSWERS)
    store = open_store(url)
    try:
        with pytest.raises(ValueError, match="nothing to write"):
            harvest(store, tmp_path / "next.jsonl", images=tmp_path / "empty-folder")
    finally:
        store.close()
    assert not (tmp_path / "next.jsonl").exists()
    missing = CliRunner().invoke(
        app, ["harvest", "--store-url", f"sqlite:///{tmp_path / 'typo.db'}", "--out", str(tmp_path / "n.jsonl")]
    )
    assert missing.exit_code == 2 and "no audit store at" in missing.output
    assert not (tmp_path / "typo.db").exists()  # not created empty
