"""The serving benchmark's load: a closed loop of concurrent senders (asyncio in this process, or wrk, a compiled
client, in a process of its own: bench/loadgen.lua), the CPU it and the server use (Linux /proc), and the HTTP
request bodies of each system, encoded once up front (see bench/serve.py)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

Send = Callable[[int], Awaitable[int | str]]  # request number -> HTTP status (200 = ok) or exception name
TOP_K = 3

# -- the closed loop -----------------------------------------------------------------------------------


async def closed_loop(
    send: Send, *, concurrency: int, warmup_s: float, duration_s: float, cpu: Callable[[], dict] = dict
) -> dict:
    """``concurrency`` workers, each sending its next request when its last one answered. ``cpu()`` is
    read at the window's start and end (CPU seconds by name); the row gets the differences."""
    latencies: list[float] = []
    errors: Counter = Counter()
    numbers = itertools.count()
    start = time.perf_counter() + warmup_s
    end = start + duration_s

    async def worker() -> None:
        while (t0 := time.perf_counter()) < end:
            try:
                status = await send(next(numbers))
            except Exception as exc:  # a failed request is a counted error, never the end of the run
                status = getattr(exc, "status_code", None) or type(exc).__name__
            t1 = time.perf_counter()
            if start <= t1 <= end:
                if status == 200:
                    latencies.append(t1 - t0)
                else:
                    errors[status] += 1

    async def cpu_in_window() -> dict:
        await asyncio.sleep(start - time.perf_counter())
        before = cpu()
        await asyncio.sleep(end - time.perf_counter())
        return {k: v - before[k] if v is not None else None for k, v in cpu().items()}

    used, *_ = await asyncio.gather(cpu_in_window(), *(worker() for _ in range(concurrency)))
    lat_ms = np.asarray(latencies) * 1000
    done = len(latencies) + sum(errors.values())
    return {
        "requests": done,
        "requests_per_s": round(len(latencies) / duration_s, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2) if len(lat_ms) else None,
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 2) if len(lat_ms) else None,
        "mean_ms": round(float(lat_ms.mean()), 2) if len(lat_ms) else None,
        "errors": sum(errors.values()),
        **{f"n_{k}": v for k, v in sorted(errors.items(), key=str)},
        "duration_s": duration_s,
        "cpu_s": used,
    }


# -- CPU accounting (Linux /proc) ----------------------------------------------------------------------


def _tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants that are alive now."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(stats[p][1] for p in tree if p in stats)


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's children that have ended (wrk, once it has exited)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cpu_reader(server_pid: int | None, *, client: Callable[[], float] = time.process_time) -> Callable[[], dict]:
    """CPU seconds so far of the load generator (by default this process; for in-process rows, everything)
    and of the server's process tree."""

    def read() -> dict:
        return {"client": client(), "server": _tree_cpu_s(server_pid) if server_pid else None}

    return read


# -- request bodies, encoded once ----------------------------------------------------------------------


ITEM_MARKER = b"bench-item-id-marker"  # in an audit body, where each request puts an item id of its own


@dataclass
class Http:
    """One HTTP system at one images-per-request: where to post, the bodies to cycle over, how to read
    the probabilities out of an answer (for the parity check only). With ``unique_items``, each body holds
    ITEM_MARKER once and every request replaces it with an item id no other request has."""

    path: str
    bodies: list[tuple[bytes, str]]  # (body, content type)
    probs: Callable[[dict], np.ndarray]  # (n, K); for an answer without probabilities, one-hot of its class
    parity: str = "probabilities"  # or "argmax": compare only the predicted classes
    unique_items: bool = False

    def body(self, i: int, tag: str) -> tuple[bytes, str]:
        """Request ``i``'s (body, content type); its item id ``<tag>-<i>`` where bodies carry one."""
        body, content_type = self.bodies[i % len(self.bodies)]
        if self.unique_items:
            body = body.replace(ITEM_MARKER, f"{tag}-{i}".encode(), 1)
        return body, content_type


def _encoded(**request_kwargs) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", **request_kwargs)
    return request.read(), request.headers["content-type"]


def _file(i: int, img: bytes) -> tuple[str, bytes, str]:
    """A multipart file part: (file name, bytes, content type) as a client would send this image."""
    return (f"{i}.jpg", img, "image/jpeg") if img[:3] == b"\xff\xd8\xff" else (f"{i}.png", img, "image/png")


