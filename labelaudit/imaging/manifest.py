"""Read and check a training manifest, and load its images as the model will see them.

Every problem is reported with the manifest's file name and line number, so a user can fix the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from labelaudit.errors import ImageError, ManifestError, describe_errors
from labelaudit.imaging.preprocess import pixels_from_file
from labelaudit.schemas.manifest import ManifestRecord
from labelaudit.schemas.model_card import PreprocessSpec

UNLABELED = -1  # ``Manifest.labels`` of an unlabeled training image


@dataclass
class Manifest:
    """A checked manifest, held as columns (N,) so that a million rows cost tens of MB and forked data
    loader workers share them without copying: ``labels`` int indices into ``classes`` (``UNLABELED`` for an
    unlabeled training image, whose ``labeler_ids`` entry is ''); ``images`` paths
    relative to the manifest's folder; ``true_labels`` -1 where a row has none."""

    path: Path
    classes: list[str]
    item_ids: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    labeler_ids: np.ndarray
    trusted: np.ndarray
    splits: np.ndarray
    true_labels_or_missing: np.ndarray
    line_numbers: np.ndarray
    sha256: str
    origins: np.ndarray | None = None  # per row, the file it came from when manifests were joined

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def records(self) -> list[ManifestRecord]:
        """The rows as records, built on demand (small manifests: the producer, tests)."""
        return [
            ManifestRecord(
                item_id=str(i),
                image=str(im),
                label=self.classes[y] if y >= 0 else None,
                labeler_id=str(lab) if y >= 0 else None,
                trusted=bool(t),
                split=str(sp),
                true_label=None if ty < 0 else self.classes[ty],
            )
            for i, im, y, lab, t, sp, ty in zip(
                self.item_ids,
                self.images,
                self.labels,
                self.labeler_ids,
                self.trusted,
                self.splits,
                self.true_labels_or_missing,
                strict=True,
            )
        ]

    def image_path(self, row: int) -> Path:
        return self.path.parent / str(self.images[row])

    def where(self, row: int) -> str:
        """``task_b.jsonl:17``: the row's place, for error messages."""
        name = self.path.name if self.origins is None else self.origins[row]
        return f"{name}:{self.line_numbers[row]}"

    def mask(self, *, split: str | None = None, trusted: bool | None = None, labeled: bool | None = None) -> np.ndarray:
        """Boolean (N,) selecting rows by split, trust and whether they carry a label."""
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            keep &= self.splits == split
        if trusted is not None:
            keep &= self.trusted == trusted
        if labeled is not None:
            keep &= (self.labels != UNLABELED) == labeled
        return keep

    def true_labels(self) -> np.ndarray | None:
        """Simulation ground truth, if every row carries it (benchmarks only)."""
        if (self.true_labels_or_missing < 0).any():
            return None
        return self.true_labels_or_missing


def with_held_out(manifest: Manifest, *, val: str | Path | None = None, test: str | Path | None = None) -> Manifest:
    """``manifest`` with the rows of separate ``val`` and ``test`` manifests added under those splits (their
    labels held to ``manifest``'s classes, their image paths made absolute). No item may be in two files."""
    parts = [(manifest, None)] + [
        (read_manifest(path, classes=manifest.classes), split)
        for split, path in (("val", val), ("test", test))
        if path is not None
    ]
    if len(parts) == 1:
        return manifest
    seen: dict[str, str] = {}
    for part, _ in parts:
        mine = {str(item) for item in part.item_ids}  # one file may repeat its own items (several labels)
        for row, item in enumerate(part.item_ids):
            if item in seen:
                raise ManifestError(f"{part.where(row)}: item_id {item!r} is already in {seen[item]}")
        seen.update(dict.fromkeys(mine, part.path.name))

    def column(name: str, part: Manifest, split: str | None) -> np.ndarray:
        if name == "images":
            return np.array([str(part.image_path(r).resolve()) for r in range(len(part))])
        if name == "splits" and split is not None:
            return np.full(len(part), split)
        if name == "origins":
            return part.origins if part.origins is not None else np.full(len(part), part.path.name)
        return getattr(part, name)

    names = (
        "item_ids",
        "images",
        "labels",
        "labeler_ids",
        "trusted",
        "splits",
        "true_labels_or_missing",
        "line_numbers",
        "origins",
    )
    joined = {n: np.concatenate([column(n, part, split) for part, split in parts]) for n in names}
    digest = hashlib.sha256("".join(part.sha256 for part, _ in parts).encode()).hexdigest()
    return Manifest(path=manifest.path, classes=manifest.classes, sha256=digest, **joined)


