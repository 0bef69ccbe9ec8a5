"""Every injected fault, in runs of 20 agents in real Docker sandboxes: all finish, costs add
up, nothing escapes. And a planted secret leaves no trace."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from agent_kit import engine, scripted
from conftest import run_cli

from supervisor.engine import RunOptions
from supervisor.testing import Fault, Reply

pytestmark = pytest.mark.docker

AGENTS = 20
USAGE = (1000, 100)  # per reply; at $1/M in and $2/M out each reply costs $0.0012

FAULTS = {
    "rate_limit": Fault.rate_limit(retry_after=0.2),
    "server_error": Fault.server_error(500),
    "overloaded": Fault.overloaded(),
    "stall": Fault.stall(after_chunks=1, seconds=30),
    "drop": Fault.drop(after_chunks=1),
    "slow_first_token": Fault.slow_first_token(seconds=0.5),
}


def faulty_script(fault: Fault) -> list[Reply]:
    return [
        Reply(
            text="Starting.",
            tool_calls=[("shell", {"command": "echo $((6*7))"})],
            usage=USAGE,
            fault=fault,
        ),
        Reply(tool_calls=[("shell", {"command": "echo second"})], usage=USAGE, fault=fault),
        Reply(tool_calls=[("finish", {"summary": "ok"})], usage=USAGE),
    ]


@pytest.mark.parametrize("kind", sorted(FAULTS))
async def test_fault_in_a_run_of_20_agents(kind: str, sandbox_image: str, home: Path) -> None:
    fault = FAULTS[kind]
    with scripted(faulty_script(fault)) as server:
        async with engine(**{"model.stall_timeout_s": 1.0}) as eng:
            start = time.monotonic()
            run_id = await eng.start_run(
                RunOptions(task="compute", agents=AGENTS, sandbox="docker")
            )
            status = await asyncio.wait_for(eng.wait_run(run_id), 120)
            wall = time.monotonic() - start
            summaries = [(a.status, a.summary) for a in eng.agents.values()]
    assert status == "done", summaries
    assert all(s == ("done", "ok") for s in summaries)
    assert wall < 90
    # Each agent saw the answer of its first command despite the fault.
    second_turns = [
        r for r in server.requests if sum(m["role"] == "assistant" for m in r["messages"]) == 1
    ]
    assert any("42" in (m.get("content") or "") for r in second_turns for m in r["messages"])
    costs = json.loads(run_cli("costs", "--by", "run", "--json").stdout)
    assert costs["rows"][0]["calls"] == AGENTS * 3  # only completed calls are billed
    assert costs["rows"][0]["cost_usd"] == pytest.approx(AGENTS * 3 * 0.0012)
    retries = [
        json.loads(ln)
        for ln in run_cli(
            "transcript",
            next(iter(r["id"] for r in json.loads(run_cli("agents", "ls", "--json").stdout))),
            "--format",
            "jsonl",
        ).stdout.splitlines()
    ]
    if kind != "slow_first_token":
        assert any(e["type"] == "log" and "retry" in e["data"] for e in retries)


async def test_malformed_tool_json_in_20_agents(sandbox_image: str, home: Path) -> None:
    script = [
        Reply(tool_calls=[("shell", '{"command": "echo hi"')]),
        Reply(tool_calls=[("shell", {"command": "echo fixed"})]),
        Reply(tool_calls=[("finish", {"summary": "ok"})]),
    ]
    with scripted(script):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="t", agents=AGENTS, sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"


async def test_planted_secret_leaves_no_trace(
    sandbox_image: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "pl4nted-s3cret-" + "x" * 12
    monkeypatch.setenv("DEPLOY_TOKEN", secret)
    script = [
        Reply(
            text="Checking the environment.",
            tool_calls=[("shell", {"command": "echo token is $DEPLOY_TOKEN; env | grep DEPLOY"})],
        ),
        Reply(
            tool_calls=[
                ("remember", {"note": "the token was visible"}),
                ("write_report", {"title": "env", "markdown": "nothing secret"}),
            ]
        ),
        Reply(tool_calls=[("finish", {"summary": "checked"})]),
    ]
    with scripted(script, **{"sandbox__env_allow": "DEPLOY_TOKEN"}) as server:
        result = await asyncio.to_thread(run_cli, "run", "print your token", "--sandbox", "docker")
    assert result.returncode == 0, result.stderr
    # The agent really saw it (the sandbox was given it through the allow-list)...
    tool_output = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert secret in tool_output[0]
    # ...but no trace in the terminal, the database, the logs or saved files.
    assert secret not in result.stdout + result.stderr
    assert "[REDACTED:DEPLOY_TOKEN]" in result.stdout
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    agent = json.loads(run_cli("agents", "ls", "--json").stdout)[0]["id"]
    assert secret not in run_cli("logs", agent).stdout
    assert secret not in run_cli("transcript", agent, "--format", "jsonl").stdout


def test_cli_run_in_a_docker_sandbox_with_workspace(
    sandbox_image: str, home: Path, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "data.txt").write_text("3\n4\n")
    script = [
        Reply(
            tool_calls=[
                (
                    "shell",
                    {"command": "id -un; paste -sd+ data.txt | bc || python3 -c 'print(3+4)'"},
                )
            ]
        ),
        Reply(tool_calls=[("write_file", {"path": "sum.txt", "content": "7\n"})]),
        Reply(tool_calls=[("finish", {"summary": "sum is 7"})]),
    ]
    with scripted(script):
        result = run_cli("run", "sum the numbers", "--workspace", str(project))
    assert result.returncode == 0, result.stderr
    assert "agent" in result.stdout and "7" in result.stdout
    agent = json.loads(run_cli("agents", "ls", "--json").stdout)[0]
    assert agent["sandbox"] == "docker" and agent["status"] == "done"
    # The sandbox was removed at the end of the run; the user's folder is untouched.
    assert not (project / "sum.txt").exists()
    listed = json.loads(run_cli("sandbox", "ls", "--json").stdout)
    assert listed == []
