"""The next training manifest from what the stream taught: the labels the audit store holds, and the answers
to relabel requests (``labelaudit harvest``).

The store keeps every label the gateway audited and every answer the relabel tool sent back; training reads a
manifest (``labelaudit.schemas.manifest``; the README, "Your own data"). This turns the one into the other:

- each labeler's LATEST label of each item: an answer from the labeler whose label was questioned replaces
  that label (its correction), an answer or a label from anyone else is one more label of the item (the
  crowd methods read an item's labels together, docs/methods.md "Several labels per image");
- an audit-sample answer (a random item that someone other than its labeler checked: the report's yardstick
  for the labelers' error rates) becomes the item's checked (``trusted``) row, as a QA pass's check would
  (``checked_as="label"`` keeps it an ordinary label); where two such answers disagree, both stay ordinary
  labels;
- with a current manifest, its rows first: a store label replaces the same labeler's label of the same item
  where it differs (the store's is newer), a checked row is never replaced, and an unlabeled image that got
  a label in the stream becomes a labeled one; the held-out (``val``, ``test``) items are never labeled
  from the stream;
- the images of new items where the report's thumbnails find them (``thumbnails.find_images``): the file the
  item's latest stream message named (``image_uri``), or ``images`` (a manifest or a folder of
  ``<item_id>.png``) for images sent inline; an item without one is left out, and counted.

The written manifest is read back with the trainer's own reader before ``harvest`` returns, so a manifest it
writes is one ``labelaudit train`` accepts.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args

from labelaudit.imaging.manifest import Manifest, read_manifest
from labelaudit.serving.core.store import AuditStore
from labelaudit.serving.report.thumbnails import find_images

CheckedAs = Literal["trusted", "label"]
CHECKED_AS: tuple[CheckedAs, ...] = get_args(CheckedAs)


@dataclass
class _Item:
    """One item of the next manifest: its image (an absolute path), split, and labels by labeler."""

    image: Path
    split: str = "train"
    labels: dict[str, str] = field(default_factory=dict)  # labeler -> label
    checked_by: str | None = None  # the labeler whose label is the item's checked (trusted) row
    true_label: str | None = None  # kept from the current manifest (simulated data)


@dataclass(frozen=True)
class Harvest:
    """What ``harvest`` wrote, and what it left out and why."""

    out: Path
    rows: int
    items: int
    from_manifest: int  # rows of the current manifest
    added: int  # labels the current manifest did not have
    updated: int  # labels of the current manifest the store changed
    new_items: int
    checked: int  # audit-sample answers written as checked rows
    several: int  # items with more than one label
    conflicting_checks: int  # items whose audit-sample answers disagree: kept as ordinary labels
    without_image: int  # new items left out: no image found
    held_out: int  # store labels of the current manifest's val/test items, left out
    unknown_class: int  # store labels not among the classes, left out

    def summary(self) -> str:
        """What was written and left out, a line each (``labels added: 10; new items: 4; labels changed: 1``)."""
        left = ", ".join(
            f"{why}: {n:,}"
            for n, why in (
                (self.without_image, "new items without an image"),
                (self.held_out, "labels of held-out items"),
                (self.unknown_class, "labels of unknown classes"),
            )
            if n
        )
        return "\n".join(
            [
                f"{self.out}: {self.rows:,} rows, {self.items:,} items ({self.from_manifest:,} rows from the current "
                "manifest)",
                f"labels added: {self.added:,}; new items: {self.new_items:,}; labels changed: {self.updated:,}",
                f"audit-sample answers as checked rows: {self.checked:,}; items whose audit-sample answers disagree "
                f"(kept as labels): {self.conflicting_checks:,}",
                f"items with several labels: {self.several:,}",
                f"left out: {left or 'nothing'}",
            ]
        )


def store_labels(store: AuditStore) -> dict[tuple[str, str], tuple[str, datetime]]:
    """``(item_id, labeler_id) -> (label, when)``: each labeler's latest label of each item, from the audited
    labels (every model version) and the relabel answers (a labeler's answer on its own label is stored only
    there: the audit record of that item, labeler and model already exists)."""
    latest: dict[tuple[str, str], tuple[str, datetime]] = {}
    rows = store.select(
        "SELECT item_id, labeler_id, human_label, created_at FROM audit_records "
        "WHERE human_label IS NOT NULL AND labeler_id <> ''"
    )
    rows += store.select("SELECT item_id, labeler_id, label, created_at FROM relabel_answers")
    for item_id, labeler_id, label, at in rows:
        when = datetime.fromisoformat(at)
        key = (item_id, labeler_id)
        if key not in latest or when >= latest[key][1]:
            latest[key] = (label, when)
    return latest


def audit_checks(store: AuditStore) -> dict[str, dict[str, str]]:
    """``item_id -> {answering labeler: label}``: the audit-sample answers, each answerer's latest."""
    checks: dict[str, dict[str, tuple[str, datetime]]] = {}
    for item_id, labeler_id, label, at in store.select(
        "SELECT item_id, labeler_id, label, created_at FROM relabel_answers WHERE reason = 'audit_sample'"
    ):
        when = datetime.fromisoformat(at)
        seen = checks.setdefault(item_id, {})
        if labeler_id not in seen or when >= seen[labeler_id][1]:
            seen[labeler_id] = (label, when)
    return {item: {lab: label for lab, (label, _) in by.items()} for item, by in checks.items()}


