"""One path for state: every write a person makes from the CLI — answer, approve, deny,
budget, note add/rm — goes through the supervisor process, which applies it and records
it as an event (notes redacted like everything else)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_kit import scripted, tool_results
from conftest import run_cli

from supervisor.testing import Reply


def finish(summary: str = "done") -> Reply:
    return Reply(tool_calls=[("finish", {"summary": summary})])


def wait_for(check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds}s: {check}")


def agent_row(name_or_id: str | None = None) -> dict[str, Any] | None:
    rows = json.loads(run_cli("agents", "ls", "--json").stdout or "[]")
    for row in rows:
        if name_or_id in (None, row["id"], row["name"]):
            return dict(row)
    return None


def events(home: Path, kind: str) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(home / "supervisor.db")
    try:
        rows = conn.execute("SELECT data, text FROM events WHERE type = ? ORDER BY id", [kind])
        return [{"data": json.loads(d or "{}"), "text": t} for d, t in rows]
    finally:
        conn.close()


def test_answer_and_approval_go_through_the_supervisor_process(home: Path) -> None:
    script = [
        Reply(tool_calls=[("ask_human", {"question": "Which branch?"})]),
        Reply(tool_calls=[("shell", {"command": "git push origin develop || true"})]),
        finish("used the answer"),
    ]
    with scripted(script) as server:
        started = run_cli("run", "-d", "--sandbox", "local", "ask which branch")
        assert started.returncode == 0, started.stderr
        row = wait_for(lambda: (r := agent_row()) and r["status"] == "waiting" and r)
        assert "Which branch?" in row["doing"]
        answered = run_cli("answer", row["id"], "use develop")
        assert answered.returncode == 0, answered.stderr
        wait_for(lambda: (r := agent_row()) and "approval" in (r["doing"] or ""))
        approved = run_cli("approve", row["id"])
        assert approved.returncode == 0, approved.stderr
        wait_for(lambda: (r := agent_row()) and r["status"] == "done")
    assert tool_results(server.requests[1])[-1] == "The person answered: use develop"
    assert events(home, "human.answered")[0]["text"] == "use develop"
    assert events(home, "approval.resolved")[0]["data"]["verdict"] == "approve"
    late = run_cli("answer", row["id"], "late")
    assert late.returncode == 2 and "is not waiting" in late.stderr
    assert late.stderr.count("\n") == 1


def test_budget_raised_through_the_supervisor_process(home: Path) -> None:
    script = [
        Reply(tool_calls=[("shell", {"command": "true"})], usage=(1_000_000, 0)),
        Reply(tool_calls=[("shell", {"command": "true"})], usage=(10, 0)),
        finish(),
    ]
    with scripted(script) as server:  # $1 per million input tokens: the first call costs $1
        started = run_cli("run", "-d", "--sandbox", "local", "--max-cost", "0.5", "spend")
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip().splitlines()[-1]
        row = wait_for(lambda: (r := agent_row()) and r["status"] == "paused" and r)
        assert f"supervisor budget run {run_id}" in row["doing"]
        calls = len(server.requests)
        time.sleep(1.5)
        assert len(server.requests) == calls  # a paused agent makes no model calls
        bad = run_cli("budget", "run", "run-nosuch", "5")
        assert bad.returncode == 2 and "no run 'run-nosuch'" in bad.stderr
        negative = run_cli("budget", "run", run_id, "-1")
        assert negative.returncode == 2
        raised = run_cli("budget", "run", run_id, "5")
        assert raised.returncode == 0, raised.stderr
        wait_for(lambda: (r := agent_row()) and r["status"] == "done")
    budget = events(home, "budget.set")
    assert [b["data"] for b in budget] == [{"scope": "run", "target": run_id, "usd": 5.0}]


def test_notes_added_and_removed_are_redacted_events(home: Path) -> None:
    secret = "sk-ant-api03-" + "x" * 40
    added = run_cli(
        "notes", "add", f"the box's key is {secret}", "--scope", "project", "--key", "dgx"
    )
    assert added.returncode == 0, added.stderr
    note_id = int(added.stdout.split()[-1])
    listed = run_cli("notes", "ls").stdout
    assert secret not in listed and "(project:dgx)" in listed
    written = events(home, "note.written")
    assert len(written) == 1 and secret not in written[0]["text"]
    assert run_cli("notes", "rm", str(note_id)).returncode == 0
    assert events(home, "note.removed")[0]["data"] == {"note_id": note_id, "by": "person"}
    again = run_cli("notes", "rm", str(note_id))
    assert again.returncode == 2 and f"no note {note_id}" in again.stderr
    assert secret not in (home / "supervisor.db").read_bytes().decode("latin-1")
