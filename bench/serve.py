"""Serving under closed-loop load: requests/s and p50/p99 latency at several concurrencies, ours next to
the in-process limits and to two peer servers, side by side in one run, on one exported model and the
same real images. Two models (``--model``):

- ``fmnist`` (the default): a CE model trained a moment on task B, and task B's test PNGs (Fashion-MNIST,
  28x28 greyscale, a few hundred bytes each). Results in bench/results/serve.json.
- ``resnet18-224``: torchvision's ResNet-18 (``TwoHeadNet("torchvision:resnet18", 10, 3)``, seeded random
  weights, BatchNorm statistics taken from the photos so that answers vary by photo) behind an ImageNet-style
  card: 224x224 RGB, shorter side + centre crop with crop_pct 0.875 (shorter side to 256), bilinear,
  ImageNet mean/std, ``jpeg_draft`` off so the peers mirror it exactly. Saved as a labelaudit checkpoint and
  exported by ``export_model`` (parity on the 64 photos). The payload: 64 distinct 640x480 JPEG photos
  (quality 90), crops and rescales of the real photos that scikit-learn (``china.jpg``, ``flower.jpg``) and
  matplotlib (``grace_hopper.jpg``) ship; nothing is downloaded. One JPEG per request (``--multi-images``,
  4 by default here, per request in the extra rows). Results in bench/results/serve_resnet18.json, every
  row with ``model: "resnet18-224"``; model and photos are built once (about a minute) in
  bench/work/serve-resnet18. Defaults sized to ResNet-18 on 2 cores: concurrency 1, 8, 32; 15 s per point
  after 5 s of warm-up (a request of c x n images waits about c x n / 40 s, which the warm-up covers).

    python -m bench.serve --quick      # about 4 minutes: 3 s per point
    python -m bench.serve              # about 10 minutes: 10 s per point (writes bench/results/serve.json)
    python -m bench.serve --model resnet18-224   # about 11 minutes: 15 s per point after 5 s of warm-up

Systems (rows' ``system``; ``body`` says what travels):

- ``ort_tensors`` (body ``tensors``): in process, no HTTP. Each request is a ready (n, C, H, W) float32
  tensor ((n, 1, 28, 28) for fmnist, (n, 3, 224, 224) for resnet18-224) submitted to the gateway's own
  MicroBatcher (same settings) in front of the same onnxruntime backend. The limit: batching plus
  onnxruntime, nothing else.
- ``ort_decode`` (body ``bytes``): in process, no HTTP. Each request is the image bytes through the
  gateway's own runtime (``open_runtime(batching="dynamic")``: admission by declared pixels, decode and
  preprocess in worker threads, then the MicroBatcher and onnxruntime) and its top-3: everything the gateway
  does except HTTP. (Before issue 18 this row skipped the admission by declared pixels, which the gateway has
  had since issue 16.)
- ``gateway`` (body ``multipart``, the common client path, ``curl -F files=@x.png``; ``json`` rows send
  base64 in JSON): ``labelaudit serve`` as a user starts it (a subprocess with its default HTTP server and
  workers, embedded onnxruntime, default settings) on a free loopback port; POST /v1/classify with top_k=3.
- ``gateway_alt``: the same, run by the HTTP server that is not the default (``LABELAUDIT_HTTP_SERVER``:
  granian where uvicorn is the default, and the other way round); every gateway row names its ``http_server``
  and ``http_interface`` (granian serves over its own RSGI unless told otherwise).
- ``gateway_granian_asgi``: granian over ASGI (``LABELAUDIT_HTTP_GRANIAN_INTERFACE=asgi``), the same app as
  uvicorn runs: beside the granian row over RSGI, what the interface moves.
- ``gateway`` with body ``audit_json`` / ``audit_multipart``: the same gateway, POST /v1/audit, the route
  that needs no Kafka: one image, a ``labeler_id`` (four of them) and a ``label`` per request (on alternate
  bodies the core's class and its least likely class, so labels agree and disagree), and an ``item_id`` no
  other request has: a repeat would be answered from the store without a write and hide the write's cost.
  Every request classifies, judges and writes a verdict to the gateway's SQLite store, a new file per run
  (bench/servers.py ``start_gateway``).
- ``peer_mlserver`` (body ``v2_json_base64``): MLServer from PyPI serving the same model.onnx with its
  adaptive batching (max_batch_size 64 requests, max_batch_time 2 ms: the gateway's defaults) through
  bench/peers/mlserver_runtime.py, which decodes the same image bytes (a KServe v2 BYTES input, base64 on
  REST) with the same preprocessing. POST /v2/models/labelaudit/infer.
- ``peer_bentoml`` (body ``multipart``): BentoML from PyPI, bench/peers/bentoml_service.py: the same
  model.onnx behind ``@bentoml.api(batchable=True, max_batch_size=64)``; BentoML opens the uploaded image
  (PNG or JPEG) as a Pillow image, the service preprocesses it the same way. POST /classify.

The parts: bench/serve_workloads.py (the model and the payloads), bench/servers.py (the systems: servers on
loopback, the runtime in process), bench/loadgen.py (the closed loop, CPU accounting, request bodies), and
this file (the plan of points, the parity check and the measuring loop).

Peers run onnxruntime with the gateway's session options. Before timing, every system's probabilities
on the same images are checked against the in-process core's (httpx, whatever ``--client``); the audit
rows' check: each of the first 8 bodies answered 200, recorded, with the predicted_label that the policy the
gateway's settings choose gives on the core's probabilities (labeler-posterior-v1 can move a disagreeing
label's answer off the argmax).

The load: ``concurrency`` clients, each sending its next request as soon as the previous one answered
(closed loop) over a keep-alive connection of its own, request bodies encoded once up front and cycled
over (``Accept-Encoding: identity``). Each point runs a warm-up, then a fixed window; requests_per_s counts
the requests answered 200 in the window, latencies are those of the answered requests, errors are counted
by status (``n_429``...) or kind. ``--duration`` and ``--warmup``, when given, override ``--quick``'s 3 s and
1 s. ``--client`` (rows' and config's ``client``) picks the load generator:

- ``wrk`` (the default where the binary is found; ``bash scripts/bench-tools.sh`` installs Debian's 4.1.0):
  a compiled client in a process of its own, ``-t 1 -c <concurrency> --latency --timeout 60s``, driven by
  bench/loadgen.lua: the bodies are files in the work folder (``wrk/<system>-<body>-<n>/``), ``request()``
  returns the next one (an audit body gets its item id, ``<run tag>-<n>``, put in by Lua), ``done()`` writes
  result.json (requests, window, p50/p99/mean, errors by kind and answers by status code). The warm-up is a
  run of its own before the measured one; wrk counts whole seconds, so both round up and the row's
  ``duration_s`` is wrk's own measure of the window. Its latencies include non-200 answers (none when
  ``errors`` is 0).
- ``aiohttp`` (the fallback, with a note, where no wrk is found) or ``httpx``: asyncio workers in this
  process, one session whose pool holds ``concurrency`` connections; a request counts when it finishes
  inside the window; an audit body's item id is put in per request in Python.

Client and servers share the machine's cores (2 on the dev machines, shared with other work): every
HTTP row pays for its client too, which is why wrk is the default: its CPU per request is a small fraction
of the Python clients'. Rows carry the CPU seconds the load generator (this process; with wrk, the wrk
process, its start of a few milliseconds included) and the server's process tree used per request, so that
cost can be read. Writes bench/results/serve.json (serve_quick.json with --quick); with ``--model
resnet18-224``, serve_resnet18.json (serve_resnet18_quick.json); ``--name`` overrides either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from bench.common import SERVE_SYSTEMS, WORK, cpu_name, write_results
from bench.loadgen import (
    TOP_K,
    Http,
    Send,
    audit_labeler,
    bentoml_http,
    closed_loop,
    cpu_reader,
    gateway_audit_http,
    gateway_http,
    http_parity,
    http_sender,
    mlserver_http,
    wrk_found,
    wrk_loop,
)
from bench.serve_workloads import groups, workload
from bench.servers import Server, in_process, start_bentoml, start_gateway, start_mlserver, workers_note

console = Console()
ROOT = Path(__file__).resolve().parents[1]
SERVE_WORK = WORK / "serve"
RESNET_WORK = WORK / "serve-resnet18"
MODELS = {"fmnist": SERVE_WORK, "resnet18-224": RESNET_WORK}  # --model -> its work folder
RESULT_NAMES = {"fmnist": "serve", "resnet18-224": "serve_resnet18"}  # --model -> its results file
# --model -> the defaults of --duration, --warmup, --concurrency, --multi-images. ResNet-18 serves some 20 to 60
# images/s on 2 cores, so a closed loop of c requests of n images answers each in about c * n / 40 s: the
# warm-up has to cover that (steady state before the window), and the window a few times over.
DEFAULTS = {
    "fmnist": {"duration": 10.0, "warmup": 2.0, "concurrency": [1, 8, 32, 64], "multi_images": 8},
    "resnet18-224": {"duration": 15.0, "warmup": 5.0, "concurrency": [1, 8, 32], "multi_images": 4},
}


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Point:
    system: str
    body: str
    per_request: int


def plan(args) -> list[Point]:
    points = [
        Point("ort_tensors", "tensors", 1),
        Point("ort_decode", "bytes", 1),
        Point("gateway", "multipart", 1),
        Point("gateway", "json", 1),
        Point("gateway", "audit_json", 1),
        Point("gateway", "audit_multipart", 1),
        Point("gateway_alt", "multipart", 1),
        Point("gateway_alt", "json", 1),
        Point("gateway_granian_asgi", "multipart", 1),
        Point("gateway_granian_asgi", "json", 1),
        Point("peer_mlserver", "v2_json_base64", 1),
        Point("peer_bentoml", "multipart", 1),
    ]
    multi = args.multi_images
    if multi > 1:  # 0: requests without images only fail (a million errors in the workers runs); 1: the rows above
        points += [
            Point("ort_decode", "bytes", multi),
            Point("gateway", "multipart", multi),
            Point("peer_mlserver", "v2_json_base64", multi),
            Point("peer_bentoml", "multipart", multi),
        ]
    return [p for p in points if p.system in args.systems]


async def run(args) -> None:
    work = MODELS[args.model]
    work.mkdir(parents=True, exist_ok=True)
    load = workload(args.model, work)
    repo, images = load.repo, load.images
    model_dir = repo / "labelaudit" / "1"
    classes = json.loads((model_dir / "model_card.json").read_text())["classes"]
    import onnxruntime

    device = (
        f"{os.cpu_count()}-core CPU ({cpu_name()}, {platform.machine()}), onnxruntime {onnxruntime.__version__} "
        f"CPU provider; load generator and servers share these cores"
    )
    config = {k: v for k, v in vars(args).items()} | {
        "client_version": client_version(args.client),
        "payload": load.payload,
        "gateway_settings": "defaults (max_batch_size 64, max_batch_delay_ms 2, max_queue_images 1024, http_workers "
        f"{os.environ.get('LABELAUDIT_HTTP_WORKERS', '0')}: {workers_note()})",
        "peer_versions": peer_versions(args),
        "serving_tree": serving_tree(),
    }
    rows: list[dict] = []
    points = plan(args)
    servers: dict[str, Server] = {}
    try:
        async with in_process(repo) as runtime:
            expected = await runtime[0].classify(images[:8])
            audit = audit_expectations(runtime[0], await runtime[0].classify([g[0] for g in groups(images, 1, 64)]))
            servers = start_servers(args, repo, model_dir, {p.system for p in points}, work=work)
            https = check_parity(servers, points, images, classes, expected, audit)
            for concurrency in args.concurrency:  # systems side by side at each concurrency
                for p, pass_ in passes(points):
                    if p.system.startswith("peer_") and p.system not in servers:
                        continue
                    row = await measure(p, concurrency, args, images, runtime, servers, https)
                    rows.append(row | {"pass": pass_})
                    write_results(args.name, config=config, rows=rows, device=device)
                    console.print(row)
    finally:
        for server in servers.values():
            server.stop()
    from bench.tables import update_docs

    update_docs()


def passes(points: list[Point]) -> list[tuple[Point, int]]:
    """One concurrency's points in the order they are measured, each with its pass: every point once (pass 1),
    then the gateways' single-image classify points again in the reverse order (pass 2). Two runs measured
    the gateway first at each concurrency slower than the server after it, whichever server that was; with the
    second pass no server is always first, and the tables take each gateway point's mean over its passes."""
    again = [
        p for p in points if p.system.startswith("gateway") and p.per_request == 1 and not p.body.startswith("audit_")
    ]
    return [(p, 1) for p in points] + [(p, 2) for p in reversed(again)]


