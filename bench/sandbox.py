"""Docker sandbox latency and footprint, on the real engine.

Five measurements in one run, all against the default sandbox image:

1. Exec round trip. The same commands (``true`` and ``echo hello``) in the same container,
   three ways: the sandbox's persistent shell (``sandbox.exec``), ``docker exec`` as a
   subprocess (what a naive supervisor would do), and the SDK's ``container.exec_run``.
   Iteration counts are per command; the two slow ways run fewer (--slow-iterations) to
   keep the run short.
2. Cold start: a new DockerSandbox from nothing until its first command is answered
   (container and workspace volume created, shell opened, workspace made a git repo, then
   one ``true``).
3. Warm-pool acquire: a SandboxPool handing out an already started member (rename plus
   workspace setup); the pool is refilled before every acquire so each finds one ready.
4. Agent start: an engine starting one-agent runs (the scripted model server answers), from
   ``start_run`` to the agent's first model request, with ``sandbox.pool_size`` 0 and with
   --pool-size; the pool is refilled before each run.
5. --concurrent sandboxes started at once with asyncio.gather: wall time until all
   answer, then the memory each idle one uses (cgroup usage from the engine's stats,
   averaged over the containers; page cache of the image's files is charged to whichever
   container read them first, so this is the private footprint), then all destroyed at
   once. The blocking engine calls go through asyncio's default thread pool, as in the
   supervisor itself.

All sandboxes share one Docker client and use one image, resolved at start (--image, or
the default tag). It runs under a fresh, temporary SUPERVISOR_HOME, so every container
and volume it makes carries that home's label; all of them are removed at the end, even
on error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/sandbox.py [--iterations 300] [--slow-iterations 100]
        [--cold 10] [--warm 10] [--pool-size 3] [--agents 5] [--concurrent 50] [--image TAG]

Progress goes to stderr; the last line printed to stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Before any supervisor import: labels and paths derive from the data directory, and the
# benchmark must never see or touch the user's real sandboxes.
HOME = tempfile.mkdtemp(prefix="bench-sandbox-home-")
os.environ["SUPERVISOR_HOME"] = HOME

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker.errors  # noqa: E402

from supervisor.sandbox.base import SandboxSpec  # noqa: E402
from supervisor.sandbox.docker import (  # noqa: E402
    LABEL,
    USER,
    DockerSandbox,
    docker_client,
    home_label,
    remove_container,
)
from supervisor.sandbox.image import default_image_tag  # noqa: E402
from supervisor.sandbox.manager import SandboxPool  # noqa: E402

COMMANDS = ["true", "echo hello"]
RUN_ID = "bench"


def log(message: str) -> None:
    print(f"[bench/sandbox {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples, interpolation invents values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples_s: list[float]) -> tuple[float, float]:
    return round(pct(samples_s, 50) * 1000, 3), round(pct(samples_s, 95) * 1000, 3)


async def timed_async(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return samples


def timed_sync(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


# -- 1. exec round trip


async def bench_exec(
    client: Any, image: str, created: list[DockerSandbox], iterations: int, slow_iterations: int
) -> dict[str, Any]:
    box = DockerSandbox(SandboxSpec(run_id=RUN_ID, agent_id="exec", image=image), client=client)
    created.append(box)
    await box.start()
    container = client.containers.get(box.id)
    samples: dict[str, list[float]] = {"persistent": [], "docker_cli": [], "sdk_exec_run": []}

    for cmd in COMMANDS:

        async def persistent(cmd: str = cmd) -> None:
            result = await box.exec(cmd)
            if not result.ok:
                raise RuntimeError(f"persistent shell: {cmd!r} failed: {result.stderr}")

        def cli(cmd: str = cmd) -> None:
            subprocess.run(
                ["docker", "exec", "-u", USER, box.id, "sh", "-c", cmd],
                check=True,
                capture_output=True,
            )

        def exec_run(cmd: str = cmd) -> None:
            result = container.exec_run(cmd, user=USER)
            if result.exit_code != 0:
                raise RuntimeError(f"exec_run: {cmd!r} exited {result.exit_code}")

        # A few untimed runs of each method first, so its one-off costs (connection setup,
        # page cache) do not land in its samples.
        await timed_async(persistent, 5)
        log(f"exec {cmd!r}: persistent shell x{iterations}")
        samples["persistent"] += await timed_async(persistent, iterations)
        timed_sync(cli, 3)
        log(f"exec {cmd!r}: docker exec subprocess x{slow_iterations}")
        samples["docker_cli"] += timed_sync(cli, slow_iterations)
        timed_sync(exec_run, 3)
        log(f"exec {cmd!r}: SDK exec_run x{slow_iterations}")
        samples["sdk_exec_run"] += timed_sync(exec_run, slow_iterations)

    await box.destroy()
    created.remove(box)
    out: dict[str, Any] = {}
    for method, values in samples.items():
        p50, p95 = summary_ms(values)
        out[f"exec_p50_ms_{method}"] = p50
        out[f"exec_p95_ms_{method}"] = p95
        log(f"exec {method}: p50 {p50} ms, p95 {p95} ms over {len(values)} runs")
    out["speedup_vs_docker_cli"] = round(
        out["exec_p50_ms_docker_cli"] / out["exec_p50_ms_persistent"], 1
    )
    out["speedup_vs_exec_run"] = round(
        out["exec_p50_ms_sdk_exec_run"] / out["exec_p50_ms_persistent"], 1
    )
    out["exec_commands"] = COMMANDS
    out["exec_iterations_persistent"] = iterations * len(COMMANDS)
    out["exec_iterations_docker_cli"] = slow_iterations * len(COMMANDS)
    out["exec_iterations_sdk_exec_run"] = slow_iterations * len(COMMANDS)
    return out


# -- 2. cold start


async def bench_cold(
    client: Any, image: str, created: list[DockerSandbox], n: int
) -> dict[str, Any]:
    samples = []
    for i in range(n):
        box = DockerSandbox(
            SandboxSpec(run_id=RUN_ID, agent_id=f"cold{i}", image=image), client=client
        )
        created.append(box)
        t = time.perf_counter()
        await box.start()
        result = await box.exec("true")
        samples.append(time.perf_counter() - t)
        if not result.ok:
            raise RuntimeError(f"cold sandbox {box.name}: first command failed")
        await box.destroy()
        created.remove(box)
        log(f"cold start {i + 1}/{n}: {samples[-1]:.3f} s")
    return {
        "cold_start_p50_s": round(pct(samples, 50), 3),
        "cold_start_p95_s": round(pct(samples, 95), 3),
        "cold_start_runs": n,
    }


# -- 3. warm-pool acquire


async def bench_warm(
    client: Any,
    image: str,
    created: list[DockerSandbox],
    pools: list[SandboxPool],
    n: int,
    size: int,
) -> dict[str, Any]:
    pool = SandboxPool(size, client=client, defaults=SandboxSpec("", "", image=image))
    pools.append(pool)
    pool.fill()
    log(f"warm pool: filling {size} members")
    await pool.wait_ready(timeout=120)
    samples = []
    for i in range(n):
        if pool._ready.qsize() < size:  # a refill that failed would make this a cold start
            raise RuntimeError(f"warm pool did not refill: {pool.errors[-1:] or 'timed out'}")
        t = time.perf_counter()
        box = await pool.acquire(SandboxSpec(run_id=RUN_ID, agent_id=f"warm{i}", image=image))
        samples.append(time.perf_counter() - t)
        created.append(box)
        result = await box.exec("true")
        if not result.ok:
            raise RuntimeError(f"warm sandbox {box.name}: first command failed")
        await box.destroy()
        created.remove(box)
        log(f"warm acquire {i + 1}/{n}: {samples[-1] * 1000:.1f} ms")
        await pool.wait_ready(timeout=120)
    await pool.close()
    pools.remove(pool)
    p50, p95 = summary_ms(samples)
    return {
        "warm_acquire_p50_ms": p50,
        "warm_acquire_p95_ms": p95,
        "warm_acquire_runs": n,
        "warm_pool_size": size,
    }


# -- 4. agent start, with and without the warm pool


async def bench_agent_start(image: str, n: int, size: int) -> dict[str, Any]:
    """From ``start_run`` until the agent's first model request: what a person waits for
    before an agent starts working. The same engine path each time; once with
    ``sandbox.pool_size`` 0 (every sandbox started cold) and once with a warm pool, filled
    before each run as it refills between agents started minutes apart."""
    from supervisor import config
    from supervisor.engine import Engine, RunOptions
    from supervisor.plugins import get_plugins
    from supervisor.store import open_default
    from supervisor.testing import Reply, ScriptedModelServer

    out: dict[str, Any] = {}
    with ScriptedModelServer([Reply(tool_calls=[("finish", {"summary": "ok"})])]) as server:
        config.set_value("models.scripted.model", "openai/scripted")
        config.set_value("models.scripted.api_base", server.base_url)
        config.set_value("model", "scripted")
        for label, pool_size in (("cold", 0), ("pool", size)):
            settings = dict(config.load().values)
            settings.update({"sandbox.image": image, "sandbox.pool_size": pool_size})
            store = open_default()
            engine = Engine(store, get_plugins(), settings=settings)
            samples = []
            try:
                for i in range(n + 1):  # the first run is untimed: it starts the pool
                    if engine._pool is not None:
                        await engine._pool.wait_ready(timeout=120)
                    seen = len(server.requests)
                    t = time.perf_counter()
                    run_id = await engine.start_run(RunOptions(task="t", sandbox="docker"))
                    while len(server.requests) == seen:
                        if time.perf_counter() - t > 120:
                            raise RuntimeError("an agent did not start within 120 s")
                        await asyncio.sleep(0.005)
                    if i:
                        samples.append(time.perf_counter() - t)
                        log(f"agent start ({label}) {i}/{n}: {samples[-1]:.3f} s")
                    if await asyncio.wait_for(engine.wait_run(run_id), 120) != "done":
                        raise RuntimeError(f"agent run {run_id} did not finish")
            finally:
                await engine.close()
                store.close()
            out[f"agent_start_p50_s_{label}"] = round(pct(samples, 50), 3)
            out[f"agent_start_p95_s_{label}"] = round(pct(samples, 95), 3)
        out["agent_start_runs"] = n
        out["agent_start_pool_size"] = size
        out["agent_start_speedup_with_pool"] = round(
            out["agent_start_p50_s_cold"] / out["agent_start_p50_s_pool"], 1
        )
    return out


# -- 5. many at once


def memory_usage(container: Any) -> tuple[int, int]:
    """(cgroup usage, usage less inactive page cache as ``docker stats`` shows it)."""
    # one_shot skips the engine's second sample (for CPU rates): ~1 s saved per container,
    # and memory is read once either way.
    stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    usage = int(stats["usage"])
    extra = stats.get("stats") or {}
    inactive = int(extra.get("inactive_file", extra.get("total_inactive_file", 0)))
    return usage, usage - inactive


async def bench_concurrent(
    client: Any, image: str, created: list[DockerSandbox], n: int
) -> dict[str, Any]:
    boxes = [
        DockerSandbox(SandboxSpec(run_id=RUN_ID, agent_id=f"many{i}", image=image), client=client)
        for i in range(n)
    ]
    created.extend(boxes)

    async def start(box: DockerSandbox) -> None:
        await box.start()
        if not (await box.exec("true")).ok:
            raise RuntimeError(f"sandbox {box.name}: first command failed")

    log(f"starting {n} sandboxes concurrently")
    t = time.perf_counter()
    await asyncio.gather(*(start(b) for b in boxes))
    wall = time.perf_counter() - t
    log(f"{n} sandboxes answering after {wall:.2f} s; reading memory stats")

    # Let start-up work (git init, shell spawn) settle so the figure is the idle footprint.
    await asyncio.sleep(2)
    containers = [client.containers.get(b.id) for b in boxes]
    with ThreadPoolExecutor(max_workers=16) as threads:
        usages = await asyncio.get_running_loop().run_in_executor(
            None, lambda: list(threads.map(memory_usage, containers))
        )
    mib_usage = sum(u for u, _ in usages) / len(usages) / 2**20
    mib_working = sum(w for _, w in usages) / len(usages) / 2**20
    log(f"idle memory: {mib_usage:.1f} MiB per sandbox ({mib_working:.1f} MiB less page cache)")

    log(f"destroying {n} sandboxes concurrently")
    t = time.perf_counter()
    await asyncio.gather(*(b.destroy() for b in boxes))
    destroy_wall = time.perf_counter() - t
    for b in boxes:
        created.remove(b)
    log(f"destroyed in {destroy_wall:.2f} s")
    return {
        "concurrent_sandboxes": n,
        "concurrent_start_wall_s": round(wall, 2),
        "idle_memory_mib_per_sandbox": round(mib_usage, 1),
        "idle_memory_mib_per_sandbox_less_page_cache": round(mib_working, 1),
        "concurrent_destroy_wall_s": round(destroy_wall, 2),
    }


# -- cleanup


async def release(created: list[DockerSandbox], pools: list[SandboxPool]) -> None:
    """Destroy what the phases did not get to (an error part-way)."""
    for pool in pools:
        with contextlib.suppress(Exception):
            await pool.close()
    results = await asyncio.gather(*(b.destroy() for b in created), return_exceptions=True)
    for box, result in zip(created, results, strict=True):
        if isinstance(result, BaseException):
            log(f"could not destroy {box.name}: {result}")


def sweep(client: Any, label: str) -> int:
    """Remove every container and volume labelled with this run's home.

    A safety net after the event loop (and its worker threads) has finished: a container
    whose creation was cancelled mid-way is made by its thread anyway, and only shows up
    here.
    """
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


async def run(args: argparse.Namespace, client: Any, image: str) -> dict[str, Any]:
    created: list[DockerSandbox] = []
    pools: list[SandboxPool] = []
    result: dict[str, Any] = {}
    try:
        for name, phase in [
            (
                "exec",
                lambda: bench_exec(client, image, created, args.iterations, args.slow_iterations),
            ),
            ("cold", lambda: bench_cold(client, image, created, args.cold)),
            ("warm", lambda: bench_warm(client, image, created, pools, args.warm, args.pool_size)),
            ("agent_start", lambda: bench_agent_start(image, args.agents, args.pool_size)),
            ("concurrent", lambda: bench_concurrent(client, image, created, args.concurrent)),
        ]:
            t = time.perf_counter()
            log(f"phase {name}")
            result.update(await phase())
            result[f"phase_{name}_s"] = round(time.perf_counter() - t, 1)
    finally:
        await release(created, pools)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="persistent-shell execs")
    parser.add_argument(
        "--slow-iterations", type=int, default=100, help="docker exec / exec_run execs"
    )
    parser.add_argument("--cold", type=int, default=10, help="cold starts")
    parser.add_argument("--warm", type=int, default=10, help="warm-pool acquisitions")
    parser.add_argument("--pool-size", type=int, default=3)
    parser.add_argument(
        "--agents", type=int, default=5, help="agent starts timed, with and without the pool"
    )
    parser.add_argument("--concurrent", type=int, default=50, help="sandboxes started at once")
    parser.add_argument("--image", default="", help="sandbox image (default: the default tag)")
    args = parser.parse_args()

    # A plain kill must clean up too: turned into KeyboardInterrupt, it unwinds through the
    # same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = bench(args)
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    print(json.dumps(result))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    client = docker_client()
    label = home_label()
    # Resolved once and pinned on every spec: the default tag hashes the image sources, so
    # an edit to them mid-run would otherwise switch later phases to an unbuilt image.
    image = args.image or default_image_tag()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        sys.exit(f"bench/sandbox: image {image} is not built (`supervisor sandbox build`)")
    log(f"image {image}, SUPERVISOR_HOME {HOME} (label {label})")
    try:
        result = asyncio.run(run(args, client, image))
    finally:
        leftovers = sweep(client, label)
        if leftovers:
            log(f"swept {leftovers} leftover containers/volumes")
    result["image"] = image
    result["cpus"] = os.cpu_count()
    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    main()
