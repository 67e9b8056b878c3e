"""Thumbnails come from a manifest or a folder, or the file a stream message named (the store keeps its URI);
anything missing or unreadable is simply absent."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.thumbnails import SIZE, find_images, load_thumbnails
from tests.report.reportkit import fill, record

CAT = {"cat": 0.8, "dog": 0.1, "fox": 0.1}


def png(path, size=(28, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size[0] * size[1]) % 256).astype(np.uint8).reshape(size[::-1]), mode="L").save(path)


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_from_a_manifest_relative_to_it(tmp_path):
    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "big.png", size=(300, 150))
    (tmp_path / "images" / "bad.png").write_bytes(b"not an image")
    rows = [
        {"item_id": "a", "image": "images/a.png"},
        {"item_id": "big", "image": "images/big.png"},
        {"item_id": "bad", "image": "images/bad.png"},
        {"item_id": "gone", "image": "images/gone.png"},
        {"item_id": "other", "image": "images/a.png"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    got = load_thumbnails(manifest, ["a", "big", "bad", "gone", "never"])
    assert sorted(got) == ["a", "big"]  # only the queue's items, only the readable ones
    assert decoded(got["a"]).size == (SIZE, SIZE) and decoded(got["big"]).size == (SIZE, SIZE // 2)


def test_from_a_folder_never_outside_it(tmp_path):
    png(tmp_path / "imgs" / "x.png")
    png(tmp_path / "secret.png")
    got = load_thumbnails(
        tmp_path / "imgs", ["x", "../secret", "y", "x\x00.png"]
    )  # NUL: a store from before ids were checked
    assert sorted(got) == ["x"]
    assert load_thumbnails(None, ["x"]) == {}


def test_from_the_store_where_the_stream_named_the_file_and_images_wins(tmp_path, store_url):
    """A stream that sends image_uri needs no --images: each item's latest stored URI names its file."""
    for name, size in (("old", (40, 40)), ("new", (64, 32)), ("given", (40, 40)), ("stored", (40, 40))):
        png(tmp_path / "disk" / f"{name}.png", size=size)
    png(tmp_path / "folder" / "given.png", size=(30, 60))
    late = "2026-11-21T11:00:00"
    records = [
        record("moved", "anna", "cat", "cat", CAT).model_copy(
            update={"image_uri": (tmp_path / "disk/old.png").as_uri()}
        ),
        record("moved", "ben", "cat", "cat", CAT, at=late).model_copy(
            update={"image_uri": (tmp_path / "disk/new.png").as_uri()}  # the latest message's file
        ),
        record("given", "anna", "cat", "cat", CAT).model_copy(
            update={"image_uri": (tmp_path / "disk/given.png").as_uri()}
        ),
        record("plain", "anna", "cat", "cat", CAT).model_copy(update={"image_uri": str(tmp_path / "disk/stored.png")}),
        record("inline", "anna", "cat", "cat", CAT),  # sent as image_b64: no file
        record("remote", "anna", "cat", "cat", CAT).model_copy(update={"image_uri": "file://elsewhere/x.png"}),
        # a relative path names no file the consumer could have read: never resolved against the report's folder
        record("relative", "anna", "cat", "cat", CAT).model_copy(update={"image_uri": "disk/stored.png"}),
    ]
    store = open_store(fill(store_url, records))
    try:
        ids = ["moved", "given", "plain", "inline", "remote", "relative", "never"]
        assert find_images(None, ids, store) == {
            "moved": tmp_path / "disk/new.png",
            "given": tmp_path / "disk/given.png",
            "plain": tmp_path / "disk/stored.png",
        }
        got = load_thumbnails(tmp_path / "folder", ids, store)  # --images names "given": its file wins
        assert sorted(got) == ["given", "moved", "plain"]
        assert decoded(got["given"]).size == (SIZE // 2, SIZE) and decoded(got["moved"]).size == (SIZE, SIZE // 2)
    finally:
        store.close()
