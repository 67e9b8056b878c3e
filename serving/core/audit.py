"""The one audit call every transport makes (HTTP now, the Kafka consumer next): classify, judge the
human label with the disagreement policy, write the verdict durably."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from labelaudit.errors import LabelAuditError
from labelaudit.schemas.audit import AuditRecord
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.policy import DisagreementPolicy
from labelaudit.serving.core.store import AuditStore


class UnknownLabel(LabelAuditError):
    status_code = 422
    reason = "unknown_label"


@dataclass(frozen=True)
class AuditItem:
    item_id: str
    labeler_id: str
    label: str
    image: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class Auditor:
    def __init__(self, core: InferenceCore, store: AuditStore, policy: DisagreementPolicy | None = None):
        self.core, self.store = core, store
        self.policy = policy or DisagreementPolicy(thresholds=tuple(core.model.card.disagreement_thresholds))
        self._index = {c: i for i, c in enumerate(core.classes)}

    def label_index(self, label: str) -> int:
        if label not in self._index:
            raise UnknownLabel(f"unknown label {label!r}; the model's classes are {list(self._index)}")
        return self._index[label]

    async def audit(self, items: list[AuditItem], *, source: str) -> list[tuple[AuditRecord, bool]]:
        """Verdicts for ``items``, written to the store before this returns; each with whether it was new."""
        labels = np.array([self.label_index(i.label) for i in items])
        probs = await self.core.classify([i.image for i in items])
        flags, scores, predicted = self.policy.judge_batch(probs, labels)
        now = datetime.now(UTC)
        model = self.core.model
        records = [
            AuditRecord(
                item_id=item.item_id,
                labeler_id=item.labeler_id,
                human_label=item.label,
                predicted_label=self.core.classes[predicted[n]],
                label_probability=float(probs[n, labels[n]]),
                predicted_probability=float(probs[n, predicted[n]]),
                score=float(scores[n]),
                disagrees=bool(flags[n]),
                policy=self.policy.name,
                probabilities=probs[n].round(6).tolist(),
                model_name=model.name,
                model_version=model.version,
                source=source,
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
                created_at=now,
            )  # fmt: skip
            for n, item in enumerate(items)
        ]
        new = await asyncio.to_thread(self.store.write, records)
        return list(zip(records, new, strict=True))
