"""Task A and task B from Debian's ``dataset-fashion-mnist``, with simulated noisy labelers.

The recipe (docs/data.md says the same in prose), deterministic for a given ``seed``:

- The 60,000 training images are shuffled once; the first half is task A, the second half task B, so
  the two tasks never share an image. Each half keeps ``val_size`` images as a clean held-out split.
- Task A is the original images with their clean labels (the well-curated task of seed 000).
- Task B is the same ten classes seen through "camera B", a fixed distribution shift (``camera_b``).
  The 10,000 official test images, through camera B, are task B's clean test split.
- Task B's training labels come from the simulated labelers (``labelers.POOL``) at the requested noise
  level, except a class-balanced ``trusted_fraction`` (1%) that an engineer checked by hand (labeler
  ``qa``, true labels, ``trusted: true``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from labelaudit.training.datasets import labelers as lab

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
TRUSTED_LABELER = "qa"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(
    root: Path = FASHION_MNIST_DIR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns train images (60000, 28, 28), train labels, test images (10000, 28, 28), test labels."""
    missing = [p for p in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz") if not (root / p).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing {missing}); install Debian's package: "
            "apt-get install dataset-fashion-mnist"
        )
    return (
        read_idx(root / "train-images-idx3-ubyte.gz"),
        read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64),
        read_idx(root / "t10k-images-idx3-ubyte.gz"),
        read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )


def camera_b(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera B: tilted, soft, brighter mid-tones and sensor noise. (28, 28) uint8 -> (28, 28) uint8.

    Fixed part: a 10 degree tilt, a Gaussian blur of radius 0.7, gamma 0.75. Per image (from ``rng``):
    a shift of up to 2 pixels and Gaussian sensor noise of std 10 (on the 0-255 scale).
    """
    img = Image.fromarray(image, mode="L").rotate(10, resample=Image.Resampling.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.7))
    dx, dy = rng.integers(-2, 3, size=2)
    img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=0)
    x = 255.0 * np.power(np.asarray(img, dtype=np.float64) / 255.0, 0.75) + rng.normal(0.0, 10.0, size=img.size[::-1])
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def nearest_centroid_hardness(images: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """How hard each image is for a person, from pixel space alone (no model, so no method is favoured).

    Margin = distance to the nearest other class centroid minus distance to the own class centroid;
    hardness = rank of the negated margin scaled to [0, 1] (1 = hardest). Also returns the nearest other
    class, where a labeler who errs on a hard image goes. Shapes: (N, H, W) -> (N,), (N,).
    """
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(k)])  # (K, D)
    d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, K)
    own = d[np.arange(len(x)), labels]
    d_other = d.copy()
    d_other[np.arange(len(x)), labels] = np.inf
    confusable = d_other.argmin(1)
    margin = np.sqrt(d_other.min(1)) - np.sqrt(own)
    ranks = np.argsort(np.argsort(-margin))
    return ranks / max(1, len(x) - 1), confusable


@dataclass
class BuildReport:
    out_dir: Path
    task_a_manifest: Path
    task_b_manifest: Path
    noise_requested: float
    noise_actual: float
    severity: float
    counts: dict[str, int]


def _class_balanced_pick(labels: np.ndarray, fraction: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of ``labels``' rows, the same number from every class (at least one; none for 0)."""
    per_class = max(1, round(fraction * len(labels) / k)) if fraction > 0 else 0
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(k)]
    return np.sort(np.concatenate(picks))


def _row(item: str, label: str, labeler_id: str, trusted: bool, split: str, true_label: str) -> dict:
    """A labeled task-B manifest row (its image named by the item), in the recipe's key order."""
    return dict(
        item_id=item,
        image=f"images/task_b/{item}.png",
        label=label,
        labeler_id=labeler_id,
        trusted=trusted,
        split=split,
        true_label=true_label,
    )


