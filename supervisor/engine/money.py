"""The engine's room for costs and budgets: spend recorded per model call, and limits that
brake a fleet instead of crashing it.

A budget covers an agent, a run, the fleet (every live run together) or the day, in
dollars or in tokens (a self-hosted model costs $0 but still burns GPU hours). As spend
grows under one:

1. at ``budget.warn_at`` of it (80%) a ``budget.warning`` is said once;
2. fewer agents may take a step at once (``budget.shrink``): a model call in flight cannot
   be called back, so when the limit is crossed every call then in flight still spends
   about one call's cost. Allowing at most ``floor(left / spent per model call so far)``
   agents to be between the start of a step and the cost of its model call keeps what
   those calls are expected to spend within what is left, so the fleet lands near its
   limit instead of one step per agent past it. An agent running its step's tools holds
   no place (its step's cost is known). With plenty left the number is above the fleet's
   size and nothing waits; it never goes below 1, so work goes on until the limit;
3. at the limit (``budget.brake``) no new agent starts under it (``budget.held``), and
   agents already running finish the step they are in — tool calls included — and then
   pause until the limit is raised, or stop (``budget.at_limit``), which frees their
   sandboxes and GPU slots.

Pools of hosts will add a scope the same way: a ``budget.pool.NAME`` setting and its
agents (see docs/scaling.md).

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor import config
from supervisor.agent import Agent, LimitReached
from supervisor.events import EventType
from supervisor.models import Completion
from supervisor.status import ENDED
from supervisor.system import start_of_day

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
    brakes = engine._brakes
    brakes.calls[agent.run_id] = brakes.calls.get(agent.run_id, 0) + 1
    # What its step spends is known now (its tools cost nothing): the place goes to the
    # next agent waiting to ask the model.
    brakes.stepping.discard(agent.id)
    _watch(engine, agent)


def _spent_since(engine: Engine, since: float) -> float:
    engine.store.flush()
    row = engine.store.db.execute(
        "SELECT coalesce(sum(cost_usd), 0) FROM costs WHERE ts >= ?", [since]
    ).fetchone()
    return float(row[0])


Key = tuple[str, str, str]  # (scope, target, unit)


@dataclass
class Budget:
    """One limit as it stands for an agent: what it covers, how much is spent under it,
    and the model calls that spent it."""

    scope: str  # agent | run | pool | fleet | daily
    target: str  # the agent's or run's id, the pool's name; empty for fleet and daily
    unit: str  # usd | tokens
    limit: float
    spent: float
    calls: int = 0
    members: list[Agent] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.scope, self.target, self.unit)

    @property
    def spent_out(self) -> bool:
        return self.spent >= self.limit

    def amount(self, value: float) -> str:
        return f"${value:g}" if self.unit == "usd" else f"{int(value):,} tokens"

    def name(self) -> str:
        kind = {"daily": "daily fleet", "pool": f"pool {self.target}"}.get(self.scope, self.scope)
        return f"{kind} budget" if self.unit == "usd" else f"{kind} token budget"

    def reason(self) -> str:
        """Why no more may be spent, with the way to raise it."""
        target = f" {self.target}" if self.target else ""
        if self.scope == "daily":
            how = "`supervisor config set budget.daily_usd USD`"
        elif self.scope == "pool":
            key, value = ("budget_usd", "USD") if self.unit == "usd" else ("budget_tokens", "N")
            how = f"`supervisor config set pools.{self.target}.{key} {value}`"
        elif self.unit == "usd":
            how = f"`supervisor budget {self.scope}{target} USD`"
        else:
            how = f"`supervisor budget {self.scope}{target} --tokens N`"
        covers = {"fleet": " (all live runs)", "pool": " (its live runs)"}.get(self.scope, "")
        return f"{self.name()} {self.amount(self.limit)}{covers} reached; raise it with {how}"

    def live(self) -> list[Agent]:
        return [a for a in self.members if a.status not in ENDED]

    def allowed(self) -> int | None:
        """How many agents under this budget may have a model call in flight (None: any).
        See the module's docstring for the rule and why."""
        if self.scope not in ("run", "pool", "fleet") or not self.calls or self.spent_out:
            return None
        per_step = self.spent / self.calls
        if per_step <= 0:
            return None
        return max(1, int((self.limit - self.spent) // per_step))


@dataclass
class Brakes:
    """What the engine said and holds about budgets: each announcement is made once per
    limit (a raised limit may warn again), and who is inside a step or waits for one."""

    warned: dict[Key, float] = field(default_factory=dict)
    braked: dict[Key, float] = field(default_factory=dict)
    shrunk: dict[Key, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # run id -> model calls
    tokens: dict[str, int] = field(default_factory=dict)  # run id -> token limit, once read
    stepping: set[str] = field(default_factory=set)  # agents whose model call is in flight
    waiting: list[str] = field(default_factory=list)  # agents waiting for a step, in order


def budgets(engine: Engine, agent: Agent) -> list[Budget]:
    """Every limit that covers the agent now, narrowest first."""
    out: list[Budget] = []
    agent_limit = engine._limit_usd("agents", agent.id) or agent.limits.max_cost_usd
    if agent_limit:
        out.append(Budget("agent", agent.id, "usd", agent_limit, agent.cost_usd, 0, [agent]))
    run_usd = engine._limit_usd("runs", agent.run_id)
    run_tokens = _limit_tokens(engine, agent.run_id)
    calls = engine._brakes.calls
    if run_usd or run_tokens:
        team = [a for a in engine.agents.values() if a.run_id == agent.run_id]
        made = calls.get(agent.run_id, 0)
        if run_usd:
            spent = sum(a.cost_usd for a in team)
            out.append(Budget("run", agent.run_id, "usd", run_usd, spent, made, team))
        if run_tokens:
            used = sum(a.input_tokens + a.output_tokens for a in team)
            out.append(Budget("run", agent.run_id, "tokens", run_tokens, used, made, team))
    out += _pool_budgets(engine, agent)
    fleet_usd = float(engine.settings.get("budget.fleet_usd") or 0)
    fleet_tokens = int(engine.settings.get("budget.fleet_tokens") or 0)
    if fleet_usd or fleet_tokens:
        live = _live_runs(engine) | {agent.run_id}
        fleet = [a for a in engine.agents.values() if a.run_id in live]
        made = sum(calls.get(r, 0) for r in live)
        if fleet_usd:
            spent = sum(a.cost_usd for a in fleet)
            out.append(Budget("fleet", "", "usd", fleet_usd, spent, made, fleet))
        if fleet_tokens:
            used = sum(a.input_tokens + a.output_tokens for a in fleet)
            out.append(Budget("fleet", "", "tokens", fleet_tokens, used, made, fleet))
    daily = float(engine.settings["budget.daily_usd"])
    if daily and engine._spent_today >= daily and engine._settings_from_config:
        # The person may have raised the limit since the engine started: look again.
        with contextlib.suppress(Exception):
            daily = float(config.load()["budget.daily_usd"])
            engine.settings["budget.daily_usd"] = daily
    if daily:
        out.append(Budget("daily", "", "usd", daily, engine._spent_today))
    return out


def _pool_budgets(engine: Engine, agent: Agent) -> list[Budget]:
    """The budget of the named pool the agent's run is on (``pools.NAME.budget_usd`` and
    ``budget_tokens``), over the live runs on that pool."""
    pool = engine.run_pools.get(agent.run_id, "")
    usd = float(engine.settings.get(f"pools.{pool}.budget_usd") or 0) if pool else 0.0
    tokens = int(engine.settings.get(f"pools.{pool}.budget_tokens") or 0) if pool else 0
    if not (usd or tokens):
        return []
    runs = _pool_runs(engine, pool) | {agent.run_id}
    members = [a for a in engine.agents.values() if a.run_id in runs]
    made = sum(engine._brakes.calls.get(r, 0) for r in runs)
    out = []
    if usd:
        spent = sum(a.cost_usd for a in members)
        out.append(Budget("pool", pool, "usd", usd, spent, made, members))
    if tokens:
        used = sum(a.input_tokens + a.output_tokens for a in members)
        out.append(Budget("pool", pool, "tokens", tokens, used, made, members))
    return out


def _pool_runs(engine: Engine, pool: str) -> set[str]:
    return {r for r in _live_runs(engine) if engine.run_pools.get(r) == pool}


def _live_runs(engine: Engine) -> set[str]:
    """Runs in progress: what the fleet budget covers. A recipe's run counts between its
    agents too (an experiment loop must not escape the budget between experiments); a
    run that has ended no longer does."""
    live = {run_id for run_id, done in engine._done.items() if not done.is_set()}
    return live | {a.run_id for a in engine.agents.values() if a.status not in ENDED}


def _limit_tokens(engine: Engine, run_id: str) -> int:
    """A run's token limit: the last one a person set for it, else ``budget.run_tokens``
    as it was when the run was first looked at. Kept as ``budget.set`` events, so it
    outlives the supervisor process without a column of its own."""
    known = engine._brakes.tokens
    if run_id not in known:
        # No flush: a limit set in this process is already in ``known``; one set before
        # a restart was committed long ago.
        row = engine.store.db.execute(
            "SELECT data FROM events WHERE run_id = ? AND type = 'budget.set' "
            "AND json_extract(data, '$.tokens') IS NOT NULL ORDER BY id DESC LIMIT 1",
            [run_id],
        ).fetchone()
        if row is not None:
            known[run_id] = int(json.loads(row[0])["tokens"])
        else:
            known[run_id] = int(engine.settings.get("budget.run_tokens") or 0)
    return known[run_id]


def over_budget(engine: Engine, agent: Agent) -> str:
    """Why the agent may not spend more now ('' if it may), with the way to raise it.

    Called before every model call, so it never waits for the store: limits are read
    once per run or agent and then changed only through :meth:`set_budget` (``supervisor
    budget`` reaches it through the supervisor process), and spend is counted in memory.
    """
    spent = _spent_out(engine, agent)
    return spent.reason() if spent else ""


def _spent_out(engine: Engine, agent: Agent) -> Budget | None:
    for budget in budgets(engine, agent):
        if budget.spent_out:
            _announce(engine, agent, budget)
            return budget
    return None


def _at_limit(engine: Engine) -> str:
    return str(engine.settings.get("budget.at_limit") or "pause")


def _watch(engine: Engine, agent: Agent) -> None:
    """After spend grew: warn, brake or shrink, each said once."""
    for budget in budgets(engine, agent):
        _announce(engine, agent, budget)


def _announce(engine: Engine, agent: Agent, budget: Budget) -> None:
    brakes, key = engine._brakes, budget.key
    warn_at = float(engine.settings.get("budget.warn_at", 0.8))
    data: dict[str, Any] = {
        "scope": budget.scope,
        "target": budget.target,
        "unit": budget.unit,
        "spent": round(budget.spent, 6),
        "limit": budget.limit,
    }
    if budget.spent_out:
        if brakes.braked.get(key) == budget.limit:
            return
        brakes.braked[key] = brakes.warned[key] = budget.limit
        mode = _at_limit(engine)
        then = "pause until it is raised" if mode == "pause" else "stop"
        who = (
            "the agent finishes its step"
            if budget.scope == "agent"
            else "no new agents start; running agents finish their step"
        )
        text = (
            f"{budget.name()} spent ({budget.amount(budget.spent)} of "
            f"{budget.amount(budget.limit)}): {who}, then {then}. {budget.reason()}"
        )
        _say(engine, agent, budget, EventType.BUDGET_BRAKE, {**data, "at_limit": mode}, text)
        return
    if budget.spent >= warn_at * budget.limit and brakes.warned.get(key) != budget.limit:
        brakes.warned[key] = budget.limit
        left = budget.amount(budget.limit - budget.spent)
        text = (
            f"{budget.name()} {budget.spent / budget.limit:.0%} spent "
            f"({budget.amount(budget.spent)} of {budget.amount(budget.limit)}; {left} left)"
        )
        _say(engine, agent, budget, EventType.BUDGET_WARNING, data, text)
    allowed = budget.allowed()
    live = len(budget.live())
    if allowed is not None and allowed < live and brakes.shrunk.get(key) != allowed:
        brakes.shrunk[key] = allowed
        per_step = budget.spent / budget.calls
        left_n = budget.limit - budget.spent
        text = (
            f"{budget.name()} running low: {allowed} of {live} agents may take a step at "
            f"once ({budget.amount(left_n)} left, about {budget.amount(per_step)} a step)"
        )
        shrink = {
            **data,
            "allowed": allowed,
            "live": live,
            "left": round(left_n, 6),
            "per_step": round(per_step, 6),
        }
        _say(engine, agent, budget, EventType.BUDGET_SHRINK, shrink, text)


def _say(
    engine: Engine, agent: Agent, budget: Budget, type: str, data: dict[str, Any], text: str
) -> None:
    """Into the transcript of every run the budget covers: a fleet-wide brake is news to
    every live run."""
    if budget.scope == "agent":
        engine.emit(type, agent, data, text)
        return
    if budget.scope == "run":
        runs = {agent.run_id}
    elif budget.scope == "pool":
        runs = _pool_runs(engine, budget.target) | {agent.run_id}
    else:
        runs = _live_runs(engine) | {agent.run_id}
    for run_id in sorted(runs):
        engine.emit(type, None, data, text, run_id=run_id)


def _limit_usd(engine: Engine, table: str, key: str) -> float:
    if key not in engine._limits_usd:
        engine._limits_usd[key] = float(engine._row(table, key).get("budget_usd") or 0.0)
    return engine._limits_usd[key]


async def set_budget(
    engine: Engine, scope: str, key: str, usd: float | None = None, tokens: int | None = None
) -> str:
    """A person sets a run's or an agent's spending limit (0: none), in dollars or (runs)
    in tokens; returns the id. Paused and held agents go on at their next look (within a
    second)."""
    from supervisor.errors import InputError

    if scope not in ("run", "agent"):
        raise InputError(f"budget scope must be run or agent, not {scope!r}")
    if usd is None and tokens is None:
        raise InputError("give a limit in USD or --tokens N")
    if usd is not None and (not math.isfinite(usd) or usd < 0):
        raise InputError(f"a budget must be 0 (none) or more, not {usd:g}")
    if tokens is not None and tokens < 0:
        raise InputError(f"a token budget must be 0 (none) or more, not {tokens}")
    if tokens is not None and scope != "run":
        raise InputError("token budgets are per run (`supervisor budget run RUN --tokens N`)")
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
    data: dict[str, Any] = {"scope": scope, "target": target}
    said = []
    if usd is not None:
        await asyncio.wrap_future(
            engine.store.write(
                lambda db: db.table(table).update(target, {"budget_usd": usd or None})
            )
        )
        engine._limits_usd[target] = usd
        data["usd"] = usd
        said.append(f"${usd:g}" if usd else "no dollar limit")
    if tokens is not None:
        engine._brakes.tokens[target] = tokens
        data["tokens"] = tokens
        said.append(f"{tokens:,} tokens" if tokens else "no token limit")
    engine.emit(
        EventType.BUDGET_SET,
        None,
        data,
        f"{scope} {target} budget set to {', '.join(said)}",
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


async def _until_within(engine: Engine, agent: Agent) -> None:
    """Look every second until no budget covering the agent is spent."""
    while engine.over_budget(agent):
        await asyncio.sleep(1.0)
        if start_of_day() > time.time() - 1.5:
            engine._spent_today = engine._spent_since(start_of_day())
        with contextlib.suppress(Exception):  # a broken file was refused when written
            engine.refresh_settings()  # `supervisor budget fleet` writes the settings


async def wait_within_budget(engine: Engine, agent: Agent) -> None:
    """At a step boundary: pause (status ``paused``, no model calls) or stop while a
    budget is spent, then wait for a place among the agents that may step at once."""
    engine._brakes.stepping.discard(agent.id)  # its last step is over (a call that failed)
    while True:
        reason = engine.over_budget(agent)
        if reason:
            if _at_limit(engine) == "stop":
                raise LimitReached(reason)
            agent.set_status("paused", reason)
            await _until_within(engine, agent)
            agent.set_status("running", "budget raised")
        if await _take_step(engine, agent):
            return


async def _take_step(engine: Engine, agent: Agent) -> bool:
    """Wait for a place to step (True), or until a budget is spent meanwhile (False)."""
    brakes = engine._brakes
    if not brakes.waiting and _room(engine, agent) is None:
        brakes.stepping.add(agent.id)
        return True
    brakes.waiting.append(agent.id)
    held = ""
    try:
        while (full := _room(engine, agent)) is not None:
            if engine.over_budget(agent):
                return False
            if not held:
                held = (
                    f"waiting for a step: {full.name()} lets {full.allowed()} agents step at once"
                )
                agent.set_status("paused", held)
            await asyncio.sleep(0.2)
    finally:
        brakes.waiting.remove(agent.id)
    brakes.stepping.add(agent.id)
    if held:
        agent.set_status("running", "its turn to step")
    return True


def _room(engine: Engine, agent: Agent) -> Budget | None:
    """The budget that has no place for the agent to step now (None: it may step);
    agents that waited longer go first."""
    brakes = engine._brakes
    for budget in budgets(engine, agent):
        allowed = budget.allowed()
        if allowed is None:
            continue
        ids = {a.id for a in budget.live()}
        stepping = len(brakes.stepping & ids - {agent.id})
        queue = [w for w in brakes.waiting if w in ids]
        ahead = queue.index(agent.id) if agent.id in queue else len(queue)
        if stepping + ahead >= allowed:
            return budget
    return None


async def admit(engine: Engine, agent: Agent) -> bool:
    """Before a new agent's sandbox starts: while a budget covering it is spent it is
    held (``paused`` until the limit is raised) or, with ``budget.at_limit = stop``,
    ends unstarted. False when it ended."""
    spent = _spent_out(engine, agent)
    if spent is None:
        return True
    mode, reason = _at_limit(engine), spent.reason()
    word = "not started" if mode == "stop" else "held before start"
    engine.emit(
        EventType.BUDGET_HELD,
        agent,
        {"scope": spent.scope, "reason": reason, "at_limit": mode},
        f"{word}: {reason}",
    )
    if mode == "stop":
        agent.summary = f"not started: {reason}"
        agent.status = "stopped"
        engine.agent_finished(agent, "stopped")
        return False
    agent.set_status("paused", f"{word}: {reason}")
    await _until_within(engine, agent)
    agent.set_status("starting", "the budget allows it now")
    return True


def report(db: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Where every budget stands, read from the store (``supervisor budget`` prints it):
    the fleet over live runs, the day, each live run; spent, limit, and whether it is
    warned or spent, with the latest number of agents that may step at once."""
    from supervisor.store import queries

    warn_at = float(settings["budget.warn_at"])

    def state(spent: float, limit: float) -> str:
        if not limit:
            return "no limit"
        return "spent" if spent >= limit else "warned" if spent >= warn_at * limit else "ok"

    cursor = db.execute(
        "SELECT r.id, r.title, coalesce(r.cost_usd, 0) AS usd, r.budget_usd, "
        "(SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM costs c "
        " WHERE c.run_id = r.id) AS tokens, "
        "(SELECT json_extract(data, '$.tokens') FROM events e WHERE e.run_id = r.id "
        " AND e.type = 'budget.set' AND json_extract(data, '$.tokens') IS NOT NULL "
        " ORDER BY e.id DESC LIMIT 1) AS token_limit, "
        "(SELECT json_extract(data, '$.allowed') FROM events e WHERE e.run_id = r.id "
        " AND e.type = 'budget.shrink' AND e.id > coalesce((SELECT max(id) FROM events "
        " WHERE run_id = r.id AND type = 'budget.set'), 0) "
        " ORDER BY e.id DESC LIMIT 1) AS allowed, "
        "(SELECT count(*) FROM agents a WHERE a.run_id = r.id AND a.status = 'paused' "
        " AND a.doing LIKE '%budget%') AS held, "
        "coalesce(json_extract(r.params, '$.pool'), json_extract(r.params, '$.hosts')) AS pool "
        "FROM runs r WHERE r.status = 'running' ORDER BY r.created_at"
    )
    columns = [c[0] for c in cursor.description]
    runs = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    default_tokens = int(settings["budget.run_tokens"])
    for run in runs:
        run["budget_usd"] = float(run["budget_usd"] or 0)
        limit = run.pop("token_limit")
        run["budget_tokens"] = int(default_tokens if limit is None else limit)
        run["usd_state"] = state(run["usd"], run["budget_usd"])
        run["tokens_state"] = state(run["tokens"], run["budget_tokens"])
    fleet_usd = sum(r["usd"] for r in runs)
    fleet_tokens = sum(r["tokens"] for r in runs)
    today = queries.spent_since(db, start_of_day())
    pools = []
    for key in sorted(k for k in settings if k.startswith("pools.") and k.endswith(".hosts")):
        name = key.split(".")[1]
        usd_limit = float(settings.get(f"pools.{name}.budget_usd") or 0)
        token_limit = int(settings.get(f"pools.{name}.budget_tokens") or 0)
        on = [r for r in runs if r["pool"] == name]
        usd, tokens = sum(r["usd"] for r in on), sum(r["tokens"] for r in on)
        pools.append(
            {
                "name": name,
                "live_runs": len(on),
                "usd": usd,
                "budget_usd": usd_limit,
                "usd_state": state(usd, usd_limit),
                "tokens": tokens,
                "budget_tokens": token_limit,
                "tokens_state": state(tokens, token_limit),
            }
        )
    return {
        "at_limit": settings["budget.at_limit"],
        "warn_at": warn_at,
        "fleet": {
            "live_runs": len(runs),
            "usd": fleet_usd,
            "budget_usd": float(settings["budget.fleet_usd"]),
            "usd_state": state(fleet_usd, float(settings["budget.fleet_usd"])),
            "tokens": fleet_tokens,
            "budget_tokens": int(settings["budget.fleet_tokens"]),
            "tokens_state": state(fleet_tokens, int(settings["budget.fleet_tokens"])),
        },
        "pools": pools,
        "daily": {
            "usd": today,
            "budget_usd": float(settings["budget.daily_usd"]),
            "usd_state": state(today, float(settings["budget.daily_usd"])),
        },
        "runs": runs,
    }
