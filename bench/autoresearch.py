"""autoresearch loop overhead: the time an experiment costs beyond its own training.

Runs the real recipe (`supervisor recipe run autoresearch`, built-in proposer, Docker
sandboxes) on a toy target whose training is a sleep of exactly the time budget, so the
baseline measured in the same run is known: what the loop adds per experiment is the
loop step's wall time per experiment minus the training time. Repeated with 1 and 3 loops
to give experiments per hour with each.

    .venv/bin/python bench/autoresearch.py [--experiments 6] [--budget 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = """\
import os, time
LR = 0.1
WIDTH = 4
start = time.time()
time.sleep(float(os.environ["AUTORESEARCH_TIME_BUDGET"]))
print(f"val_bpb: {1 + (LR - 0.3) ** 2 + (WIDTH - 8) ** 2 / 100:.6f}")
print(f"training_seconds: {time.time() - start:.3f}")
"""
SPEC = """\
[autoresearch]
name = "bench-toy"
editable = ["train.py"]
run = "python3 train.py"
metric = '^val_bpb:\\s*([0-9.]+)'
time_budget_s = {budget}

[autoresearch.hyperparameters]
LR = [0.05, 0.1, 0.2, 0.3, 0.4]
WIDTH = [2, 4, 6, 8, 10]
"""


def run(agents: int, experiments: int, budget: float, home: Path) -> dict[str, float]:
    target = Path(tempfile.mkdtemp(prefix="bench-toy-"))
    (target / "train.py").write_text(TRAIN)
    (target / "autoresearch.toml").write_text(SPEC.format(budget=budget))
    env = {**os.environ, "SUPERVISOR_HOME": str(home)}
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.cli",
            "recipe",
            "run",
            "autoresearch",
            "-p",
            f"target={target}",
            "-p",
            f"experiments={experiments}",
            "-p",
            "proposer=builtin",
            "-p",
            f"agents={agents}",
            "-p",
            "cores_per_slot=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    wall = time.perf_counter() - start
    loop_s = float(re.search(r"✓ loop \(([0-9.]+)s\)", out).group(1))  # type: ignore[union-attr]
    trained = [float(x) for x in re.findall(r"training_seconds: ([0-9.]+)", out)] or [budget]
    # With several loops, experiments overlap: per-experiment time is loop time × loops / n.
    per_experiment = loop_s * agents / experiments
    print(
        f"{agents} loop(s): {experiments} experiments in {loop_s:.1f}s "
        f"({per_experiment:.2f}s each; recipe wall {wall:.1f}s)",
        file=sys.stderr,
    )
    return {
        "loop_s": loop_s,
        "per_experiment_s": per_experiment,
        "wall_s": wall,
        "training_s": sum(trained) / len(trained),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=6)
    parser.add_argument("--budget", type=float, default=2.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-autoresearch-"))
    one = run(1, args.experiments, args.budget, home)
    three = run(3, args.experiments, args.budget, home)
    overhead = one["per_experiment_s"] - args.budget
    cpu_example_budget = 60.0
    print(
        json.dumps(
            {
                "overhead_per_experiment_s": round(overhead, 2),
                "overhead_target_s": 2.0,
                "baseline_training_s": args.budget,
                "experiments": args.experiments,
                "one_loop_s": round(one["loop_s"], 1),
                "three_loops_s": round(three["loop_s"], 1),
                "experiments_per_hour_1_loop_toy": round(3600 / one["per_experiment_s"], 1),
                "experiments_per_hour_3_loops_toy": round(
                    3600 * args.experiments / three["loop_s"], 1
                ),
                # The CPU example trains for 60 s and evaluates for a few more; its rate follows.
                "experiments_per_hour_1_loop_cpu_example_est": round(
                    3600 / (cpu_example_budget + overhead + 5), 1
                ),
                "speedup_3_loops_vs_1": round(one["loop_s"] / three["loop_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
