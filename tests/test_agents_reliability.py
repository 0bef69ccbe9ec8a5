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
        async with engine(**{"model.stall_timeout_s": 3.0}) as eng:
            start = time.monotonic()
            run_id = await eng.start_run(
                RunOptions(task="compute", agents=AGENTS, sandbox="docker")
            )
            # A deadline, not a benchmark (bench/agents.py measures speed): 20 sandboxes
            # start, work through the fault and keep their changes on two loaded cores.
            status = await asyncio.wait_for(eng.wait_run(run_id), 240)
            wall = time.monotonic() - start
            summaries = [(a.status, a.summary) for a in eng.agents.values()]
    assert status == "done", [s for s in summaries if s[0] != "done"]
    assert all(s == ("done", "ok") for s in summaries)
    assert wall < 240
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
            assert await asyncio.wait_for(eng.wait_run(run_id), 240) == "done"


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
    assert [r for r in listed if not r["pool"]] == []  # only idle warm-pool members stay


async def test_a_team_run_with_people_memory_and_budget(sandbox_image: str, home: Path) -> None:
    """The whole story in real sandboxes: a lead runs two workers; one asks a question, one
    needs an approval; a fault hits; the lead remembers what it learned; a budget holds the
    run until raised; a second run recalls the note."""

    def script(messages: list[dict]) -> Reply:
        task = messages[1]["content"]
        turns = sum(m["role"] == "assistant" for m in messages)
        if task.startswith("lead"):
            return [
                Reply(
                    tool_calls=[
                        ("spawn_agent", {"task": "ask which port", "name": "asker"}),
                        ("spawn_agent", {"task": "push the branch", "name": "pusher"}),
                    ],
                    fault=Fault.rate_limit(0.1),
                ),
                Reply(tool_calls=[("wait_for", {})]),
                Reply(
                    tool_calls=[("remember", {"note": "port 8443 is the one the team uses"})],
                    usage=(2_000_000, 0),
                ),  # $2: over the run budget of $1
                Reply(tool_calls=[("finish", {"summary": "team done"})]),
            ][turns]
        if task.startswith("ask"):
            return [
                Reply(tool_calls=[("ask_human", {"question": "Which port?"})]),
                Reply(tool_calls=[("finish", {"summary": "told port"})]),
            ][turns]
        if task.startswith("push"):
            return [
                Reply(tool_calls=[("shell", {"command": "git push origin HEAD || true"})]),
                Reply(tool_calls=[("finish", {"summary": "pushed"})]),
            ][turns]
        return Reply(tool_calls=[("finish", {"summary": "second run"})])

    with scripted(script) as server:
        async with engine() as eng:
            events: asyncio.Queue[object] = asyncio.Queue()
            eng.listen(
                lambda e: (
                    events.put_nowait(e) if e.type in ("human.asked", "approval.asked") else None
                )
            )
            run_id = await eng.start_run(
                RunOptions(task="lead the team", sandbox="docker", max_cost_usd=1.0)
            )
            for _ in range(2):
                event = await asyncio.wait_for(events.get(), 60)
                reply = "8443" if event.type == "human.asked" else "approve"  # type: ignore[attr-defined]
                eng.answer(event.agent_id, reply)  # type: ignore[attr-defined]
            lead = next(a for a in eng.agents.values() if a.parent_id is None)
            while lead.status != "paused":
                await asyncio.sleep(0.1)
            await eng.set_budget("run", run_id, 10)
            assert await asyncio.wait_for(eng.wait_run(run_id), 60) == "done"
            by_name = {a.name: a for a in eng.agents.values()}
            assert by_name["asker"].summary == "told port"
            assert by_name["pusher"].summary == "pushed"
            assert {a.parent_id for a in (by_name["asker"], by_name["pusher"])} == {lead.id}
        async with engine() as eng:
            second = await eng.start_run(
                RunOptions(task="which port does the team use?", sandbox="docker")
            )
            assert await asyncio.wait_for(eng.wait_run(second), 60) == "done"
    assert "port 8443 is the one the team uses" in server.requests[-1]["messages"][0]["content"]
    asked = [r for r in server.requests if r["messages"][1]["content"].startswith("ask")]
    assert any(
        "The person answered: 8443" in (m.get("content") or "")
        for r in asked
        for m in r["messages"]
    )