def harvest(
    store: AuditStore,
    out: Path,
    *,
    images: Path | None,
    manifest: Path | None = None,
    checked_as: CheckedAs = "trusted",
    step: Callable[[str], None] = lambda name: None,
) -> Harvest:
    """Write the next training manifest to ``out`` (and ``classes.txt`` beside it when the current manifest
    has its classes); see the module docstring. ``ManifestError`` if the current manifest, or the written
    one, is not a valid manifest; ``ValueError`` for ``out`` being the current manifest."""
    out = Path(out)
    if manifest is not None and out.resolve() == Path(manifest).resolve():
        raise ValueError(f"--out {out} is the current manifest: write the next one beside it")
    items: dict[str, _Item] = {}
    classes: list[str] | None = None
    tally: Counter[str] = Counter()
    if manifest is not None:
        step("current manifest")
        current = read_manifest(manifest)
        classes, tally["from_manifest"] = current.classes, len(current)
        items = _items_of(current)
    step("store")
    labels = store_labels(store)
    checks = audit_checks(store) if checked_as == "trusted" else {}
    step("images")
    new_ids = sorted({item_id for item_id, _ in labels} - set(items))
    found = {i: p.resolve() for i, p in find_images(images, new_ids, store).items() if p.is_file()}
    tally["without_image"] = len(new_ids) - len(found)
    step("merge")
    _add_labels(items, labels, found, None if classes is None else set(classes), tally)
    _check_rows(items, checks, tally)
    if not items:
        raise ValueError(
            "nothing to write: no current manifest, and no label in the store whose image is found (its image_uri, --images)"
        )
    step("write")
    rows = _write(items, out)
    if classes is not None:
        (out.parent / "classes.txt").write_text("\n".join(classes) + "\n")
    step("check")
    read_manifest(out, classes=classes)
    return Harvest(
        out=out,
        rows=rows,
        items=len(items),
        several=sum(1 for item in items.values() if len(item.labels) > 1),
        **{name: tally[name] for name in _TALLIED},
    )


_TALLIED = (
    "from_manifest",
    "added",
    "updated",
    "new_items",
    "checked",
    "conflicting_checks",
    "without_image",
    "held_out",
    "unknown_class",
)


def _items_of(current: Manifest) -> dict[str, _Item]:
    """The current manifest's items, in its order, with their labels and checked rows."""
    items: dict[str, _Item] = {}
    folder = current.path.parent.resolve()  # once: the rows' images are relative to it
    for rec in current.records:
        item = items.setdefault(rec.item_id, _Item(folder / rec.image, rec.split))
        item.true_label = rec.true_label
        if rec.label is not None and rec.labeler_id is not None:
            item.labels[rec.labeler_id] = rec.label
            if rec.trusted:
                item.checked_by = rec.labeler_id
    return items


def _add_labels(
    items: dict[str, _Item],
    labels: dict[tuple[str, str], tuple[str, datetime]],
    found: dict[str, Path],
    known: set[str] | None,
    tally: Counter[str],
) -> None:
    """The store's labels into ``items``: new items where ``found`` has their image, the rules of the module
    docstring for the others."""
    for (item_id, labeler_id), (label, _) in sorted(labels.items()):
        if known is not None and label not in known:
            tally["unknown_class"] += 1
            continue
        if item_id not in items:
            if item_id not in found:
                continue  # counted once per item: without_image
            items[item_id] = _Item(found[item_id])
            tally["new_items"] += 1
        item = items[item_id]
        if item.split != "train":
            tally["held_out"] += 1
        elif labeler_id not in item.labels:
            item.labels[labeler_id] = label
            tally["added"] += 1
        elif item.labels[labeler_id] != label and item.checked_by != labeler_id:
            item.labels[labeler_id] = label
            tally["updated"] += 1


def _check_rows(items: dict[str, _Item], checks: dict[str, dict[str, str]], tally: Counter[str]) -> None:
    """Each audit-sample answer as its item's checked row, where the item has none and its answers agree."""
    for item_id, answers in sorted(checks.items()):
        item = items.get(item_id)
        if item is None or item.split != "train" or item.checked_by is not None:
            continue
        if len(set(answers.values())) > 1:
            tally["conflicting_checks"] += 1
            continue
        labeler_id, label = min(answers.items())
        if item.labels.get(labeler_id) == label:  # the answer is that labeler's latest label of the item
            item.checked_by = labeler_id
            tally["checked"] += 1


def _write(items: dict[str, _Item], out: Path) -> int:
    """The manifest's lines, a row per label (one for an unlabeled image), images relative to ``out``'s folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, folder = 0, out.parent.resolve()
    with out.open("w") as f:
        for item_id, item in items.items():
            image = os.path.relpath(item.image, folder)
            base: dict[str, object] = {"item_id": item_id, "image": image, "split": item.split}
            if item.true_label is not None:
                base["true_label"] = item.true_label
            labels = [
                {"label": y, "labeler_id": lab, "trusted": lab == item.checked_by} for lab, y in item.labels.items()
            ]
            for row in labels or [{}]:
                f.write(json.dumps(base | row) + "\n")
                rows += 1
    return rows
