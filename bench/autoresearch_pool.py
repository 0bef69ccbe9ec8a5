"""autoresearch over a pool: experiments per hour with one slot against four.

Four real sshd hosts (Debian's sshd on 127.0.0.x, from tests/sshd_kit.py; needs root to
make their users) run the toy target, whose training sleeps ``--sleep`` seconds: sleep-
bound, like a GPU-bound run is to the machine that drives it, so four slots on four hosts
overlap. The same ``recipe run autoresearch`` (the built-in proposer, one baseline run)
runs twice, as a person would type it: with ``-p hosts=slot0`` (one CPU slot, the
baseline measured in the same run) and with ``-p hosts=slot0,slot1,slot2,slot3`` (four).

- ``experiments_per_hour_1_slot`` / ``experiments_per_hour_4_slots``: experiments (the
  baseline not included) over the time from the first one's start to the last one's end;
- ``speedup_4_slots``: their ratio (target >= 3.6: near linear).

    .venv/bin/python bench/autoresearch_pool.py [--experiments 12] [--sleep 2]

Progress goes to stderr; the last line printed to stdout is one JSON object. bench/fleet.py
prints these figures with its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TRAIN = """\
import os, time
A = 1
B = 1
C = 1
time.sleep(float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "2")))
print(f"score: {(A - 4) ** 2 + (B - 3) ** 2 + (C - 5) ** 2}")
"""
SPEC = """\
[autoresearch]
name = "pool-bench"
editable = ["train.py"]
run = "python3 train.py"
metric = '^score:\\s*([0-9.]+)'
direction = "lower"
time_budget_s = {sleep}
baseline_runs = 1

[autoresearch.hyperparameters]
A = [1, 2, 3, 4, 5, 6, 7, 8]
B = [1, 2, 3, 4, 5, 6, 7, 8]
C = [1, 2, 3, 4, 5, 6, 7, 8]
"""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(target: Path, hosts: str, experiments: int) -> float:
    """One recipe run; its experiments per hour, from the store's experiments table."""
    from supervisor.store import Store

    cmd = [sys.executable, "-m", "supervisor.cli", "recipe", "run", "autoresearch"]
    for p in (f"target={target}", f"hosts={hosts}", f"experiments={experiments}"):
        cmd += ["-p", p]
    cmd += ["-p", "proposer=builtin"]
    log(f"$ supervisor recipe run autoresearch ... -p hosts={hosts}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"the run failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    run_id = next(
        ln.split()[1].rstrip(":") for ln in out.stdout.splitlines() if ln.startswith("run ")
    )
    store = Store.open(Path(os.environ["SUPERVISOR_HOME"]) / "supervisor.db")
    rows = [
        dict(r)
        for r in store.db.query(
            "SELECT started_at, duration_s FROM experiments WHERE run_id = ? AND n > 0", [run_id]
        )
    ]
    store.close()
    span = max(r["started_at"] + r["duration_s"] for r in rows) - min(r["started_at"] for r in rows)
    rate = len(rows) / span * 3600
    log(f"  {len(rows)} experiments in {span:.1f} s: {rate:.0f} per hour")
    return rate


def measure(experiments: int = 12, sleep: float = 2.0) -> dict[str, Any]:
    """Start four sshd hosts, register them in $SUPERVISOR_HOME, run both; the figures."""
    import sshd_kit

    why = sshd_kit.available()
    if why:
        raise SystemExit(f"cannot start test sshd hosts: {why}")
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="bench-arpool-"))
        sshd_kit.register_hosts(
            [stack.enter_context(sshd_kit.sshd(root / f"s{i}", ""))[0] for i in range(4)],
            prefix="slot",
        )
        target = root / "target"
        target.mkdir()
        (target / "train.py").write_text(TRAIN)
        (target / "autoresearch.toml").write_text(SPEC.replace("{sleep}", f"{sleep:g}"))
        started = time.perf_counter()
        # The supervisor process the runs start must end before the hosts do.
        stack.callback(
            subprocess.run,
            [sys.executable, "-m", "supervisor.cli", "server", "stop"],
            capture_output=True,
            timeout=120,
        )
        one = _run(target, "slot0", experiments)
        four = _run(target, "slot0,slot1,slot2,slot3", experiments)
    log(f"both runs in {time.perf_counter() - started:.0f} s")
    return {
        "experiments_per_hour_1_slot": round(one, 1),
        "experiments_per_hour_4_slots": round(four, 1),
        "speedup_4_slots": round(four / one, 2),
        "toy_sleep_s": sleep,
        "experiments": experiments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--sleep", type=float, default=2.0)
    args = parser.parse_args()
    os.environ["SUPERVISOR_HOME"] = tempfile.mkdtemp(prefix="bench-arpool-home-")
    print(json.dumps(measure(args.experiments, args.sleep)))


if __name__ == "__main__":
    main()
