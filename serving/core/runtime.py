"""Everything a transport needs to audit, built once from the settings: model, backend, inference core,
audit store and auditor. The HTTP gateway and the Kafka consumer both start here (one core, thin
transports), so they run the same backend, the same policy and the same store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

from labelaudit.serving.core.admission import PixelBudget
from labelaudit.serving.core.audit import Auditor
from labelaudit.serving.core.backends import Backend, OnnxRuntimeBackend, TritonBackend
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.model_repo import ServedModel, resolve_model
from labelaudit.serving.core.policy import policy_for
from labelaudit.serving.core.store import AuditStore, open_store
from labelaudit.serving.settings import Settings


@dataclass
class Runtime:
    model: ServedModel
    backend: Backend
    core: InferenceCore
    store: AuditStore
    auditor: Auditor


def open_backend(model: ServedModel, settings: Settings) -> Backend:
    return OnnxRuntimeBackend(model, settings) if settings.backend == "onnxruntime" else TritonBackend(model, settings)


def chunked(backend: Backend, max_batch_size: int):
    """For callers that batch on their own (the consumer): one backend call per ``max_batch_size`` rows."""

    async def infer(images: np.ndarray) -> np.ndarray:
        parts = [await backend.infer(images[i : i + max_batch_size]) for i in range(0, len(images), max_batch_size)]
        return np.concatenate(parts)

    return infer


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, wrap_infer=None, budget: PixelBudget | None = None
) -> AsyncIterator[Runtime]:
    """``wrap_infer(backend)`` returns the inference callable the core uses (the gateway puts its
    micro-batcher there); by default the backend is called in chunks of ``max_batch_size``. ``budget``:
    admission by declared pixels before decoding (the gateway's)."""
    model = resolve_model(settings.model_repo, settings.model_name, settings.model_version)
    backend = open_backend(model, settings)
    store = None
    try:
        infer = wrap_infer(backend) if wrap_infer else chunked(backend, settings.max_batch_size)
        core = InferenceCore(model, infer, settings, budget=budget)
        store = open_store(settings.store_url.get_secret_value(), timeout_s=settings.store_timeout_s)
        yield Runtime(model, backend, core, store, Auditor(core, store, policy_for(model.card, settings.audit_policy)))
    finally:
        await backend.close()
        if store is not None:
            store.close()