def _classes_beside(path: Path) -> list[str] | None:
    candidate = path.parent / "classes.txt"
    if candidate.exists():
        return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return None


@dataclass
class _Item:
    """What ``read_manifest`` has seen of one item so far: its first line, and who labeled it."""

    line: int
    image: str
    split: str
    labeled: bool
    labelers: set[str] = field(default_factory=set)
    trusted: bool = False

    def add(self, rec: ManifestRecord) -> None:
        self.trusted |= rec.trusted
        if not rec.trusted and rec.labeler_id is not None:
            self.labelers.add(rec.labeler_id)


def _check_another_label(rec: ManifestRecord, item: _Item, where: str) -> None:
    """A training item may carry several labels, one row each: from different labelers, and at most one
    checked (``trusted``) row, all naming the same image. Anything else repeating an item_id is refused."""
    first = f"item_id {rec.item_id!r} is already on line {item.line}"
    if rec.split != "train" or item.split != "train":
        raise ManifestError(f"{where}: {first}; several labels of one item are for train rows only")
    if rec.image != item.image:
        raise ManifestError(f"{where}: {first} with image {item.image!r}; the rows of one item name one image")
    if rec.label is None or not item.labeled:
        raise ManifestError(f"{where}: {first}; an unlabeled image is one row without a label, never repeated")
    if rec.trusted and item.trusted:
        raise ManifestError(f"{where}: {first}; an item has at most one checked (trusted) label")
    if not rec.trusted and rec.labeler_id in item.labelers:
        raise ManifestError(f"{where}: {first} labeled by {rec.labeler_id!r}; each labeler labels an item once")


