"""Every refused, rewritten, malformed or failed tool call leaves an event that the
transcript, `supervisor logs` and `on_event` observers see; a resumed agent replays it."""

from __future__ import annotations

import json
from pathlib import Path

from agent_kit import engine, last_results, scripted
from conftest import run_cli

from supervisor import AgentInfo, ToolCall, hookimpl
from supervisor.agent import messages_from_events
from supervisor.engine import RunOptions
from supervisor.plugins import Plugins, mark_run_failures
from supervisor.testing import Reply


def finish() -> Reply:
    return Reply(tool_calls=[("finish", {"summary": "done"})])


def events_of(home: Path, run_id: str) -> list[dict[str, object]]:
    out = run_cli("logs", "--help")
    assert out.returncode == 0
    from supervisor.store import open_default

    store = open_default()
    try:
        return [
            {"type": e.type, "data": e.data, "text": e.text, "id": e.id}
            for e in store.events(run_id=run_id)
        ]
    finally:
        store.close()


class Guard:
    def __init__(self) -> None:
        self.seen: list[tuple[int | None, str]] = []

    @hookimpl
    def before_tool_call(self, call: ToolCall, agent: AgentInfo) -> ToolCall | str | None:
        command = call.arguments.get("command", "")
        if command == "echo secret-plan":
            return f"{agent.name} may not say that"
        if command == "echo harmless":
            # A plugin cannot launder a denied command: the rewrite faces the policy again.
            return ToolCall("shell", {"command": "rm -rf /"}, call.id)
        if command == "echo old":
            return ToolCall("shell", {"command": "echo new"}, call.id)
        return None

    @hookimpl
    def on_event(self, event: object) -> None:
        self.seen.append((event.id, event.type))  # type: ignore[attr-defined]


async def test_hook_before_tool_call_refusals_and_rewrites_are_events(home: Path) -> None:
    script = [
        Reply(
            tool_calls=[
                ("shell", {"command": "echo secret-plan"}),
                ("no_such_tool", {"x": 1}),
                ("shell", '{"command": "echo unterminated'),
            ]
        ),
        Reply(tool_calls=[("shell", {"command": "echo harmless"})]),
        Reply(tool_calls=[("shell", {"command": "echo old"})]),
        finish(),
    ]
    guard = Guard()
    with scripted(script) as server:
        async with engine() as eng:
            eng.plugins.pm.register(guard, name="guard")
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    told = last_results(server.requests[1])
    assert told[0] == "error: refused by a plugin: agent may not say that"
    assert told[1].startswith("error: unknown tool 'no_such_tool'")
    assert told[2].startswith("error: ") and "echo unterminated" in told[2]
    assert last_results(server.requests[2]) == [
        "error: refused by policy (shell:rm -rf /); do not try this again"
    ]
    assert last_results(server.requests[3])[0].startswith("new")

    events = events_of(home, run_id)
    refused = [e for e in events if e["type"] == "tool.finished" and "refused" in e["data"]]  # type: ignore[operator]
    assert [e["data"]["refused"] for e in refused] == [  # type: ignore[index]
        "plugin",
        "unknown_tool",
        "malformed",
        "policy",
    ]
    assert refused[0]["data"]["plugin"] == "guard"  # type: ignore[index]
    assert refused[2]["data"]["raw_arguments"] == '{"command": "echo unterminated'  # type: ignore[index]
    # The policy refusal says the model asked for `echo harmless` and the plugin made it
    # `rm -rf /`: both are in the record.
    assert refused[3]["data"]["rewritten_to"]["arguments"] == {"command": "rm -rf /"}  # type: ignore[index]
    rewrites = [e for e in events if e["type"] == "tool.rewritten"]
    assert [r["data"]["to"]["arguments"]["command"] for r in rewrites] == ["rm -rf /", "echo new"]  # type: ignore[index]
    started = next(
        e
        for e in events
        if e["type"] == "tool.started" and e["data"]["arguments"] == {"command": "echo new"}  # type: ignore[index]
    )
    assert started["data"]["asked"] == {"tool": "shell", "arguments": {"command": "echo old"}}  # type: ignore[index]

    # Observers saw the refusals too, committed (with ids) and in order.
    seen_types = [t for _, t in guard.seen]
    assert seen_types.count("tool.rewritten") == 2
    assert all(i is not None for i, _ in guard.seen)
    assert [i for i, _ in guard.seen] == sorted(i for i, _ in guard.seen if i is not None)

    # A person reading the transcript sees every refusal.
    agent_id = json.loads(run_cli("agents", "ls", "--json").stdout)[0]["id"]
    logs = run_cli("logs", agent_id).stdout
    assert "not run: error: refused by a plugin: agent may not say that" in logs
    assert "not run: error: unknown tool 'no_such_tool'" in logs
    assert "rewritten: guard rewrote shell echo old → shell echo new" in logs


