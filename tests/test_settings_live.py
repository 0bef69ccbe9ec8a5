"""A running supervisor process takes up settings changed after it started: new model
aliases and limits for new runs, tool-call policy for running agents at once, and it says
what cannot change under agents already running."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from agent_kit import scripted
from conftest import run_cli

from supervisor.client import Client
from supervisor.testing import Reply


def script(messages: list[dict[str, Any]]) -> Reply:
    task = str(messages[1]["content"])
    if "loop" in task:
        return Reply(tool_calls=[("shell", {"command": "echo tick"})], delay_s=0.05)
    return Reply(tool_calls=[("shell", {"command": "echo step"})])


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_settings_changed_after_the_process_started_are_taken_up(home: Path) -> None:
    with scripted(script, sandbox__backend="local", agent__max_steps="100000") as model:
        client = await Client.connect(home, name="test")
        try:
            looping = (await client.call("run.start", task="loop forever"))["run_id"]
            await _until(
                lambda: any(
                    e.data.get("tool") == "shell"
                    for e in client.events(run_id=looping, types=("tool.finished",))
                ),
                "the agent to work",
            )
            # A new alias, set after the process started, works for a new run at once.
            assert run_cli("config", "set", "models.fresh.model", "openai/scripted").returncode == 0
            base = model.base_url
            assert run_cli("config", "set", "models.fresh.api_base", base).returncode == 0
            assert run_cli("config", "set", "agent.max_steps", "2").returncode == 0
            listed = run_cli("models", "ls").stdout
            assert "fresh: openai/scripted" in listed
            started = run_cli("run", "count steps", "-m", "fresh")
            assert started.returncode == 3, started.stderr  # a limit stopped it...
            assert "step limit (2) reached" in started.stdout  # ...the new one
            # A command denied now is refused for the agent already running.
            assert run_cli("config", "set", "policy.deny", "shell:echo tick*").returncode == 0

            def denied() -> bool:
                return any(
                    e.data.get("denied") == "shell:echo tick*"
                    for e in client.events(run_id=looping, types=("tool.finished",))
                )

            await _until(denied, "the running agent's next call to be refused")
            notes = [e.text for e in client.events(run_id=looping, types=("log",))]
            said = " ".join(notes)
            # (the file is read every second: the changes may come in one note or several)
            for key in ("models.fresh.model", "agent.max_steps", "policy.deny"):
                assert any(n.startswith("settings changed (") and key in n for n in notes), notes
            assert "agents already running keep their sandbox, model and limits" in said
            assert "tool-call policy applies from each agent's next call" in said
            await client.call("run.stop", run=looping)
        finally:
            await client.close()
    rows = json.loads(run_cli("agents", "ls", "--json").stdout)
    assert {r["model"] for r in rows} == {"scripted", "fresh"}


async def test_bad_settings_written_while_it_runs_refuse_new_runs_in_one_line(
    home: Path,
) -> None:
    with scripted(script, sandbox__backend="local"):
        client = await Client.connect(home, name="test")
        await client.close()
        (home / "config.toml").write_text(
            (home / "config.toml").read_text() + "\n[team]\nmax_depth = 0\n"
        )
        result = run_cli("run", "count steps", "-d")
        assert result.returncode == 2
        assert (
            result.stderr.count("\n") == 1
            and "team.max_depth must be from 1 to 10" in result.stderr
        )
