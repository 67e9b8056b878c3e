"""Reading and checking a training manifest: every refusal names the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelaudit.errors import ManifestError
from labelaudit.imaging.manifest import load_pixels, read_manifest
from labelaudit.schemas.model_card import PreprocessSpec

SPEC = PreprocessSpec(height=4, width=4, channels=1, mean=(0.5,), std=(0.25,))


def _row(item: str, label: str = "cat", **fields) -> dict:
    return {"item_id": item, "image": f"img/{item}.png", "label": label, "labeler_id": "ann", **fields}


def _write(tmp_path: Path, rows: list[dict | str], *, classes: list[str] | None = None, images: bool = True) -> Path:
    """A manifest of ``rows`` (a str is written as the raw line) with a 4x4 grey PNG per dict row."""
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            lines.append(row)
            continue
        if images:
            Image.fromarray(np.full((4, 4), 10 * i, dtype=np.uint8), mode="L").save(tmp_path / row["image"])
        lines.append(json.dumps(row))
    if classes is not None:
        (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _refusal(path: Path, **kwargs) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **kwargs)
    assert info.value.reason == "bad_manifest"
    return str(info.value)


# -- refusals --------------------------------------------------------------------------------------


def test_bad_json_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, [_row("a"), '{"item_id": "b", "image": '])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:2:")
    assert "JSON" in message


def test_a_missing_required_field_is_named(tmp_path):
    row = _row("b")
    del row["labeler_id"]
    path = _write(tmp_path, [_row("a"), row])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:2:")
    assert "labeler_id" in message and "required" in message.lower()


def test_an_unknown_field_and_a_bad_split_are_refused(tmp_path):
    path = _write(tmp_path, [_row("a", colour="red")])
    assert "manifest.jsonl:1:" in _refusal(path) and "colour" in _refusal(path)

    path = _write(tmp_path, [_row("a"), _row("b", split="holdout")])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:2:") and "split" in message


def test_a_missing_image_file_names_the_line_and_the_path(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b"), _row("c")])
    (tmp_path / "img" / "c.png").unlink()
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:3:")
    assert "img/c.png" in message


def test_an_unknown_label_against_classes_txt_names_its_line(tmp_path):
    path = _write(tmp_path, [_row("a"), "", _row("b", label="cow")], classes=["cat", "dog"])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:3:")  # the blank line still counts
    assert "'cow'" in message and "cat" in message and "dog" in message


def test_an_unknown_label_against_explicit_classes_wins_over_classes_txt(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b", label="dog")], classes=["cat", "dog"])
    assert read_manifest(path).classes == ["cat", "dog"]

    message = _refusal(path, classes=["cat", "bird"])
    assert message.startswith("manifest.jsonl:2:") and "'dog'" in message


def test_an_unknown_true_label_is_refused(tmp_path):
    path = _write(tmp_path, [_row("a", true_label="cat"), _row("b", true_label="emu")], classes=["cat"])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:2:") and "true_label" in message and "'emu'" in message


def test_an_item_may_carry_several_labels_one_row_each(tmp_path):
    # two labelers and a checked label on item a, one labeler on b: four rows, two items
    rows = [_row("a"), _row("b"), _row("a", label="dog", labeler_id="bo"), _row("a", labeler_id="qa", trusted=True)]
    path = _write(tmp_path, rows, classes=["cat", "dog"])
    manifest = read_manifest(path)
    assert list(manifest.item_ids) == ["a", "b", "a", "a"]
    assert list(manifest.labeler_ids) == ["ann", "ann", "bo", "qa"] and list(manifest.trusted) == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("again", "reason"),
    [
        ({"image": "img/c.png"}, "with image 'img/a.png'"),  # another image under the same id
        ({}, "labeled by 'ann'; each labeler labels an item once"),
        ({"labeler_id": "bo", "split": "val"}, "for train rows only"),
        ({"label": None, "labeler_id": None}, "an unlabeled image is one row"),
        ({"labeler_id": "qa2", "trusted": True}, "at most one checked (trusted) label"),
    ],
)
def test_an_item_repeated_against_the_rules_names_both_lines(tmp_path, again, reason):
    first = [_row("a"), _row("c"), _row("a", labeler_id="qa", trusted=True)]
    path = _write(tmp_path, first)
    lines = path.read_text().splitlines()
    row = {k: v for k, v in (_row("a") | again).items() if v is not None}
    path.write_text("\n".join([*lines, json.dumps(row)]) + "\n")
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:4:"), message
    assert "item_id 'a' is already on line 1" in message and reason in message, message


def test_an_unlabeled_image_cannot_gain_a_label_by_repeating(tmp_path):
    path = _write(tmp_path, [{"item_id": "u", "image": "img/u.png"}, _row("u")])
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:2:") and "unlabeled image is one row" in message


def test_require_trusted_refuses_a_manifest_without_trusted_training_rows(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b", trusted=True, split="val")])
    assert len(read_manifest(path).records) == 2  # fine when no method needs the trusted set
    message = _refusal(path, require_trusted=True)
    assert message.startswith("manifest.jsonl:") and "trusted" in message


def test_an_empty_manifest_is_refused(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n  \n")
    message = _refusal(path)
    assert message.startswith("manifest.jsonl:") and "no rows" in message


def test_a_missing_manifest_is_refused(tmp_path):
    assert "does not exist" in _refusal(tmp_path / "nope.jsonl")


# -- a good manifest -------------------------------------------------------------------------------


def test_a_good_manifest_loads_labels_masks_and_true_labels(tmp_path):
    rows = [
        _row("a", "dog", trusted=True, true_label="dog"),
        _row("b", "cat", true_label="dog"),
        _row("c", "cat", split="val", true_label="cat"),
        _row("d", "dog", split="test", true_label="dog"),
        _row("e", "cat", trusted=True, true_label="cat"),
    ]
    path = _write(tmp_path, rows)

    m = read_manifest(path, require_trusted=True)

    assert m.classes == ["cat", "dog"]  # no classes.txt: the sorted labels
    assert m.labels.tolist() == [1, 0, 0, 1, 0]
    assert m.labels.dtype == np.int64
    assert m.true_labels().tolist() == [1, 1, 0, 1, 0]
    assert m.line_numbers.tolist() == [1, 2, 3, 4, 5]
    assert m.mask(split="train").tolist() == [True, True, False, False, True]
    assert m.mask(split="train", trusted=True).tolist() == [True, False, False, False, True]
    assert m.mask(trusted=False).tolist() == [False, True, True, True, False]
    assert m.labeler_ids.tolist() == ["ann"] * 5
    assert len(m.sha256) == 64


def test_explicit_classes_keep_their_order(tmp_path):
    path = _write(tmp_path, [_row("a", "dog"), _row("b", "cat")])
    m = read_manifest(path, classes=["dog", "bird", "cat"])
    assert m.classes == ["dog", "bird", "cat"]
    assert m.labels.tolist() == [0, 2]
    assert m.true_labels() is None  # not every row carries one


def test_load_pixels_decodes_once_and_caches(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b"), _row("c")])
    m = read_manifest(path)
    calls = []

    first = load_pixels(m, SPEC, progress=calls.append)

    assert first.shape == (3, 4, 4, 1) and first.dtype == np.uint8
    assert first[:, 0, 0, 0].tolist() == [0, 10, 20]
    assert calls == [1, 1, 1]
    for image in (tmp_path / "img").iterdir():
        image.unlink()  # a second decode would now fail

    second = load_pixels(m, SPEC, progress=calls.append)

    np.testing.assert_array_equal(second, first)
    assert calls == [1, 1, 1]  # no image was decoded again


def test_load_pixels_cache_is_keyed_by_the_spec(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b")])
    m = read_manifest(path)
    cache = tmp_path / "cache"
    load_pixels(m, SPEC, cache_dir=cache)
    bigger = SPEC.model_copy(update={"height": 6, "width": 6})

    assert load_pixels(m, bigger, cache_dir=cache).shape == (2, 6, 6, 1)
    assert len(list(cache.glob("pixels-*.npy"))) == 2


def test_load_pixels_names_the_line_of_an_undecodable_image(tmp_path):
    path = _write(tmp_path, [_row("a"), _row("b")])
    (tmp_path / "img" / "b.png").write_bytes(b"not a png")
    m = read_manifest(path)  # the file exists, so reading passes

    with pytest.raises(ManifestError) as info:
        load_pixels(m, SPEC, cache_dir=tmp_path / "cache")

    assert str(info.value).startswith("manifest.jsonl:2: img/b.png:")
