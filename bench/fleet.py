"""Placement over a pool of hosts: how long choosing a host takes, and how evenly it spreads.

Ten hosts are registered in a fresh store with facts as ``supervisor hosts check`` stores
them (parsed by the product's own ``parse_facts`` from nvidia-smi lines: eight GPUs on
some hosts, one on others, none on the rest; one host cordoned). Then --agents agents are
placed through the engine's own placement path (``supervisor.engine.runs._place``: the
pool built from the store's rows, the hosts' cordon state reread at every placement, a
best-of-K choice), and, as the baseline measured in the same run, through a pool that
scores every host for every agent (best-of-all):

- ``placement_ms_per_agent``: the engine path, per agent (target <= 5 ms);
- ``pool_only_ms_per_agent``: the choice alone, on a pool already built;
- ``baseline_all_hosts_ms_per_agent``: the same choice scoring all hosts;
- ``spread`` / ``baseline_spread``: most minus fewest agents on an open host.

Then a host is lost under its agents, for real: --loss-hosts Debian sshd servers on
127.0.0.x (tests/sshd_kit.py, one user each, folder sandboxes), the scripted model server
(supervisor.testing), a run of --loss-agents agents over them at two sandboxes per host.
Once the agents on one host sit in a long command, that host's sshd is killed; as soon as
the run is ``interrupted`` it is resumed, as ``supervisor resume RUN`` does:

- ``host_loss_recovery_s``: from the kill until every agent of the lost host runs again
  (its sandbox up on a live host, its next step begun); split into ``loss_detect_s``
  (kill until they are all ``interrupted``), ``loss_run_end_s`` (until the run has ended
  ``interrupted``: their wrap-up) and ``loss_resume_s`` (resume until running);
- ``baseline_fresh_start_s``: the baseline, measured in the same run: the same number of
  agents started fresh on the live hosts until their first step has begun.

Then autoresearch over a pool (bench/autoresearch_pool.py): the toy target, whose
training sleeps 2 s, on one host's CPU slot (the baseline) and on four hosts:

- ``speedup_4_slots``: experiments per hour on four slots over one (target >= 3.6).

    .venv/bin/python bench/fleet.py [--agents 300] [--hosts 10] [--loss-agents 6] [--experiments 12]

Progress goes to stderr; the last line printed to stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HOME = tempfile.mkdtemp(prefix="bench-fleet-home-")
os.environ["SUPERVISOR_HOME"] = HOME  # never the person's own hosts
atexit.register(shutil.rmtree, HOME, ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import config, fleet  # noqa: E402
from supervisor import hosts as h  # noqa: E402
from supervisor.engine import Engine, RunOptions, runs  # noqa: E402
from supervisor.plugins import get_plugins  # noqa: E402
from supervisor.store import open_default  # noqa: E402


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def facts(i: int) -> dict[str, Any]:
    """What ``hosts check`` would store for host ``i``: 8, 1 or no GPUs, varied CPU/RAM."""
    gpus = (8, 1, 0)[i % 3]
    lines = [
        f"{g}, GPU-{i:02d}{g:02d}, NVIDIA H100 80GB HBM3, 00000000:{g:02X}:00.0, 81559, "
        f"{(g * 7919) % 40000}, {(g * 37) % 100}, 40, 120.5, 700.00, 550.54, 9.0, Disabled"
        for g in range(gpus)
    ]
    raw = {
        "os_id": "debian",
        "os_version": "12",
        "arch": "x86_64",
        "cpus": str((16, 32, 64, 8)[i % 4]),
        "mem_kb": str((64, 128, 512, 32)[i % 4] * 2**20),
        "mem_available_kb": str((48, 100, 400, 20)[i % 4] * 2**20),
        "disk_free_kb": str(500 * 2**20),
        "docker": "27.3.1",
        "docker_runtimes": "runc nvidia" if gpus else "runc",
        "cuda": "12.4" if gpus else "",
        "gpu_fields": h.GPU_FIELDS if gpus else "",
        "gpu_rc": "0",
        "gpu_lines": lines,
    }
    return h.parse_facts(raw)


def spread(placed: list[str], open_hosts: set[str]) -> int:
    counts = Counter(placed)
    per_host = [counts.get(n, 0) for n in open_hosts]
    return max(per_host) - min(per_host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="median over this many pools")
    parser.add_argument(
        "--loss-agents", type=int, default=6, help="agents of the host-loss run (0: skip it)"
    )
    parser.add_argument("--loss-hosts", type=int, default=3, help="sshd hosts of that run")
    parser.add_argument(
        "--experiments",
        type=int,
        default=12,
        help="autoresearch experiments on 1 slot, then on 4 (0: skip; bench/autoresearch_pool.py)",
    )
    args = parser.parse_args()

    store = open_default()
    names = [f"host{i:02d}" for i in range(args.hosts)]
    for i, name in enumerate(names):
        host = h.Host(name, f"127.0.0.{i + 2}", 22, "bench", facts=facts(i), reachable=True)
        host.checked_at = time.time()
        h.save_host(host, store)
    cordoned = names[-1]
    h.set_cordon(cordoned, True, store)
    open_hosts = set(names) - {cordoned}
    gpu_facts = sum(len(x.facts["gpus"]) for x in h.list_hosts(store))
    log(f"{args.hosts} hosts registered ({gpu_facts} GPUs; {cordoned} cordoned)")

    settings = dict(config.load().values)
    # Room for every agent: the bench measures the choice, not the refusal.
    settings["hosts.max_sandboxes"] = args.agents
    engine = Engine(store, get_plugins(), settings=settings)

    async def engine_path() -> tuple[list[float], list[str]]:
        """Placements as the engine makes them: on its event loop, one run per round."""
        ms: list[float] = []
        placed: list[str] = []
        for r in range(args.repeats):
            options = RunOptions(task="bench", agents=args.agents, hosts=",".join(names))
            run_id = f"bench-{r}"
            t = time.perf_counter()
            placed = [
                runs._place(engine, run_id, f"{run_id}-a{i}", options) for i in range(args.agents)
            ]
            ms.append((time.perf_counter() - t) * 1000 / args.agents)
            log(f"engine path, round {r + 1}: {ms[-1]:.3f} ms per agent")
            # Whatever the engine keeps running for a pool (a watch over its hosts) is not
            # what is measured here, and these hosts are not there to be watched.
            watcher = getattr(engine.pools[run_id], "watcher", None)
            if isinstance(watcher, asyncio.Task):
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        return ms, placed

    engine_ms, engine_placed = asyncio.run(engine_path())
    assert cordoned not in engine_placed, "a cordoned host got an agent"

    held = h.list_hosts(store)

    def pool(k: int) -> fleet.Pool:
        return fleet.Pool(
            (
                fleet.HostSlots.from_facts(
                    x.name,
                    x.facts,
                    cap=args.agents,
                    cordoned=x.cordoned,
                    reachable=x.reachable,
                )
                for x in held
            ),
            k=k,
        )

    def choose(k: int) -> tuple[float, list[str]]:
        best = float("inf")
        placed: list[str] = []
        for _ in range(args.repeats):
            p = pool(k)
            t = time.perf_counter()
            placed = [p.place(f"a{i}").host for i in range(args.agents)]
            best = min(best, (time.perf_counter() - t) * 1000 / args.agents)
        return best, placed

    pool_ms, pool_placed = choose(fleet.BEST_OF_K)
    all_ms, all_placed = choose(len(held))
    log(f"choice alone: best-of-{fleet.BEST_OF_K} {pool_ms:.3f} ms, all hosts {all_ms:.3f} ms")

    loss = host_loss(args.loss_agents, args.loss_hosts) if args.loss_agents else {}
    slots: dict[str, Any] = {}
    if args.experiments:
        sys.path.insert(0, str(ROOT / "bench"))
        import autoresearch_pool

        slots = autoresearch_pool.measure(args.experiments)
    print(
        json.dumps(
            {
                **slots,
                **loss,
                "agents": args.agents,
                "hosts": args.hosts,
                "placement_ms_per_agent": round(statistics.median(engine_ms), 3),
                "pool_only_ms_per_agent": round(pool_ms, 4),
                "baseline_all_hosts_ms_per_agent": round(all_ms, 4),
                "best_of_k": fleet.BEST_OF_K,
                "spread": spread(pool_placed, open_hosts),
                "baseline_spread": spread(all_placed, open_hosts),
                "engine_spread": spread(engine_placed, open_hosts),
                "target_ms": 5.0,
            }
        )
    )


def _lost_host_script(doomed: str) -> Any:
    """Step 1 writes a line; step 2 waits on the doomed host only; then it reads the
    line back and finishes (as tests/test_fleet.py's lost-host test)."""
    from supervisor.testing import Reply

    def script(messages: list[dict[str, Any]]) -> Reply:
        turns = sum(m["role"] == "assistant" for m in messages)
        last = next((m for m in reversed(messages) if m["role"] == "tool"), {"content": ""})
        if turns == 0:
            return Reply(tool_calls=[("shell", {"command": "echo kept >> notes.txt"})])
        if turns == 1:
            command = f'[ "$(whoami)" = {doomed} ] && sleep 300; true'
            return Reply(tool_calls=[("shell", {"command": command})])
        if str(last["content"]).startswith("first"):
            return Reply(tool_calls=[("finish", {"summary": str(last["content"])[:80]})])
        return Reply(tool_calls=[("shell", {"command": "cat notes.txt; whoami"})])

    return script


async def _until(check: Any, what: str, timeout: float = 120.0) -> float:
    """Poll ``check`` until true; the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/fleet.py: timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic()


def host_loss(agents: int, n_hosts: int) -> dict[str, Any]:
    """Kill one host's sshd under its agents; how long until they run again elsewhere,
    against starting as many agents fresh on the live hosts."""
    sys.path.insert(0, str(ROOT / "tests"))
    import contextlib
    import subprocess

    import sshd_kit
    from agent_kit import use_scripted_model

    from supervisor.testing import ScriptedModelServer

    why = sshd_kit.available()
    if why:
        log(f"host-loss run skipped: {why}")
        return {"host_loss_recovery_s": None, "host_loss_skipped": why}
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-sshd-"))
    ws = root / "ws"
    ws.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)  # last, after the servers
        servers = [
            stack.enter_context(sshd_kit.sshd(root / f"s{i}", ""))[0] for i in range(n_hosts)
        ]
        users = {host: user for user, host in sshd_kit.register_hosts(servers).items()}
        doomed = "h1"
        live = [n for n in users if n != doomed]
        server = stack.enter_context(ScriptedModelServer(_lost_host_script(users[doomed])))
        use_scripted_model(server.base_url)
        settings = dict(config.load().values)
        settings["hosts.max_sandboxes"] = 2
        store = open_default()
        stack.callback(store.close)
        engine = Engine(store, get_plugins(), settings=settings)

        def sleeping(user: str) -> int:
            found = subprocess.run(["pgrep", "-u", user, "-x", "sleep"], capture_output=True)
            return len(found.stdout.split())

        async def go() -> dict[str, Any]:
            try:
                return await measure()
            finally:
                await engine.close()

        async def measure() -> dict[str, Any]:
            (ws / "notes.txt").write_text("first\n")
            run_id = await engine.start_run(
                RunOptions(task="t", agents=agents, hosts=",".join(users), workspace=ws)
            )
            pool = engine.pools[run_id]
            await _until(
                lambda: sleeping(users[doomed]) >= len(pool.hosts[doomed].running) > 0,
                "the doomed host's agents to reach their long command",
            )
            victims = [a for a in engine.agents.values() if pool.where(a.id) == doomed]
            steps = {a.id: a.steps for a in victims}
            log(f"{len(victims)} agents on {doomed}; killing its sshd")
            servers[1].stop()
            killed = time.monotonic()
            detected = await _until(
                lambda: all(a.status == "interrupted" for a in victims), "the loss to be seen"
            )
            await _until(lambda: engine._done[run_id].is_set(), "the run to end interrupted")
            resumed_at = time.monotonic()
            await engine.resume_task_run(run_id)

            def running_again(agent: Any, before: int) -> bool:
                return fleet.sandbox_host(agent.sandbox.id) in live and agent.steps > before

            back = await _until(
                lambda: all(running_again(a, steps[a.id]) for a in victims),
                "the moved agents to run again",
            )
            log(
                f"lost at 0 s, seen at {detected - killed:.2f} s, running again at "
                f"{back - killed:.2f} s"
            )
            status = await asyncio.wait_for(engine.wait_run(run_id), 120)
            assert status == "done", status
            # The baseline: as many agents, fresh, on the live hosts, until their first step.
            (ws / "notes.txt").write_text("first\n")
            start = time.monotonic()
            fresh_run = await engine.start_run(
                RunOptions(task="t", agents=len(victims), hosts=",".join(live), workspace=ws)
            )
            fresh = [a for a in engine.agents.values() if a.run_id == fresh_run]
            up = await _until(
                lambda: all(running_again(a, 0) for a in fresh), "the fresh agents to start"
            )
            await asyncio.wait_for(engine.wait_run(fresh_run), 120)
            log(f"baseline: {len(fresh)} fresh agents running after {up - start:.2f} s")
            return {
                "host_loss_recovery_s": round(back - killed, 2),
                "loss_detect_s": round(detected - killed, 2),
                "loss_run_end_s": round(resumed_at - detected, 2),
                "loss_resume_s": round(back - resumed_at, 2),
                "baseline_fresh_start_s": round(up - start, 2),
                "loss_agents": agents,
                "loss_moved": len(victims),
                "loss_hosts": n_hosts,
            }

        return asyncio.run(go())


if __name__ == "__main__":
    main()
