"""Command-line start-up time.

Times `supervisor --help` and `supervisor --version` as a user runs them (a new process
each time), against a baseline measured in the same run: a bare `python -c pass` with the
same interpreter, so the figure that matters is the time supervisor adds.

    .venv/bin/python bench/cli.py [--runs 20]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "SUPERVISOR_HOME": tempfile.mkdtemp(prefix="bench-cli-")}
    python = sys.executable
    results = {}
    for name, cmd in {
        "baseline_python": [python, "-c", "pass"],
        "help": [python, "-m", "supervisor.cli", "--help"],
        "version": [python, "-m", "supervisor.cli", "--version"],
    }.items():
        times = timed(cmd, args.runs, env)
        results[name] = (statistics.median(times), sorted(times)[int(len(times) * 0.95) - 1])
        print(f"{name}: p50 {results[name][0]:.1f} ms", file=sys.stderr)
    print(
        json.dumps(
            {
                "help_p50_ms": round(results["help"][0], 1),
                "help_p95_ms": round(results["help"][1], 1),
                "version_p50_ms": round(results["version"][0], 1),
                "baseline_python_p50_ms": round(results["baseline_python"][0], 1),
                "help_added_over_python_ms": round(
                    results["help"][0] - results["baseline_python"][0], 1
                ),
                "target_ms": 150,
                "runs": args.runs,
            }
        )
    )


if __name__ == "__main__":
    main()
