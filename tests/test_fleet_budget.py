"""A fleet budget brakes, it does not crash: a warning once at the threshold, fewer agents
stepping at once as the budget runs low, and at the limit no new agent starts while the
running ones finish the step they are in — in dollars, and in tokens for a $0 model.

Real parts: the scripted OpenAI-compatible server over real HTTP through litellm (which
reports usage and prices it), local sandboxes running real commands, the real store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sshd_kit
from agent_kit import engine, scripted
from conftest import run_cli

from supervisor import config
from supervisor.engine import RunOptions
from supervisor.testing import Reply


def _events(home: Path, *kinds: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(home / "supervisor.db")
    try:
        marks = ",".join("?" * len(kinds))
        rows = conn.execute(
            f"SELECT id, type, run_id, agent_id, data, text FROM events WHERE type IN ({marks}) "
            "ORDER BY id",
            kinds,
        ).fetchall()
    finally:
        conn.close()
    return [
        {"id": i, "type": t, "run_id": r, "agent_id": a, "data": json.loads(d or "{}"), "text": x}
        for i, t, r, a, d, x in rows
    ]


async def _until(check: Any, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {check}")
        await asyncio.sleep(0.05)


def _task(messages: list[dict[str, Any]]) -> str:
    return str(messages[1]["content"])


def _turns(messages: list[dict[str, Any]]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


async def test_fleet_budget_holds_new_agents_while_running_ones_finish_their_step(
    home: Path,
) -> None:
    """$1 over all live runs, agents stop at the limit: each running agent's step that
    crossed it ends with its command run to the end, no model call follows, and an agent
    dispatched after the brake never starts."""

    def script(messages: list[dict[str, Any]]) -> Reply:
        # $1 per million input tokens: each first step costs $0.60, so the second crosses $1.
        if _turns(messages) == 0:
            command = "sleep 1; echo finished-its-step"
            return Reply(tool_calls=[("shell", {"command": command})], usage=(600_000, 0))
        return Reply(tool_calls=[("finish", {"summary": "all done"})], usage=(10, 0))

    with scripted(script, budget__fleet_usd="1", budget__at_limit="stop") as server:
        async with engine() as eng:
            braked = asyncio.Event()
            eng.listen(lambda e: braked.set() if e.type == "budget.brake" else None)
            first = await eng.start_run(RunOptions(task="build it", sandbox="local", agents=2))
            await asyncio.wait_for(braked.wait(), 60)
            # Dispatched while the running agents are still in their step.
            late = await eng.start_run(RunOptions(task="late task", sandbox="local"))
            assert await asyncio.wait_for(eng.wait_run(late), 60) == "stopped"
            assert await asyncio.wait_for(eng.wait_run(first), 60) == "stopped"
            agents = {a.id: a for a in eng.agents.values()}

    assert not any(_task(r["messages"]) == "late task" for r in server.requests)
    events = _events(
        home,
        "budget.brake",
        "budget.held",
        "agent.status",
        "tool.started",
        "tool.finished",
        "cost",
    )
    brakes = [e for e in events if e["type"] == "budget.brake"]
    assert brakes and {e["data"]["scope"] for e in brakes} == {"fleet"}
    assert brakes[0]["data"]["spent"] == pytest.approx(1.2, abs=0.001)
    assert "no new agents start" in brakes[0]["text"]
    brake_id = brakes[0]["id"]
    # No model call after the brake: the call that crossed the limit was the last.
    costs = [e for e in events if e["type"] == "cost"]
    assert costs and all(e["id"] < brake_id for e in costs)
    # No agent began work after the brake was said.
    began = [
        e
        for e in events
        if e["type"] == "agent.status" and e["data"].get("doing") == "reading the task"
    ]
    assert all(e["id"] < brake_id for e in began) and len(began) == 2
    # The running agents' commands ran to the end and their results were recorded.
    shell = [e for e in events if e["type"].startswith("tool.") and e["data"]["tool"] == "shell"]
    started = {e["data"]["id"] for e in shell if e["type"] == "tool.started"}
    finished = [e for e in shell if e["type"] == "tool.finished"]
    assert started == {e["data"]["id"] for e in finished} and len(started) == 2
    assert all("finished-its-step" in e["text"] for e in finished)
    # Each ended at a step boundary: stopped by the budget after its one step (or done,
    # when it could finish before the other crossed the limit on a slow machine).
    workers = [a for a in agents.values() if a.run_id == first]
    stopped = [a for a in workers if a.status == "stopped"]
    assert stopped and all(a.status == "done" for a in workers if a not in stopped)
    for agent in stopped:
        assert agent.steps == 1
        assert "fleet budget $1 (all live runs) reached" in agent.summary
        assert "supervisor budget fleet USD" in agent.summary
    # The agent dispatched after the brake was held, said so, and never started.
    (held_agent,) = [a for a in agents.values() if a.run_id == late]
    assert held_agent.status == "stopped" and held_agent.steps == 0
    assert held_agent.summary.startswith("not started: fleet budget $1")
    held = [e for e in events if e["type"] == "budget.held"]
    assert [e["agent_id"] for e in held] == [held_agent.id]
    assert held[0]["id"] > brake_id


async def test_run_budget_warns_once_shrinks_concurrency_and_lands_on_its_limit(
    home: Path,
) -> None:
    """Three agents, $0.125 a step, a $1 run budget, warning at half: one warning; as the
    budget runs low fewer agents may ask the model at once (2, then 1), so the run stops
    at exactly $1 rather than a step or two past it; agents pause, and go on when the
    budget is raised."""

    def script(messages: list[dict[str, Any]]) -> Reply:
        # $1,000 per million input tokens: 125 tokens cost $0.125, exact in binary, so the
        # sum meets $1 exactly (and prompts stay too short to be compacted).
        usage = (125, 0)
        # Eight steps each: no agent can finish before the budget is spent, however
        # unevenly a loaded machine starts them; think time makes their calls overlap.
        if _turns(messages) < 8:
            return Reply(tool_calls=[("shell", {"command": "true"})], usage=usage, delay_s=0.1)
        return Reply(tool_calls=[("finish", {"summary": "done"})], usage=usage)

    with scripted(script, price_in=1000.0, budget__warn_at="0.5"):
        async with engine() as eng:
            statuses: list[str] = []
            eng.listen(
                lambda e: (
                    statuses.append(str(e.data.get("doing"))) if e.type == "agent.status" else None
                )
            )
            run_id = await eng.start_run(
                RunOptions(task="step", sandbox="local", agents=3, max_cost_usd=1.0)
            )
            team = [a for a in eng.agents.values() if a.run_id == run_id]
            await _until(lambda: all(a.status == "paused" for a in team) and len(team) == 3)
            spent_at_brake = sum(a.cost_usd for a in team)
            report = run_cli("budget")
            assert report.returncode == 0, report.stderr
            await eng.set_budget("run", run_id, 0)  # no limit: the paused agents go on
            ended = await asyncio.wait_for(eng.wait_run(run_id), 60)
            assert ended == "done", [(a.status, a.summary) for a in team]

    assert spent_at_brake == 1.0
    events = _events(home, "budget.warning", "budget.shrink", "budget.brake")
    warnings = [e for e in events if e["type"] == "budget.warning"]
    assert len(warnings) == 1 and warnings[0]["data"]["spent"] == 0.5
    assert "50% spent ($0.5 of $1; $0.5 left)" in warnings[0]["text"]
    shrinks = [e["data"]["allowed"] for e in events if e["type"] == "budget.shrink"]
    assert shrinks == [2, 1], shrinks
    assert [e["type"] for e in events][-1] == "budget.brake"
    # Replayed from the transcript: no agent began a step (its model call) while as many
    # calls as the budget allowed were already in flight.
    allowed, in_flight, began = 3, set(), 0
    for e in _events(home, "agent.status", "cost", "budget.shrink", "budget.brake"):
        if e["type"] == "budget.brake":
            break
        if e["type"] == "budget.shrink":
            allowed = e["data"]["allowed"]
        elif e["type"] == "cost":
            in_flight.discard(e["agent_id"])
        elif e["data"].get("doing") == "thinking":
            assert len(in_flight) < allowed, (e, in_flight, allowed)
            in_flight.add(e["agent_id"])
            began += 1
    assert began == 8  # eight calls of $0.125 and not one more
    assert any(
        s.startswith(f"run budget $1 reached; raise it with `supervisor budget run {run_id}")
        for s in statuses
    )
    # `supervisor budget` showed the run spent, with its agents paused by the budget.
    shown = report.stdout
    assert f"run {run_id} 'step': $1.0000 of $1 (spent)" in shown, shown
    assert "3 agents paused or held by budget" in shown, shown


async def test_token_budget_brakes_a_free_model(home: Path) -> None:
    """A self-hosted model costs $0; a fleet token budget still warns and brakes."""

    def script(messages: list[dict[str, Any]]) -> Reply:
        return Reply(tool_calls=[("shell", {"command": "echo step"})], usage=(900, 100))

    with scripted(
        script,
        price_in=0.0,
        price_out=0.0,
        budget__fleet_tokens="2500",
        budget__at_limit="stop",
    ) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="loop", sandbox="local"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 60) == "stopped"
            (agent,) = eng.agents.values()
    assert agent.cost_usd == 0.0 and len(server.requests) == 3  # 1000 tokens a step
    assert agent.summary == (
        "stopped: fleet token budget 2,500 tokens (all live runs) reached; "
        "raise it with `supervisor budget fleet --tokens N`"
    )
    events = _events(home, "budget.warning", "budget.brake")
    assert [(e["type"], e["data"]["unit"], e["data"]["spent"]) for e in events] == [
        ("budget.warning", "tokens", 2000),
        ("budget.brake", "tokens", 3000),
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("config", "set", "budget.warn_at", "1.5"), "budget.warn_at must be from 0 to 1"),
        (("config", "set", "budget.warn_at", "nan"), "budget.warn_at must be a finite number"),
        (("config", "set", "budget.fleet_usd", "-1"), "budget.fleet_usd must be at least 0"),
        (("config", "set", "budget.fleet_usd", "inf"), "budget.fleet_usd must be a finite"),
        (("config", "set", "budget.fleet_tokens", "lots"), "must be an integer, got 'lots'"),
        (("config", "set", "budget.run_tokens", "-3"), "budget.run_tokens must be at least 0"),
        (("config", "set", "budget.at_limit", "crash"), "budget.at_limit must be pause or stop"),
        (("budget", "fleet", "nan"), "a budget must be 0 (none) or more, not nan"),
        (("budget", "fleet", "lots"), "give the limit in USD as the last argument"),
        (("budget", "fleet", "--tokens", "-5"), "a token budget must be 0 (none) or more"),
        (("budget", "fleet", "--tokens", "x"), "'x' is not a valid integer"),
        (("budget", "daily", "--tokens", "5"), "--tokens limits a run, a pool or the fleet"),
    ],
)
def test_settings_that_would_disable_a_budget_are_refused_in_one_line(
    home: Path, args: tuple[str, ...], needle: str
) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (home / "config.toml").exists()  # nothing changed


def test_fleet_budget_set_from_the_cli_is_shown(home: Path) -> None:
    assert run_cli("budget", "fleet", "25").returncode == 0
    assert run_cli("budget", "fleet", "--tokens", "1000000").returncode == 0
    values = config.load()
    assert values["budget.fleet_usd"] == 25.0 and values["budget.fleet_tokens"] == 1_000_000
    shown = run_cli("budget")
    assert shown.returncode == 0, shown.stderr
    assert "fleet (0 live runs): $0.0000 of $25 (ok), 0 of 1,000,000 tokens (ok)" in shown.stdout
    state = json.loads(run_cli("budget", "--json").stdout)
    assert state["fleet"]["budget_usd"] == 25.0 and state["at_limit"] == "pause"


async def test_the_tui_cost_bar_shows_the_warning_then_the_brake(home: Path) -> None:
    """A person sees a budget's warning and then its brake in the status bar, without
    opening a transcript."""
    from supervisor.tui.app import SupervisorApp
    from supervisor.tui.widgets.bars import CostBar
    from supervisor.tui.widgets.transcript import TranscriptView

    script = [  # the first step's command gives the warning time on screen
        Reply(tool_calls=[("shell", {"command": "sleep 1.5"})], usage=(850_000, 0)),
        Reply(tool_calls=[("shell", {"command": "true"})], usage=(850_000, 0)),
        Reply(tool_calls=[("finish", {"summary": "done"})], usage=(10, 0)),
    ]
    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=(160, 40)) as pilot:

            async def bar_says(words: str) -> str:
                deadline = asyncio.get_running_loop().time() + 30
                while words not in (text := str(app.query_one(CostBar).render())):
                    if asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"the cost bar never said {words!r}: {text}")
                    await pilot.pause(0.05)
                return text

            await bar_says("running")  # connected and loaded
            assert app.client is not None
            started = await app.client.call(
                "run.start", task="spend", title="spender", max_cost_usd=1.0
            )
            await bar_says("⚠ run spender budget 85% spent")
            text = await bar_says("■ run spender budget spent: no new agents")
            assert "⚠" not in text  # the brake replaced the warning
            # The run's own transcript says both, in order.
            deadline = asyncio.get_running_loop().time() + 30
            while not app._select(f"run:{started['run_id']}"):
                assert asyncio.get_running_loop().time() < deadline, "the run's row"
                await pilot.pause(0.05)
            view = app.query_one(TranscriptView)
            while "run budget spent ($1.7 of $1)" not in (shown := _widget_text(view)):
                assert asyncio.get_running_loop().time() < deadline, shown
                await pilot.pause(0.05)
            assert shown.index("$ run budget 85% spent") < shown.index("$ run budget spent")


def test_a_held_agent_starts_when_the_fleet_budget_is_raised(home: Path) -> None:
    """Through the supervisor process, as a person does it: the fleet budget is spent, the
    running agent pauses after its step, a new run's agent is held before its sandbox
    starts; `supervisor budget` shows it; raising the budget lets both go on to the end."""
    import time

    def rows() -> dict[str, dict[str, Any]]:
        """The agents' rows, as `supervisor agents ls` shows them (read without a process
        start per poll)."""
        conn = sqlite3.connect(home / "supervisor.db")
        conn.row_factory = sqlite3.Row
        try:
            return {r["run_id"]: dict(r) for r in conn.execute("SELECT * FROM agents")}
        finally:
            conn.close()

    def wait_for(check: Any, seconds: float = 60) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if value := check():
                return value
            time.sleep(0.1)
        raise AssertionError(f"not within {seconds}s")

    script = [
        Reply(tool_calls=[("shell", {"command": "true"})], usage=(1_500_000, 0)),  # $1.50
        Reply(tool_calls=[("finish", {"summary": "done"})], usage=(10, 0)),
    ]
    with scripted(script, sandbox__backend="local"):
        assert run_cli("budget", "fleet", "1").returncode == 0
        first = run_cli("run", "-d", "first").stdout.strip().splitlines()[-1]
        wait_for(lambda: rows().get(first, {}).get("status") == "paused")
        second = run_cli("run", "-d", "second").stdout.strip().splitlines()[-1]
        held = wait_for(lambda: (r := rows().get(second)) and r["status"] == "paused" and r)
        assert held["doing"].startswith("held before start: fleet budget $1 (all live runs)")
        tokens = run_cli("budget", "run", second, "--tokens", "9000000")
        assert tokens.stdout.strip() == f"run {second} budget 9,000,000 tokens", tokens.stderr
        shown = run_cli("budget").stdout
        assert "fleet (2 live runs): $1.5000 of $1 (spent)" in shown, shown
        assert (
            f"run {second} 'second': $0.0000, 0 of 9,000,000 tokens (ok); "
            "1 agents paused or held by budget"
        ) in shown, shown
        logs = run_cli("logs", held["id"]).stdout
        assert "$ held before start: fleet budget $1 (all live runs) reached" in logs, logs
        raised = run_cli("budget", "fleet", "10")
        assert raised.returncode == 0 and raised.stdout.strip() == "fleet budget $10"
        wait_for(lambda: all(rows().get(r, {}).get("status") == "done" for r in (first, second)))
    (token_limit,) = _events(home, "budget.set")
    assert token_limit["data"] == {"scope": "run", "target": second, "tokens": 9_000_000}
    held_events = _events(home, "budget.held")
    assert [e["run_id"] for e in held_events] == [second]
    assert held_events[0]["data"]["at_limit"] == "pause"


def _widget_text(widget: Any) -> str:
    """The text a widget's children show, one per line."""
    from textual.widgets import Static

    return "\n".join(str(w.render()) for w in widget.query(Static))


@pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())
async def test_a_pool_budget_brakes_the_runs_on_its_pool_only(home: Path, tmp_path: Path) -> None:
    """`pools.gpu.budget_usd` covers the live runs on pool gpu (two real sshd hosts): at
    its limit they stop after their step and a later run on the pool never starts, while
    a run elsewhere goes on; `supervisor budget` shows and sets it."""

    def script(messages: list[dict[str, Any]]) -> Reply:
        if _task(messages) == "elsewhere" or _turns(messages) > 0:
            return Reply(tool_calls=[("finish", {"summary": "done"})], usage=(10, 0))
        command = "sleep 1; echo finished-its-step"
        return Reply(tool_calls=[("shell", {"command": command})], usage=(600_000, 0))

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(sshd_kit.sshd(tmp_path / f"p{i}", ""))[0] for i in range(2)]
        sshd_kit.register_hosts(servers)
        config.set_value("pools.gpu.hosts", "h0,h1")
        config.set_value("pools.gpu.budget_usd", "1")
        with scripted(script, budget__at_limit="stop"):
            async with engine() as eng:
                braked = asyncio.Event()
                eng.listen(lambda e: braked.set() if e.type == "budget.brake" else None)
                first = await eng.start_run(RunOptions(task="on the pool", agents=2, hosts="gpu"))
                await asyncio.wait_for(braked.wait(), 60)
                late = await eng.start_run(RunOptions(task="late on the pool", hosts="gpu"))
                elsewhere = await eng.start_run(RunOptions(task="elsewhere", sandbox="local"))
                assert await asyncio.wait_for(eng.wait_run(elsewhere), 60) == "done"
                assert await asyncio.wait_for(eng.wait_run(late), 60) == "stopped"
                assert await asyncio.wait_for(eng.wait_run(first), 60) == "stopped"
                (held,) = [a for a in eng.agents.values() if a.run_id == late]
    assert held.steps == 0 and held.summary.startswith("not started: pool gpu budget $1")
    brakes = _events(home, "budget.brake")
    assert {(e["data"]["scope"], e["data"]["target"]) for e in brakes} == {("pool", "gpu")}
    assert first in {e["run_id"] for e in brakes}
    assert elsewhere not in {e["run_id"] for e in brakes}
    assert "pool gpu budget $1 (its live runs) reached" in brakes[0]["text"]
    assert "`supervisor config set pools.gpu.budget_usd USD`" in brakes[0]["text"]

    raised = run_cli("budget", "pool", "gpu", "5", "--tokens", "100000")
    assert raised.returncode == 0, raised.stderr
    shown = run_cli("budget")
    assert "pool gpu (0 live runs): $0.0000 of $5 (ok), 0 of 100,000 tokens (ok)" in shown.stdout
    unknown = run_cli("budget", "pool", "cpu", "5")
    assert unknown.returncode == 2 and unknown.stderr.strip().endswith(
        "no pool 'cpu' (set pools.cpu.hosts first)"
    )
