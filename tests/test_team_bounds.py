"""Teams stay within bounds: workers that start workers stop at team.max_depth and
team.max_agents; stopping a run ends every agent of it, and a stopped run never resumes by
itself."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from agent_kit import engine, scripted, tool_results
from conftest import run_cli

from supervisor.client import Client
from supervisor.engine import RunOptions
from supervisor.testing import Reply

ENDED = ("done", "failed", "stopped", "interrupted")


def _refusals(model: Any) -> list[str]:
    return [r for req in model.requests for r in tool_results(req) if "limit reached" in r]


def greedy(messages: list[dict[str, Any]]) -> Reply:
    """Every agent starts two workers, waits for them, and finishes."""
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return Reply(
            tool_calls=[("spawn_agent", {"task": "help"}), ("spawn_agent", {"task": "help"})]
        )
    if turns == 1:
        return Reply(tool_calls=[("wait_for", {"timeout": 60})])
    return Reply(tool_calls=[("finish", {"summary": "done"})])


async def test_workers_spawning_workers_stop_at_the_depth_bound() -> None:
    with scripted(greedy) as model:
        async with engine(**{"team.max_depth": 2, "team.max_agents": 100}) as eng:
            run_id = await eng.start_run(RunOptions(task="grow", sandbox="local"))
            await asyncio.wait_for(eng.wait_run(run_id), 120)
            depth = {}
            for agent in eng.agents.values():
                level, up = 0, agent.parent_id
                while up:
                    level, up = level + 1, eng.agents[up].parent_id
                depth[agent.id] = level
            assert max(depth.values()) == 2
            # 1 lead + 2 workers + 4 under them: the third level is refused.
            assert len(eng.agents) == 7
            assert all(a.status in ENDED for a in eng.agents.values())
    refused = _refusals(model)
    assert refused and all("team.max_depth = 2" in r for r in refused)


async def test_a_run_cannot_grow_past_team_max_agents() -> None:
    with scripted(greedy) as model:
        async with engine(**{"team.max_depth": 10, "team.max_agents": 5}) as eng:
            run_id = await eng.start_run(RunOptions(task="grow", sandbox="local"))
            await asyncio.wait_for(eng.wait_run(run_id), 120)
            assert len(eng.agents) == 6  # the lead and 5 workers
    assert any("team.max_agents = 5" in r for r in _refusals(model))


def busy(messages: list[dict[str, Any]]) -> Reply:
    """Start workers, then keep working forever."""
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns < 3:
        return Reply(tool_calls=[("spawn_agent", {"task": "busy work"})])
    return Reply(tool_calls=[("shell", {"command": "sleep 0.2"})])


def _rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    agents = json.loads(run_cli("agents", "ls", "--json").stdout)
    return agents, {a["run_id"]: a for a in agents}


async def test_stop_ends_every_agent_and_a_stopped_run_stays_stopped(home: Any) -> None:
    with scripted(busy, sandbox__backend="local", agent__max_steps="100000"):
        client = await Client.connect(home, name="test")
        try:
            result = await client.call("run.start", task="busy", sandbox="local")
            run_id = result["run_id"]
            deadline = time.monotonic() + 60
            while len(client.agents([run_id])) < 6:  # leads start workers, which start more
                assert time.monotonic() < deadline, client.agents([run_id])
                await asyncio.sleep(0.1)
            await client.call("run.stop", run=run_id)
            agents = client.agents([run_id])
            assert agents and all(a["status"] == "stopped" for a in agents), [
                (a["name"], a["status"]) for a in agents
            ]
            count = len(agents)
            await asyncio.sleep(1)  # nothing starts after the stop
            assert len(client.agents([run_id])) == count
            assert client.query("SELECT status FROM runs WHERE id = ?", [run_id])[0] == {
                "status": "stopped"
            }
        finally:
            await client.close()
        assert run_cli("server", "stop", "--force").returncode == 0
        # The next command starts a new supervisor process: the stopped run stays stopped.
        assert run_cli("server", "start").returncode == 0
        await asyncio.sleep(1.5)
        agents = [a for a in json.loads(run_cli("agents", "ls", "--json").stdout)]
        assert {a["status"] for a in agents if a["run_id"] == run_id} == {"stopped"}
        status = json.loads(run_cli("server", "status", "--json").stdout)
        assert status["active_agents"] == 0 and status["active_runs"] == []
