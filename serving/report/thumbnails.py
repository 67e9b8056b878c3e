"""Thumbnails for the relabel queue, and where the report and ``labelaudit harvest`` find an item's image.

The audit store keeps no images, only the file a stream message named (``image_uri``, file://): an item whose
latest message sent one is found there. ``--images`` says where the others are (images sent inline, or through
the HTTP API), and wins where it names an item's image too:

- a JSONL manifest (the training format: ``item_id`` and ``image``, relative to the manifest's folder;
  task_b.jsonl works as it is), read line by line, keeping only the queue's items; or
- a folder holding ``<item_id>.png`` (or ``.jpg``, ``.jpeg``, ``.webp``).

An item whose image is missing or unreadable simply has no thumbnail; the page says so in words.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from labelaudit.schemas.stream import image_uri_path
from labelaudit.serving.core.store import AuditStore

SIZE = 64  # pixels, the longer side
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def load_thumbnails(source: Path | None, item_ids: list[str], store: AuditStore | None = None) -> dict[str, str]:
    """``item_id -> data:image/png;base64,...`` for the items whose image was found (``find_images``) and decoded."""
    out = {}
    for item_id, path in find_images(source, item_ids, store).items():
        uri = thumbnail_uri(path)
        if uri is not None:
            out[item_id] = uri
    return out


def find_images(source: Path | None, item_ids: list[str], store: AuditStore | None = None) -> dict[str, Path]:
    """``item_id -> path`` of the items whose image file ``source`` (a manifest or a folder, as above) names, and
    for the rest the file their latest stream message named in ``store``; the files are not opened."""
    found: dict[str, Path] = {}
    if source is not None and item_ids:
        found = _from_manifest(source, set(item_ids)) if source.is_file() else _from_folder(source, item_ids)
    if store is not None:
        found = stored_images(store, [i for i in item_ids if i not in found]) | found
    return found


STORE_CHUNK = 500  # item ids per query: SQLite and PostgreSQL take this many parameters with room to spare


def stored_images(store: AuditStore, item_ids: list[str]) -> dict[str, Path]:
    """``item_id -> path`` of the local file named by each item's latest stored ``image_uri`` (a ``file://`` URI
    or an absolute path, as the consumer reads them); items sent inline have none."""
    found: dict[str, Path] = {}
    for start in range(0, len(item_ids), STORE_CHUNK):
        chunk = tuple(item_ids[start : start + STORE_CHUNK])
        rows = store.select(
            "SELECT item_id, image_uri FROM audit_records WHERE image_uri IS NOT NULL"
            f" AND item_id IN ({', '.join('?' for _ in chunk)}) ORDER BY created_at, id",
            chunk,
        )
        for item_id, uri in rows:  # oldest first: an item's latest message has the last word
            try:
                found[item_id] = Path(image_uri_path(uri))
            except ValueError:  # not a local file: the consumer never read it, so no thumbnail either
                continue
    return found


def thumbnail_uri(path: Path) -> str | None:
    """A PNG thumbnail of the image at ``path`` as a data URI, or None if it cannot be read."""
    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB" if opened.mode not in ("L", "RGB") else opened.mode)
            scale = SIZE / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            # Small images (28 x 28) are blown up with NEAREST so their pixels stay crisp; large ones shrink.
            img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _from_manifest(manifest: Path, wanted: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    with manifest.open() as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("item_id") in wanted and isinstance(row.get("image"), str):
                found[row["item_id"]] = manifest.parent / row["image"]
    return found


def _from_folder(folder: Path, item_ids: list[str]) -> dict[str, Path]:
    root = folder.resolve()
    found = {}
    for item_id in item_ids:
        if "\x00" in item_id:  # a store written before ids were checked: no file can have that name
            continue
        for ext in EXTENSIONS:
            path = (root / f"{item_id}{ext}").resolve()
            if path.parent == root and path.is_file():  # an item id never walks out of the folder
                found[item_id] = path
                break
    return found
