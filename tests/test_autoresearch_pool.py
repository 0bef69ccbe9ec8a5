"""autoresearch over a pool of hosts (`-p hosts=`): one loop per free GPU slot of three
real sshd hosts (no GPU, one RTX 4090, eight mixed H100/A100 of which some are busy or in
MIG mode, all from a scripted `nvidia-smi`), never two experiments on one slot, and the
noise floor measured per GPU model.

The toy target's noise depends on where it runs (`CUDA_VISIBLE_DEVICES`), as a real
metric's does on a real device, so each class's measured floor differs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd_kit
from conftest import run_cli

from supervisor.store import Store

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())

TRAIN = """\
import os, random, time
LR = 0.1
WIDTH = 4
device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
spread = 0.001 if not device else 0.002 * (1 + int(device))
time.sleep(float(os.environ.get("TOY_SLEEP", "0.5")))
print(f"val_bpb: {1 + (LR - 0.3) ** 2 + (WIDTH - 8) ** 2 / 100 + random.uniform(0, spread):.6f}")
"""
SPEC = """\
[autoresearch]
name = "pooltoy"
editable = ["train.py"]
run = "python3 train.py"
metric = '^val_bpb:\\s*([0-9.]+)'
direction = "lower"
time_budget_s = 1

[autoresearch.hyperparameters]
LR = [0.1, 0.2, 0.3, 0.4, 0.5]
WIDTH = [4, 6, 8, 10, 12]
"""

# The free slots of the three hosts: h0's CPU; h1's RTX 4090; h2's idle H100s (2, 3) and
# idle A100s (6, 7) — 0, 1 and 4 are busy, 5 is in MIG mode.
EXPECTED = {
    ("h0", "CPU"),
    ("h1", "0"),
    ("h2", "2"),
    ("h2", "3"),
    ("h2", "6"),
    ("h2", "7"),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[sshd_kit.SSHServer]]:
    with contextlib.ExitStack() as stack:
        root = tmp_path_factory.mktemp("arpool")
        yield [
            stack.enter_context(sshd_kit.sshd(root / f"h{i}", layout))[0]
            for i, layout in enumerate(("", "one", "eight-mixed"))
        ]


def toy(tmp_path: Path) -> Path:
    target = tmp_path / "pooltoy"
    target.mkdir()
    (target / "train.py").write_text(TRAIN)
    (target / "autoresearch.toml").write_text(SPEC)
    return target


def test_one_loop_per_free_gpu_slot_never_two_experiments_on_a_slot(
    servers: list[sshd_kit.SSHServer], home: Path, tmp_path: Path
) -> None:
    sshd_kit.register_hosts(servers)
    result = run_cli(
        "recipe",
        "run",
        "autoresearch",
        "-p",
        f"target={toy(tmp_path)}",
        "-p",
        "hosts=all",
        "-p",
        "experiments=18",
        "-p",
        "proposer=builtin",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # What was left out, and why, is said.
    assert "host h2: GPU 0, 1, 4 busy at its last check" in out
    assert "host h2: GPU 5 split into MIG instances" in out
    assert "6 loop(s) over 6 slot(s)" in out

    store = Store.open(home / "supervisor.db")
    rows = [dict(r) for r in store.db.query("SELECT * FROM experiments ORDER BY id")]
    store.close()
    experiments = [r for r in rows if r["n"] > 0]
    # The built-in search tries neighbours of the best: a loop may run out of them first.
    assert 12 <= len(experiments) <= 18

    def slot(r: dict) -> tuple[str, str]:
        return (r["host"], "CPU" if r["device_class"].startswith("CPU") else r["slot"])

    # Every free slot ran a loop; each loop stayed on its slot.
    assert {slot(r) for r in experiments} == EXPECTED
    by_loop: dict[str, set[tuple[str, str]]] = {}
    for r in experiments:
        by_loop.setdefault(r["agent_id"], set()).add(slot(r))
    assert len(by_loop) == 6 and all(len(s) == 1 for s in by_loop.values())
    # Never two experiments on one slot at once (the times are the slot's).
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        spans.setdefault(slot(r), []).append((r["started_at"], r["started_at"] + r["duration_s"]))
    for where, times in spans.items():
        times.sort()
        for (_, end), (start, _) in itertools.pairwise(times):
            assert start >= end - 0.05, f"two experiments overlapped on {where}: {times}"
    # One baseline per device class, each with its own noise floor.
    baselines = {r["device_class"]: r for r in rows if r["n"] == 0}
    # The CPU slot's class says its size: results compare within slots of one size.
    assert set(baselines) == {
        f"CPU ({os.cpu_count()} cores)",
        "NVIDIA GeForce RTX 4090",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA A100-SXM4-80GB",
    }
    assert all(len(json.loads(b["runs"])) == 3 for b in baselines.values())
    floors = {b["noise_floor"] for b in baselines.values()}
    assert None not in floors and len(floors) == 4
    # Each experiment was judged against the floor of its own class.
    for r in experiments:
        assert r["noise_floor"] == baselines[r["device_class"]]["noise_floor"]

    # Each GPU experiment (and GPU baseline) held its GPU once, said in the transcript.
    store = Store.open(home / "supervisor.db")
    phases = [
        json.loads(r["data"])["phase"]
        for r in store.db.query("SELECT data FROM events WHERE type = 'placement'")
    ]
    store.close()
    on_gpus = sum(not r["device_class"].startswith("CPU") for r in rows)
    assert phases.count("gpu_held") == phases.count("gpu_released") == on_gpus

    run_id = rows[0]["run_id"]
    report = (home / "runs" / run_id / "report.md").read_text()
    assert "## Device classes" in report and "## Where experiments ran" in report
    assert "| h2 | GPU 6 (NVIDIA A100-SXM4-80GB) |" in report
    assert "h1 GPU 0 (NVIDIA GeForce RTX 4090)" in report


def test_a_lost_host_ends_its_loop_and_the_others_finish_the_run(
    home: Path, tmp_path: Path
) -> None:
    import subprocess
    import time

    from conftest import SUPERVISOR

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(sshd_kit.sshd(tmp_path / f"l{i}", ""))[0] for i in range(2)]
        sshd_kit.register_hosts(servers)
        target = toy(tmp_path)
        (target / "train.py").write_text(TRAIN.replace('"TOY_SLEEP", "0.5"', '"TOY_SLEEP", "1"'))
        cmd = [*SUPERVISOR, "recipe", "run", "autoresearch", "-p", f"target={target}"]
        cmd += ["-p", "hosts=h0,h1", "-p", "experiments=8", "-p", "proposer=builtin"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stack.callback(proc.kill)
        db = home / "supervisor.db"
        deadline = time.monotonic() + 120
        while True:  # until h1 has finished an experiment: then its sshd dies
            assert time.monotonic() < deadline, "no experiment on h1"
            assert proc.poll() is None, proc.communicate()[0]
            with contextlib.suppress(Exception):
                store = Store.open(db)
                try:
                    on_h1 = store.db.execute(
                        "SELECT count(*) FROM experiments WHERE host = 'h1' AND n > 0"
                    ).fetchone()[0]
                finally:
                    store.close()
                if on_h1:
                    break
            time.sleep(0.3)
        servers[1].stop()
        lost_at = time.time()
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "agent-2 on h1 CPU ended: its host failed" in out, out
    store = Store.open(db)
    rows = [dict(r) for r in store.db.query("SELECT * FROM experiments WHERE n > 0")]
    store.close()
    # The run reached its limit on the host left.
    assert len(rows) == 8, [(r["n"], r["host"], r["status"]) for r in rows]
    assert any(r["host"] == "h0" and r["started_at"] > lost_at for r in rows)
    assert all(r["host"] == "h0" for r in rows if r["started_at"] > lost_at + 1)