def client_version(client: str) -> str:
    """The load generator, named with its version, for the results' config."""
    if client == "wrk":
        first = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        return first.split(" [")[0]  # "wrk debian/4.1.0-3+b2 [epoll] Copyright ...": the name and the build
    import importlib.metadata

    return f"{client} {importlib.metadata.version(client)}, one asyncio process"


def serving_tree() -> str | None:
    """Uncommitted changes to the served code, named, so the commit in the results file does not overclaim."""
    res = subprocess.run(
        ["git", "status", "--porcelain", "--", "serving", "labelaudit", "schemas"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    changed = [line[3:] for line in res.stdout.splitlines() if line.strip()]
    return f"The served code had uncommitted changes in {', '.join(changed)}" if changed else None


def peer_versions(args) -> dict:
    out = {}
    for name, venv, module in [("mlserver", args.peers_venv, "mlserver"), ("bentoml", args.bentoml_venv, "bentoml")]:
        python = Path(venv) / "bin" / "python"
        if python.exists():
            code = f"import {module}, onnxruntime; print({module}.__version__, onnxruntime.__version__)"
            res = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
            if res.returncode == 0:
                version, ort_version = res.stdout.split()
                out[name] = {"version": version, "onnxruntime": ort_version}
    return out


def start_servers(args, repo: Path, model_dir: Path, systems: set[str], *, work: Path) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    try:
        if "gateway" in systems:
            servers["gateway"] = start_gateway(repo, work=work)
        if "gateway_alt" in systems:  # the HTTP server that is not the default, same app and settings
            env = {"LABELAUDIT_HTTP_SERVER": other_http_server()}
            servers["gateway_alt"] = start_gateway(repo, work=work, name="gateway_alt", env=env)
        if "gateway_granian_asgi" in systems:  # granian over ASGI instead of its own RSGI: what the interface moves
            env = {"LABELAUDIT_HTTP_SERVER": "granian", "LABELAUDIT_HTTP_GRANIAN_INTERFACE": "asgi"}
            servers["gateway_granian_asgi"] = start_gateway(repo, work=work, name="gateway_granian_asgi", env=env)
        for system, venv, start, workers in [
            ("peer_mlserver", Path(args.peers_venv), start_mlserver, args.mlserver_workers),
            ("peer_bentoml", Path(args.bentoml_venv), start_bentoml, args.bentoml_workers),
        ]:
            if system not in systems:
                continue
            if not (venv / "bin" / "python").exists():
                console.print(f"[yellow]{system}: no virtualenv at {venv} (run scripts/peers.sh); skipped")
                continue
            target = model_dir / "model.onnx" if system == "peer_mlserver" else model_dir
            servers[system] = start(venv, target, workers=workers, work=work)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


@dataclass
class AuditExpectation:
    labels: list[str]  # the human label of each audit body
    verdicts: np.ndarray  # (N, K): one-hot of the class the gateway's policy should answer for each body


def audit_expectations(core, probs: np.ndarray) -> AuditExpectation:
    """The audit bodies' human labels, one per payload of ``probs`` ((64, K), the core's answers): the core's
    class for even payloads (agreeing), its least likely class for odd ones (disagreeing); and the class
    /v1/audit should answer for each. That is the policy's class (the confident class, or labeler-posterior-v1's
    most probable true class given the label, which a disagreeing label can move off the argmax), so the
    expectation applies the policy the gateway's settings choose to the core's probabilities."""
    from labelaudit.serving.core.policy import policy_for
    from labelaudit.serving.settings import Settings

    classes = core.classes
    top = probs.argmax(axis=1)
    labels = [k if i % 2 == 0 else low for i, (k, low) in enumerate(zip(top, probs.argmin(axis=1), strict=True))]
    policy = policy_for(core.model.card, Settings().audit_policy)
    _, _, predicted = policy.judge_batch(probs, np.asarray(labels), [audit_labeler(i) for i in range(len(labels))])
    return AuditExpectation([classes[k] for k in labels], np.eye(len(classes))[predicted])


def http_for(
    p: Point, payloads: list[list[bytes]], classes: list[str], audit: AuditExpectation, top_k: int = TOP_K
) -> Http:
    if p.body.startswith("audit_"):
        return gateway_audit_http(payloads, audit.labels[: len(payloads)], classes, body=p.body)
    if p.system.startswith("gateway"):
        return gateway_http(payloads, classes, body=p.body, top_k=top_k)
    return mlserver_http(payloads) if p.system == "peer_mlserver" else bentoml_http(payloads)


def check_parity(servers, points, images, classes, expected, audit: AuditExpectation) -> dict:
    """Every HTTP system answers like the core (the audit route: the class the core's policy names, and a
    verdict recorded); returns the timed bodies per (system, body, n)."""
    https = {}
    for p in points:
        if p.system in servers:
            base = servers[p.system].base_url
            first = http_for(p, groups(images[:8], 1, 8), classes, audit, top_k=len(classes))
            want = audit.verdicts if p.body.startswith("audit_") else expected
            http_parity(base, first, want, f"{p.system} {p.body}")
            https[(p.system, p.body, p.per_request)] = http_for(p, groups(images, p.per_request, 64), classes, audit)
    return https


async def in_process_sender(p: Point, images: list[bytes], core, batcher) -> Send:
    if p.system == "ort_tensors":
        tensors = await core.preprocess_all(images)  # (N, C, H, W), decoded once before the clock starts
        payloads = [tensors[[(i * p.per_request + j) % len(tensors) for j in range(p.per_request)]] for i in range(64)]

        async def send(i: int) -> int:
            await batcher.submit(payloads[i % len(payloads)])
            return 200
    else:
        payloads = groups(images, p.per_request, 64)

        async def send(i: int) -> int:
            core.top_k(await core.classify(payloads[i % len(payloads)]), TOP_K)
            return 200

    return send


async def measure(p: Point, concurrency: int, args, images, runtime, servers, https) -> dict:
    """One point: warm-up, the timed window, CPU per request and the mean batch the batcher released."""
    core, batcher, counter = runtime
    loop = dict(concurrency=concurrency, warmup_s=args.warmup, duration_s=args.duration)
    if p.system in ("ort_tensors", "ort_decode"):
        send = await in_process_sender(p, images, core, batcher)
        before = (counter.images, counter.batches)
        result = await closed_loop(send, cpu=cpu_reader(None), **loop)
        after = (counter.images, counter.batches)
    else:
        server = servers[p.system]
        before = gateway_batches(server) if p.system.startswith("gateway") else None
        http = https[(p.system, p.body, p.per_request)]
        if args.client == "wrk":
            folder = MODELS[args.model] / "wrk" / f"{p.system}-{p.body}-{p.per_request}"
            result = await wrk_loop(server.base_url, http, server_pid=server.proc.pid, folder=folder, **loop)
        else:
            async with http_sender(server.base_url, http, concurrency, client=args.client) as send:
                result = await closed_loop(send, cpu=cpu_reader(server.proc.pid), **loop)
        after = gateway_batches(server) if p.system.startswith("gateway") else None
    mean_batch = (after[0] - before[0]) / max(1, after[1] - before[1]) if before else None
    client = None if p.system.startswith("ort_") else args.client
    return finish_row(p, concurrency, result, mean_batch, model=args.model, client=client)


def default_http_server() -> str:
    from labelaudit.serving.settings import Settings

    return str(Settings.model_fields["http_server"].default)


def other_http_server() -> str:
    return "granian" if default_http_server() == "uvicorn" else "uvicorn"


def http_server_of(system: str) -> str | None:
    """``gateway``: ``labelaudit serve`` as a user starts it (the default server); ``gateway_alt``: the other;
    ``gateway_granian_asgi``: granian over ASGI."""
    servers = {"gateway": default_http_server(), "gateway_alt": other_http_server(), "gateway_granian_asgi": "granian"}
    return servers.get(system)


def http_interface_of(system: str) -> str | None:
    """How the gateway's server hands it requests: uvicorn always ASGI, granian its RSGI by default."""
    server = http_server_of(system)
    if server is None:
        return None
    if server == "uvicorn" or system == "gateway_granian_asgi":
        return "asgi"
    from labelaudit.serving.settings import Settings

    return str(Settings.model_fields["http_granian_interface"].default)


def gateway_batches(server: Server) -> tuple[float, float]:
    """(images, batches) released so far, from the gateway's Prometheus metrics."""
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    found = dict(re.findall(r"^labelaudit_batch_images_(sum|count) (\S+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def finish_row(
    p: Point, concurrency: int, result: dict, mean_batch: float | None, *, model: str, client: str | None
) -> dict:
    ok = result["requests_per_s"] * result["duration_s"]
    per_request = {
        f"{k}_cpu_ms_per_request": round(1000 * v / ok, 3) if v is not None and ok else None
        for k, v in result.pop("cpu_s").items()
    }
    return {
        "model": model,
        "system": p.system,
        "body": p.body,
        "client": client,  # the load generator of an HTTP row; None in process
        "http_server": http_server_of(p.system),  # the gateway's (uvicorn, granian); None for the others
        "http_interface": http_interface_of(p.system),  # asgi | rsgi (granian's own); None for the others
        "concurrency": concurrency,
        "images_per_request": p.per_request,
        "requests_per_s": result["requests_per_s"],
        "images_per_s": round(result["requests_per_s"] * p.per_request, 1),
        **{k: v for k, v in result.items() if k != "requests_per_s"},
        "mean_batch_images": round(mean_batch, 2) if mean_batch is not None else None,
        **per_request,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was, for the reader
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="fmnist",
        help="fmnist: task B's 28 px PNGs (default); resnet18-224: ResNet-18 on 640x480 JPEG photos",
    )
    ap.add_argument("--quick", action="store_true", help="3 s per point, 1 s warm-up (unless given)")
    ap.add_argument(
        "--duration", type=float, default=None, help="seconds measured per point (default 10, 15 for resnet18-224)"
    )
    ap.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before each window (default 2, 5 for resnet18-224)"
    )
    ap.add_argument(
        "--concurrency", type=int, nargs="+", default=None, help="default 1 8 32 64 (fmnist), 1 8 32 (resnet18-224)"
    )
    ap.add_argument(
        "--multi-images",
        type=int,
        default=None,
        help="images per request of the extra rows (0 or 1: none; default 8, 4 for resnet18-224)",
    )
    ap.add_argument(
        "--systems",
        nargs="+",
        default=list(SERVE_SYSTEMS),
    )
    ap.add_argument("--peers-venv", default=str(ROOT / ".venv-peers"), help="MLServer's (scripts/peers.sh)")
    ap.add_argument("--bentoml-venv", default=str(ROOT / ".venv-peers-bentoml"), help="BentoML's (scripts/peers.sh)")
    ap.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (its default: 1)")
    ap.add_argument("--bentoml-workers", type=int, default=1, help="BentoML service workers (its default: 1)")
    ap.add_argument(
        "--client",
        choices=["wrk", "aiohttp", "httpx"],
        default=None,
        help="the load generator: wrk (the default where it is installed: scripts/bench-tools.sh), else aiohttp",
    )
    ap.add_argument(
        "--name",
        default=None,
        help="results file name (default serve or serve_resnet18 by --model, with _quick after it with --quick)",
    )
    args = ap.parse_args()
    defaults = DEFAULTS[args.model] | ({"duration": 3.0, "warmup": 1.0} if args.quick else {})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or RESULT_NAMES[args.model] + ("_quick" if args.quick else "")
    if args.client is None:
        args.client = "wrk" if wrk_found() else "aiohttp"
        if args.client == "aiohttp":
            console.print(
                "[yellow]no wrk found (bash scripts/bench-tools.sh installs it): the aiohttp client, whose "
                "own CPU per request caps the HTTP rows"
            )
    elif args.client == "wrk" and not wrk_found():
        raise SystemExit("--client wrk: no wrk binary found; bash scripts/bench-tools.sh installs it")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
