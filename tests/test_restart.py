"""A supervisor process killed with -9 and started again at once: its runs are taken up,
never left `running` with nobody driving them, and `agents ls` says so meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent_kit import scripted
from conftest import run_cli

from supervisor.server import running_pid, socket_path
from supervisor.system import owner_alive
from supervisor.testing import Reply


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _owner(pid: int) -> str:
    return f"{pid}:{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_process_its_parent_has_not_reaped_is_not_alive() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        owner = _owner(child.pid)
        assert owner_alive(owner)
        os.kill(child.pid, signal.SIGKILL)
        _wait(lambda: _state(child.pid) == "Z", "the zombie")
        assert not owner_alive(owner)  # same pid, same start time, but dead
    finally:
        child.kill()
        child.wait()


def _agents() -> list[dict[str, Any]]:
    return list(json.loads(run_cli("agents", "ls", "--json").stdout))


def _start_server(home: Path) -> subprocess.Popen[bytes]:
    """A supervisor process whose parent is this test (so, killed, it stays a zombie
    until the test reaps it, as under a TUI or a script that started it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "supervisor.server"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(home),
    )
    _wait(lambda: socket_path(home).exists() and running_pid(home), "the server")
    return process


def test_kill_9_then_start_at_once_resumes_the_run(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        return Reply(tool_calls=[("shell", {"command": "sleep 0.1"})])

    with scripted(script, sandbox__backend="local", agent__max_steps="100000"):
        home.mkdir(exist_ok=True)
        first = _start_server(home)
        try:
            result = run_cli("run", "keep working", "-d")
            assert result.returncode == 0, result.stderr
            run_id = result.stdout.strip()
            _wait(lambda: any((a["steps"] or 0) >= 2 for a in _agents()), "the agent to work")
            os.kill(first.pid, signal.SIGKILL)
            _wait(lambda: _state(first.pid) == "Z", "the killed process")
            # While no process drives it, the run is said to be orphaned, not running.
            table = run_cli("agents", "ls").stdout
            row = next(ln for ln in table.splitlines() if run_id[:12] in ln)
            assert " orphaned " in row and "supervisor process died; resumes when it" in row
            assert " running " not in row
            assert _agents()[0]["orphaned"] is True

            assert run_cli("server", "start").returncode == 0
            second = running_pid(home)
            assert second and second != first.pid
            # The new process took the run up: its agent works again, under the new owner.
            steps = _agents()[0]["steps"]
            _wait(lambda: (_agents()[0]["steps"] or 0) > steps + 1, "the resumed agent")
            agent = _agents()[0]
            assert agent["status"] == "running" and not agent["orphaned"]
        finally:
            first.kill()
            first.wait()
            run_cli("server", "stop", "--force")
