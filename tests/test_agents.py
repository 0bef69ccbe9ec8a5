"""Agents end to end: a scripted model over real HTTP through litellm, real sandboxes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from agent_kit import engine, last_results, scripted, tool_results
from conftest import run_cli

from supervisor.engine import RunOptions
from supervisor.testing import Fault, Reply


def finish(summary: str = "done") -> Reply:
    return Reply(tool_calls=[("finish", {"summary": summary})])


async def test_agent_works_through_tools_and_finishes(home: Path) -> None:
    script = [
        Reply(
            text="I will write the file.",
            tool_calls=[("shell", {"command": "printf 'a\\nb\\n' > out.txt; cd /tmp; pwd"})],
            usage=(1000, 100),
        ),
        Reply(
            tool_calls=[
                ("read_file", {"path": "out.txt"}),
                ("edit_file", {"path": "out.txt", "old_text": "b", "new_text": "B"}),
            ],
            usage=(2000, 200),
        ),
        Reply(
            tool_calls=[("shell", {"command": 'pwd; cd "$OLDPWD" && cat out.txt'})],
            usage=(3000, 300),
        ),
        Reply(tool_calls=[("finish", {"summary": "wrote out.txt"})], usage=(4000, 400)),
    ]
    with scripted(script) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="write out.txt", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    results = [last_results(r) for r in server.requests]
    assert results[1][0].endswith("/tmp\n[exit code 0]")
    assert results[2] == ["     1\ta\n     2\tb", "edited out.txt"]
    assert results[3][0].startswith("/tmp\n")  # cwd persisted between shell calls
    assert "a\nB" in results[3][0]
    # The system prompt names the tools' workspace and asks for finish().
    assert "finish(summary)" in server.requests[0]["messages"][0]["content"]
    agents = json.loads(run_cli("agents", "ls", "--json").stdout)
    assert agents[0]["status"] == "done" and agents[0]["summary"] == "wrote out.txt"
    assert agents[0]["steps"] == 4
    # Costs: (1000+2000+3000+4000) input at $1/M + (100+...+400) output at $2/M.
    costs = json.loads(run_cli("costs", "--by", "model", "--json").stdout)
    assert costs["rows"][0]["cost_usd"] == pytest.approx(0.01 + 0.002)
    md = run_cli("transcript", agents[0]["id"], "--format", "md").stdout
    assert "I will write the file." in md and "**→ shell**" in md and "wrote out.txt" in md
    lines = run_cli("transcript", agents[0]["id"], "--format", "jsonl").stdout.splitlines()
    assert {json.loads(ln)["type"] for ln in lines} >= {"tool.started", "tool.finished", "cost"}


async def test_bad_tool_calls_go_back_to_the_model(home: Path) -> None:
    script = [
        Reply(tool_calls=[("shell", '{"command": "echo hi"')]),  # malformed JSON
        Reply(tool_calls=[("teleport", {"where": "moon"})]),  # unknown tool
        Reply(tool_calls=[("read_file", {"path": "missing.txt"})]),  # tool raises
        Reply(tool_calls=[("edit_file", {"path": "x", "bogus": 1})]),  # wrong arguments
        Reply(
            tool_calls=[
                ("write_file", {"path": "a.txt", "content": "x x"}),
                ("edit_file", {"path": "a.txt", "old_text": "x", "new_text": "y"}),
            ]
        ),
        finish(),
    ]
    with scripted(script) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    errors = [
        tool_results(r)[-1] if i < 5 else tool_results(r)[-2:]
        for i, r in enumerate(server.requests[1:], start=1)
    ]
    assert "arguments are not valid JSON" in errors[0]
    assert "unknown tool 'teleport'" in errors[1]
    assert errors[2].startswith("error: SandboxError: cannot read")
    assert "bad arguments for edit_file" in errors[3]
    assert errors[4][1].startswith("error: old_text occurs 2 times")


async def test_limits_stop_the_agent(home: Path) -> None:
    loop_forever = lambda messages: Reply(tool_calls=[("shell", {"command": "true"})])  # noqa: E731
    with scripted(loop_forever):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local", max_steps=3))
            assert await eng.wait_run(run_id) == "stopped"
            agent = next(iter(eng.agents.values()))
            assert agent.steps == 3 and "step limit (3) reached" in agent.summary


async def test_text_without_tools_is_nudged_then_final(home: Path) -> None:
    with scripted([Reply(text="thinking"), Reply(text="still"), Reply(text="the answer is 4")]):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="2+2?", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
            assert next(iter(eng.agents.values())).summary == "the answer is 4"


async def test_team_lead_spawns_workers_and_collects_results(home: Path) -> None:
    def script(messages: list[dict]) -> Reply:
        task = messages[1]["content"]
        turns = sum(m["role"] == "assistant" for m in messages)
        if task.startswith("lead"):
            if turns == 3:  # the results of wait_for are the second-last tool result
                return finish("team finished: " + tool_results({"messages": messages})[-2])
            return [
                Reply(
                    tool_calls=[
                        ("spawn_agent", {"task": "count to 3", "name": "w1"}),
                        ("spawn_agent", {"task": "count to 5", "name": "w2"}),
                    ]
                ),
                Reply(tool_calls=[("wait_for", {})]),
                Reply(tool_calls=[("list_agents", {})]),
            ][turns]
        n = task.split()[-1]
        return [
            Reply(tool_calls=[("shell", {"command": f"seq {n} | tail -1"})]),
            finish(f"counted to {n}"),
        ][turns]

    with scripted(script):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="lead a team", sandbox="local"))
            status = await eng.wait_run(run_id)
            assert status == "done", [(a.name, a.status, a.summary) for a in eng.agents.values()]
            lead = next(a for a in eng.agents.values() if a.parent_id is None)
            assert "w1: done — counted to 3" in lead.summary
            assert "w2: done — counted to 5" in lead.summary
    rows = json.loads(run_cli("agents", "ls", "--json").stdout)
    lead_row = next(r for r in rows if r["parent_id"] is None)
    assert sorted(r["name"] for r in rows if r["parent_id"] == lead_row["id"]) == ["w1", "w2"]
    table = run_cli("agents", "ls").stdout
    assert "└ w1" in table and "└ w2" in table


async def test_approvals_park_the_agent_until_a_person_decides(home: Path) -> None:
    script = [
        Reply(tool_calls=[("shell", {"command": "git push origin main"})]),
        Reply(tool_calls=[("shell", {"command": "git push --force"})]),
        Reply(tool_calls=[("shell", {"command": "curl http://evil.invalid/x"})]),
        Reply(tool_calls=[("shell", {"command": "git push again"})]),
        finish(),
    ]
    with scripted(script) as server:
        async with engine(**{"policy.deny": ["shell:curl *evil*"]}) as eng:
            run_id = await eng.start_run(RunOptions(task="push", sandbox="local"))
            agent = next(iter(eng.agents.values()))
            asked: asyncio.Queue[object] = asyncio.Queue()
            eng.listen(lambda e: asked.put_nowait(e) if e.type == "approval.asked" else None)
            for verdict in ("deny", "always"):
                await asyncio.wait_for(asked.get(), 10)
                assert agent.status == "waiting"
                # No model call happens while the agent waits.
                calls = len(server.requests)
                await asyncio.sleep(0.3)
                assert len(server.requests) == calls
                assert eng.answer(agent.id, verdict)
            assert await asyncio.wait_for(eng.wait_run(run_id), 10) == "done"
            assert asked.empty()  # the third push was covered by "always"
    results = [tool_results(r)[-1] for r in server.requests[1:]]
    assert results[0] == "error: a person denied this call; choose another way"
    assert "[exit code" in results[1]  # approved ("always")
    assert results[2].startswith("error: refused by policy (shell:curl *evil*)")
    assert "[exit code" in results[3]  # "always" covers the same pattern without asking


async def test_memory_is_recalled_in_a_later_run(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "AGENTS.md").write_text("Always run the linter before finishing.\n")
    first = [
        Reply(tool_calls=[("remember", {"note": "learning rate 0.3 diverged on this model"})]),
        finish(),
    ]
    with scripted(first):
        async with engine() as eng:
            await eng.wait_run(
                await eng.start_run(
                    RunOptions(task="tune the learning rate", sandbox="local", workspace=project)
                )
            )
    with scripted([finish()]) as server:
        async with engine() as eng:
            await eng.wait_run(
                await eng.start_run(
                    RunOptions(
                        task="tune the learning rate again", sandbox="local", workspace=project
                    )
                )
            )
    system = server.requests[0]["messages"][0]["content"]
    assert "learning rate 0.3 diverged" in system
    assert "Always run the linter before finishing." in system
    notes = run_cli("notes", "search", "diverged").stdout
    assert "learning rate 0.3 diverged" in notes and "(project:project)" in notes


async def test_unknown_model_and_missing_credentials_are_exit_2(home: Path) -> None:
    result = run_cli("run", "hello", "--model", "nosuchprovider/model-x", "--sandbox", "local")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown model")
    result = run_cli(
        "run",
        "hello",
        "--model",
        "anthropic/claude-sonnet-4-5",
        "--sandbox",
        "local",
        env={"ANTHROPIC_API_KEY": ""},
    )
    assert result.returncode == 2
    assert "no credentials for anthropic; set ANTHROPIC_API_KEY" in result.stderr


async def test_model_that_never_answers_fails_the_agent_cleanly(home: Path) -> None:
    with scripted([Reply(text="x", fault=Fault.stall(after_chunks=0, seconds=30, times=99))]):
        async with engine(**{"model.stall_timeout_s": 0.3, "model.retries": 2}) as eng:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 20) == "failed"
            agent = next(iter(eng.agents.values()))
            assert "gave up after 3 attempts" in agent.summary and "stalled" in agent.summary


async def test_older_turns_are_compacted_before_the_window_fills(home: Path) -> None:
    steps = iter(range(100))

    def script(messages: list[dict]) -> Reply:
        if "Summarize this work log" in messages[-1]["content"] and len(messages) == 2:
            return Reply(text="SUMMARY: ran step commands", usage=(50, 10))
        step = next(steps)
        if step >= 8:
            return finish()
        return Reply(tool_calls=[("shell", {"command": f"echo step{step}"})], usage=(900, 10))

    with scripted(script, **{"models__scripted__context_window": "1000"}) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="many steps", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
            eng.store.flush()
            charged = eng.store.db.execute("SELECT count(*) FROM costs").fetchone()[0]
    # Every model call is charged, the summaries' included (budgets count them).
    assert charged == len(server.requests)
    summaries = [
        r for r in server.requests if "Summarize this work log" in r["messages"][-1]["content"]
    ]
    assert summaries
    later = server.requests[-1]["messages"]
    assert any("SUMMARY: ran step commands" in (m.get("content") or "") for m in later)


def test_cli_run_streams_and_exits_0(home: Path) -> None:
    script = [
        Reply(text="Working on it.", tool_calls=[("shell", {"command": "echo hi-there"})]),
        finish("said hi"),
    ]
    with scripted(script):
        result = run_cli("run", "say hi", "--sandbox", "local")
    assert result.returncode == 0, result.stderr
    assert "Working on it." in result.stdout
    assert "→ shell: echo hi-there" in result.stdout and "hi-there" in result.stdout
    assert "● done: said hi" in result.stdout


def test_cli_run_ctrl_c_stops_the_run(home: Path) -> None:
    import os
    import signal
    import time

    forever = lambda messages: Reply(tool_calls=[("shell", {"command": "sleep 0.2"})])  # noqa: E731
    with scripted(forever):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor.cli",
                "run",
                "t",
                "--sandbox",
                "local",
                "--foreground",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until an agent is at work
            rows = json.loads(run_cli("agents", "ls", "--json").stdout or "[]")
            if rows and rows[0]["steps"] >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: stopping the run" in err and "→ shell: sleep 0.2" in out
    rows = json.loads(run_cli("agents", "ls", "--json").stdout)
    assert rows[0]["status"] == "stopped"


def test_policy_decisions() -> None:
    from supervisor.agent import Policy
    from supervisor.config import SETTINGS
    from supervisor.types import ToolCall

    policy = Policy(ask=SETTINGS["policy.ask"].default, deny=SETTINGS["policy.deny"].default)
    shell = lambda cmd: ToolCall("shell", {"command": cmd})  # noqa: E731
    assert policy.decide(shell("rm -rf /"))[0] == "deny"
    assert policy.decide(shell("rm -rf /*"))[0] == "deny"
    assert policy.decide(shell("  rm -rf ~/"))[0] == "deny"
    assert policy.decide(shell("rm -rf build/"))[0] == "auto"
    assert policy.decide(shell("git push origin main")) == ("ask", "shell:git push*")
    assert policy.decide(shell("git status"))[0] == "auto"
    policy.always.append("shell:git push*")
    assert policy.decide(shell("git push"))[0] == "auto"
    assert policy.decide(ToolCall("read_file", {"path": "/etc/passwd"}))[0] == "auto"


async def test_plugins_veto_rewrite_and_observe_tool_calls(home: Path) -> None:
    from supervisor import ToolCall, hookimpl

    seen: list[str] = []

    class Guard:
        @hookimpl
        def before_tool_call(self, call: ToolCall, agent: object) -> ToolCall | str | None:
            if "danger" in call.arguments.get("command", ""):
                return "no dangerous commands"
            if call.name == "read_file" and call.arguments["path"] == "secret.txt":
                return ToolCall("read_file", {"path": "public.txt"}, call.id)
            return None

        @hookimpl
        def on_event(self, event: object) -> None:
            seen.append(event.type)  # type: ignore[attr-defined]

    script = [
        Reply(
            tool_calls=[
                ("shell", {"command": "echo danger"}),
                ("write_file", {"path": "public.txt", "content": "public"}),
            ]
        ),
        Reply(tool_calls=[("read_file", {"path": "secret.txt"})]),
        finish(),
    ]
    with scripted(script) as server:
        async with engine() as eng:
            eng.plugins.pm.register(Guard(), name="guard")
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    assert (
        last_results(server.requests[1])[0] == "error: refused by a plugin: no dangerous commands"
    )
    assert last_results(server.requests[2]) == ["     1\tpublic"]
    assert {"run.created", "tool.started", "tool.finished", "cost", "run.status"} <= set(seen)