def _gateway_probs(answer: dict, classes: list[str]) -> np.ndarray:
    return np.asarray(
        [[{t["label"]: t["probability"] for t in r["top"]}.get(c, 0.0) for c in classes] for r in answer["results"]]
    )


def gateway_http(payloads: list[list[bytes]], classes: list[str], *, body: str, top_k: int = TOP_K) -> Http:
    if body == "multipart":
        bodies = [
            _encoded(files=[("files", _file(i, img)) for i, img in enumerate(p)], data={"top_k": str(top_k)})
            for p in payloads
        ]
    else:
        bodies = [
            _encoded(
                json={
                    "images": [{"id": str(i), "data": base64.b64encode(img).decode()} for i, img in enumerate(p)],
                    "top_k": top_k,
                }
            )
            for p in payloads
        ]
    return Http("/v1/classify", bodies, lambda a: _gateway_probs(a, classes))


def audit_labeler(i: int) -> str:
    """The labeler of audit body ``i``: four of them, none in the model card (the policy's pooled habits)."""
    return f"bench-{i % 4}"


def gateway_audit_http(payloads: list[list[bytes]], labels: list[str], classes: list[str], *, body: str) -> Http:
    """POST /v1/audit: one image, a labeler, the human label ``labels[i]`` and a unique item id per request (a
    repeated item is answered from the store without a write, which would hide the write's cost)."""
    bodies = []
    for i, (p, label) in enumerate(zip(payloads, labels, strict=True)):
        fields = {"item_id": ITEM_MARKER.decode(), "labeler_id": audit_labeler(i), "label": label}
        if body == "audit_multipart":
            bodies.append(_encoded(files=[("image", _file(i, p[0]))], data=fields))
        else:
            bodies.append(_encoded(json=fields | {"image": base64.b64encode(p[0]).decode()}))
        if bodies[-1][0].count(ITEM_MARKER) != 1:
            raise RuntimeError(f"audit body {i} does not hold the item-id marker exactly once")

    def predicted(answer: dict) -> np.ndarray:
        if not answer["recorded"]:
            raise RuntimeError(f"/v1/audit did not record item {answer['item_id']}: ids are not unique")
        return np.eye(len(classes))[[classes.index(answer["predicted_label"])]]

    return Http("/v1/audit", bodies, predicted, parity="argmax", unique_items=True)


def mlserver_http(payloads: list[list[bytes]]) -> Http:
    def v2(p: list[bytes]) -> dict:
        return {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [len(p)],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(img).decode() for img in p],
                }
            ]
        }

    def probs(a: dict) -> np.ndarray:
        out = a["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    return Http("/v2/models/labelaudit/infer", [_encoded(json=v2(p)) for p in payloads], probs)


def bentoml_http(payloads: list[list[bytes]]) -> Http:
    bodies = [_encoded(files=[("images", _file(i, img)) for i, img in enumerate(p)]) for p in payloads]
    return Http("/classify", bodies, lambda a: np.asarray(a, dtype=np.float32))


@asynccontextmanager
async def http_sender(base_url: str, http: Http, concurrency: int, *, client: str = "aiohttp"):
    """A ``Send`` over one client session whose pool holds ``concurrency`` keep-alive connections."""
    bodies = [(body, {"content-type": ctype, "accept-encoding": "identity"}) for body, ctype in http.bodies]
    tag = uuid.uuid4().hex[:8]

    def request(i: int) -> tuple[bytes, dict]:
        body, headers = bodies[i % len(bodies)]
        return (http.body(i, tag)[0], headers) if http.unique_items else (body, headers)

    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as session:

            async def send(i: int) -> int:
                body, headers = request(i)
                return (await session.post(http.path, content=body, headers=headers)).status_code

            yield send
        return
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def send(i: int) -> int:
            body, headers = request(i)
            async with session.post(http.path, data=body, headers=headers) as response:
                await response.read()
                return response.status

        yield send


def http_parity(base_url: str, http: Http, expected: np.ndarray, name: str) -> None:
    """The system answers the first payloads like the in-process core: probabilities within atol 1e-4, or
    (``http.parity == "argmax"``) the same predicted classes."""
    got = []
    tag = f"parity-{uuid.uuid4().hex[:8]}"
    for i in range(len(http.bodies)):
        body, content_type = http.body(i, tag)
        r = httpx.post(base_url + http.path, content=body, headers={"content-type": content_type}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{name}: {r.status_code} {r.text[:500]}")
        got.append(http.probs(r.json()))
    got, expected = np.concatenate(got), expected[: sum(len(g) for g in got)]
    message = f"{name} disagrees with the core"
    if http.parity == "argmax":
        np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1), err_msg=message)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=message)


