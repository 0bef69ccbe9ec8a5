"""Agent fleet throughput and footprint on the real engine, against a scripted model.

Two measurements in one run, against a scripted OpenAI-compatible model that answers at
once (no think time), so what is left is the supervisor's own cost per step:

1. A sweep over fleet sizes (--agents, default 1,10,100,300). Each of N agents works
   K steps (--steps, default 5): every step is one streamed model reply carrying a
   ``shell`` tool call (``echo step{n}``), run in the agent's real sandbox; the last step
   calls ``finish``. Each fleet runs on a fresh Engine and Store (one SUPERVISOR_HOME and
   database for the whole run). For each N:

   - startup_s: from ``start_run`` until every agent's sandbox has started. A gate
     wrapped around the sandbox backend holds each agent after its sandbox is up until
     all are, so the stepping phase is not mixed with sandbox start-up;
   - stepping_s: from the gate opening until the last agent finished, and
     steps_per_s = agent steps / stepping_s (steps_per_s_incl_startup counts from
     ``start_run`` instead);
   - wall_s: ``start_run`` until ``wait_run`` returns; teardown_s: the sandboxes'
     destruction (runs keep their sandboxes, so it is timed on its own in
     ``Engine.close``);
   - memory: VmRSS of this process before ``start_run`` (after a GC and malloc_trim, so
     earlier fleets' freed memory is given back first), when every agent has started
     (gate open), and the peak while stepping (sampled every 20 ms); per agent = growth
     over the baseline / N. With the local backend, the shells' own memory (summed PSS
     of this process's child processes at gate open) is reported beside it.

2. Engine overhead against bare litellm at --ratio-agents agents (100): as many
   concurrent loops, each making K sequential ``litellm.acompletion`` calls, streamed
   and read to the end, with the same messages shape, the same tools list (the engine's
   registered tools), ``stream_options.include_usage``, ``max_retries=0``, against the same
   server. overhead_ratio_vs_litellm = engine stepping_s / bare wall time. Engine fleets
   at that size run --repeats times (2), interleaved with bare runs (bare, engine, bare,
   engine, bare); the headline takes the fastest run of each side, since interference
   only ever slows a run down, and overhead_ratio_per_round compares each engine run with
   the mean of the bare runs either side of it. The headline ratio includes a real bash
   exec per step; two figures separate that cost out: the same fleet calling
   ``list_files`` instead of ``shell`` on the local backend (a directory listing done in
   Python, no process; overhead_ratio_vs_litellm_no_sandbox), and the sandbox execs on
   their own (K sequential ``echo`` per sandbox, all sandboxes at once).

The scripted server (supervisor.testing.ScriptedModelServer) runs in a child process: a
real model is another machine, and in this process it would compete for the GIL with the
client code being measured and add its memory to the RSS figures. litellm is imported and
called once before anything is timed (its first call is slow), and one untimed agent runs
first so that no fleet pays for first-use imports.

Everything here is CPU-bound on one core (the event loop) of a small machine: other load
on the machine moves every figure, so the JSON carries the load average before and after.

With --sandbox docker every agent gets a real Docker sandbox and fleets are capped at
DOCKER_CAP agents (the JSON says so); the no-sandbox variant still uses the local backend.
Everything runs under a fresh temporary SUPERVISOR_HOME, removed at the end with every
sandbox, even on error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/agents.py [--agents 1,10,100,300] [--steps 5]
        [--ratio-agents 100] [--repeats 2] [--sandbox local|docker]

Progress goes to stderr; the last line printed to stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before any supervisor import: the config file, database and sandbox labels all derive
# from the data directory, and the benchmark must never see or touch the user's own. Other
# SUPERVISOR_* variables would override settings (SUPERVISOR_CONFIG would even send
# config.set_value to the user's config file), so they go too.
HOME = tempfile.mkdtemp(prefix="bench-agents-home-")
for _name in [n for n in os.environ if n.startswith("SUPERVISOR_")]:
    del os.environ[_name]
os.environ["SUPERVISOR_HOME"] = HOME

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor import config  # noqa: E402
from supervisor.agent import _schema  # noqa: E402
from supervisor.engine import Engine, RunOptions  # noqa: E402
from supervisor.events import Event, EventType  # noqa: E402
from supervisor.models import litellm  # noqa: E402
from supervisor.plugins import get_plugins  # noqa: E402
from supervisor.store import Store, open_default  # noqa: E402
from supervisor.types import SandboxBackend  # noqa: E402

DOCKER_CAP = 50
MODEL = "openai/scripted"
TERMINAL = {"done", "failed", "stopped"}

# The scripted model, run by a child process. The reply index is the number of assistant
# messages in the request; the task text says how many steps and which tool, so one
# server serves every fleet and the bare loops alike.
SERVER = r"""
import re
import sys

