"""Agents that share a name are never confused: commands given such a name refuse and list
the candidates' ids, and `agents ls` shows every agent's id."""

from __future__ import annotations

from typing import Any

from agent_kit import engine, scripted
from conftest import run_cli

from supervisor.engine import RunOptions
from supervisor.errors import InputError
from supervisor.testing import Reply


def _script(messages: list[dict[str, Any]]) -> Reply:
    word = str(messages[1]["content"]).split()[-1]
    if any(m["role"] == "tool" for m in messages):
        return Reply(tool_calls=[("finish", {"summary": f"said {word}"})])
    return Reply(tool_calls=[("shell", {"command": f"echo {word}"})])


async def test_a_shared_name_is_refused_with_the_candidates_and_ids_are_listed() -> None:
    with scripted(_script):
        async with engine() as eng:
            ids = []
            for word in ("first", "second"):
                run_id = await eng.start_run(RunOptions(task=f"say {word}", sandbox="local"))
                assert await eng.wait_run(run_id) == "done"
                ids.append(next(a.id for a in eng.agents.values() if a.run_id == run_id))
            names = {a.name for a in eng.agents.values()}
            assert names == {"agent"}  # two single-agent runs: the same default name
            try:
                eng.find_agent("agent")
            except InputError as exc:
                assert all(i in str(exc) for i in ids)
            else:
                raise AssertionError("a shared name was resolved to one agent")
            assert eng.find_agent(ids[0]) is eng.agents[ids[0]]
    for command in (["logs", "agent"], ["transcript", "agent"], ["answer", "agent", "hi"]):
        result = run_cli(*command)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1
        assert "2 agents are named 'agent'; name one by its id" in result.stderr
        assert all(i in result.stderr for i in ids), result.stderr
        assert result.stdout == ""
    # By id, each shows its own work.
    assert "echo first" in run_cli("logs", ids[0]).stdout
    assert "echo second" in run_cli("logs", ids[1]).stdout
    table = run_cli("agents", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["AGENT", "ID", "RUN"]
    for agent_id in ids:
        row = next(ln for ln in table if agent_id in ln)
        assert row.split()[:2] == ["agent", agent_id]