# -- wrk: the same closed loop from a compiled client ---------------------------------------------------

WRK_SCRIPT = Path(__file__).with_name("loadgen.lua")


def wrk_found() -> bool:
    return shutil.which("wrk") is not None


def write_wrk_bodies(http: Http, folder: Path) -> None:
    """What bench/loadgen.lua reads: requests.txt (the path, the item-id marker or "-", one content type per
    body) and the bodies as body-000, body-001, ..."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    marker = ITEM_MARKER.decode() if http.unique_items else "-"
    (folder / "requests.txt").write_text("\n".join([http.path, marker, *(ctype for _, ctype in http.bodies)]) + "\n")
    for i, (body, _) in enumerate(http.bodies):
        (folder / f"body-{i:03d}").write_bytes(body)


async def run_wrk(url: str, folder: Path, *, concurrency: int, seconds: int, tag: str) -> dict:
    """One wrk run of ``seconds`` over ``concurrency`` keep-alive connections (one thread): result.json."""
    result = folder / "result.json"
    result.unlink(missing_ok=True)
    cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s", "--latency", "--timeout", "60s"]
    cmd += ["-s", str(WRK_SCRIPT), url, "--", str(folder), tag]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await proc.communicate()
    (folder / "wrk.txt").write_bytes(output)  # wrk's own report, for a reader who wants it
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {output.decode(errors='replace')[-2000:]}")
    return json.loads(result.read_text())


def wrk_result(raw: dict, cpu_s: dict) -> dict:
    """``closed_loop``'s result from loadgen.lua's result.json: a request is ok when answered 200; errors by
    status (``n_422``...) and by wrk's socket error kinds (``n_connect``, ``n_read``, ``n_write``,
    ``n_timeout``). wrk's latencies are of every answer, errors included (they equal closed_loop's when
    there are none). The window is wrk's own measure of its run."""
    statuses = {int(code): k for code, k in raw["statuses"].items()}
    errors = {str(code): k for code, k in statuses.items() if code != 200}
    errors |= {kind: k for kind, k in raw["errors"].items() if kind != "status" and k}
    ok = statuses.get(200, 0)
    duration_s = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "requests": ok + sum(errors.values()),
        "requests_per_s": round(ok / duration_s, 1),
        "p50_ms": round(latency["p50"] / 1000, 2) if ok else None,
        "p99_ms": round(latency["p99"] / 1000, 2) if ok else None,
        "mean_ms": round(latency["mean"] / 1000, 2) if ok else None,
        "errors": sum(errors.values()),
        **{f"n_{k}": v for k, v in sorted(errors.items())},
        "duration_s": round(duration_s, 3),
        "cpu_s": cpu_s,
    }


async def wrk_loop(
    base_url: str, http: Http, *, concurrency: int, warmup_s: float, duration_s: float, server_pid: int, folder: Path
) -> dict:
    """``closed_loop`` from wrk: a warm-up run, then the measured run (wrk counts whole seconds, so both
    round up). The client's CPU is wrk's (its process, start included: reading the bodies, milliseconds),
    the server's its process tree's, over the measured run."""
    write_wrk_bodies(http, folder)
    url, tag = base_url + http.path, uuid.uuid4().hex[:8]
    run = dict(url=url, folder=folder, concurrency=concurrency)
    if warmup_s > 0:
        await run_wrk(**run, seconds=math.ceil(warmup_s), tag=f"{tag}w")
    cpu = cpu_reader(server_pid, client=children_cpu_s)
    before = cpu()
    raw = await run_wrk(**run, seconds=math.ceil(duration_s), tag=f"{tag}m")
    used = {k: v - before[k] for k, v in cpu().items()}
    return wrk_result(raw, used)
