"""autoresearch: how often keep/discard is wrong, and the loop's overhead per experiment.

Decisions. A toy target with a known truth: each run's metric is its configuration's true
value plus seeded Gaussian jitter (σ = 1); the baseline runs as the recipe runs it; each
proposed change has a known true effect, drawn from {−2σ (harmful), 0, 0 (no effect),
+0.25σ (negligible), +3σ (real)}. Every decision goes through the loop's own judge
(``supervisor_autoresearch.judge``, re-runs included), once with the noise floor (the
defaults: 3 baseline runs, 1 spread, up to 2 re-runs) and once without it (one baseline run,
keep any single-run improvement: the rule before), on the same seeded draws, in the same
run. ``wrong_keep_rate``: the share of changes kept whose true value was not better than the
true value of the best they replaced; ``wrong_discard_rate``: the share of real changes
(truly better by 2σ or more) not kept.

Overhead. Runs the real recipe (`supervisor recipe run autoresearch`, built-in proposer,
Docker sandboxes) on a toy target whose training is a sleep of exactly the time budget, so
the baseline measured in the same run is known: what the loop adds per experiment is the
loop step's wall time per experiment minus the training time (with no noise there are no
re-runs to subtract). Repeated with 1 and 3 loops to give experiments per hour with each.

    .venv/bin/python bench/autoresearch.py [--experiments 6] [--budget 2] [--trials 2000]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
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
fixed = ["prepare.py"]
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
    (target / "prepare.py").write_text("# fixed: hash-checked after every experiment\n")
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


EFFECTS = (-2.0, 0.0, 0.0, 0.25, 3.0)  # true gains, in units of the jitter's σ


def decisions(trials: int, experiments: int, seed: int, *, floor: bool) -> dict[str, float]:
    """Simulated loops on the toy truth, judged by the loop's own judge."""
    from supervisor_autoresearch.judge import KEEP, RERUN, Noise, judge

    rng = random.Random(seed)
    wrong_keeps = not_better = wrong_discards = real = runs_made = 0
    for _ in range(trials):
        true_best = 0.0  # lower is better
        base = [true_best + rng.gauss(0, 1) for _ in range(3 if floor else 1)]
        noise = Noise(tuple(base), 1.0)
        best, best_runs = statistics.fmean(base), len(base)
        for _ in range(experiments):
            true = true_best - rng.choice(EFFECTS)
            runs = [true + rng.gauss(0, 1)]
            while True:
                verdict = judge(
                    "lower", runs, best, noise, best_runs=best_runs, max_reruns=2 if floor else 0
                )
                if verdict.status != RERUN:
                    break
                runs.append(true + rng.gauss(0, 1))
            runs_made += len(runs)
            kept = verdict.status == KEEP
            if true >= true_best:
                not_better += 1
                wrong_keeps += kept
            if true_best - true >= 2.0:
                real += 1
                wrong_discards += not kept
            if kept:
                best, best_runs, true_best = verdict.score, len(runs), true
    return {
        "wrong_keep_rate": wrong_keeps / not_better,
        "wrong_discard_rate": wrong_discards / real,
        "runs_per_experiment": runs_made / (trials * experiments),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=6)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=2000, help="simulated loops of 10 changes")
    args = parser.parse_args()
    start = time.perf_counter()
    judged = decisions(args.trials, 10, seed=1, floor=True)
    naive = decisions(args.trials, 10, seed=1, floor=False)
    print(
        f"decisions: {args.trials * 10} per rule in {time.perf_counter() - start:.1f}s; "
        f"wrong keeps {judged['wrong_keep_rate']:.1%} with the noise floor, "
        f"{naive['wrong_keep_rate']:.1%} without",
        file=sys.stderr,
    )
    home = Path(tempfile.mkdtemp(prefix="bench-autoresearch-"))
    try:
        one = run(1, args.experiments, args.budget, home)
        three = run(3, args.experiments, args.budget, home)
    finally:  # the runs started a supervisor process in the bench's home: end it
        subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "server", "stop", "--force"],
            env={**os.environ, "SUPERVISOR_HOME": str(home)},
            capture_output=True,
            timeout=120,
        )
    overhead = one["per_experiment_s"] - args.budget
    cpu_example_budget = 60.0
    print(
        json.dumps(
            {
                "wrong_keep_rate": round(judged["wrong_keep_rate"], 4),
                "wrong_discard_rate": round(judged["wrong_discard_rate"], 4),
                "wrong_keep_rate_without_noise_floor": round(naive["wrong_keep_rate"], 4),
                "wrong_discard_rate_without_noise_floor": round(naive["wrong_discard_rate"], 4),
                "wrong_keep_target": 0.05,
                "runs_per_experiment": round(judged["runs_per_experiment"], 3),
                "decisions_per_rule": args.trials * 10,
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
