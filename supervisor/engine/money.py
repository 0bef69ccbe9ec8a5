"""The engine's room for costs and budgets: spend recorded per model call, limits that
pause agents.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from supervisor import config
from supervisor.agent import Agent
from supervisor.events import EventType
from supervisor.models import Completion
from supervisor.system import start_of_day

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from supervisor.engine import Engine


def record_cost(engine: Engine, agent: Agent, completion: Completion) -> None:
    engine._spent_today += completion.cost_usd
    row = {
        "ts": time.time(),
        "run_id": agent.run_id,
        "agent_id": agent.id,
        "model": completion.model,
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
        "cost_usd": completion.cost_usd,
    }
    values = {
        "input_tokens": agent.input_tokens,
        "output_tokens": agent.output_tokens,
        "cost_usd": agent.cost_usd,
        "steps": agent.steps,
    }
    cost = completion.cost_usd

    def write(db: Any) -> None:
        db.table("costs").insert(row)
        db.table("agents").update(agent.id, values)
        db.execute(
            "UPDATE runs SET cost_usd = coalesce(cost_usd, 0) + ? WHERE id = ?",
            [cost, agent.run_id],
        )

    engine.store.write(write)
    engine.emit(
        EventType.COST,
        agent,
        {
            "model": completion.model,
            "cost_usd": cost,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "agent_cost_usd": agent.cost_usd,
        },
    )


def _spent_since(engine: Engine, since: float) -> float:
    engine.store.flush()
    row = engine.store.db.execute(
        "SELECT coalesce(sum(cost_usd), 0) FROM costs WHERE ts >= ?", [since]
    ).fetchone()
    return float(row[0])


def over_budget(engine: Engine, agent: Agent) -> str:
    """Why the agent may not spend more now ('' if it may), with the way to raise it.

    Called before every model call, so it never waits for the store: limits are read
    once per run or agent and then changed only through :meth:`set_budget` (``supervisor
    budget`` reaches it through the supervisor process), and spend is counted in memory.
    """
    agent_limit = engine._limit_usd("agents", agent.id) or agent.limits.max_cost_usd
    if agent_limit and agent.cost_usd >= agent_limit:
        return (
            f"agent budget ${agent_limit:g} reached; raise it with "
            f"`supervisor budget agent {agent.id} USD`"
        )
    run_limit = engine._limit_usd("runs", agent.run_id)
    spent = sum(a.cost_usd for a in engine.agents.values() if a.run_id == agent.run_id)
    if run_limit and spent >= run_limit:
        return (
            f"run budget ${run_limit:g} reached; raise it with "
            f"`supervisor budget run {agent.run_id} USD`"
        )
    daily = float(engine.settings["budget.daily_usd"])
    if daily and engine._spent_today >= daily and engine._settings_from_config:
        # The person may have raised the limit since the engine started: look again.
        with contextlib.suppress(Exception):
            daily = float(config.load()["budget.daily_usd"])
            engine.settings["budget.daily_usd"] = daily
    if daily and engine._spent_today >= daily:
        return (
            f"daily fleet budget ${daily:g} reached; raise it with "
            "`supervisor config set budget.daily_usd USD`"
        )
    return ""


def _limit_usd(engine: Engine, table: str, key: str) -> float:
    if key not in engine._limits_usd:
        engine._limits_usd[key] = float(engine._row(table, key).get("budget_usd") or 0.0)
    return engine._limits_usd[key]


async def set_budget(engine: Engine, scope: str, key: str, usd: float) -> str:
    """A person sets a run's or an agent's spending limit (0: none); returns the id.

    Paused agents go on at their next look (within a second)."""
    from supervisor.errors import InputError

    if scope not in ("run", "agent"):
        raise InputError(f"budget scope must be run or agent, not {scope!r}")
    if usd < 0:
        raise InputError(f"a budget must be 0 (none) or more, not {usd:g}")
    table = "runs" if scope == "run" else "agents"
    await engine.store.aflush()
    if scope == "agent":
        found = engine.find_agent(key)
        row = engine._row("agents", found.id if found else key) or engine._agent_row_by_name(key)
    else:
        row = engine._row("runs", key)
    if not row:
        raise InputError(f"no {scope} {key!r} (see `supervisor agents ls`)")
    target = str(row["id"])
    await asyncio.wrap_future(
        engine.store.write(lambda db: db.table(table).update(target, {"budget_usd": usd or None}))
    )
    engine._limits_usd[target] = usd
    engine.emit(
        EventType.BUDGET_SET,
        None,
        {"scope": scope, "target": target, "usd": usd},
        f"{scope} {target} budget set to ${usd:g}" if usd else f"{scope} {target}: no budget",
        run_id=str(row.get("run_id") or target),
    )
    return target


def _agent_row_by_name(engine: Engine, name: str) -> dict[str, Any]:
    rows = list(
        engine.store.db.query(
            "SELECT * FROM agents WHERE name = ? ORDER BY created_at DESC LIMIT 1", [name]
        )
    )
    return dict(rows[0]) if rows else {}


async def wait_within_budget(engine: Engine, agent: Agent) -> None:
    """Pause (status ``paused``, no model calls) while a budget is exhausted."""
    reason = engine.over_budget(agent)
    if not reason:
        return
    agent.set_status("paused", reason)
    while reason:
        await asyncio.sleep(1.0)
        if start_of_day() > time.time() - 1.5:
            engine._spent_today = engine._spent_since(start_of_day())
        reason = engine.over_budget(agent)
    agent.set_status("running", "budget raised")
