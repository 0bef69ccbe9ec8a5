"""The real TUI in a real terminal (tmux), as a person uses it: ``supervisor`` opens it
(starting the supervisor process), a new agent is started from the dialog, its tool call is
approved and its question answered with keys; the TUI is closed while the agent works and
opened again to find it further along, because the work lives in the server.

The pilot tests (tests/test_tui.py) drive the app in-process; this one goes through the
console script, a pseudo-terminal, the keys' escape sequences and the screen as tmux
draws it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_kit import scripted, tool_results

from supervisor.server import running_pid
from supervisor.testing import Reply

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (CI installs it): this test drives the TUI in a terminal",
)

WIDTH, HEIGHT = 120, 40
TASK = "Push the release, ask me which branch to deploy, then deploy it"
QUESTION = "Which branch should I deploy?"
ANSWER = "deploy the staging branch"
SLOW_STEPS = 8  # after the answer: ~1 s each, so the TUI can close and open mid-work


def supervisor_command() -> str:
    """How a person opens the TUI: the console script, else the module."""
    script = Path(sys.executable).parent / "supervisor"
    if script.exists():
        return f"exec {script}"
    return f"exec {sys.executable} -m supervisor.cli"


class Terminal:
    """One tmux pane of a fixed size, on a tmux server of its own."""

    def __init__(self, home: Path) -> None:
        self.socket = f"supervisor-e2e-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self.env.pop("TMUX", None)
        self.home = home
        self.started = False
        self.socket_path = ""

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def open(self, command: str) -> None:
        """Run ``command`` in the pane (the first time, start tmux with it)."""
        if not self.started:
            self.tmux(
                "new-session", "-d", "-s", "e2e", "-x", str(WIDTH), "-y", str(HEIGHT),
                "-c", str(self.home), command,
            )  # fmt: skip
            self.tmux("set-option", "-g", "remain-on-exit", "on")
            self.started = True
            self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()
        else:
            self.tmux("respawn-pane", "-k", "-t", "e2e", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "e2e")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "e2e", *(["-l"] if literal else []), *keys)

    def wait_for(self, found: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if found(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.05)

    def wait_text(self, text: str, timeout: float = 20) -> str:
        return self.wait_for(lambda screen: text in screen, repr(text), timeout)

    def dead(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "e2e", "#{pane_dead}").strip() == "1"

    def close(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError):
                self.tmux("kill-server")
        if self.socket_path:  # tmux leaves its socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def terminal(home: Path) -> Iterator[Terminal]:
    """A terminal for the test; afterwards tmux and the supervisor server are stopped, even
    when the test failed."""
    term = Terminal(home)
    try:
        yield term
    finally:
        term.close()
        stop_server(home)


def stop_server(home: Path) -> None:
    pid = running_pid(home)
    if not pid or pid < 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while running_pid(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running_pid(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def the_agent(home: Path) -> dict[str, Any]:
    """The test's one agent, as the database has it."""
    db = sqlite3.connect(f"file:{home / 'supervisor.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM agents")]
    finally:
        db.close()
    assert len(rows) == 1, rows
    return rows[0]


def script(messages: list[dict[str, Any]]) -> Reply:
    """Ask to push (needs approval), ask a question, then work slowly for a while."""
    step = sum(1 for m in messages if m.get("role") == "assistant")
    if step == 0:
        return Reply("Pushing first.", tool_calls=[("shell", {"command": "git push origin main"})])
    if step == 1:
        return Reply(tool_calls=[("ask_human", {"question": QUESTION})])
    if step < 2 + SLOW_STEPS:
        return Reply(
            f"Deploying, part {step - 1}.",
            tool_calls=[("shell", {"command": f"echo part {step - 1}"})],
            delay_s=1.0,
        )
    return Reply(tool_calls=[("finish", {"summary": "deployed the staging branch"})])


def test_a_person_starts_approves_answers_detaches_and_comes_back(
    home: Path, terminal: Terminal
) -> None:
    started = time.monotonic()
    with scripted(script, sandbox__backend="local") as model:
        # `supervisor` with no server running: the TUI opens and starts one.
        terminal.open(supervisor_command())
        terminal.wait_text("n New")
        terminal.wait_text("Fleet — 0 agents")
        assert running_pid(home)

        # A new agent, from the dialog: the task is typed, ctrl+s starts it.
        terminal.keys("n")
        terminal.wait_text("New agent")
        terminal.keys(TASK, literal=True)
        terminal.wait_text(TASK[:40])
        terminal.keys("C-s")
        terminal.wait_text("Fleet — 1 agents")

        # The push needs a person's approval: the bar says what and why; y approves.
        screen = terminal.wait_text("asks to run shell: git push origin main")
        assert "policy shell:git push*" in screen
        terminal.keys("y")

        # Then a question: the answer is typed in the message line, Enter sends it.
        screen = terminal.wait_text(f"asks: {QUESTION}")
        terminal.keys("m")
        # As a person would, a moment after m: keys sent in the same instant reach the fleet's
        # bindings before the focus moves (Textual moves it after pending events).
        time.sleep(0.5)
        terminal.keys(ANSWER, literal=True)
        terminal.wait_text(ANSWER)
        terminal.keys("Enter")
        terminal.wait_text("Deploying, part 1")

        # Detach (Escape leaves the message line, q closes the TUI): the work goes on.
        terminal.keys("Escape")
        time.sleep(0.3)  # an Escape with a key right behind it reads as alt+key
        terminal.keys("q")
        terminal.wait_for(lambda screen: terminal.dead(), "the TUI to close")
        assert running_pid(home), "closing the TUI stopped the server"
        before = the_agent(home)
        assert before["status"] == "running", before
        deadline = time.monotonic() + 10
        while the_agent(home)["steps"] <= before["steps"]:  # nobody watching, still working
            assert time.monotonic() < deadline, "the agent stopped working when the TUI closed"
            time.sleep(0.1)

        # Back again: the same agent, further along, and it finishes on screen.
        terminal.open(supervisor_command())
        terminal.wait_text("Fleet — 1 agents")
        row = re.compile(r"│\s+agent\s+done\s+deployed the staging branch\s+(\d+)\s")
        screen = terminal.wait_for(lambda s: row.search(s) is not None, "done", timeout=30)
        after = the_agent(home)
        assert after["status"] == "done", after
        steps_shown = int(row.search(screen).group(1))  # type: ignore[union-attr]
        assert steps_shown == after["steps"] > before["steps"]
        terminal.keys("q")
        terminal.wait_for(lambda screen: terminal.dead(), "the TUI to close")

    # What the model was sent: the typed task, the push really ran (approved, not refused) and the answer.
    first = model.requests[0]["messages"]
    assert any(m["role"] == "user" and TASK in str(m["content"]) for m in first)
    results = [r for request in model.requests for r in tool_results(request)]
    push = results[0]
    # (The workspace has no remote, so git itself fails: a denied call never reaches git.)
    assert "push" in push and "[exit code " in push and "denied" not in push, push
    assert f"The person answered: {ANSWER}" in results
    assert time.monotonic() - started < 60
