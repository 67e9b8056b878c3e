"""The serving benchmark's load: a closed loop of concurrent senders, the CPU it and the server use (Linux
/proc), and the HTTP request bodies of each system, encoded once up front (see bench/serve.py)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import time
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


def cpu_reader(server_pid: int | None) -> Callable[[], dict]:
    """CPU seconds so far of this process (the load generator; for in-process rows, everything) and of
    the server's process tree."""

    def read() -> dict:
        return {"client": time.process_time(), "server": _tree_cpu_s(server_pid) if server_pid else None}

    return read


# -- request bodies, encoded once ----------------------------------------------------------------------


@dataclass
class Http:
    """One HTTP system at one images-per-request: where to post, the bodies to cycle over, how to read
    the probabilities out of an answer (for the parity check only)."""

    path: str
    bodies: list[tuple[bytes, str]]  # (body, content type)
    probs: Callable[[dict], np.ndarray]


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
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as session:

            async def send(i: int) -> int:
                body, headers = bodies[i % len(bodies)]
                return (await session.post(http.path, content=body, headers=headers)).status_code

            yield send
        return
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def send(i: int) -> int:
            body, headers = bodies[i % len(bodies)]
            async with session.post(http.path, data=body, headers=headers) as response:
                await response.read()
                return response.status

        yield send


def http_parity(base_url: str, http: Http, expected: np.ndarray, name: str) -> None:
    """The system answers the first payloads like the in-process core (probabilities, atol 1e-4)."""
    got = []
    for body, content_type in http.bodies:
        r = httpx.post(base_url + http.path, content=body, headers={"content-type": content_type}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{name}: {r.status_code} {r.text[:500]}")
        got.append(http.probs(r.json()))
    got = np.concatenate(got)
    np.testing.assert_allclose(got, expected[: len(got)], atol=1e-4, err_msg=f"{name} disagrees with the core")