def read_manifest(
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    require_trusted: bool = False,
    fallback_classes: Sequence[str] | None = None,
) -> Manifest:
    """Parse and check a JSONL manifest.

    The class list labels are held to: ``classes`` if given; otherwise a ``classes.txt`` beside the
    manifest; otherwise ``fallback_classes`` (classifier A's) when they hold every label; otherwise the
    sorted set of labels seen.
    An item may repeat on train rows, one row per label (several labelers, or a labeler's label and its
    checked label): ``_check_another_label``'s rules.
    Raises ``ManifestError`` naming the line for: bad JSON, missing or wrong fields, an item repeated against
    those rules, missing image files, unknown labels; and, with ``require_trusted``, a manifest with no trusted rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    digest = hashlib.sha256()
    columns: dict[str, list] = {
        k: [] for k in ("item_id", "image", "label", "labeler_id", "trusted", "split", "true_label", "line")
    }
    seen: dict[str, _Item] = {}
    with path.open("rb") as f:
        for lineno, raw_line in enumerate(f, start=1):
            digest.update(raw_line)
            line = raw_line.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                rec = ManifestRecord.model_validate_json(line)
            except ValidationError as exc:
                raise ManifestError(f"{where}: {describe_errors(exc.errors(), whole='line')}") from None
            if rec.item_id in seen:
                _check_another_label(rec, seen[rec.item_id], where)
            else:
                seen[rec.item_id] = _Item(lineno, rec.image, rec.split, rec.label is not None)
            seen[rec.item_id].add(rec)
            if not (path.parent / rec.image).is_file():
                raise ManifestError(f"{where}: image file {rec.image!r} not found (relative to {path.parent})")
            for key, value in (
                ("item_id", rec.item_id),
                ("image", rec.image),
                ("label", rec.label),
                ("labeler_id", rec.labeler_id),
                ("trusted", rec.trusted),
                ("split", rec.split),
                ("true_label", rec.true_label),
                ("line", lineno),
            ):
                columns[key].append(value)
    if not seen:
        raise ManifestError(f"{path.name}: the manifest has no rows")

    labels_seen = set(columns["label"]) - {None}
    known = list(classes) if classes is not None else _classes_beside(path)
    if known is None and fallback_classes is not None and labels_seen <= set(fallback_classes):
        known = list(fallback_classes)
    if known is None:
        known = sorted(labels_seen)
    index = {c: i for i, c in enumerate(known)}
    for name in ("label", "true_label"):
        for value, lineno in zip(columns[name], columns["line"], strict=True):
            if value is not None and value not in index:
                raise ManifestError(f"{path.name}:{lineno}: unknown {name} {value!r}; the classes are {known}")
    trusted, splits = np.array(columns["trusted"], dtype=bool), np.array(columns["split"])
    if require_trusted and not (trusted & (splits == "train")).any():
        raise ManifestError(
            f'{path.name}: no trusted training rows ("trusted": true, "split": "train"); this method '
            "needs the small hand-checked set"
        )
    return Manifest(
        path=path,
        classes=known,
        item_ids=np.array(columns["item_id"]),
        images=np.array(columns["image"]),
        labels=np.array([UNLABELED if v is None else index[v] for v in columns["label"]], dtype=np.int64),
        labeler_ids=np.array([v or "" for v in columns["labeler_id"]]),
        trusted=trusted,
        splits=splits,
        true_labels_or_missing=np.array([-1 if v is None else index[v] for v in columns["true_label"]], dtype=np.int64),
        line_numbers=np.array(columns["line"], dtype=np.int64),
        sha256=digest.hexdigest(),
    )


PIXEL_FIELDS = ("height", "width", "channels", "resize", "crop_pct", "resample", "jpeg_draft")


def row_pixels(manifest: Manifest, row: int, spec: PreprocessSpec) -> np.ndarray:
    """One row's image at the model's size, (H, W, C) uint8, by serving's own path
    (``pixels_from_file``); a bad image is a ``ManifestError`` naming its line."""
    try:
        return pixels_from_file(str(manifest.image_path(row)), spec)
    except (ImageError, OSError) as exc:
        raise ManifestError(f"{manifest.where(row)}: {manifest.images[row]}: {exc}") from exc


def pixel_cache_path(manifest: Manifest, spec: PreprocessSpec, cache_dir: Path | None = None) -> Path:
    """Where ``load_pixels`` caches: keyed by the manifest's hash and the spec's fields that change
    pixels (not mean and std, which apply later), so every run on the same data and size shares one."""
    fields = spec.model_dump(include=set(PIXEL_FIELDS))
    key = hashlib.sha256((manifest.sha256 + json.dumps(fields, sort_keys=True)).encode()).hexdigest()[:16]
    return (cache_dir or manifest.path.parent / ".labelaudit-cache") / f"pixels-{key}.npy"


def load_pixels(
    manifest: Manifest,
    spec: PreprocessSpec,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Every image decoded once: (N, H, W, C) uint8, memory-mapped from a ``.npy`` cache (written
    on the first call, atomically), so a second run on the same data skips the decoding and pages in
    only what it reads."""
    cache = pixel_cache_path(manifest, spec, cache_dir)
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial.npy")
        out = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.uint8, shape=(len(manifest), spec.height, spec.width, spec.channels)
        )
        for row in range(len(manifest)):
            out[row] = row_pixels(manifest, row, spec)
            if progress:
                progress(1)
        out.flush()
        del out
        os.replace(partial, cache)
    return np.load(cache, mmap_mode="r")
