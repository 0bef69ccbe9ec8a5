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

    .venv/bin/python bench/fleet.py [--agents 300] [--hosts 10]

Progress goes to stderr; the last line printed to stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HOME = tempfile.mkdtemp(prefix="bench-fleet-home-")
os.environ["SUPERVISOR_HOME"] = HOME  # never the person's own hosts

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

    print(
        json.dumps(
            {
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


if __name__ == "__main__":
    main()