def build(
    out_dir: Path,
    *,
    noise: float = 0.4,
    seed: int = 0,
    per_task: int = 30_000,
    val_size: int = 2_000,
    test_size: int = 10_000,
    trusted_fraction: float = 0.01,
    unlabeled: int = 0,
    multi: float = 0.0,
    qa: float = 0.0,
    source: Path = FASHION_MNIST_DIR,
    progress=None,
) -> BuildReport:
    """Write images and manifests for task A and task B under ``out_dir``. See the module docstring.

    ``unlabeled``: that many more task-B training images (through camera B) without a label, from the
    Fashion-MNIST training images neither task uses (60,000 - 2 x ``per_task`` of them). ``multi``: that
    share of the labeled training images get two more labels, from two other labelers (one manifest row
    per label); ``noise`` is the share of wrong FIRST labels, the labelers' own rates hold for every label.
    ``qa``: that share of the labeled training images is checked by a QA pass, drawn at random: a trusted row
    with the true label beside the labeler's (the image's truth in training; the card's labeler rates read
    the checks, docs/methods.md)."""
    k = len(CLASSES)
    if not 0 < per_task <= 30_000 or not 0 < val_size < per_task:
        raise ValueError("need 0 < val_size < per_task <= 30000")
    if not 0 <= noise < 1:
        raise ValueError(f"noise {noise}: the share of wrong labels must be in [0, 1)")
    if not 0 <= trusted_fraction < 1:
        raise ValueError(f"trusted_fraction {trusted_fraction}: must be in [0, 1) (0: no trusted set)")
    if not 0 <= multi <= 1:
        raise ValueError(f"multi {multi}: the share of images with two more labels must be in [0, 1]")
    if not 0 <= qa <= 1:
        raise ValueError(f"qa {qa}: the share of labeled images a QA pass checks must be in [0, 1]")
    if unlabeled < 0:
        raise ValueError(f"unlabeled {unlabeled}: the number of images without a label must be >= 0")
    if unlabeled > 60_000 - 2 * per_task:
        raise ValueError(
            f"{unlabeled} unlabeled images: only {60_000 - 2 * per_task} are left beside two tasks of "
            f"{per_task}; choose a smaller size or fewer"
        )
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = load_fashion_mnist(source)
    order = rng.permutation(len(train_x))
    a_idx, b_idx = order[:per_task], order[30_000 : 30_000 + per_task]
    spare = np.concatenate([order[30_000 + per_task :], order[per_task:30_000]])[:unlabeled]
    test_idx = np.arange(min(test_size, len(test_x)))

    # Task B images through camera B, one RNG stream per image so that any subset is reproducible.
    def shifted(images: np.ndarray, stream: int) -> np.ndarray:
        return np.stack([camera_b(im, np.random.default_rng([seed, stream, i])) for i, im in enumerate(images)])

    b_x, b_y = shifted(train_x[b_idx], 1), train_y[b_idx]
    bt_x, bt_y = shifted(test_x[test_idx], 2), test_y[test_idx]

    # Split task B: clean val, then train = trusted + labeler-labeled.
    b_train = np.arange(val_size, per_task)
    trusted = b_train[_class_balanced_pick(b_y[b_train], trusted_fraction, k, rng)]
    untrusted = np.setdiff1d(b_train, trusted)
    hardness, confusable = nearest_centroid_hardness(b_x[untrusted], b_y[untrusted], k)
    assignment = lab.assign_labelers(len(untrusted), rng)
    severity = lab.solve_severity(noise, b_y[untrusted], hardness, assignment, k) if noise > 0 else 0.0
    noisy = lab.simulate_labels(b_y[untrusted], hardness, confusable, assignment, severity, k, rng)
    more: list[tuple[int, int, int]] = []  # (image, labeler, label): the second and third labels
    rng_more = np.random.default_rng([seed, 11])  # its own stream: the first labels stay as they were
    for col in lab.more_labelers(assignment, multi, rng_more):
        has = np.flatnonzero(col >= 0)
        drawn = lab.simulate_labels(
            b_y[untrusted[has]], hardness[has], confusable[has], col[has], severity, k, rng_more
        )
        more += [(int(untrusted[i]), int(col[i]), int(y)) for i, y in zip(has, drawn, strict=True)]
    rng_qa = np.random.default_rng([seed, 13])  # its own stream too: every other row stays as it was
    checked = untrusted[rng_qa.random(len(untrusted)) < qa]  # the QA pass's random share of the labeled images

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rows_b: list[dict] = []
    labeler_of = {int(i): lab.POOL[a].labeler_id for i, a in zip(untrusted, assignment, strict=True)}
    noisy_of = {int(i): int(y) for i, y in zip(untrusted, noisy, strict=True)}
    trusted_set = set(trusted.tolist())
    images_b = out_dir / "images" / "task_b"
    images_b.mkdir(parents=True, exist_ok=True)
    tick = progress or (lambda n: None)

    for i in range(per_task):
        item = f"b-{i:05d}"
        Image.fromarray(b_x[i], mode="L").save(images_b / f"{item}.png")
        tick(1)
        true = CLASSES[b_y[i]]
        if i < val_size:
            row = dict(label=true, labeler_id=TRUSTED_LABELER, trusted=False, split="val")
        elif i in trusted_set:
            row = dict(label=true, labeler_id=TRUSTED_LABELER, trusted=True, split="train")
        else:
            row = dict(label=CLASSES[noisy_of[i]], labeler_id=labeler_of[i], trusted=False, split="train")
        rows_b.append(dict(item_id=item, image=f"images/task_b/{item}.png", **row, true_label=true))
    for i, labeler, y in sorted(more):
        row = _row(f"b-{i:05d}", CLASSES[y], lab.POOL[labeler].labeler_id, False, "train", CLASSES[b_y[i]])
        rows_b.append(row)
    for i in checked.tolist():
        true = CLASSES[b_y[i]]
        rows_b.append(_row(f"b-{i:05d}", true, TRUSTED_LABELER, trusted=True, split="train", true_label=true))
    for i, src in enumerate(spare):
        item = f"bu-{i:05d}"
        pixels = camera_b(train_x[src], np.random.default_rng([seed, 3, i]))
        Image.fromarray(pixels, mode="L").save(images_b / f"{item}.png")
        tick(1)
        rows_b.append(
            dict(item_id=item, image=f"images/task_b/{item}.png", split="train", true_label=CLASSES[train_y[src]])
        )
    for i in range(len(bt_x)):
        item = f"bt-{i:05d}"
        Image.fromarray(bt_x[i], mode="L").save(images_b / f"{item}.png")
        tick(1)
        true = CLASSES[bt_y[i]]
        rows_b.append(_row(item, true, TRUSTED_LABELER, trusted=False, split="test", true_label=true))

    images_a = out_dir / "images" / "task_a"
    images_a.mkdir(parents=True, exist_ok=True)
    rows_a: list[dict] = []
    for i, src in enumerate(a_idx):
        item = f"a-{i:05d}"
        Image.fromarray(train_x[src], mode="L").save(images_a / f"{item}.png")
        tick(1)
        rows_a.append(
            dict(
                item_id=item,
                image=f"images/task_a/{item}.png",
                label=CLASSES[train_y[src]],
                labeler_id=TRUSTED_LABELER,
                trusted=False,
                split="val" if i < val_size else "train",
            )
        )

    task_a, task_b = out_dir / "task_a.jsonl", out_dir / "task_b.jsonl"
    task_a.write_text("".join(json.dumps(r) + "\n" for r in rows_a))
    task_b.write_text("".join(json.dumps(r) + "\n" for r in rows_b))

    wrong = noisy != b_y[untrusted]
    by = np.concatenate([assignment, np.array([m[1] for m in more], dtype=np.int64)])  # every label's labeler
    wrong_all = np.concatenate([wrong, np.array([b_y[i] != y for i, _, y in more], dtype=bool)])
    truth = {
        "recipe": "fashion-mnist task A/B v1 (docs/data.md)",
        "seed": seed,
        "noise_requested": noise,
        "noise_actual": float(wrong.mean()),  # the first labels; every label's below
        "severity": severity,
        "multi": multi,
        "more_labels": len(more),
        "qa": qa,
        "qa_checked": len(checked),
        "noise_actual_all_labels": float(wrong_all.mean()),
        "labelers": [
            {
                "labeler_id": p.labeler_id,
                "kind": p.kind,
                "description": p.description,
                "items": int((by == j).sum()),
                "true_error_rate": float(wrong_all[by == j].mean()) if (by == j).any() else None,
            }
            for j, p in enumerate(lab.POOL)
        ],
    }
    (out_dir / "labelers.json").write_text(json.dumps(truth, indent=2) + "\n")
    counts = {
        "task_a": len(rows_a),
        "task_b_train": len(b_train),
        "trusted": len(trusted),
        "task_b_val": val_size,
        "task_b_test": len(bt_x),
        "task_b_unlabeled": unlabeled,
        "task_b_more_labels": len(more),
        "task_b_qa_checked": len(checked),
    }
    return BuildReport(out_dir, task_a, task_b, noise, float(wrong.mean()), severity, counts)