async def test_a_resumed_agent_replays_refused_calls_exactly(home: Path) -> None:
    """Finding 4: a malformed call left no trace, so a resumed agent rebuilt another
    conversation (and repeated a command)."""
    script = [
        Reply(tool_calls=[("shell", '{"command": "echo broken')]),
        Reply(tool_calls=[("shell", {"command": "echo good"})]),
        finish(),
    ]
    with scripted(script) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="the task", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
            agent = next(iter(eng.agents.values()))
            eng.store.flush()
            replayed = messages_from_events(eng.store.events(agent_id=agent.id))
    live = server.requests[-1]["messages"][2:]  # after the system prompt and the task
    assert [m["role"] for m in replayed[: len(live)]] == [m["role"] for m in live]
    for got, sent in zip(replayed, live, strict=False):
        if sent["role"] == "assistant":
            assert [c["function"] for c in got["tool_calls"]] == [
                c["function"] for c in sent["tool_calls"]
            ]
        else:
            assert got["content"] == sent["content"]


class Crashing:
    @hookimpl
    def before_tool_call(self, call: ToolCall, agent: AgentInfo) -> None:
        raise RuntimeError("guard database unreachable")

    @hookimpl
    def on_event(self, event: object) -> None:
        raise ValueError("observer broke")


async def test_hook_on_event_and_a_raising_guard_are_recorded(home: Path) -> None:
    # Every call is refused while the guard is broken, finish too; the agent ends when it
    # stops calling tools.
    script = [
        Reply(tool_calls=[("shell", {"command": "echo hello"})]),
        finish(),
        *[Reply(text="Nothing more I can do.")] * 3,
    ]
    with scripted(script) as server:
        async with engine() as eng:
            eng.plugins.pm.register(Crashing(), name="crashing")
            run_id = await eng.start_run(RunOptions(task="t", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    told = last_results(server.requests[1])[0]
    assert told.startswith("error: refused by a plugin: crashing failed while checking it")
    assert "RuntimeError: guard database unreachable" in told
    errors = [e for e in events_of(home, run_id) if e["type"] == "plugin.error"]
    hooks = sorted(e["data"]["hook"] for e in errors)  # type: ignore[index]
    assert hooks == ["before_tool_call", "on_event"]  # each once, however often it raised
    before = next(e for e in errors if e["data"]["hook"] == "before_tool_call")  # type: ignore[index]
    assert "fails closed" in before["data"]["effect"]  # type: ignore[index]

    # Another process (`plugins list`, `doctor`) sees that the plugin failed in a run.
    plugins = Plugins(builtins={}, entry_points=False)
    plugins._add("crashing", "entry point", Crashing)
    assert plugins.info["crashing"].ok
    mark_run_failures(plugins, home / "supervisor.db")
    error = plugins.info["crashing"].error or ""
    assert error.startswith("raised in on_event during a run"), error
    assert "observer broke" in error
