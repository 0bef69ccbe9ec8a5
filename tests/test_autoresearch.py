"""The autoresearch recipe end to end, in real Docker sandboxes, on a toy target whose
metric is a known function of its hyperparameters (so keep/discard/crash/timeout are
predictable), plus the scripted model for the agent proposer."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_kit import scripted
from conftest import run_cli

from supervisor.store import Store
from supervisor.testing import Reply

pytestmark = pytest.mark.docker

TRAIN = """\
import os, sys, time
LR = 0.1
WIDTH = 4
budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "1"))
if WIDTH == 64:
    raise SystemExit("out of memory (a crash on purpose)")
if LR == 9.0:
    time.sleep(3600)  # never finishes: killed at twice the budget
time.sleep(min(budget, 0.3))
print("training...")
print(f"val_bpb: {1 + (LR - 0.3) ** 2 + (WIDTH - 8) ** 2 / 100:.6f}")
print("peak_memory_mb: 12.5")
"""
SPEC = """\
[autoresearch]
name = "toy"
editable = ["train.py"]
fixed = ["prepare.py"]
run = "python3 train.py"
metric = '^val_bpb:\\s*([0-9.]+)'
memory = '^peak_memory_mb:\\s*([0-9.]+)'
direction = "lower"
time_budget_s = 1

