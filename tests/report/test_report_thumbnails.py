"""Thumbnails come from a manifest or a folder; anything missing or unreadable is simply absent."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from labelaudit.serving.report.thumbnails import SIZE, load_thumbnails


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
