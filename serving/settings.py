"""The one settings class for every labelaudit process (``LABELAUDIT_`` environment variables).

Built once at start (``Settings()``), logged once with secrets hidden (``Settings.redacted()``).
Nothing else in the serving code reads the environment (``labelaudit demo`` hands settings to the processes
it starts through it, and reads where the Kafka script is: ``LABELAUDIT_KAFKA_SCRIPT``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABELAUDIT_", env_file=None, extra="ignore")

    # -- the model -------------------------------------------------------------------------------
    model_repo: Path = Path("model_repository")
    """Triton model repository written by ``labelaudit export``."""
    model_name: str = "labelaudit"
    """Model folder inside the repository."""
    model_version: str | None = None
    """Version folder to serve; the highest one when unset."""

    # -- inference backend -----------------------------------------------------------------------
    backend: Literal["onnxruntime", "triton"] = "onnxruntime"
    """``onnxruntime`` runs the ONNX file in process; ``triton`` calls a Triton (KServe v2) server."""
    ort_intra_op_threads: int = Field(default=0, ge=0)
    """onnxruntime threads inside one operator; 0: the usable CPUs (affinity and cgroup quota, which
    onnxruntime's own default ignores), shared out among the gateway's worker processes."""
    ort_inter_op_threads: int = Field(default=1, ge=0)
    """onnxruntime threads across operators (the graph is sequential, so 1)."""
    ort_allow_spinning: bool = False
    """Let onnxruntime's idle threads spin-wait for work. Off: measured at 3-8 ms of wasted CPU per request on
    a 2-core gateway, where decoding and HTTP need those cores."""
    ort_graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisation level."""
    triton_url: str = "localhost:8001"
    """Triton's address: host:port (gRPC, default 8001) or host:port for HTTP (default 8000)."""
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_binary_data: bool = True
    """HTTP only: send tensors with Triton's binary extension; turn off for KServe-v2 servers that lack it."""
    triton_timeout_s: float = Field(default=5.0, gt=0)
    """Per-request timeout towards Triton; past it the gateway answers 503."""

    # -- audit -----------------------------------------------------------------------------------
    audit_policy: Literal["auto", "confident-joint-v1", "labeler-posterior-v1"] = "auto"
    """When a label gets a relabel request: ``labeler-posterior-v1`` (the posterior that the label is right,
    from the model and the labeler's matrix in the card, below 1/2) or ``confident-joint-v1`` (another class
    above its per-class threshold from the card); ``auto``: the first where the card has labeler matrices,
    else the second. See docs/stream.md and bench/results/label_errors.json."""
    audit_sample_rate: float = Field(default=0.0, ge=0, le=1)
    """The share of labeled items that get a second-opinion request on the relabel topic (``reason``
    ``audit_sample``), drawn at random by a hash of the item id, whether or not the model disagrees. A
    labeler whose mistakes the model shares (it errs on the images the model finds hard, toward the class the
    model picks) is invisible to the model; only another person's label on a random share of its items shows
    it, and the nightly report then measures every labeler from those shared items. 0 (the default): none."""
    store_url: SecretStr = SecretStr("sqlite:///labelaudit-audit.db")
    """Where verdicts go: ``sqlite:///path.db`` (default, WAL) or ``postgresql://user:pw@host/db`` (a secret:
    the URL may carry a password)."""
    store_timeout_s: float = Field(default=5.0, gt=0)
    """How long a PostgreSQL write waits for a live connection (the server restarting) before the gateway
    answers 503 with Retry-After; the consumer keeps retrying the batch."""
    ready_requires_store: bool = True
    """``/readyz`` answers 503 while the audit store does not answer. Every replica shares the store, so
    during an outage all of them leave the Service at once, /v1/classify included: turn this off when
    classification must stay up while audits cannot be recorded (those then answer 503 themselves)."""

    http_server: Literal["uvicorn", "granian"] = "uvicorn"
    """The HTTP server that runs the gateway's app: uvicorn (httptools, uvloop) or granian (Rust, hyper; over
    its own RSGI interface, see ``http_granian_interface``). Both get the same workers, worker settings, metrics
    folder and timeouts; what granian maps differently (one timer for the keep-alive wait and the request head,
    hyper's own 431) is in docs/serving.md. In issue 19's benchmark (bench/results/serve.json) both meet its
    aims; granian serves 5-10% more at 32 and 64 concurrent requests, uvicorn a third more at 8 and with a
    lower latency at 1, so uvicorn stays the default."""
    http_granian_interface: Literal["rsgi", "asgi"] = "rsgi"
    """How granian hands requests to the gateway: ``rsgi``, its own interface (the hot routes answered without
    ASGI's per-message machinery, everything else through the same FastAPI app; ``serving/http/rsgi.py``), or
    ``asgi``, as uvicorn does. Ignored by uvicorn."""
    http_workers: int = Field(default=0, ge=0)
    """Gateway processes (server workers) sharing the port; each has its own model session and batcher.
    0 (the default): one per CPU this process may use (``usable_cpus``), since one process is bound by
    its GIL to about one core. Past one, ``/metrics`` sums every worker's metrics
    (``prometheus_multiproc_dir``), whichever answers."""
    http_publish_relabels: bool = False
    """The gateway publishes a relabel request for every ``/v1/audit`` whose verdict disagrees, to
    ``kafka_relabel_topic``, acknowledged before it answers (as the consumer does for the stream). Off by default:
    the gateway then needs no broker, and its disagreements reach the relabel queue through the store and the
    report only. On, a broker that does not take the request within ``http_relabel_timeout_s`` is a 503
    ``relabel_unavailable`` (the verdict stays recorded; the client's retry publishes again)."""
    http_reuse_port: bool = True
    """uvicorn with several workers: each worker listens on a socket of its own (``SO_REUSEPORT``), so the
    kernel spreads new connections evenly among them. Off: uvicorn's supervisor, one shared socket, where
    whichever worker is awake accepts (measured splits up to 60/4 between 2 workers). Ignored where the
    platform has no ``SO_REUSEPORT`` (then the shared socket) and by granian (its own workers)."""
    http_relabel_timeout_s: float = Field(default=5.0, gt=0)
    """How long the gateway waits for the broker to acknowledge a relabel request."""
    http_access_log: bool = False
    """The HTTP server's access log, a line per request. Off by default: at a thousand requests a second
    uvicorn's was about 5% of the gateway's Python time, and ``/metrics`` counts requests by route and status
    anyway."""
    http_opentelemetry: bool = False
    """FastAPI's native OpenTelemetry (a span and duration metrics per request, through the OpenTelemetry
    providers configured in the process). Off by default: without an exporter it records nothing, yet asks
    the global providers on every request, which measured about 5% of a small image's request (issue 19).
    Turn it on when the process exports OpenTelemetry; ``/metrics`` (Prometheus) works either way."""
    prometheus_multiproc_dir: Path | None = Field(default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR")
    """prometheus_client's multiprocess mode: every process writes its metrics to files here and the
    gateway's ``/metrics`` reads them all. ``labelaudit serve --workers N`` (N > 1) sets it to a fresh
    private folder it removes on exit, unless it is set already (then the folder is the user's: empty it
    between runs). Read only from the environment, as prometheus_client reads it when first imported."""

    # -- batching (embedded backend) -------------------------------------------------------------
    max_batch_size: int = Field(default=64, ge=1)
    """Images per inference batch; a batch is released when full..."""
    max_batch_delay_ms: float = Field(default=2.0, ge=0)
    """...or when its first request has waited this long, or at once when no other request is queued or
    decoding (a lone request never waits for companions that are not coming)."""
    max_queue_images: int = Field(default=1024, ge=1)
    """Images allowed to wait for a batch; past it requests get 429 with Retry-After."""

    # -- limits ----------------------------------------------------------------------------------
    max_images_per_request: int = Field(default=64, ge=1)
    """More images in one request is a 413."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Largest request body accepted (413 past it)."""
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Largest encoded image accepted."""
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    """Decompression-bomb guard: width x height above this is refused."""
    max_decoding_pixels: int = Field(default=120_000_000, gt=0)
    """The gateway's admission by decoding work: pixels (width x height as the images' headers declare them)
    that one worker decodes at once. A request declaring more in all is refused (413, reason
    ``too_many_pixels``); one that does not fit yet waits, and past as many pixels waiting it gets 429. Raise
    it for requests carrying many large photos."""

    # -- slow clients (each one holds a connection; uvicorn has no timeout of its own for a request) --
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    """A connection must deliver a whole request head (request line and headers) this long after it opens
    or after the first byte of its next request; otherwise it is closed without an answer. uvicorn has
    no such timeout: a client that sent half a header, or nothing, held its connection for ever. (granian
    times heads itself, from the opening or the last response: see ``http_keep_alive_timeout_s``.)"""
    http_body_timeout_s: float = Field(default=60.0, gt=0)
    """A request's whole body must arrive this long after the route starts reading it; otherwise the answer
    is 408 ``body_timeout`` and the connection is closed. It is a deadline for the body, not a gap between
    reads (nginx's ``client_body_timeout``), so a client that trickles a byte at a time is cut too: 60 s
    moves the default 32 MiB body at about 4.5 Mbit/s. Behind a proxy that buffers bodies (nginx does by
    default) the body arrives at once and the proxy's own timeouts are the ones clients meet."""
    http_keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    """uvicorn's ``timeout_keep_alive``: an idle keep-alive connection is closed this long after its last
    response (uvicorn's default). Behind a proxy that keeps upstream connections open, set it above the
    proxy's idle timeout for them (ingress-nginx ``upstream-keepalive-timeout``, 60 s), or the proxy may
    send a request down a connection the gateway is closing and answer 502. granian has one timer for this
    wait and the next request's head: the larger of this and ``http_header_timeout_s`` (docs/serving.md)."""

    # -- security --------------------------------------------------------------------------------
    api_key: SecretStr | None = None
    """When set, the API needs ``Authorization: Bearer <key>`` (or ``X-API-Key``): ``/v1/classify``,
    ``/v1/audit``, ``/v1/models`` and the v2 model routes (metadata, readiness, inference). Open without it,
    on purpose: the probes (``/healthz``, ``/readyz``, ``/v2/health/live``, ``/v2/health/ready``, and the v2
    server metadata ``/v2``), which the kubelet calls without credentials; ``/metrics``, which Prometheus
    scrapes without them; and the API's description (``/docs``, ``/redoc``, ``/openapi.json``). None of
    them carries an image, a label or a verdict; keep the port off the internet all the same (the chart's
    NetworkPolicy)."""

    # -- the Kafka stream (labelaudit consume / produce) ------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the user's cluster (scripts/kafka.sh starts a local one)."""
    kafka_topic: str = "images"
    kafka_group_id: str = "labelaudit-audit"
    kafka_relabel_topic: str = "relabel-requests"
    kafka_dlq_topic: str = "images.dlq"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    consume_batch_size: int = Field(default=256, ge=1)
    """Messages per poll, audited as one batch (one inference call, one store transaction, one commit)."""
    consume_max_inflight_batches: int = Field(default=3, ge=1)
    """Batches polled but not yet committed; past it the partitions are paused until the model catches up."""
    consume_poison_attempts: int = Field(default=3, ge=1)
    """A failing batch is split until the record that fails is alone; tried this many times alone, it goes
    to the DLQ with reason ``processing_error`` and the rest is audited. A store or backend that is away
    (``StoreUnavailable``, ``BackendUnavailable``) is waited out instead, never dead-lettered."""
    consume_retry_max_s: float = Field(default=30.0, gt=0)
    """The longest pause between two retries of a failing batch (the backoff doubles up to it)."""
    consume_drain_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM or a rebalance: how long to wait for the batches in flight; those still failing then are
    left uncommitted (the next owner replays them) and the consumer exits."""
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """A larger message on the images topic goes to the DLQ (reason ``message_too_large``)."""
    metrics_host: str = "127.0.0.1"
    """Address the consumer's Prometheus endpoint (``--metrics-port``) binds; ``0.0.0.0`` in a container
    so that Prometheus can scrape it."""

    def kafka_client_config(self) -> dict[str, Any]:
        """Connection and security options for kafka-python's clients."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers.split(","),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config |= {"sasl_mechanism": self.kafka_sasl_mechanism, "sasl_plain_username": self.kafka_sasl_username}
            if self.kafka_sasl_password is not None:
                config["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        for key in ("cafile", "certfile", "keyfile"):
            if (value := getattr(self, f"kafka_ssl_{key}")) is not None:
                config[f"ssl_{key}"] = str(value)
        return config

    def redacted(self) -> dict:
        """The settings as a dict, secrets shown as ``**********``: safe to log."""
        return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.__dict__.items()}


def intra_op_threads(settings: Settings, processes: int = 1) -> int:
    """onnxruntime's intra-op threads for one of ``processes`` processes serving side by side: the
    setting, or else an even share of the usable CPUs (N workers with a thread per core each would run
    N x cores threads on cores threads)."""
    return settings.ort_intra_op_threads or max(1, usable_cpus() // max(1, processes))


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's CPU
    limit, rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller here: the affinity is the limit
    return max(1, cpus)