[autoresearch.hyperparameters]
LR = [0.1, 0.3, 9.0]
WIDTH = [4, 8, 64]
"""


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    target = tmp_path / "toy"
    target.mkdir()
    (target / "train.py").write_text(TRAIN)
    (target / "prepare.py").write_text("# fixed\n")
    (target / "autoresearch.toml").write_text(SPEC)
    return target


def results(home: Path, run_id: str) -> list[list[str]]:
    lines = (home / "runs" / run_id / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    return [ln.split("\t") for ln in lines[1:]]


def run_id_of(output: str) -> str:
    return next(ln.split()[1].rstrip(":") for ln in output.splitlines() if ln.startswith("run "))


def test_builtin_search_keeps_discards_crashes_and_times_out(
    toy: Path, home: Path, sandbox_image: str
) -> None:
    result = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        f"target={toy}",
        "-p",
        "experiments=8",
        "-p",
        "proposer=builtin",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    rows = results(home, run_id)
    statuses = [r[3] for r in rows]
    assert rows[0][3] == "keep" and rows[0][4] == "baseline" and rows[0][1] == "1.200000"
    assert "keep" in statuses[1:] and "discard" in statuses and "crash" in statuses
    crashes = [r[4] for r in rows if r[3] == "crash"]
    assert any("killed at twice the time budget" in c for c in crashes)  # LR 9.0 hangs
    assert any("WIDTH 8 -> 64" in c or "no val_bpb" in c for c in crashes)
    # The best is the optimum of the toy function (LR 0.3, WIDTH 8) or on its way there.
    best = min(float(r[1]) for r in rows if r[3] == "keep")
    assert best < 1.2
    assert float(rows[0][2]) == pytest.approx(12.5 / 1024, abs=0.01)
    run_dir = home / "runs" / run_id
    report = (run_dir / "report.md").read_text()
    assert "built-in proposer" in report and "![progress](progress.png)" in report
    assert "## Kept changes" in report and "-LR = 0.1" in report + "-WIDTH = 4"
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"report: {run_dir / 'report.md'}" in result.stdout
    # The kept work is in the run's copy of the target, on the loop's branch.
    branches = subprocess.run(
        ["git", "-C", str(run_dir / "target"), "branch", "--list"], capture_output=True, text=True
    ).stdout
    assert f"autoresearch/{run_id}-1" in branches
    # Only the editable files' changes are on it: no run.log, no "uncommitted work" commit.
    git = ["git", "-C", str(run_dir / "target")]
    changed = subprocess.run(
        [*git, "diff", "--name-only", "main", f"autoresearch/{run_id}-1"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert changed == ["train.py"]
    messages = subprocess.run(
        [*git, "log", "--format=%s", f"main..autoresearch/{run_id}-1"],
        capture_output=True,
        text=True,
    ).stdout
    assert "uncommitted work" not in messages and messages.strip()
    # No experiment configuration was tried twice.
    store = Store.open(home / "supervisor.db")
    params = [r["params"] for r in store.db.query("SELECT params FROM experiments WHERE n > 0")]
    store.close()
    assert len(params) == len(set(params))


def test_second_run_remembers_what_was_tried(toy: Path, home: Path, sandbox_image: str) -> None:
    first = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        f"target={toy}",
        "-p",
        "experiments=2",
        "-p",
        "proposer=builtin",
    )
    assert first.returncode == 0, first.stdout
    notes = run_cli("notes", "ls").stdout
    assert "toy: " in notes and "val_bpb" in notes
    second = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        f"target={toy}",
        "-p",
        "experiments=2",
        "-p",
        "proposer=builtin",
    )
    assert second.returncode == 0, second.stdout
    store = Store.open(home / "supervisor.db")
    tried = [
        (r["run_id"], r["params"])
        for r in store.db.query("SELECT run_id, params FROM experiments WHERE n > 0 ORDER BY id")
    ]
    store.close()
    first_params = {p for r, p in tried if r == run_id_of(first.stdout)}
    second_params = {p for r, p in tried if r == run_id_of(second.stdout)}
    assert first_params and second_params and not first_params & second_params


def test_three_loops_never_share_a_slot(toy: Path, home: Path, sandbox_image: str) -> None:
    result = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        f"target={toy}",
        "-p",
        "agents=3",
        "-p",
        "experiments=6",
        "-p",
        "proposer=builtin",
        "-p",
        "cores_per_slot=1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    store = Store.open(home / "supervisor.db")
    rows = [
        dict(r)
        for r in store.db.query(
            "SELECT agent_id, slot, started_at, duration_s FROM experiments WHERE n > 0"
        )
    ]
    store.close()
    assert {r["agent_id"] for r in rows} == {"agent-1", "agent-2", "agent-3"}
    # Three loops proposing at once never tried the same configuration twice.
    store = Store.open(home / "supervisor.db")
    params = [r["params"] for r in store.db.query("SELECT params FROM experiments WHERE n > 0")]
    store.close()
    assert params and len(params) == len(set(params))
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_slot.setdefault(r["slot"], []).append(
            (r["started_at"], r["started_at"] + r["duration_s"])
        )
    assert len(by_slot) <= os.cpu_count()  # type: ignore[operator]
    for spans in by_slot.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 0.05, f"two experiments overlapped on one slot: {spans}"


def test_agent_proposer_edits_the_code(toy: Path, home: Path, sandbox_image: str) -> None:
    """The agent's edits are run and judged; an edit that repeats one already tried is
    not run; one that touches a fixed file is invalid, and the next agent is told why."""
    narrower = {"path": "train.py", "old_text": "WIDTH = 4", "new_text": "WIDTH = 2"}
    wider = {"path": "train.py", "old_text": "WIDTH = 4", "new_text": "WIDTH = 8"}
    cheat = {"path": "prepare.py", "old_text": "# fixed", "new_text": "# fixed, or not"}
    plans = [
        ([narrower], "narrower network: WIDTH 4 -> 2"),
        ([narrower], "narrower again: WIDTH 4 -> 2"),
        ([cheat, wider], "wider, and a friendlier evaluation"),
        ([wider], "wider network: WIDTH 4 -> 8"),
    ]

    def script(messages: list[dict]) -> Reply:
        task = messages[1]["content"]
        history = task.split("Experiments so far", 1)[-1].split("Notes from", 1)[0]
        edits, summary = plans[history.count("\n- ") - 1]
        turns = sum(m["role"] == "assistant" for m in messages)
        if turns < len(edits):
            return Reply(tool_calls=[("edit_file", edits[turns])])
        return Reply(tool_calls=[("finish", {"summary": summary})])

    with scripted(script) as server:
        result = run_cli(
            "recipe", "run", "autoresearch", "-p", f"target={toy}", "-p", "experiments=4",
            "-p", "baseline_runs=1", timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = results(home, run_id_of(result.stdout))
    assert [r[3] for r in rows] == ["keep", "discard", "discard", "invalid", "keep"]
    assert rows[1][4] == "narrower network: WIDTH 4 -> 2"
    assert "the same code as an experiment already tried; not run again" in rows[2][4]
    assert "changed the fixed file(s) prepare.py" in rows[3][4]
    assert rows[4][4].startswith("wider network: WIDTH 4 -> 8")
    assert float(rows[4][1]) < float(rows[0][1])
    first = server.requests[0]["messages"][1]["content"]
    assert "Make ONE change to train.py" in first and "baseline" in first
    last = [r["messages"][1]["content"] for r in server.requests][-1]
    assert "invalid" in last and "changed the fixed file(s) prepare.py" in last
    report = (home / "runs" / run_id_of(result.stdout) / "report.md").read_text()
    assert "agents on scripted" in report


def test_a_spent_budget_ends_the_loop_instead_of_churning(
    toy: Path, home: Path, sandbox_image: str
) -> None:
    """With budget.at_limit = stop, the editing agent that meets the run's token limit is
    stopped; the loop ends and says why, rather than running unproposed experiments."""
    edit = {"path": "train.py", "old_text": "WIDTH = 4", "new_text": "WIDTH = 2"}

    def script(messages: list[dict]) -> Reply:
        turns = sum(m["role"] == "assistant" for m in messages)
        return Reply(tool_calls=[("edit_file", edit)], usage=(600, 100)) if turns < 9 else finish()

    def finish() -> Reply:
        return Reply(tool_calls=[("finish", {"summary": "done"})], usage=(600, 100))

    with scripted(script, budget__run_tokens="1000", budget__at_limit="stop"):
        result = run_cli(
            "recipe", "run", "autoresearch", "-p", f"target={toy}", "-p", "experiments=6",
            "-p", "baseline_runs=1", timeout=300,
        )  # fmt: skip
    out = result.stdout + result.stderr
    rows = results(home, run_id_of(result.stdout))
    assert [r[3] for r in rows] == ["keep"], out  # the baseline only: nothing unproposed ran
    assert "the editing agent stopped" in out and "this loop ends" in out, out


def test_resume_after_kill(toy: Path, home: Path, sandbox_image: str) -> None:
    slow = toy / "train.py"
    slow.write_text(TRAIN.replace("time.sleep(min(budget, 0.3))", "time.sleep(budget)"))
    (toy / "autoresearch.toml").write_text(SPEC.replace("time_budget_s = 1", "time_budget_s = 2"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor.cli",
            "recipe",
            "run",
            "autoresearch",
            "-p",
            f"target={toy}",
            "-p",
            "experiments=4",
            "-p",
            "proposer=builtin",
            "-p",
            "baseline_runs=1",
            "--foreground",  # the process that dies is the one running the recipe
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "agent-1 #2:" in line and ("keep" in line or "discard" in line or "crash" in line):
            proc.send_signal(signal.SIGKILL)  # a crash of supervisor, not a clean stop
            break
    proc.wait(30)
    run_id = run_id_of("".join(lines))
    before = len(results(home, run_id))
    subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "sandbox", "prune"],
        capture_output=True,
        timeout=120,
    )  # the dead run's sandbox is removed
    resumed = run_cli("recipe", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "✓ prepare (done earlier)" in resumed.stdout
    assert "✓ baseline (done earlier)" in resumed.stdout
    rows = results(home, run_id)
    assert len(rows) == 5  # baseline + 4 experiments in all, none repeated
    assert len(rows) > before
    store = Store.open(home / "supervisor.db")
    ns = [
        r["n"]
        for r in store.db.query("SELECT n FROM experiments WHERE run_id = ? ORDER BY id", [run_id])
    ]
    store.close()
    assert sorted(ns) == [0, 1, 2, 3, 4]


def test_bad_target_is_one_line(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("recipe", "run", "autoresearch", "-p", f"target={empty}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "the spec needs 'editable'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    resumed = run_cli("recipe", "resume", run_id)  # recorded as failed: resumable, nothing lost
    assert resumed.returncode == 2 and "the spec needs 'editable'" in resumed.stderr


def test_cpu_example_trains_and_reports(home: Path, tmp_path: Path, sandbox_image: str) -> None:
    """The README's main job, shortened: the built-in CPU example in a real sandbox."""
    import shutil

    from supervisor_autoresearch.loop import example_target

    # A copy whose spec gives start-up and evaluation room next to a short budget on a busy
    # machine (twice 8 s was not always enough).
    example = tmp_path / "cpu-example"
    shutil.copytree(example_target(), example, ignore=shutil.ignore_patterns("data"))
    spec = example / "autoresearch.toml"
    spec.write_text(
        spec.read_text().replace("time_budget_s = 60", "time_budget_s = 5\ntimeout_s = 90")
    )
    result = run_cli(
        "recipe", "run", "autoresearch", "-p", f"target={example}", "-p", "experiments=1",
        "-p", "proposer=builtin", "-p", "baseline_runs=2", "-p", "max_reruns=0",
        "-p", "cores_per_slot=1",  # one BLAS thread: less waiting for a busy core
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = results(home, run_id_of(result.stdout))
    baseline = float(rows[0][1])
    assert rows[0][3] == "keep" and 1.0 < baseline < 8.0  # bits per byte; 8 is a blind guess
    assert len(rows) == 2 and rows[1][3] in ("keep", "discard")
    assert "best val_bpb" in result.stdout and "plot: " in result.stdout
    # What the README promises the main job prints: the noise floor, a confidence per keep.
    assert "noise floor " in result.stdout and "of 2 baseline runs of val_bpb" in result.stdout
    if rows[1][3] == "keep":
        assert "kept #1: " in result.stdout and ", confidence " in result.stdout


def test_search_never_proposes_the_baseline_again() -> None:
    from supervisor_autoresearch.proposers import SearchProposer, key, read_params

    files = {"train.py": "A = 1\nB = 'x'\n"}
    space = {"A": [1, 2], "B": ["x", "y"]}
    tried = {key(read_params(files, list(space)))}
    proposer = SearchProposer(space, seed=0)
    seen = []
    while (proposal := proposer.propose(files, tried)) is not None:
        tried.add(key(proposal.params))
        seen.append(proposal.params)
    assert {"A": 1, "B": "x"} not in seen and len(seen) == 2  # one change at a time


def test_slot_commands_run_under_timeout() -> None:
    from supervisor_autoresearch.loop import SlotPool

    cpu = SlotPool(["0,1"], "cpu").wrap(
        "0,1", "python3 -c 'import os; print(os.environ[\"OMP_NUM_THREADS\"])'"
    )
    out = subprocess.run(f"timeout 10 {cpu}", shell=True, capture_output=True, text=True)
    assert out.stdout.strip() == "2", out.stderr
    gpu = SlotPool(["3"], "gpu").wrap("3", "sh -c 'echo $CUDA_VISIBLE_DEVICES'")
    assert (
        subprocess.run(
            f"timeout 10 {gpu}", shell=True, capture_output=True, text=True
        ).stdout.strip()
        == "3"
    )


# A toy whose metric has a known jitter: the i-th run of one configuration is off by
# JITTER[i % 3], so the baseline's three runs spread 0.04 around 1.0 (the noise floor),
# each experiment's first run is exact and its re-runs are +0.02 then -0.02. The flags'
# true effects: TINY 0.01 (inside the noise), MARGINAL 0.06 (between the floor and twice
# it: re-run), REAL 0.2; CHEAT grades itself by rewriting the fixed prepare.py.
NOISY_TRAIN = """\
import sys
from pathlib import Path
TINY = 0
MARGINAL = 0
REAL = 0
CHEAT = 0
JITTER = [0.0, 0.02, -0.02]
counter = Path(f".runs-{TINY}{MARGINAL}{REAL}{CHEAT}")
i = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(i + 1))
base = float(Path("data/base.txt").read_text())  # a fixed file in data/: copied along
if CHEAT:
    with open("prepare.py", "a") as fh:
        fh.write("# the experiment graded itself\\n")
    print("val_bpb: 0.000001")
    sys.exit()
print(f"val_bpb: {base - 0.01 * TINY - 0.06 * MARGINAL - 0.2 * REAL + JITTER[i % 3]:.6f}")
"""
NOISY_SPEC = """\
[autoresearch]
name = "noisy"
editable = ["train.py"]
fixed = ["prepare.py", "data"]
run = "python3 train.py"
metric = '^val_bpb:\\s*([0-9.]+)'
time_budget_s = 5

[autoresearch.hyperparameters]
TINY = [0, 1]
MARGINAL = [0, 1]
REAL = [0, 1]
CHEAT = [0, 1]
"""


@pytest.fixture
def noisy(tmp_path: Path) -> Path:
    target = tmp_path / "noisy"
    (target / "data").mkdir(parents=True)
    (target / "data" / "base.txt").write_text("1.0\n")
    (target / "train.py").write_text(NOISY_TRAIN)
    (target / "prepare.py").write_text("# the evaluation: fixed\n")
    (target / "autoresearch.toml").write_text(NOISY_SPEC)
    return target


def test_noise_floor_rejects_tiny_keeps_real_reruns_marginal_and_refuses_tampering(
    noisy: Path, home: Path, sandbox_image: str
) -> None:
    result = run_cli(
        "recipe", "run", "autoresearch", "-p", f"target={noisy}", "-p", "experiments=4",
        "-p", "proposer=builtin",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    out = result.stdout
    assert (
        "noise floor 0.04 (1 × the spread 0.04 of 3 baseline runs of val_bpb: 1, 1.02, 0.98)" in out
    )
    rows = {r[4].split(" ")[0]: r for r in results(home, run_id)}
    assert rows["baseline"][1] == "1.000000" and rows["baseline"][3] == "keep"
    assert rows["baseline"][2] == "NA"  # no memory regex: unknown, not 0.0
    assert rows["TINY"][3] == "discard"  # 0.01 better: inside the noise
    assert "better by 0.01, not by more than the noise floor (0.04)" in rows["TINY"][4]
    assert rows["REAL"][3] == "keep" and "re-run" not in rows["REAL"][4]
    assert rows["MARGINAL"][3] == "keep"
    assert "mean of 3 runs: 2 re-run(s) of a marginal win" in rows["MARGINAL"][4]
    assert "marginal — val_bpb" in out and "re-run 1 of 2" in out and "re-run 2 of 2" in out
    assert (
        rows["CHEAT"][3] == "invalid" and "changed the fixed file(s) prepare.py" in rows["CHEAT"][4]
    )
    assert "confidence 100%" in out
    # Kept changes carry their confidence into the report, with the noise floor.
    run_dir = home / "runs" / run_id
    report = (run_dir / "report.md").read_text()
    assert "noise floor 0.04" in report and report.count("confidence 100% that") == 2
    assert "- experiments: 4 (2 kept, 1 discarded, 0 crashed, 1 invalid)" in report
    from PIL import Image

    title = Image.open(run_dir / "progress.png").text["Title"]  # type: ignore[attr-defined]
    assert title == "autoresearch: 4 experiments (2 kept, 1 discarded, 0 crashed, 1 invalid)"
    # The invalid experiment's change never reached the branch; the fixed file is intact.
    branch = f"autoresearch/{run_id}-1"
    shown = subprocess.run(
        ["git", "-C", str(run_dir / "target"), "show", f"{branch}:prepare.py"],
        capture_output=True,
        text=True,
    ).stdout
    assert shown == "# the evaluation: fixed\n"
    notes = run_cli("notes", "ls").stdout
    assert "CHEAT 0 -> 1 was invalid" in notes
    # Every experiment's change is kept, discarded ones too, and can be looked at.
    listed = run_cli("autoresearch", "log", "--run", run_id, "--json")
    assert listed.returncode == 0, listed.stderr
    log = json.loads(listed.stdout)
    assert [r["status"] for r in log if r["n"] == 0] == ["keep"]
    tiny = next(r for r in log if r["description"].startswith("TINY"))
    assert tiny["status"] == "discard" and tiny["runs"] == [pytest.approx(tiny["metric"])]
    shown_cli = run_cli("autoresearch", "show", str(tiny["id"]))
    assert shown_cli.returncode == 0, shown_cli.stderr
    assert "-TINY = 0\n+TINY = 1" in shown_cli.stdout and "status: discard" in shown_cli.stdout
    marginal = json.loads(
        run_cli("autoresearch", "show", str(rows_id(log, "MARGINAL")), "--json").stdout
    )
    assert marginal["reruns"] == 2 and len(marginal["runs"]) == 3
    assert marginal["noise_floor"] == pytest.approx(0.04)
    assert 0.5 < marginal["confidence"] <= 1
    found = run_cli("autoresearch", "log", "--search", "+real = 1").stdout  # in the diff
    assert "REAL 0 -> 1" in found and "TINY" not in found
    missing = run_cli("autoresearch", "show", "99999")
    assert missing.returncode == 2 and "no experiment 99999" in missing.stderr


def rows_id(log: list[dict[str, Any]], prefix: str) -> int:
    return int(next(r["id"] for r in log if r["description"].startswith(prefix)))


def test_plot_title_counts_match_the_report_and_ticks_are_whole(tmp_path: Path) -> None:
    from supervisor_autoresearch.report import plot, summary

    rows = [
        {"n": 0, "metric": 1.0, "status": "keep", "description": "baseline", "runs": "[1, 1.1]"},
        *(
            {"n": n, "metric": 1.0 - n / 100, "status": s, "description": f"c{n}", "runs": "[]"}
            for n, s in ((1, "keep"), (2, "discard"), (3, "crash"), (4, "invalid"))
        ),
    ]
    rows[3]["metric"] = rows[4]["metric"] = None
    drawn = plot(rows, "val_bpb", "lower", tmp_path / "p.png")
    assert drawn["title"] == f"autoresearch: {summary(rows)}"
    assert summary(rows) == "4 experiments (1 kept, 1 discarded, 1 crashed, 1 invalid)"
    assert drawn["xticks"] and all(t == int(t) for t in drawn["xticks"])


def test_the_best_is_the_best_kept_result() -> None:
    from supervisor_autoresearch.report import best_kept

    rows = [
        {"n": 0, "metric": 4.42, "status": "keep"},
        {"n": 1, "metric": 3.075, "status": "keep"},
        {"n": 2, "metric": 3.074, "status": "discard"},  # better by luck, inside the noise
    ]
    assert best_kept(rows, "lower")["n"] == 1
    assert best_kept(rows, "higher")["n"] == 0


def test_resume_after_stop_reruns_the_experiment_in_progress(
    toy: Path, home: Path, sandbox_image: str
) -> None:
    """Stopped during experiment #1 and resumed in the same supervisor process, the run
    re-runs that experiment and counts it (it used to end at once: 0 experiments)."""
    import asyncio
    import time

    (toy / "train.py").write_text(TRAIN.replace("time.sleep(min(budget, 0.3))", "time.sleep(3)"))
    (toy / "autoresearch.toml").write_text(SPEC.replace("time_budget_s = 1", "time_budget_s = 5"))
    started = run_cli(
        "recipe", "run", "autoresearch", "-d", "-p", f"target={toy}", "-p", "experiments=1",
        "-p", "proposer=builtin", "-p", "baseline_runs=1",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = started.stdout.strip()  # -d prints the run's id
    store = Store.open(home / "supervisor.db")
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            texts = [
                r["text"] or ""
                for r in store.db.query("SELECT text FROM events WHERE run_id = ?", [run_id])
            ]
            if any(t.startswith("agent-1 #1: ") for t in texts):
                break
            time.sleep(0.2)
        else:
            pytest.fail("experiment #1 never started")
    finally:
        store.close()

    async def stop() -> None:
        from supervisor.client import Client

        client = await Client.connect(home, start=False)
        try:
            await client.call("run.stop", run=run_id)
        finally:
            await client.close()

    asyncio.run(stop())  # as the TUI's stop key does
    resumed = run_cli("recipe", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = results(home, run_id)
    assert len(rows) == 2 and rows[1][3] in ("keep", "discard", "crash")
    report = (home / "runs" / run_id / "report.md").read_text()
    assert "- experiments: 1 (" in report


def test_server_stop_force_ends_the_training(toy: Path, home: Path, tmp_path: Path) -> None:
    """`server stop --force` mid-experiment leaves no training process behind (local
    sandboxes run it on this machine, where it used to run on, reparented)."""
    import time

    pidfile = tmp_path / "train.pid"
    train = TRAIN.replace(
        "time.sleep(min(budget, 0.3))",
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())) if LR != 0.1 else None\n"
        "time.sleep(60 if LR != 0.1 else 0.1)",
    )
    (toy / "train.py").write_text(train)
    (toy / "autoresearch.toml").write_text(SPEC.replace("time_budget_s = 1", "time_budget_s = 60"))
    started = run_cli(
        "recipe", "run", "autoresearch", "-d", "-p", f"target={toy}", "-p", "experiments=1",
        "-p", "proposer=builtin", "-p", "baseline_runs=1", "-p", "sandbox=local",
        "-p", "cores_per_slot=1",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    assert _alive(pid)
    stopped = run_cli("server", "stop", "--force")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the experiment's training outlived `server stop --force`"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_git_target_with_uncommitted_files_is_refused(toy: Path, home: Path) -> None:
    git = ["git", "-C", str(toy), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.py", "prepare.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    (toy / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.3"))
    result = run_cli("recipe", "run", "autoresearch", "-p", f"target={toy}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "commit these files first" in result.stderr
    assert "autoresearch.toml, train.py" in result.stderr
    assert not list((home / "runs").glob("*/target"))  # nothing was copied


def test_hyperparameters_that_match_no_assignment_are_refused(toy: Path, home: Path) -> None:
    (toy / "autoresearch.toml").write_text(SPEC + "DEPTH = [2, 4]\nHEADS = [1, 2]\n")
    for args in (("--dry-run",), ()):  # --dry-run reads and checks the spec too
        result = run_cli("recipe", "run", "autoresearch", "-p", f"target={toy}", *args)
        assert result.returncode == 2, result.stdout
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "hyperparameters DEPTH, HEADS match no `NAME = value` line in train.py" in (
            result.stderr
        )


def test_dry_run_shows_the_spec(toy: Path, home: Path) -> None:
    result = run_cli("recipe", "run", "autoresearch", "--dry-run", "-p", f"target={toy}")
    assert result.returncode == 0, result.stderr
    assert f"prepare: target {toy} (toy): edit train.py; fixed prepare.py" in result.stdout
    assert "baseline 3 run(s)" in result.stdout and "hyperparameters" in result.stdout
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())


def test_judge_decisions() -> None:
    from supervisor_autoresearch.judge import Noise, judge

    noise = Noise((1.0, 1.02, 0.98))
    assert noise.floor == pytest.approx(0.04)
    assert judge("lower", [0.99], 1.0, noise).status == "discard"
    assert judge("lower", [0.94], 1.0, noise).status == "rerun"
    assert judge("lower", [0.94, 0.96], 1.0, noise).status == "rerun"
    assert judge("lower", [0.94, 0.96, 0.92], 1.0, noise).status == "keep"
    assert judge("lower", [0.94, 1.0, 1.0], 1.0, noise).status == "discard"
    assert judge("lower", [0.8], 1.0, noise).status == "keep"
    assert judge("higher", [1.2], 1.0, noise).status == "keep"
    assert judge("lower", [0.999], 1.0, Noise((1.0,))).status == "keep"  # not measured
    sure = judge("lower", [0.97], 1.0, noise, best_runs=3).confidence
    assert 0.8 < sure < 0.99


def _wheel(path: Path, source: str) -> None:
    """A pure-Python wheel of one module, made by hand (no build tool, no index)."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    info = "toyenv-0.1.dist-info"
    files = {
        "toyenv/__init__.py": source,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: toyenv\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


def test_target_environment_is_built_once_and_reused(
    toy: Path, home: Path, tmp_path: Path, sandbox_image: str
) -> None:
    """Packages the spec names are installed once into an image built from the sandbox
    image, shown as progress, and reused by every sandbox of the run (and later runs)."""
    from supervisor.sandbox.docker import docker_client, home_label

    _wheel(toy / "wheels" / "toyenv-0.1-py3-none-any.whl", f"BASE = 0.5  # {tmp_path.name}\n")
    (toy / "train.py").write_text(
        TRAIN.replace("import os, sys, time", "import os, sys, time\nimport toyenv").replace(
            'print(f"val_bpb: {1 + ', 'print(f"val_bpb: {toyenv.BASE + '
        )
    )
    (toy / "autoresearch.toml").write_text(
        SPEC.replace(
            "time_budget_s = 1",
            'time_budget_s = 1\npackages = ["wheels/toyenv-0.1-py3-none-any.whl"]',
        )
    )
    client = docker_client()
    try:
        result = run_cli(
            "recipe", "run", "autoresearch", "-p", f"target={toy}", "-p", "experiments=1",
            "-p", "proposer=builtin", "-p", "baseline_runs=1",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert out.count("image: building image supervisor-derived:") == 1
        assert "image: built image supervisor-derived:" in out
        assert "image: reusing image supervisor-derived:" in out  # the loop's
        rows = results(home, run_id_of(out))
        assert rows[0][1] == "0.700000"  # toyenv.BASE 0.5 + 0.04 + 0.16: the package ran
        assert len(rows) == 2
    finally:
        for image in client.images.list(filters={"label": f"supervisor.home={home_label()}"}):
            client.images.remove(image.id, force=True)
