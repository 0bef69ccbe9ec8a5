"""The autoresearch recipe end to end, in real Docker sandboxes, on a toy target whose
metric is a known function of its hyperparameters (so keep/discard/crash/timeout are
predictable), plus the scripted model for the agent proposer."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

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
    def script(messages: list[dict]) -> Reply:
        turns = sum(m["role"] == "assistant" for m in messages)
        if turns == 0:
            return Reply(
                tool_calls=[
                    (
                        "edit_file",
                        {"path": "train.py", "old_text": "WIDTH = 4", "new_text": "WIDTH = 8"},
                    )
                ]
            )
        return Reply(tool_calls=[("finish", {"summary": "wider network: WIDTH 4 -> 8"})])

    with scripted(script) as server:
        result = run_cli(
            "recipe", "run", "autoresearch", "-p", f"target={toy}", "-p", "experiments=1"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = results(home, run_id_of(result.stdout))
    assert rows[1][3] == "keep" and rows[1][4] == "wider network: WIDTH 4 -> 8"
    assert float(rows[1][1]) < float(rows[0][1])
    task = server.requests[0]["messages"][1]["content"]
    assert "Make ONE change to train.py" in task and "baseline" in task
    report = (home / "runs" / run_id_of(result.stdout) / "report.md").read_text()
    assert "agents on scripted" in report


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


def test_cpu_example_trains_and_reports(home: Path, sandbox_image: str) -> None:
    """The README's main job, shortened: the built-in CPU example in a real sandbox."""
    result = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        "time_budget=3",
        "-p",
        "experiments=1",
        "-p",
        "proposer=builtin",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = results(home, run_id_of(result.stdout))
    baseline = float(rows[0][1])
    assert rows[0][3] == "keep" and 1.0 < baseline < 8.0  # bits per byte; 8 is a blind guess
    assert len(rows) == 2 and rows[1][3] in ("keep", "discard")
    assert "best val_bpb" in result.stdout and "plot: " in result.stdout


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
