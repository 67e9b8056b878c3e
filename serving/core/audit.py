"""The one audit call every transport makes (HTTP now, the Kafka consumer next): classify, judge the
human label with the disagreement policy, write the verdict durably."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import numpy as np

from labelaudit.errors import LabelAuditError
from labelaudit.schemas.audit import AuditRecord, RelabelAnswer, Source
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.policy import DisagreementPolicy, Policy
from labelaudit.serving.core.relabel import RelabelPublisher, request_reason
from labelaudit.serving.core.store import AuditStore


class UnknownLabel(LabelAuditError):
    status_code = 422
    reason = "unknown_label"


@dataclass(frozen=True)
class AuditItem:
    item_id: str
    labeler_id: str  # "" when unknown
    label: str | None  # None: an unlabeled image, classified and recorded, never flagged
    image: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    answers: str | None = None  # the relabel request this label answers (checked by the schemas), or None
    image_uri: str | None = None  # where the stream message's image was read from; None when sent inline


@dataclass(frozen=True)
class Stages:
    """One gate per stage of an audit (decode, model, store); made on the event loop that uses them."""

    decode: asyncio.Semaphore | contextlib.nullcontext[None]
    infer: asyncio.Semaphore | contextlib.nullcontext[None]
    write: asyncio.Semaphore | contextlib.nullcontext[None]

    @classmethod
    def one_at_a_time(cls) -> Stages:
        return cls(asyncio.Semaphore(1), asyncio.Semaphore(1), asyncio.Semaphore(1))

    @classmethod
    def unlimited(cls) -> Stages:
        return cls(contextlib.nullcontext(), contextlib.nullcontext(), contextlib.nullcontext())


Outcome = tuple[AuditRecord, bool] | LabelAuditError
"""Per item: (the verdict, whether it was new in the store), or why the item could not be audited."""


class Auditor:
    def __init__(
        self,
        core: InferenceCore,
        store: AuditStore,
        policy: Policy | None = None,
        *,
        relabels: RelabelPublisher | None = None,
    ):
        """``relabels``: where the relabel requests of stored disagreements go before ``audit_each`` returns
        (the gateway's, when it publishes them; the consumer sends its own with its commit)."""
        self.core, self.store, self.relabels = core, store, relabels
        self.policy = policy or DisagreementPolicy(thresholds=tuple(core.model.card.disagreement_thresholds))
        self._index = {c: i for i, c in enumerate(core.classes)}

    def label_index(self, label: str) -> int:
        if label not in self._index:
            raise UnknownLabel(f"unknown label {label!r}; the model's classes are {list(self._index)}")
        return self._index[label]

    async def audit(self, items: list[AuditItem], *, source: Source) -> list[tuple[AuditRecord, bool]]:
        """Verdicts for ``items``, durable before this returns; raises the first item's error, if any."""
        outcomes = await self.audit_each(items, source=source)
        for outcome in outcomes:
            if isinstance(outcome, LabelAuditError):
                raise outcome
        return cast(list[tuple[AuditRecord, bool]], outcomes)  # no error among them: each was raised above

    async def audit_each(
        self, items: list[AuditItem], *, source: Source, stages: Stages | None = None
    ) -> list[Outcome]:
        """Like ``audit``, but a bad item (unknown label, bad image) fails alone: its outcome is the error.

        The good items are classified in one batch and written to the store in one transaction, durable
        before this returns. ``stages`` (the consumer's) lets concurrent batches form a pipeline: one
        batch decodes while the one before it is in the model, instead of all of them at once.
        """
        stages = stages or Stages.unlimited()
        outcomes: list[Outcome | None] = [None] * len(items)  # every one is set before it is returned
        labels_of: dict[int, int] = {}
        for n, item in enumerate(items):
            try:
                labels_of[n] = -1 if item.label is None else self.label_index(item.label)
            except LabelAuditError as exc:
                outcomes[n] = exc
        todo = list(labels_of)
        async with stages.decode:
            inputs = await self.core.inputs_each([items[n].image for n in todo], [repr(items[n].item_id) for n in todo])
        good: list[int] = []
        arrays: list[np.ndarray] = []
        for n, x in zip(todo, inputs, strict=True):
            if isinstance(x, LabelAuditError):
                outcomes[n] = x
            else:
                good.append(n)
                arrays.append(x)
        if not good:
            return cast(list[Outcome], outcomes)
        labels = np.array([labels_of[n] for n in good])
        async with stages.infer:
            probs = await self.core.infer(np.stack(arrays))
        labeled = labels >= 0
        labelers = [items[n].labeler_id or "" for n in good]
        flags, scores, predicted = self.policy.judge_batch(probs, np.where(labeled, labels, 0), labelers)
        # an answer to a relabel request is the second opinion: scored, never itself a relabel request
        answering = np.array([items[n].answers is not None for n in good])
        flags, scores = flags & labeled & ~answering, np.where(labeled, scores, 0.0)
        now = datetime.now(UTC)
        model = self.core.model
        records = [
            AuditRecord.model_construct(  # our own typed values: validating them again costs per record
                item_id=items[n].item_id,
                labeler_id=items[n].labeler_id,
                human_label=items[n].label,
                predicted_label=self.core.classes[predicted[row]],
                label_probability=float(probs[row, labels[row]]) if labeled[row] else None,
                predicted_probability=float(probs[row, predicted[row]]),
                score=float(scores[row]),
                disagrees=bool(flags[row]),
                policy=self.policy.name,
                probabilities=probs[row].round(6).tolist(),
                model_name=model.name,
                model_version=model.version,
                source=source,
                topic=items[n].topic,
                partition=items[n].partition,
                offset=items[n].offset,
                created_at=now,
                image_uri=items[n].image_uri,
            )
            for row, n in enumerate(good)
        ]
        answers = [
            RelabelAnswer(
                request_id=answered,
                reason=request_reason(items[n].item_id, answered),
                item_id=items[n].item_id,
                labeler_id=items[n].labeler_id,
                label=cast(str, items[n].label),  # the schemas refuse an answer without a label
                created_at=now,
            )
            for n in good
            if (answered := items[n].answers) is not None
        ]
        async with stages.write:
            new = await asyncio.to_thread(self.store.write, records, answers)
        if self.relabels is not None:  # an answer is the second opinion: it asks for none itself
            await self.relabels.publish([r for r, a in zip(records, answering, strict=True) if not a])
        for row, n in enumerate(good):
            outcomes[n] = (records[row], new[row])
        return cast(list[Outcome], outcomes)
