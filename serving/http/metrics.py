"""Prometheus metrics of the gateway. One process: a registry of its own (one per app, so tests stay apart).
Several workers (``Settings.prometheus_multiproc_dir``): prometheus_client's multiprocess mode, in which
every process writes its values to files in that folder and ``/metrics`` merges the files of all."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import ClientDisconnect

log = logging.getLogger("labelaudit.http")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CLIENT_CLOSED = 499  # nginx's status for a client that went away before its answer: no response is sent


class GatewayMetrics:
    def __init__(self, multiprocess_dir: Path | None = None):
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        if multiprocess_dir is not None:
            # The values are in the folder's files whatever registry holds them; the metrics join none
            # (in one they would be exported twice) and the collector reads every process's files.
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))
        r = self.registry if multiprocess_dir is None else None
        self.requests = Counter("labelaudit_http_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "labelaudit_http_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("labelaudit_images_classified", "Images classified", registry=r)
        self.batch_size = Histogram(
            "labelaudit_batch_images",
            "Images per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "labelaudit_batch_requests", "Requests per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_delay = Histogram(
            "labelaudit_batch_queue_delay_seconds",
            "Wait of a batch's first request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.releases = Counter("labelaudit_batch_releases", "Batches released, by reason", ["reason"], registry=r)
        # livesum: the images waiting behind the port are the sum of the workers' queues, and a worker that
        # has exited has none (process_exiting drops its file). Counters and histograms are summed over
        # every file, an exited worker's too: the gateway's totals never go down.
        self.queue_depth = Gauge(
            "labelaudit_queue_images", "Images waiting for a batch", multiprocess_mode="livesum", registry=r
        )
        self.rejected = Counter("labelaudit_overload_rejections", "Requests answered 429", registry=r)

    def process_exiting(self) -> None:
        """Multiprocess mode: this process's live gauges leave the totals (its counts stay)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), str(self.multiprocess_dir))

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """One request answered (or given up on: 499) on ``route``, the route's path template."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if status == 429:
            self.rejected.inc()

    def batch_released(
        self, *, images: int, requests: int, reason: str, queue_delay_s: float, queued_images: int
    ) -> None:
        self.queue_depth.set(queued_images)  # once a batch, not once a request: what waits behind this one
        self.batch_size.observe(images)
        self.batch_requests.observe(requests)
        self.queue_delay.observe(queue_delay_s)
        self.releases.labels(reason=reason).inc()


class MeasureRequests:
    """Plain ASGI middleware: requests and latency per route and status. (Starlette's ``@app.middleware``
    wraps every response in extra tasks and streams; measured at about a quarter of the gateway's Python
    time per request.)

    A client that closes its connection while its body is being read (``ClientDisconnect`` out of
    ``request.stream()``) is counted as status 499 and logged in one line: nothing is wrong with the
    server, and there is nobody to answer. (Unhandled, it was counted as a 500 and logged with two
    tracebacks, this app's and uvicorn's.) A client that leaves after its body was read is not seen: uvicorn
    drops the answer without telling the app, which counts the status it answered."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            log.info(
                "%s %s: the client closed the connection before sending its whole body", scope["method"], scope["path"]
            )
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # the router fills scope["route"] in place
            self.metrics.request_done(path, status, time.perf_counter() - started)
