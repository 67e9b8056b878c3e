"""The Fashion-MNIST task A/B recipe at a small size: valid manifests, honest noise, reproducible bytes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelaudit.imaging.manifest import read_manifest
from labelaudit.training.datasets import fashion_mnist as fm
from labelaudit.training.datasets import labelers as lab

pytestmark = pytest.mark.skipif(
    not (fm.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist",
)

SIZE = dict(per_task=600, val_size=100, test_size=200)
NOISE = 0.4


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[fm.BuildReport, Path]]:
    """Three small builds: seed 0 twice and seed 1 once."""
    out = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        folder = tmp_path_factory.mktemp(name)
        out[name] = (fm.build(folder, noise=NOISE, seed=seed, **SIZE), folder)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _image_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


def test_manifests_parse_with_the_trusted_set_required(built):
    report, folder = built["first"]

    a = read_manifest(report.task_a_manifest, require_trusted=False)
    b = read_manifest(report.task_b_manifest, require_trusted=True)

    assert a.classes == b.classes == list(fm.CLASSES)  # from classes.txt, in the recipe's order
    assert len(a.records) == 600 and len(b.records) == 600 + 200
    expected = {"task_a": 600, "task_b_train": 500, "trusted": 10, "task_b_val": 100, "task_b_test": 200}
    assert report.counts == expected | {"task_b_unlabeled": 0, "task_b_more_labels": 0, "task_b_qa_checked": 0}
    assert b.mask(split="val").sum() == 100 and b.mask(split="test").sum() == 200
    assert a.mask(split="val").sum() == 100 and not a.mask(trusted=True).any()


def test_trusted_rows_are_class_balanced_and_carry_the_true_label(built):
    report, _ = built["first"]
    b = read_manifest(report.task_b_manifest, require_trusted=True)
    trusted = b.mask(split="train", trusted=True)

    truth = b.true_labels()
    np.testing.assert_array_equal(b.labels[trusted], truth[trusted])
    assert Counter(b.labels[trusted].tolist()) == dict.fromkeys(range(len(fm.CLASSES)), 1)  # max(1, 1% / K)
    assert {r.labeler_id for r, t in zip(b.records, trusted, strict=True) if t} == {fm.TRUSTED_LABELER}


def test_held_out_labels_are_the_true_labels(built):
    report, _ = built["first"]
    b = read_manifest(report.task_b_manifest)
    held_out = b.mask(split="val") | b.mask(split="test")
    np.testing.assert_array_equal(b.labels[held_out], b.true_labels()[held_out])


def test_actual_noise_is_near_the_requested_noise_and_is_what_the_report_says(built):
    report, _ = built["first"]
    b = read_manifest(report.task_b_manifest)
    untrusted = b.mask(split="train", trusted=False)

    wrong = (b.labels != b.true_labels())[untrusted]

    assert untrusted.sum() == 490
    assert wrong.mean() == pytest.approx(report.noise_actual)
    assert report.noise_actual == pytest.approx(NOISE, abs=0.09)  # about four standard errors at N = 490
    assert 0 < report.severity < 1


def test_labelers_json_lists_five_labelers_with_their_true_error_rates(built):
    report, folder = built["first"]
    truth = json.loads((folder / "labelers.json").read_text())
    b = read_manifest(report.task_b_manifest)
    untrusted = b.mask(split="train", trusted=False)
    wrong = b.labels != b.true_labels()

    assert truth["seed"] == 0 and truth["noise_requested"] == NOISE
    assert truth["noise_actual"] == pytest.approx(report.noise_actual)
    assert [entry["labeler_id"] for entry in truth["labelers"]] == [p.labeler_id for p in lab.POOL]
    assert [entry["kind"] for entry in truth["labelers"]] == [p.kind for p in lab.POOL]
    for entry in truth["labelers"]:
        mine = untrusted & (b.labeler_ids == entry["labeler_id"])
        assert entry["items"] == mine.sum() > 0
        assert entry["true_error_rate"] == pytest.approx(wrong[mine].mean())
    assert sum(entry["items"] for entry in truth["labelers"]) == untrusted.sum()


def test_the_same_seed_gives_identical_manifests_and_image_bytes(built):
    (first, folder_1), (again, folder_2) = built["first"], built["again"]

    for name in ("task_a.jsonl", "task_b.jsonl", "labelers.json", "classes.txt"):
        assert (folder_1 / name).read_bytes() == (folder_2 / name).read_bytes(), name
    images_1, images_2 = _image_bytes(folder_1), _image_bytes(folder_2)
    assert len(images_1) == 600 + 600 + 200
    assert images_1 == images_2
    assert first.noise_actual == again.noise_actual


def test_a_different_seed_gives_different_data(built):
    (_, folder_1), (_, folder_3) = built["first"], built["other"]
    assert (folder_1 / "task_b.jsonl").read_bytes() != (folder_3 / "task_b.jsonl").read_bytes()
    assert (folder_1 / "task_a.jsonl").read_bytes() != (folder_3 / "task_a.jsonl").read_bytes()
    images_1, images_3 = _image_bytes(folder_1), _image_bytes(folder_3)
    assert images_1.keys() == images_3.keys()  # same names, different pictures
    assert sum(images_1[k] != images_3[k] for k in images_1) > 0.9 * len(images_1)


def test_task_a_is_the_original_images_with_clean_labels_from_the_first_half_of_the_shuffle(built):
    report, folder = built["first"]
    train_x, train_y, _, _ = fm.load_fashion_mnist()
    # The recipe's first draw from the seed's stream is the shuffle; task A takes the first half's head,
    # task B the second half's, so the two tasks never share an image.
    source = np.random.default_rng(0).permutation(len(train_x))[:600]
    a = read_manifest(report.task_a_manifest)

    pixels = np.stack([np.asarray(Image.open(folder / r.image)) for r in a.records])

    np.testing.assert_array_equal(pixels, train_x[source])
    np.testing.assert_array_equal(a.labels, train_y[source])


def test_build_refuses_impossible_sizes(tmp_path):
    for bad in (dict(per_task=0), dict(per_task=30_001), dict(per_task=100, val_size=100)):
        with pytest.raises(ValueError, match="val_size < per_task"):
            fm.build(tmp_path, **{**SIZE, **bad})


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (dict(noise=-0.1), "noise -0.1: the share of wrong labels must be in \\[0, 1\\)"),
        (dict(noise=1.0), "noise 1.0"),
        (dict(trusted_fraction=1.0), "trusted_fraction 1.0: must be in \\[0, 1\\)"),
        (dict(trusted_fraction=-0.01), "trusted_fraction -0.01"),
        (dict(unlabeled=-5), "unlabeled -5: the number of images without a label must be >= 0"),
        (dict(multi=1.5), "multi 1.5: the share of images with two more labels must be in \\[0, 1\\]"),
        (dict(qa=-0.1), "qa -0.1: the share of labeled images a QA pass checks must be in \\[0, 1\\]"),
    ],
)
def test_build_refuses_settings_outside_their_range_saying_which(tmp_path, bad, says):
    with pytest.raises(ValueError, match=says):
        fm.build(tmp_path, **{"noise": NOISE, **SIZE, **bad})
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_a_trusted_fraction_of_zero_builds_no_trusted_set(tmp_path):
    report = fm.build(tmp_path, noise=NOISE, seed=0, trusted_fraction=0.0, **SIZE)
    rows = _rows(report.task_b_manifest)
    assert not any(r["trusted"] for r in rows if "label" in r)
    assert report.counts["trusted"] == 0


def test_unlabeled_images_come_from_outside_both_tasks_and_carry_no_label(tmp_path, built):
    report = fm.build(tmp_path, noise=NOISE, seed=0, unlabeled=150, **SIZE)
    manifest = read_manifest(report.task_b_manifest, require_trusted=True)
    unlabeled = [r for r in manifest.records if r.label is None]
    assert len(unlabeled) == 150 and report.counts["task_b_unlabeled"] == 150
    assert all(r.split == "train" and not r.trusted and r.labeler_id is None and r.true_label for r in unlabeled)
    # the labeled rows are those of the build without unlabeled images, byte for byte
    first = [r for r in _rows(built["first"][1] / "task_b.jsonl")]
    assert [r for r in _rows(report.task_b_manifest) if "label" in r] == first
    with pytest.raises(ValueError, match="unlabeled images"):
        fm.build(tmp_path / "x", noise=NOISE, seed=0, unlabeled=60_000, **SIZE)


def test_multi_gives_a_share_of_the_images_two_more_labels_from_other_labelers(tmp_path, built):
    report = fm.build(tmp_path, noise=NOISE, seed=0, multi=0.3, **SIZE)
    manifest = read_manifest(report.task_b_manifest, require_trusted=True)  # repeated items are valid rows
    rows = _rows(report.task_b_manifest)
    labeled = [r for r in rows if r["split"] == "train" and not r["trusted"]]
    by_item: dict[str, list[dict]] = {}
    for r in labeled:
        by_item.setdefault(r["item_id"], []).append(r)
    sizes = Counter(len(v) for v in by_item.values())
    assert set(sizes) == {1, 3} and 0.2 < sizes[3] / len(by_item) < 0.4  # 30% of 490 images
    assert report.counts["task_b_more_labels"] == 2 * sizes[3] == len(manifest) - 800
    for item in (v for v in by_item.values() if len(v) == 3):
        assert len({r["labeler_id"] for r in item}) == 3 and len({r["image"] for r in item}) == 1
        assert len({r["true_label"] for r in item}) == 1
    # the first labels are those of the build without more labels, byte for byte, and in front
    first = _rows(built["first"][1] / "task_b.jsonl")
    assert rows[:600] == first[:600] and [r for r in rows if r["split"] == "test"] == first[600:]
    # labelers.json counts every label of each labeler and its error rate over all of them
    truth = json.loads((tmp_path / "labelers.json").read_text())
    assert sum(lab_["items"] for lab_ in truth["labelers"]) == len(labeled)
    for entry in truth["labelers"]:
        mine = [r for r in labeled if r["labeler_id"] == entry["labeler_id"]]
        wrong = np.mean([r["label"] != r["true_label"] for r in mine])
        assert entry["true_error_rate"] == pytest.approx(wrong)


def test_qa_checks_a_random_share_of_the_labeled_images_beside_their_labels(tmp_path, built):
    report = fm.build(tmp_path, noise=NOISE, seed=0, qa=0.2, **SIZE)
    manifest = read_manifest(report.task_b_manifest, require_trusted=True)  # a checked row beside a label is valid
    rows = _rows(report.task_b_manifest)
    train = [r for r in rows if r["split"] == "train"]
    labeled = {r["item_id"] for r in train if not r["trusted"]}
    checks = [r for r in train if r["trusted"] and r["item_id"] in labeled]
    assert 0.1 < len(checks) / len(labeled) < 0.3 and report.counts["task_b_qa_checked"] == len(checks)
    assert all(r["label"] == r["true_label"] and r["labeler_id"] == "qa" for r in checks)
    # every other row is that of the build without checks, byte for byte, and in front of the checks
    plain = _rows(built["first"][1] / "task_b.jsonl")
    assert [r for r in rows if r not in checks] == plain
    truth = json.loads((tmp_path / "labelers.json").read_text())
    assert (truth["qa"], truth["qa_checked"]) == (0.2, len(checks))
    # training reads each checked image's truth beside its labeler's label
    from labelaudit.training.items import NO_CHECK, find_items

    items = find_items(manifest.item_ids, manifest.labels, manifest.trusted)
    assert items is not None
    checked_items = {r["item_id"] for r in checks}
    for row, item_id in enumerate(manifest.item_ids):
        assert (items.checked[row] != NO_CHECK) == (item_id in checked_items or bool(manifest.trusted[row]))


def test_camera_b_is_uint8_28x28_and_deterministic_for_a_seeded_rng():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)

    one = fm.camera_b(image, np.random.default_rng([0, 1, 5]))
    two = fm.camera_b(image, np.random.default_rng([0, 1, 5]))
    three = fm.camera_b(image, np.random.default_rng([0, 1, 6]))

    assert one.shape == (28, 28) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, two)
    assert (one != three).any()  # the per-image shift and sensor noise come from the rng
    assert (one != image).mean() > 0.5  # it is a real shift in distribution


def test_camera_b_brightens_mid_tones():
    grey = np.full((28, 28), 64, dtype=np.uint8)
    out = fm.camera_b(grey, np.random.default_rng(0))
    centre = out[8:20, 8:20].astype(float)
    # gamma 0.75: 255 * (64/255) ** 0.75 = 90.4; the sensor noise (std 10) averages out over 144 pixels
    assert centre.mean() == pytest.approx(90.4, abs=3)