from supervisor.testing import Reply, ScriptedModelServer

TASK = re.compile(r"steps=(\d+) tool=(\w+)")


class Discard(list):
    # The server keeps every request body for tests; a benchmark has no use for them.
    def append(self, item):
        pass


def reply(messages):
    index = sum(1 for m in messages if m.get("role") == "assistant")
    task = next(m["content"] for m in messages if m.get("role") == "user")
    steps, tool = TASK.search(task).groups()
    if index >= int(steps) - 1:
        return Reply(tool_calls=[("finish", {"summary": "done"})])
    arguments = {"command": f"echo step{index}"} if tool == "shell" else {}
    return Reply(tool_calls=[(tool, arguments)])


with ScriptedModelServer(reply) as server:
    server.requests = Discard()
    print(server.base_url, flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
"""


def log(message: str) -> None:
    print(f"[bench/agents {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def task_text(steps: int, tool: str) -> str:
    return f"Benchmark task: steps={steps} tool={tool}. Do what the model says."


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples, interpolation invents values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- memory


def rss_kib() -> int:
    """Resident memory of this process now (VmRSS), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so that a baseline taken next
    is not inflated by earlier fleets (glibc keeps freed memory otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def children_pss_kib(exclude: set[int]) -> tuple[int, int]:
    """How many child processes this process has, and their summed PSS in KiB.

    These are the local backend's shells (one bash per sandbox): memory the fleet costs
    outside this process. PSS splits shared pages among the processes sharing them, so
    the sum does not count bash's own code once per shell.
    """
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    total = 0
    for pid in pids - exclude:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return len(pids - exclude), total


class PeakSampler:
    """Samples VmRSS every ``interval`` seconds on the event loop; keeps the highest."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = rss_kib()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib())
            await asyncio.sleep(self.interval)

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_kib())
        return self.peak


# -- the model server


class ServerProcess:
    """The scripted model server in a child process; stops when its stdin closes."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"scripted server did not start (exit {self.proc.poll()})")
        return self.base_url

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def point_alias_at(base_url: str) -> None:
    """The alias `scripted`, made the default model, names the scripted server."""
    config.set_value("models.scripted.model", MODEL)
    config.set_value("models.scripted.api_base", base_url)
    config.set_value("models.scripted.input_per_mtok", "1.0")
    config.set_value("models.scripted.output_per_mtok", "2.0")
    config.set_value("model", "scripted")


# -- bare litellm


async def bare_loop(
    base_url: str, system: str, task: str, tools: list[dict[str, Any]], steps: int
) -> int:
    """One conversation of ``steps`` calls straight through litellm; returns calls made.

    It does the minimum a client must: read every chunk and put the tool calls back
    together, so the next request carries the same history an agent's would.
    """
    lib = litellm()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": task},
    ]
    for step in range(steps):
        stream = await lib.acompletion(
            model=MODEL,
            api_base=base_url,
            api_key="none",
            messages=messages,
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
        )
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            for choice in chunk.choices or []:
                delta = choice.delta
                for tc in (getattr(delta, "tool_calls", None) or []) if delta else []:
                    slot = calls.setdefault(tc.index or 0, {"id": "", "name": "", "args": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function is not None:
                        slot["name"] = tc.function.name or slot["name"]
                        slot["args"] += tc.function.arguments or ""
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["args"] or "{}"},
                    }
                    for c in calls.values()
                ],
            }
        )
        for c in calls.values():
            # What the shell tool returns for `echo step{n}`.
            messages.append(
                {"role": "tool", "tool_call_id": c["id"], "content": f"step{step}\n[exit code 0]"}
            )
    return steps


async def bare_fleet(
    n: int, base_url: str, system: str, tools: list[dict[str, Any]], steps: int
) -> dict[str, Any]:
    task = task_text(steps, "shell")
    t = time.perf_counter()
    calls = await asyncio.gather(
        *(bare_loop(base_url, system, task, tools, steps) for _ in range(n))
    )
    wall = time.perf_counter() - t
    total = sum(calls)
    log(f"bare litellm: {n} loops x {steps} calls in {wall:.2f} s ({total / wall:.1f} calls/s)")
    return {"wall_s": round(wall, 3), "calls": total, "calls_per_s": round(total / wall, 1)}


