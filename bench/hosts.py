"""Remote hosts over SSH: command round trips, bootstrap, checks, facts — on a real sshd.

Everything runs against Debian's sshd on a 127.0.0.x address started for the run (the
test kit in tests/sshd_kit.py; needs root to create the test users, removed at the end),
through the product's own code paths, with a baseline measured in the same run:

1. Command round trip: ``true`` through the ssh sandbox's ``exec`` (one persistent bash
   on one channel of the host's shared connection; a folder-mode sandbox) vs Fabric's
   ``Connection.run()`` per command (a new channel and shell each time), on one open
   connection to the same server (``persistent_rtt_p50_ms``, ``fabric_run_p50_ms``).
2. ``hosts add`` with password bootstrap until the host is ready: host key trusted, our
   key installed, a key-only login verified, facts read (``hosts_add_s``, the median over
   --hosts additions; each a different user).
3. ``hosts check`` over the --hosts hosts at once vs one by one (``check_10_parallel_s``,
   ``check_10_serial_s``).
4. Facts per GPU recorded from the scripted eight-GPU machine (``facts_per_gpu``).

    sudo .venv/bin/python bench/hosts.py [--iterations 300] [--fabric-iterations 100]
        [--hosts 10]

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
from pathlib import Path
from typing import Any

HOME = tempfile.mkdtemp(prefix="bench-hosts-home-")
os.environ["SUPERVISOR_HOME"] = HOME  # never the person's own hosts or keys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sshd_kit  # noqa: E402

from supervisor import hosts as h  # noqa: E402
from supervisor.sandbox.base import SandboxSpec  # noqa: E402
from supervisor.sandbox.ssh import SSHSandbox  # noqa: E402

LAYOUTS = ["eight-mixed", "one", "gb10", ""]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


async def persistent_rtt(name: str, n: int) -> list[float]:
    box = SSHSandbox(SandboxSpec(run_id="bench", agent_id="rtt"), host=name)
    await box.start()
    try:
        for _ in range(20):  # warm up
            await box.exec("true")
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            result = await box.exec("true")
            samples.append(time.perf_counter() - t)
            assert result.ok
        return samples
    finally:
        await box.destroy()


def fabric_rtt(name: str, n: int) -> list[float]:
    conn = h.connect(h.get_host(name))
    try:
        for _ in range(5):
            conn.run("true", hide=True)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            conn.run("true", hide=True)
            samples.append(time.perf_counter() - t)
        return samples
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="sandbox execs")
    parser.add_argument("--fabric-iterations", type=int, default=100, help="Fabric run()s")
    parser.add_argument("--hosts", type=int, default=10, help="hosts added and checked")
    args = parser.parse_args()
    if sshd_kit.available():
        sys.exit(f"cannot run: {sshd_kit.available()}")
    layouts = [LAYOUTS[i % len(LAYOUTS)] for i in range(args.hosts)]
    users = [sshd_kit.create_user(nvidia_smi=layout) for layout in layouts]
    server = sshd_kit.SSHServer(Path(HOME) / "sshd", users=users)
    try:
        server.start()
        fp = server.fingerprint()
        log(f"sshd on {server.host}:{server.port}; adding {args.hosts} hosts with passwords")
        add_s = []
        for i, u in enumerate(users):
            t = time.perf_counter()
            h.add_host(
                f"h{i}",
                f"{u.name}@{server.host}:{server.port}",
                password=lambda u=u: u.password,  # type: ignore[misc]
                trust=fp,
            )
            add_s.append(time.perf_counter() - t)
        log(f"hosts add (password bootstrap to ready): median {statistics.median(add_s):.3f} s")
        hosts = h.list_hosts()
        t = time.perf_counter()
        outcomes = h.check_hosts(hosts, parallel=False)
        serial = time.perf_counter() - t
        assert all(o.ok for o in outcomes), [o.detail for o in outcomes if not o.ok]
        t = time.perf_counter()
        outcomes = h.check_hosts(h.list_hosts(), parallel=True)
        parallel = time.perf_counter() - t
        assert all(o.ok for o in outcomes)
        log(f"hosts check x{len(hosts)}: serial {serial:.3f} s, parallel {parallel:.3f} s")
        gpus = h.get_host("h0").facts["gpus"]
        facts_per_gpu = min(len(g) for g in gpus)
        log(f"running {args.iterations} sandbox execs and {args.fabric_iterations} Fabric runs")
        persistent = asyncio.run(persistent_rtt("h0", args.iterations))
        fabric = fabric_rtt("h0", args.fabric_iterations)
    finally:
        server.stop()
        for u in users:
            sshd_kit.remove_user(u)
    result: dict[str, Any] = {
        "persistent_rtt_p50_ms": p50_ms(persistent),
        "persistent_rtt_p99_ms": round(statistics.quantiles(persistent, n=100)[98] * 1000, 3),
        "fabric_run_p50_ms": p50_ms(fabric),
        "speedup_x": round(statistics.median(fabric) / statistics.median(persistent), 1),
        "hosts_add_s": round(statistics.median(add_s), 3),
        "hosts_add_max_s": round(max(add_s), 3),
        "check_10_parallel_s": round(parallel, 3),
        "check_10_serial_s": round(serial, 3),
        "hosts": len(hosts),
        "gpus_on_h0": len(gpus),
        "facts_per_gpu": facts_per_gpu,
        "iterations": args.iterations,
        "fabric_iterations": args.fabric_iterations,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
