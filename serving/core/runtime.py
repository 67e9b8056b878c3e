"""Everything a transport needs to audit, built once from the settings: model, backend, batcher, inference core,
audit store and auditor. The HTTP gateway and the Kafka consumer both start here (one core, thin
transports), so they run the same backend, the same policy and the same store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from labelaudit.serving.core.admission import PixelBudget
from labelaudit.serving.core.audit import Auditor
from labelaudit.serving.core.backends import Backend, OnnxRuntimeBackend, TritonBackend
from labelaudit.serving.core.batching import Batcher, Batching, BatchObserver, MicroBatcher, batcher_for
from labelaudit.serving.core.inference import InferenceCore
from labelaudit.serving.core.model_repo import ServedModel, resolve_model
from labelaudit.serving.core.policy import policy_for
from labelaudit.serving.core.relabel import KafkaRelabelPublisher
from labelaudit.serving.core.store import AuditStore, open_store
from labelaudit.serving.settings import Settings


@dataclass
class Runtime:
    model: ServedModel
    backend: Backend
    batcher: Batcher
    core: InferenceCore
    store: AuditStore
    auditor: Auditor


def open_backend(model: ServedModel, settings: Settings) -> Backend:
    return OnnxRuntimeBackend(model, settings) if settings.backend == "onnxruntime" else TritonBackend(model, settings)


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    batching: Batching = "caller",
    observer: BatchObserver | None = None,
    store: AuditStore | None = None,
    publish_relabels: bool = False,
) -> AsyncIterator[Runtime]:
    """The runtime, started; stopped (batcher, backend, store) on exit.

    ``batching``: ``"dynamic"`` for concurrent callers of a few images each (the gateway: micro-batching with
    the embedded backend, an in-flight bound with Triton, and admission by declared pixels before decoding),
    ``"caller"`` for a caller that brings whole batches (the consumer). ``observer`` hears about every batch
    the micro-batcher releases (the gateway's metrics). ``store``: an audit store to use instead of opening
    ``settings.store_url``; its owner closes it. ``publish_relabels``: the auditor publishes the relabel requests
    of the disagreements it stores to the relabel topic before it returns (the gateway's
    ``http_publish_relabels``; the consumer publishes its own with its commit).
    """
    model = resolve_model(settings.model_repo, settings.model_name, settings.model_version)
    backend = open_backend(model, settings)
    batcher = batcher_for(backend, settings, batching, observer)
    budget = PixelBudget(settings.max_decoding_pixels) if batching == "dynamic" else None
    opened = None
    relabels = KafkaRelabelPublisher(settings) if publish_relabels else None
    try:
        core = InferenceCore(
            model,
            batcher.submit,
            settings,
            budget=budget,
            coming=batcher.coming,
            submit_encoded=batcher.submit_encoded if isinstance(batcher, MicroBatcher) else None,
        )
        if store is None:
            store = opened = open_store(settings.store_url.get_secret_value(), timeout_s=settings.store_timeout_s)
        auditor = Auditor(core, store, policy_for(model.card, settings.audit_policy), relabels=relabels)
        await batcher.start()
        try:
            yield Runtime(model, backend, batcher, core, store, auditor)
        finally:
            await batcher.stop()
    finally:
        await backend.close()
        if relabels is not None:
            relabels.close()
        if opened is not None:
            opened.close()