# -- engine fleets


class Gate:
    """Holds every agent after its sandbox started until all N have started, and takes
    the memory figures at that moment (before the stepping clock starts)."""

    def __init__(self, n: int, exclude_pids: set[int]) -> None:
        self.n = n
        self.exclude_pids = exclude_pids
        self.arrived = 0
        self.opened = asyncio.Event()
        self.opened_at = 0.0
        self.rss_kib = 0
        self.children = (0, 0)
        self.threads = 0

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n and not self.opened.is_set():
            self.rss_kib = rss_kib()
            self.children = children_pss_kib(self.exclude_pids)
            self.threads = threading.active_count()
            self.opened_at = time.perf_counter()
            self.opened.set()
        await self.opened.wait()


def gated(backend: SandboxBackend, gate: Gate) -> SandboxBackend:
    """The same backend, whose sandboxes' start() also waits at the gate."""

    def factory(spec: Any, **kwargs: Any) -> Any:
        box = backend.factory(spec, **kwargs)
        real_start = box.start

        async def start() -> None:
            try:
                await real_start()
            finally:
                # A sandbox that failed to start still counts, or the gate never opens.
                await gate.wait()

        box.start = start
        return box

    return dataclasses.replace(backend, factory=factory)


async def exec_probe(boxes: list[Any], steps: int) -> dict[str, Any]:
    """The sandbox part of a step alone: ``steps`` sequential echoes per sandbox, at once."""
    latencies: list[float] = []

    async def one(box: Any) -> None:
        for i in range(steps):
            t = time.perf_counter()
            result = await box.exec(f"echo step{i}")
            latencies.append(time.perf_counter() - t)
            if not result.ok:
                raise RuntimeError(f"sandbox exec failed: {result.stderr[-200:]}")

    t = time.perf_counter()
    await asyncio.gather(*(one(b) for b in boxes))
    wall = time.perf_counter() - t
    return {
        "execs": len(latencies),
        "concurrent": len(boxes),
        "wall_s": round(wall, 3),
        "p50_ms": round(pct(latencies, 50) * 1000, 2),
        "p95_ms": round(pct(latencies, 95) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def make_engine(n: int, steps: int) -> tuple[Store, Engine]:
    """An engine as the tests build one, with room for ``n`` agents' calls at once."""
    settings = dict(config.load().values)
    settings["model.max_concurrent"] = max(n, int(settings["model.max_concurrent"]))
    settings["agent.max_steps"] = max(steps + 1, int(settings["agent.max_steps"]))
    store = open_default()
    return store, Engine(store, get_plugins(), settings=settings)


async def fleet(
    n: int, steps: int, tool: str, backend: str, server_pid: int, *, probe: bool = False
) -> tuple[dict[str, Any], str]:
    """Run N agents for K steps; returns the figures and one agent's system prompt."""
    store, eng = make_engine(n, steps)
    gate = Gate(n, {server_pid})
    eng.backends[backend] = gated(eng.backends[backend], gate)
    finished_at: list[float] = []

    def on_event(event: Event) -> None:
        if event.type == EventType.AGENT_STATUS and event.data.get("status") in TERMINAL:
            finished_at.append(time.perf_counter())

    eng.listen(on_event)
    closed = False
    try:
        release_free_memory()
        rss0 = rss_kib()
        sampler = PeakSampler()
        sampler.start()
        # Sandboxes are kept past each agent's end and destroyed in close(), so their
        # teardown is timed on its own and the exec probe can reuse them.
        options = RunOptions(
            task=task_text(steps, tool), sandbox=backend, agents=n, keep_sandboxes=True
        )
        t0 = time.perf_counter()
        run_id = await eng.start_run(options)
        status = await eng.wait_run(run_id)
        t_wait = time.perf_counter()
        peak = await sampler.stop()
        agents = list(eng.agents.values())
        bad = [a for a in agents if a.status != "done" or a.steps != steps]
        if status != "done" or bad:
            first = bad[0] if bad else agents[0]
            raise RuntimeError(
                f"{n} agents: run {status}; {len(bad)} agents off script, e.g. "
                f"{first.name}: {first.status} after {first.steps} steps: {first.summary}"
            )
        end = max(finished_at)
        total_steps = sum(a.steps for a in agents)
        stepping = end - gate.opened_at
        result: dict[str, Any] = {
            "agents": n,
            "steps_total": total_steps,
            "startup_s": round(gate.opened_at - t0, 3),
            "stepping_s": round(stepping, 3),
            "steps_per_s": round(total_steps / stepping, 1),
            "steps_per_s_incl_startup": round(total_steps / (end - t0), 1),
            "wall_s": round(t_wait - t0, 3),
            "rss_before_mb": round(rss0 / 1024, 1),
            "rss_started_mb": round(gate.rss_kib / 1024, 1),
            "rss_peak_mb": round(peak / 1024, 1),
            "rss_mb_per_agent": round((gate.rss_kib - rss0) / 1024 / n, 3),
            "rss_peak_mb_per_agent": round((peak - rss0) / 1024 / n, 3),
            "threads_started": gate.threads,
            # The post-finish bookkeeping wait_run does (a store flush, up to 10 s).
            "finish_to_wait_run_s": round(t_wait - end, 3),
        }
        if backend == "local":
            count, pss = gate.children
            result["shell_processes"] = count
            result["shell_pss_mb_per_agent"] = round(pss / 1024 / n, 3)
        if probe:
            result["sandbox_exec"] = await exec_probe([a.sandbox for a in agents], steps)
        system = str(agents[0].messages[0]["content"])
        t = time.perf_counter()
        closed = True
        await eng.close()
        result["teardown_s"] = round(time.perf_counter() - t, 3)
        log(
            f"{n} agents x {steps} steps ({tool}, {backend}): start {result['startup_s']} s, "
            f"stepping {result['stepping_s']} s = {result['steps_per_s']} steps/s, "
            f"{result['rss_mb_per_agent']} MB/agent, teardown {result['teardown_s']} s"
        )
        return result, system
    finally:
        if not closed:
            await eng.close()
        store.close()


async def warm_up(
    server: ServerProcess, steps: int, backend: str
) -> tuple[str, list[dict[str, Any]]]:
    """First calls are slow (imports, client set-up): make them before timing anything.

    Returns the system prompt an agent gets and the tools list it sends, for the bare loops.
    """
    t = time.perf_counter()
    litellm()
    log(f"litellm imported in {time.perf_counter() - t:.1f} s")
    store, eng = make_engine(1, steps)
    try:
        tools = [_schema(tool) for tool in eng.tools.values()]
    finally:
        await eng.close()
        store.close()
    await bare_loop(server.base_url, "warm-up", task_text(steps, "shell"), tools, steps)
    _, system = await fleet(1, steps, "shell", backend, server.pid)
    log(f"warmed up in {time.perf_counter() - t:.1f} s")
    return system, tools


def fastest(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return min(runs, key=lambda r: float(r[key]))


async def bench(args: argparse.Namespace, server: ServerProcess) -> dict[str, Any]:
    steps = args.steps
    sweep = sorted({int(x) for x in args.agents.split(",") if x.strip()})
    ratio_n = args.ratio_agents
    capped = False
    if args.sandbox == "docker":
        capped = max(sweep) > DOCKER_CAP or ratio_n > DOCKER_CAP
        sweep = sorted({min(n, DOCKER_CAP) for n in sweep})
        ratio_n = min(ratio_n, DOCKER_CAP)
    system, tools = await warm_up(server, steps, args.sandbox)

    per_n: dict[str, dict[str, Any]] = {}
    bare_runs: list[dict[str, Any]] = []
    shell_runs: list[dict[str, Any]] = []
    variant_runs: list[dict[str, Any]] = []
    probe: dict[str, Any] = {}

    async def bare() -> None:
        bare_runs.append(await bare_fleet(ratio_n, server.base_url, system, tools, steps))

    async def ratio_rounds() -> None:
        # Interleaved and bracketed by bare runs, so that a slow spell of a shared machine
        # falls on both sides of the comparison rather than on one.
        await bare()
        for _ in range(args.repeats):
            result, _ = await fleet(
                ratio_n, steps, "shell", args.sandbox, server.pid, probe=not probe
            )
            probe.update(result.pop("sandbox_exec", {}))
            shell_runs.append(result)
            variant, _ = await fleet(ratio_n, steps, "list_files", "local", server.pid)
            variant_runs.append(variant)
            await bare()

    for n in sweep:
        if n == ratio_n:
            await ratio_rounds()
            per_n[str(n)] = fastest(shell_runs, "stepping_s")
        else:
            per_n[str(n)], _ = await fleet(n, steps, "shell", args.sandbox, server.pid)
    if ratio_n not in sweep:
        await ratio_rounds()

    # Headline: the best run of each side (interference only ever slows a run down). Per
    # round: the engine run against the mean of the bare runs either side of it.
    bare_best = fastest(bare_runs, "wall_s")
    shell_best = fastest(shell_runs, "stepping_s")
    variant_best = fastest(variant_runs, "stepping_s")
    rounds = []
    for i, (sh, va) in enumerate(zip(shell_runs, variant_runs, strict=True)):
        floor = (bare_runs[i]["wall_s"] + bare_runs[i + 1]["wall_s"]) / 2
        rounds.append(
            {
                "shell": round(sh["stepping_s"] / floor, 3),
                "no_sandbox": round(va["stepping_s"] / floor, 3),
            }
        )
    largest = per_n[str(max(sweep))]
    return {
        "overhead_ratio_vs_litellm": round(shell_best["stepping_s"] / bare_best["wall_s"], 3),
        "overhead_ratio_vs_litellm_no_sandbox": round(
            variant_best["stepping_s"] / bare_best["wall_s"], 3
        ),
        "overhead_ratio_headline": (
            "overhead_ratio_vs_litellm: agents calling shell, one real bash exec per step "
            "(sandbox cost included), fastest engine run / fastest bare run; the no_sandbox "
            "figure has the agents call list_files on the local backend instead"
        ),
        "overhead_ratio_per_round": rounds,
        "overhead_target": 1.25,
        "ratio_agents": ratio_n,
        "steps_per_s": largest["steps_per_s"],
        "rss_mb_per_agent": largest["rss_mb_per_agent"],
        "largest_agents": max(sweep),
        "steps": steps,
        "sandbox": args.sandbox,
        "bare_litellm_calls_per_s": bare_best["calls_per_s"],
        "bare_litellm_runs": bare_runs,
        "engine_runs_at_ratio_agents": {
            "shell_stepping_s": [r["stepping_s"] for r in shell_runs],
            "list_files_local_stepping_s": [r["stepping_s"] for r in variant_runs],
        },
        "sandbox_exec_at_ratio_agents": probe,
        "per_agents": per_n,
        "no_sandbox_variant": variant_best,
        "docker_cap": DOCKER_CAP if args.sandbox == "docker" else None,
        "agents_capped": capped,
        "engine_per_fleet": "fresh Engine and Store per fleet; one SUPERVISOR_HOME and database",
        "model_server": "supervisor.testing.ScriptedModelServer in a child process",
    }


def sweep_docker(label: str) -> int:
    """Remove every container and volume labelled with this run's home (after an error)."""
    from supervisor.sandbox.docker import LABEL, docker_client, remove_container

    client = docker_client()
    filters = {"label": [f"{LABEL}.managed=1", f"{LABEL}.home={label}"]}
    removed = 0
    for container in client.containers.list(all=True, filters=filters):
        remove_container(client, container)
        removed += 1
    for volume in client.volumes.list(filters=filters):
        with contextlib.suppress(Exception):
            volume.remove(force=True)
            removed += 1
    return removed


def check_docker_image() -> Callable[[], int]:
    """Fail early without the default image; returns the clean-up for this run's home."""
    import docker.errors

    from supervisor.sandbox.docker import docker_client, home_label
    from supervisor.sandbox.image import default_image_tag

    image = default_image_tag()
    try:
        docker_client().images.get(image)
    except docker.errors.ImageNotFound:
        sys.exit(f"bench/agents: image {image} is not built (`supervisor sandbox build`)")
    label = home_label()
    return lambda: sweep_docker(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,100,300", help="fleet sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=5, help="steps per agent (K), >= 1")
    parser.add_argument(
        "--ratio-agents", type=int, default=100, help="fleet size compared with bare litellm"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="engine runs at --ratio-agents, each kind"
    )
    parser.add_argument("--sandbox", choices=["local", "docker"], default="local")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")

    # A plain kill must clean up too: turned into KeyboardInterrupt, it unwinds through the
    # same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    server = ServerProcess()
    cleanup_docker: Callable[[], int] | None = None
    try:
        if args.sandbox == "docker":
            cleanup_docker = check_docker_image()
        base_url = server.start()
        point_alias_at(base_url)
        log(f"scripted server at {base_url}, SUPERVISOR_HOME {HOME}")
        result = asyncio.run(bench(args, server))
    finally:
        server.stop()
        if cleanup_docker is not None:
            leftovers = cleanup_docker()
            if leftovers:
                log(f"swept {leftovers} leftover containers/volumes")
        shutil.rmtree(HOME, ignore_errors=True)
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["cpus"] = os.cpu_count()
    # Other work on the machine slows every figure; the load average tells a reader.
    result["loadavg_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
