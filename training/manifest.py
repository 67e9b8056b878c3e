"""Read and check a training manifest, and load its images as the model will see them.

Every problem is reported with the manifest's file name and line number, so a user can fix the line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from labelaudit.errors import ImageError, ManifestError, describe_errors
from labelaudit.schemas.manifest import ManifestRecord
from labelaudit.schemas.model_card import PreprocessSpec
from labelaudit.serving.core.preprocess import load_image, to_pixels


@dataclass
class Manifest:
    """A checked manifest. ``labels`` (N,) int indices into ``classes``; ``records`` keep the raw rows."""

    path: Path
    records: list[ManifestRecord]
    classes: list[str]
    labels: np.ndarray
    sha256: str
    line_numbers: list[int]

    def mask(self, *, split: str | None = None, trusted: bool | None = None) -> np.ndarray:
        """Boolean (N,) selecting rows by split and trust."""
        keep = np.ones(len(self.records), dtype=bool)
        if split is not None:
            keep &= np.array([r.split == split for r in self.records])
        if trusted is not None:
            keep &= np.array([r.trusted == trusted for r in self.records])
        return keep

    @property
    def labeler_ids(self) -> np.ndarray:
        return np.array([r.labeler_id for r in self.records])

    def true_labels(self) -> np.ndarray | None:
        """Simulation ground truth, if every row carries it (benchmarks only)."""
        if any(r.true_label is None for r in self.records):
            return None
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.true_label] for r in self.records])


def _classes_beside(path: Path) -> list[str] | None:
    candidate = path.parent / "classes.txt"
    if candidate.exists():
        return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return None


def read_manifest(path: str | Path, *, classes: Sequence[str] | None = None, require_trusted: bool = False) -> Manifest:
    """Parse and check a JSONL manifest.

    ``classes``: the class list to hold labels to (from classifier A's checkpoint); otherwise a
    ``classes.txt`` beside the manifest; otherwise the sorted set of labels seen.
    Raises ``ManifestError`` naming the line for: bad JSON, missing or wrong fields, duplicate item ids,
    missing image files, unknown labels; and, with ``require_trusted``, a manifest with no trusted rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    raw = path.read_bytes()
    records: list[ManifestRecord] = []
    line_numbers: list[int] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            rec = ManifestRecord.model_validate_json(line)
        except ValidationError as exc:
            raise ManifestError(f"{where}: {describe_errors(exc.errors(), whole='line')}") from None
        if rec.item_id in seen:
            raise ManifestError(f"{where}: item_id {rec.item_id!r} already on line {seen[rec.item_id]}")
        seen[rec.item_id] = lineno
        if not (path.parent / rec.image).is_file():
            raise ManifestError(f"{where}: image file {rec.image!r} not found (relative to {path.parent})")
        records.append(rec)
        line_numbers.append(lineno)
    if not records:
        raise ManifestError(f"{path.name}: the manifest has no rows")

    known = list(classes) if classes is not None else _classes_beside(path)
    if known is None:
        known = sorted({r.label for r in records})
    index = {c: i for i, c in enumerate(known)}
    for rec in records:
        for field, value in (("label", rec.label), ("true_label", rec.true_label)):
            if value is not None and value not in index:
                raise ManifestError(
                    f"{path.name}:{seen[rec.item_id]}: unknown {field} {value!r}; the classes are {known}"
                )
    if require_trusted and not any(r.trusted and r.split == "train" for r in records):
        raise ManifestError(
            f'{path.name}: no trusted training rows ("trusted": true, "split": "train"); this method '
            "needs the small hand-checked set"
        )
    labels = np.array([index[r.label] for r in records], dtype=np.int64)
    return Manifest(path, records, known, labels, hashlib.sha256(raw).hexdigest(), line_numbers)


def load_pixels(
    manifest: Manifest,
    spec: PreprocessSpec,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Decode every image once with the model card's ``to_pixels``: (N, H, W, C) uint8.

    Cached as ``.npy`` under ``cache_dir`` keyed by the manifest's hash and the spec, so a second run
    on the same data skips the decoding.
    """
    key = hashlib.sha256((manifest.sha256 + spec.model_dump_json()).encode()).hexdigest()[:16]
    cache = (cache_dir or manifest.path.parent / ".labelaudit-cache") / f"pixels-{key}.npy"
    if cache.exists():
        return np.load(cache)
    out = np.empty((len(manifest.records), spec.height, spec.width, spec.channels), dtype=np.uint8)
    for i, rec in enumerate(manifest.records):
        try:
            out[i] = to_pixels(load_image(str(manifest.path.parent / rec.image)), spec)
        except ImageError as exc:
            raise ManifestError(f"{manifest.path.name}:{manifest.line_numbers[i]}: {rec.image}: {exc}") from exc
        if progress:
            progress(1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out
