"""Where a gateway request's CPU goes: the gateway as bench/serve.py runs it (``labelaudit serve``, default
settings, one uvicorn worker per usable CPU), closed-loop single-image requests to POST /v1/classify at each
(body in multipart, json) x (concurrency in 1, 64), and while the load runs, ``py-spy record`` on the server
and every process it spawned. Each sample (one thread's stack at one tick) goes to one stage by
``STAGE_RULES`` below, and each stage gets its share of the CPU each thread used in the window, per request.

    python -m bench.profile_gateway                    # about 80 s: 15 s windows (profile_gateway.json)
    python -m bench.profile_gateway --duration 3 --warmup 1 --name profile_smoke     # a quick look
    python -m bench.profile_gateway --name profile_gateway_before --label "before: <change>"

``--name`` and ``--label``: a run before a change and one after it are two results files
(``profile_gateway_before.json``, ``profile_gateway.json``); docs/serving.md's table shows every
``profile_gateway*.json`` side by side, a column per point and label, each later label with its change from
the first, so what each change moved can be read off one table.

How samples become microseconds. py-spy (``--subprocesses --threads --nonblocking``, raw collapsed stacks,
``--rate`` per second per thread, 100 by default) leaves out a thread that is not runnable at the tick
(idle), but a thread that is runnable and waiting for a core counts as running: on a busy machine samples /
rate overstates CPU (by about the load average over the cores: 3x in a smoke run at load 6 on 2 cores). So
each thread's samples are weighed by the CPU time that thread really used in the window
(``/proc/<pid>/task/<tid>/schedstat``, read as the window opens and closes): a stage's ``cpu_us_per_request``
is the sum over threads of that thread's CPU x the stage's share of its samples, / the requests answered in
the window. Samples whose leaf is a wait (``WAIT_LEAVES``: the thread pool's queue, threading's waits, the
supervisor's pipes) are a woken thread not yet on a core, and take no share. Rows keep the unweighted
``sampled_us_per_request`` (samples / rate / requests) beside it, and each point the server's CPU from /proc
(``measured_cpu_us_per_request``), the CPU of threads py-spy never sampled (not Python threads, such as
onnxruntime's intra-op pool where it has one; on 2 cores each worker has one intra-op thread, the calling
one, which is sampled) and the share of the server threads' runnable time spent waiting for a core
(``runqueue_wait_pct``: how much a busy machine could blur the shares; low on a quiet one, whose shares are
the ones to quote). The event loop's poll is no such wait leaf (uvloop's C work has no Python frame below it
either), so on a busy machine ``event loop`` also holds the time a woken loop waits for a core.

py-spy's own cost: reading a deep stack costs it a fraction of a millisecond of CPU on these VMs, for every
thread at every tick, about 0.2 of a core at 100 samples/s on the gateway's 2 workers (0.45 at 250): the
rows carry it (``py_spy_cpu_us_per_request``). It competes with the server for the cores (more run-queue
wait) but does not run in its threads, so the CPU each stage is given is the server's own.

py-spy's ``--native`` (C frames: onnxruntime's, Pillow's, uvloop's) needs its blocking mode, which stops the
server's threads at every sample; there its idle check took threads blocked in epoll_wait, read and lock
waits for running (99% of a smoke run's samples), so neither is offered. Time inside C code counts for the
Python frame that called it (Pillow's decoder for ``PIL``, onnxruntime's for ``Session.run``); uvloop's own C
work (socket reads and writes, callbacks' dispatch) has no Python frame and counts as ``event loop``.

``--client``: wrk (the default where found, as in bench/serve.py: a compiled client that leaves the cores to
the server) runs a warm-up of its own and then the measured run, py-spy started just before it; aiohttp or
httpx run bench/loadgen.py's closed loop, py-spy started as its window opens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
from rich.console import Console

from bench.common import WORK, cpu_name, git_commit, write_results
from bench.loadgen import closed_loop, cpu_reader, gateway_http, http_sender, wrk_found, wrk_loop
from bench.serve import client_version, serving_tree
from bench.serve_workloads import groups, workload
from bench.servers import Server, start_gateway, workers_note

console = Console()
PROFILE_WORK = WORK / "profile_gateway"
MODEL_WORK = {"fmnist": WORK / "serve", "resnet18-224": WORK / "serve-resnet18"}  # shared with bench/serve.py
BODIES = ["multipart", "json"]
CONCURRENCY = [1, 64]

# -- the stages -----------------------------------------------------------------------------------------

# (stage, frame pattern), in priority order. A frame is py-spy's ``function (file:line)`` with the full file
# name (``--full-filenames``). A sample's stack is read from its innermost frame outwards: the first frame
# that any rule matches decides the stage, and when several rules match that frame, the earlier rule here
# wins (so ``InferenceCore.top_k`` is response encoding, not batch hand-off like the rest of inference.py).
# Generic code (pydantic, numpy, contextlib, the interpreter's C) matches nothing on purpose, so it
# counts for the code that called it: pydantic under ``parse_json`` is validation, under ``serialize_response``
# response encoding. A sample no frame matches is ``other``.
STAGE_RULES: list[tuple[str, str]] = [
    # onnxruntime's Python wrapper (its C++ runs under it) and the backend that calls it.
    ("inference", r"/onnxruntime/|serving/core/backends\.py"),
    # Pillow, the card's preprocessing, the core's decode in its worker thread, and the header read that
    # admission by pixels does before decoding.
    (
        "decode",
        r"/PIL/|labelaudit/imaging/|^(InferenceCore\.)?(to_input|_inputs_sync) .*serving/core/inference\.py|"
        r"^declared_pixels .*serving/core/admission\.py",
    ),
    # The Prometheus counters and histograms each request and batch updates.
    ("metrics", r"/prometheus_client/|^(GatewayMetrics\.)?batch_released .*serving/http/metrics\.py"),
    # The answer: top-k, the response models built in the route, FastAPI's serialisation, the JSON bytes
    # (Starlette's JSONResponse, or the gateway's own orjson response).
    (
        "response encoding",
        r"^(InferenceCore\.)?top_k .*serving/core/inference\.py|"
        r"classify(\.<locals>\.<listcomp>)? .*serving/http/v1\.py|"
        r"serialize_response|_prepare_response_content|/fastapi/encoders\.py|/starlette/responses\.py|"
        r"serving/http/responses\.py|/orjson/|/json/(encoder|__init__)\.py",
    ),
    # Requests queued for the batcher, batches gathered and answered, the hops to and from worker threads
    # (run_in_executor, futures set across threads, the loop's wake-up), threads waking, admission's wait.
    (
        "batch hand-off",
        r"serving/core/batching\.py|serving/core/admission\.py|serving/core/inference\.py|"
        r"/asyncio/(queues|futures|locks|tasks)\.py|/concurrent/futures/|/threading\.py|"
        r"^(BaseEventLoop\.)?(call_soon_threadsafe|run_in_executor) .*asyncio/base_events\.py|_write_to_self",
    ),
    # The body off the connection (uvicorn's receive is HTTP server), and multipart parsing.
    (
        "body read",
        r"^read_body .*serving/http/body\.py|serving/http/multipart\.py|/multipart/|/python_multipart/|"
        r"^(Request\.)?(stream|body) .*starlette/requests\.py",
    ),
    # The request checked into its model: pydantic (under these frames), the form's fields, base64.
    (
        "validation",
        r"^(parse_json|parse_fields|ascii_int) .*serving/http/body\.py|serving/core/payload\.py|/base64\.py|"
        r"^images_from_request .*serving/http/v1\.py",
    ),
    # Middleware, the router, FastAPI's request handler and dependencies (the API key's check).
    ("routing", r"/starlette/|/fastapi/|serving/http/(metrics|app|errors)\.py"),
    # uvicorn's protocol (httptools' parsing callbacks, receive and send, run_asgi), the header deadline, the
    # transport's reads and writes where they have Python frames.
    (
        "HTTP server",
        r"/uvicorn/protocols/|/httptools/|/h11/|serving/http/server\.py|/asyncio/(selector_events|transports)\.py",
    ),
    # What is left on the loop: its own turns (uvloop's C), the callbacks' dispatch, the server's housekeeping,
    # the supervisor and its pipes to the workers, the process bootstrap around everything.
    # (asyncio's other modules, such as the timeouts read_body sets, count for their caller.)
    (
        "event loop",
        r"/asyncio/(base_events|events|runners|unix_events)\.py|/selectors\.py|uvloop|/uvicorn/|/multiprocessing/",
    ),
]
STAGES = [stage for stage, _ in STAGE_RULES] + ["other"]
_RULES = [(stage, re.compile(pattern)) for stage, pattern in STAGE_RULES]

# Leaf frames of a thread blocked in a wait: the thread pool's queue, threading's waits, the supervisor's pipes.
# py-spy leaves a sleeping thread out, so a sample here is a thread just woken and runnable, most often waiting
# for a core (on a busy machine, many): it used next to no CPU. Such samples take no share of their thread's
# CPU (unless the thread has no other samples) and are counted apart (``woken_pct``). The event loop's poll
# is not among them: under ``Runner.run`` with no Python frame below it is uvloop's C at work too.
WAIT_LEAVES = re.compile(
    r"^_worker .*concurrent/futures/thread\.py|^(Condition|Event|Barrier)\.wait .*threading\.py|"
    r"^(Semaphore\.acquire|Thread\.join|Thread\._wait_for_tstate_lock) .*threading\.py|"
    r"^(Connection\._recv|Connection\._recv_bytes|_ConnectionBase\.recv|_ConnectionBase\.poll|Connection\._poll) "
    r".*multiprocessing/connection\.py|^main .*multiprocessing/resource_tracker\.py|select .*selectors\.py"
)


def stage_of(frames: list[str]) -> str:
    """The stage of one stack (outermost frame first): the innermost frame any rule matches decides."""
    for frame in reversed(frames):
        for stage, pattern in _RULES:
            if pattern.search(frame):
                return stage
    return "other"


# py-spy's raw (collapsed) format with --subprocesses and --threads: one record per distinct stack,
# ``process PID:"CMDLINE";[process PID:"CMDLINE";...]thread (TID): NAME;frame;frame;... COUNT``: a process
# frame for the server, then one more per generation (a worker: the server's, then its own). A command line
# may span lines.
_RECORD = re.compile(r'^((?:process \d+:".*?";)+)thread \((\d+)\): [^;\n]*;([^\n]*) (\d+)$', re.M | re.S)
_PROCESS = re.compile(r'process (\d+):"')


@dataclass
class Profile:
    samples: Counter = field(default_factory=Counter)  # (tid, stage) -> samples
    woken: Counter = field(default_factory=Counter)  # (tid, stage) -> those of them at a wait leaf
    by_process: Counter = field(default_factory=Counter)  # pid -> samples
    other_leaves: Counter = field(default_factory=Counter)  # leaf frame of an `other` sample -> samples

    def by_thread(self) -> Counter:
        out: Counter = Counter()
        for (tid, _), n in self.samples.items():
            out[tid] += n
        return out

    def by_stage(self) -> Counter:
        out: Counter = Counter()
        for (_, stage), n in self.samples.items():
            out[stage] += n
        return out


def read_profile(text: str) -> Profile:
    profile = Profile()
    for processes, tid, stack, count in _RECORD.findall(text):
        frames, n = stack.split(";"), int(count)
        stage = stage_of(frames)
        profile.samples[(int(tid), stage)] += n
        if WAIT_LEAVES.search(frames[-1]):
            profile.woken[(int(tid), stage)] += n
        profile.by_process[int(_PROCESS.findall(processes)[-1])] += n
        if stage == "other":
            profile.other_leaves[frames[-1]] += n
    return profile


# -- CPU per thread (Linux schedstat) -------------------------------------------------------------------


def thread_times(root_pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (ns on a core, ns runnable waiting for one) so far, for every thread of ``root_pid``'s tree."""
    try:
        root = psutil.Process(root_pid)
        pids = [root_pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return {}
    times = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                on_cpu, waiting, _ = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue  # a thread that ended meanwhile
            times[int(task.name)] = (int(on_cpu), int(waiting))
    return times


@dataclass
class Attribution:
    cpu_s: dict[str, float]  # stage -> CPU seconds in the window
    unsampled_cpu_s: float  # threads that used CPU and were never sampled
    runqueue_wait_pct: float | None


def attribute(profile: Profile, before: dict, after: dict, rate: int) -> Attribution:
    """Each sampled thread's CPU in the window, split over the stages of its samples, those at a wait leaf
    left out where the thread has others (a thread missing from either reading counts samples / rate)."""
    delta = {tid: (after[tid][0] - before[tid][0], after[tid][1] - before[tid][1]) for tid in after if tid in before}
    per_thread = profile.by_thread()
    weighed = Counter({key: n - profile.woken[key] for key, n in profile.samples.items() if n > profile.woken[key]})
    for tid in per_thread:  # a thread seen only at wait leaves keeps them
        if not any(t == tid for t, _ in weighed):
            weighed.update({key: n for key, n in profile.samples.items() if key[0] == tid})
    per_weighed: Counter = Counter()
    for (tid, _), n in weighed.items():
        per_weighed[tid] += n
    cpu_s: dict[str, float] = defaultdict(float)
    for (tid, stage), n in weighed.items():
        thread_s = delta[tid][0] / 1e9 if tid in delta else per_thread[tid] / rate
        cpu_s[stage] += thread_s * n / per_weighed[tid]
    unsampled = sum(on_cpu for tid, (on_cpu, _) in delta.items() if tid not in per_thread) / 1e9
    on_cpu, waiting = (sum(d[i] for d in delta.values()) for i in (0, 1))
    wait_pct = round(100 * waiting / (on_cpu + waiting), 1) if on_cpu + waiting else None
    return Attribution(dict(cpu_s), unsampled, wait_pct)


# -- py-spy ------------------------------------------------------------------------------------------


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e .[dev] (or pip install py-spy)")
    return found


def py_spy_version() -> str:
    return subprocess.run([py_spy(), "--version"], capture_output=True, text=True, check=True).stdout.strip()


PY_SPY_OPTIONS = ["--subprocesses", "--threads", "--nonblocking", "--format", "raw", "--full-filenames"]


class SampledWindow:
    """py-spy on the server's process tree for ``duration_s`` (it stops by itself), and each thread's CPU
    from the moment it starts (``open``) to the window's end (``close``). As closed_loop's CPU reader it
    opens on the window's first read and closes on the second."""

    def __init__(self, server: Server, out: Path, *, duration_s: int, rate: int):
        self.server, self.out, self.duration_s, self.rate = server, out, duration_s, rate
        self.read_cpu = cpu_reader(server.proc.pid)
        self.proc: subprocess.Popen | None = None
        self.before: dict = {}
        self.after: dict = {}

    def open(self) -> None:
        self.before = thread_times(self.server.proc.pid)
        cmd = [py_spy(), "record", "--pid", str(self.server.proc.pid), *PY_SPY_OPTIONS, "--rate", str(self.rate)]
        cmd += ["--duration", str(self.duration_s), "--output", str(self.out)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def close(self) -> None:
        self.after = thread_times(self.server.proc.pid)

    def __call__(self) -> dict:
        self.open() if self.proc is None else self.close()
        return self.read_cpu()

    def finish(self) -> tuple[str, float]:
        """Wait for py-spy; (its output, the CPU seconds it used)."""
        assert self.proc is not None
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            output, _ = self.proc.communicate(timeout=self.duration_s + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"py-spy failed ({self.proc.returncode}): {output[-2000:]}")
        return output, cpu_s


# -- the run -------------------------------------------------------------------------------------------


async def load_under_py_spy(server: Server, http, *, concurrency: int, args, out: Path) -> tuple[dict, SampledWindow]:
    """Warm-up, then the window under py-spy: closed_loop's result and the window."""
    window = SampledWindow(server, out, duration_s=args.duration, rate=args.rate)
    if args.client == "wrk":
        folder = out.with_suffix("")  # the bodies wrk reads
        loop = dict(server_pid=server.proc.pid, folder=folder, concurrency=concurrency, warmup_s=0)
        if args.warmup > 0:
            await wrk_loop(server.base_url, http, duration_s=args.warmup, **loop)
        window.open()
        result = await wrk_loop(server.base_url, http, duration_s=args.duration, **loop)
        window.close()
    else:
        async with http_sender(server.base_url, http, concurrency, client=args.client) as send:
            loop = dict(concurrency=concurrency, warmup_s=args.warmup, duration_s=args.duration)
            result = await closed_loop(send, cpu=window, **loop)
    return result, window


async def measure(server: Server, http, *, body: str, concurrency: int, args, out: Path) -> list[dict]:
    """One point: a row per stage."""
    result, window = await load_under_py_spy(server, http, concurrency=concurrency, args=args, out=out)
    spy_output, spy_cpu_s = window.finish()
    profile = read_profile(out.read_text(errors="replace"))
    cpu = attribute(profile, window.before, window.after, args.rate)
    samples = profile.by_stage()
    answered = result["requests"] - result["errors"]

    def per_request(seconds: float | None) -> float | None:
        return round(1e6 * seconds / answered, 1) if answered and seconds is not None else None

    errors = re.search(r"Errors: (\d+)", spy_output)
    attributed = sum(cpu.cpu_s.values())
    point = {
        "label": args.label,
        "client": args.client,
        "body": body,
        "concurrency": concurrency,
        "images_per_request": 1,
        "requests_per_s": result["requests_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "requests_in_window": answered,
        "samples": sum(samples.values()),
        "sampled_processes": len(profile.by_process),
        "sampled_threads": len(profile.by_thread()),
        "py_spy_errors": int(errors.group(1)) if errors else None,
        "py_spy_cpu_us_per_request": per_request(spy_cpu_s),
        "measured_cpu_us_per_request": per_request(result["cpu_s"]["server"]),
        "attributed_cpu_us_per_request": per_request(attributed),
        "unsampled_cpu_us_per_request": per_request(cpu.unsampled_cpu_s),
        "sampled_cpu_us_per_request": per_request(sum(samples.values()) / args.rate),
        "runqueue_wait_pct": cpu.runqueue_wait_pct,
        "woken_pct": round(100 * sum(profile.woken.values()) / max(1, sum(samples.values())), 1),
        "client_cpu_us_per_request": per_request(result["cpu_s"]["client"]),
        "other_top_leaves": [[leaf, n] for leaf, n in profile.other_leaves.most_common(5)],
        "stacks": str(out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was, for the reader
    }
    return [
        point
        | {
            "stage": stage,
            "stage_samples": samples[stage],
            "share_pct": round(100 * cpu.cpu_s.get(stage, 0.0) / attributed, 2) if attributed else None,
            "cpu_us_per_request": per_request(cpu.cpu_s.get(stage, 0.0)),
            "sampled_us_per_request": per_request(samples[stage] / args.rate),
        }
        for stage in STAGES
    ]


def summary(rows: list[dict]) -> str:
    """One point as the console shows it while the run goes on."""
    head = rows[0]
    lines = [
        f"{head['body']} c={head['concurrency']}: {head['requests_per_s']} requests/s; CPU us/request: "
        f"attributed {head['attributed_cpu_us_per_request']}, measured {head['measured_cpu_us_per_request']}, "
        f"unsampled threads {head['unsampled_cpu_us_per_request']}, raw samples/rate "
        f"{head['sampled_cpu_us_per_request']}; run-queue wait {head['runqueue_wait_pct']}%, samples at a wait "
        f"leaf {head['woken_pct']}%"
    ]
    lines += [f"  {r['stage']:<18} {r['share_pct'] or 0:6.1f}%  {r['cpu_us_per_request'] or 0:8.1f} us" for r in rows]
    if head["other_top_leaves"]:
        lines.append("  other's top leaves: " + "; ".join(f"{leaf} x{n}" for leaf, n in head["other_top_leaves"]))
    return "\n".join(lines)


async def run(args) -> None:
    work = MODEL_WORK[args.model]
    work.mkdir(parents=True, exist_ok=True)
    load = workload(args.model, work)
    classes = json.loads((load.repo / "labelaudit" / "1" / "model_card.json").read_text())["classes"]
    stacks = PROFILE_WORK / args.name
    shutil.rmtree(stacks, ignore_errors=True)
    stacks.mkdir(parents=True)
    import onnxruntime

    device = (
        f"{os.cpu_count()}-core CPU ({cpu_name()}, {platform.machine()}), onnxruntime {onnxruntime.__version__} "
        "CPU provider; load generator, profiler and server share these cores"
    )
    config = vars(args) | {
        "started": datetime.now().isoformat(timespec="seconds"),
        "client_version": client_version(args.client),
        "payload": load.payload,
        "gateway_settings": f"defaults ({workers_note()})",
        "serving_tree": serving_tree(),
        "py_spy": py_spy_version(),
        "py_spy_options": f"record {' '.join(PY_SPY_OPTIONS)} --rate {args.rate}; idle threads left out",
        "stages": STAGE_RULES,
        "rule": "the innermost frame a rule matches decides; among the rules matching it, the earlier",
        "cpu": "each thread's CPU in the window (schedstat) split over its samples' stages, / requests answered",
    }
    rows: list[dict] = []
    server = start_gateway(load.repo, work=work)
    try:
        for concurrency in args.concurrency:
            for body in args.bodies:
                http = gateway_http(groups(load.images, 1, 64), classes, body=body)
                out = stacks / f"{body}-c{concurrency}.txt"
                point = await measure(server, http, body=body, concurrency=concurrency, args=args, out=out)
                rows += point
                write_results(args.name, config=config, rows=rows, device=device)
                console.print(summary(point), highlight=False)
    finally:
        server.stop()
    from bench.tables import update_serving_docs

    update_serving_docs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODEL_WORK), default="fmnist", help="as bench/serve.py's --model")
    ap.add_argument("--duration", type=int, default=15, help="seconds sampled per point (whole: py-spy's unit)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before each window")
    ap.add_argument("--concurrency", type=int, nargs="+", default=CONCURRENCY)
    ap.add_argument("--bodies", nargs="+", choices=BODIES, default=BODIES)
    ap.add_argument(
        "--rate", type=int, default=100, help="py-spy's samples per second per thread (its CPU grows with it)"
    )
    ap.add_argument(
        "--client",
        choices=["wrk", "aiohttp", "httpx"],
        default=None,
        help="the load generator: wrk where it is installed (scripts/bench-tools.sh), else aiohttp",
    )
    ap.add_argument("--name", default="profile_gateway", help="results file (bench/results/<name>.json)")
    ap.add_argument(
        "--label", default=None, help="this run's columns in the docs' table (default: the commit, +dirty if changed)"
    )
    args = ap.parse_args()
    if args.client is None:
        args.client = "wrk" if wrk_found() else "aiohttp"
    elif args.client == "wrk" and not wrk_found():
        raise SystemExit("--client wrk: no wrk binary found; bash scripts/bench-tools.sh installs it")
    args.label = args.label or git_commit() + ("+dirty" if serving_tree() else "")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
