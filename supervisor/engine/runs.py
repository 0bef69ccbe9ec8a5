"""The engine's room for runs and agents: create, start, register, finish; teams and
sandboxes.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent, Limits, Policy
from supervisor.events import EventType
from supervisor.fleet import sandbox_host
from supervisor.models import check_usable
from supervisor.sandbox.base import Sandbox, SandboxSpec
from supervisor.status import ENDED, FINAL
from supervisor.types import ModelSpec

if TYPE_CHECKING:
    pass
from supervisor.engine.changes import _later
from supervisor.engine.common import OWNER, RunOptions, _new_id, _slug, cancel_and_wait

if TYPE_CHECKING:
    from supervisor.engine import Engine
    from supervisor.fleet import Placement, Pool
    from supervisor.hosts import Host
    from supervisor.sandbox.gpus import GpuSlots


async def start_run(engine: Engine, options: RunOptions) -> str:
    """Create a run and start its agents; returns the run id."""
    engine.refresh_settings()
    pool = pool_name(engine, options.hosts)  # before --hosts is resolved to host names
    model, backend = engine._check_options(options)
    run_id = await engine.create_run(
        title=options.title or options.task[:200],
        kind="task",
        workspace=options.workspace,
        budget_usd=options.max_cost_usd,
        params={
            "model": model.alias,
            "agents": options.agents,
            "sandbox": backend,
            "network": options.network,
            "host": options.host,
            "hosts": options.hosts,
            "pool": pool,
            "gpus": options.gpus,
        },
        text=options.task,
    )
    if pool:
        engine.run_pools[run_id] = pool
    await engine._start_agents(run_id, options, model, backend)
    return run_id


def _check_options(engine: Engine, options: RunOptions) -> tuple[ModelSpec, str]:
    if options.gpus and not options.hosts:
        from supervisor.errors import InputError

        raise InputError("--gpus gives each agent GPUs of a pool's hosts: add --hosts NAME,...")
    model = engine.models.registry.resolve(options.model or engine.settings["model"])
    check_usable(model)
    backend = options.sandbox or engine.settings["sandbox.backend"]
    if options.host:
        backend = engine._check_host(options)
    if options.hosts:
        backend = _check_pool(engine, options)
    if backend not in engine.backends:
        from supervisor.errors import InputError

        raise InputError(
            f"unknown sandbox backend {backend!r} (have: {', '.join(sorted(engine.backends))})"
        )
    if options.workspace is not None:
        from supervisor.sandbox.workspace import check

        options.workspace = check(options.workspace)
    return model, backend


def _check_host(engine: Engine, options: RunOptions) -> str:
    """``--host NAME``: the host must be registered; its agents use the ssh backend."""
    from supervisor.errors import InputError
    from supervisor.hosts import get_host

    if options.sandbox not in ("", "ssh"):
        raise InputError(f"--host runs agents in ssh sandboxes, not {options.sandbox!r}")
    get_host(options.host, engine.store)
    return "ssh"


def _check_pool(engine: Engine, options: RunOptions) -> str:
    """``--hosts a,b,c|all|POOL``: every host registered, and room for every agent now."""
    from supervisor import fleet
    from supervisor.errors import InputError
    from supervisor.hosts import list_hosts

    if options.host:
        raise InputError("--host and --hosts: give one (--hosts a,b places over several)")
    if options.sandbox not in ("", "ssh"):
        raise InputError(f"--hosts runs agents in ssh sandboxes, not {options.sandbox!r}")
    known = list_hosts(engine.store)
    names = fleet.resolve(options.hosts, [h.name for h in known], _pool_settings(engine))
    options.hosts = ",".join(names)
    pool = _pool(engine, names, known)
    _sync_gpus(engine, pool)
    per = options.gpus
    room = {
        h.name: min(h.cap - len(h.running), len(h.free_gpus()) // per if per else h.cap)
        for h in pool.hosts.values()
        if not h.why_not()
    }
    if options.agents > sum(room.values()):
        shut = {h.name: h.why_not() for h in pool.hosts.values() if h.why_not()}
        gpus = (
            "; free GPUs: "
            + ", ".join(f"{h.name} {len(h.free_gpus())}" for h in pool.hosts.values())
            if per
            else ""
        )
        raise InputError(
            f"--hosts {options.hosts}: {options.agents} agents"
            + (f" with {per} GPU{'s' * (per > 1)} each" if per else "")
            + f" but room for {sum(room.values())} now (hosts.max_sandboxes = "
            f"{engine.settings['hosts.max_sandboxes']}"
            + "".join(f"; {n} {why}" for n, why in sorted(shut.items()))
            + gpus
            + ")"
        )
    return "ssh"


def _sync_gpus(engine: Engine, pool: Pool) -> None:
    """What the pool knows of its hosts' GPUs, with what others hold there now: another
    run's agents, an experiment loop (the engine's GPU slots of each host)."""
    for host in pool.hosts.values():
        slots = engine.host_gpus.get(host.name)
        mine = {i: a for i, a in host.gpu_owner.items() if a in host.running or a[:1] == "("}
        others = {
            int(d): holder
            for d, holder in (slots.holders() if slots else {}).items()
            if holder not in host.running
        }
        host.gpu_owner = {**others, **mine}


def _pool(engine: Engine, names: list[str], known: list[Host] | None = None) -> Pool:
    """The pool of these hosts as the store holds them (facts, cordon state); ``known``
    when the caller has just read them."""
    from supervisor.fleet import HostSlots, Pool
    from supervisor.hosts import list_hosts

    cap = int(engine.settings["hosts.max_sandboxes"])
    hosts = {h.name: h for h in (known if known is not None else list_hosts(engine.store))}
    return Pool(
        HostSlots.from_facts(
            n, hosts[n].facts, cap=cap, cordoned=hosts[n].cordoned, reachable=hosts[n].reachable
        )
        for n in names
    )


def _place(
    engine: Engine, run_id: str, agent_id: str, options: RunOptions, *, again: bool = False
) -> str:
    """Put an agent's sandbox on a host of the run's pool; the choice (or why none could
    take it) is an event in the transcript. ``again``: an ended agent a person restarts."""
    from supervisor.errors import InputError
    from supervisor.fleet import NoRoom
    from supervisor.hosts import list_hosts

    names = options.hosts.split(",")
    pool = engine.pools.get(run_id)
    if pool is None:
        pool = engine.pools[run_id] = _pool(engine, names)
    else:  # a cordon set (or a host found back) since the last placement counts for this one
        for h in list_hosts(engine.store):
            if h.name in pool.hosts:
                slots = pool.hosts[h.name]
                slots.cordoned, slots.reachable = h.cordoned, h.reachable
                if h.reachable and slots.down:
                    slots.down = ""  # lost this run, then checked and found alive
    if agent_id in pool.placed:  # placed before (a resume that failed midway): once only
        _release_place(engine, pool, agent_id)
    # A resumed agent: where its sandbox is (a new agent has no row yet).
    stored = engine._row("agents", agent_id)
    was = sandbox_host(stored.get("sandbox_id"))
    if stored.get("status") in FINAL and not again:  # an ended agent of a resumed run
        return was or names[0]
    if pool.watcher is None or pool.watcher.done():
        pool.watcher = asyncio.get_running_loop().create_task(_watch_pool(engine, run_id))
    _sync_gpus(engine, pool)
    if (
        was in pool.hosts
        and not pool.hosts[was].why_not(staying=True)
        and len(pool.hosts[was].free_gpus()) >= options.gpus
    ):
        claimed = pool.claim(agent_id, was, options.gpus)  # goes on in its sandbox there
        _take_gpus(engine, agent_id, claimed)
        return was
    try:
        placed = pool.place(agent_id, gpus=options.gpus)
    except NoRoom as exc:
        engine.emit(
            EventType.PLACEMENT,
            None,
            {"phase": "refused", "agent_id": agent_id, "reasons": exc.reasons},
            str(exc),
            run_id=run_id,
        )
        raise InputError(str(exc)) from None
    _take_gpus(engine, agent_id, placed)
    pool.unsaid.add(agent_id)
    if was and was != placed.host:
        # Moved off a host the run gave up on (lost, cordoned, full): a resume must not
        # re-adopt the sandbox left there, which would run the agent on one host while
        # the pool counts it on another. Its last step's workspace copy goes with it.
        pool.moved[agent_id] = (was, str(stored["sandbox_id"]))
        engine.store.write(lambda db: db.table("agents").update(agent_id, {"sandbox_id": None}))
    return placed.host


POOL_WATCH_S = 2.0  # how often the hosts running a pool's agents are asked if they live
LOAD_EVERY = 5  # of those rounds: each host's load average is read every ~10 s


async def _watch_pool(engine: Engine, run_id: str) -> None:
    """Find a host of the pool that died under its agents: they become ``interrupted``
    with the reason, and the host takes no more placements this run (``resume``
    re-places them on live hosts). Ends when no agent of the pool runs."""
    from supervisor.sandbox.ssh import host_down

    pool = engine.pools[run_id]
    await asyncio.sleep(POOL_WATCH_S)
    rounds = 0
    while engine.pools.get(run_id) is pool and any(h.running for h in pool.hosts.values()):
        for host in [h for h in pool.hosts.values() if h.running and not h.down]:
            why = await host_down(host.name)
            if why:
                await _host_lost(engine, run_id, host.name, why)
            elif rounds % LOAD_EVERY == 0:
                await _sample_load(engine, host.name)
        rounds += 1
        await asyncio.sleep(POOL_WATCH_S)


async def _sample_load(engine: Engine, name: str) -> None:
    """Read the host's 1-minute load average over the connection its sandboxes share
    (one short command), into its facts: the hosts view shows it beside its cores. A
    host that does not answer at once is skipped: the next round asks again."""
    from supervisor.sandbox.ssh import HostLink

    link = HostLink._links.get(asyncio.get_running_loop(), {}).get(name)
    if link is None or not link.connected:
        return
    try:
        result = await asyncio.wait_for(link.run("cat /proc/loadavg", timeout=5), 6)
        load = float(str(result.stdout).split()[0])
    except Exception:  # a slow or odd answer: no figure rather than a made-up one
        return
    now = time.time()
    engine.store.write(
        lambda db: db.execute(
            "UPDATE hosts SET facts = json_set(coalesce(facts, '{}'), '$.load1', ?, "
            "'$.load_at', ?) WHERE name = ?",
            [load, now, name],
        )
    )


def _record_unreachable(engine: Engine, name: str, why: str) -> None:
    """`hosts ls` says the host is unreachable too, until `hosts check` finds it back."""
    from supervisor.hosts import find_host, save_host

    recorded = find_host(name, engine.store)
    if recorded is not None:
        recorded.reachable, recorded.error = False, why
        save_host(recorded, engine.store)


async def _host_lost(engine: Engine, run_id: str, name: str, why: str) -> None:
    pool = engine.pools[run_id]
    host = pool.hosts[name]
    host.down = why
    reason = f"host {name} was lost ({why}); `supervisor resume {run_id}` moves it to a live host"
    _record_unreachable(engine, name, why)
    lost = [engine.agents[a] for a in sorted(host.running) if a in engine.agents]
    for agent in lost:
        pool.lost[agent.id] = reason
    await cancel_and_wait([engine.tasks[a.id] for a in lost if a.id in engine.tasks])
    for agent in lost:
        if agent.status not in ENDED:
            # Cancelled before its own run could end it (still starting its sandbox, or
            # waiting to be admitted): ended here, or the run would wait for it forever.
            engine.agent_finished(agent, "stopped")


async def sync_step(engine: Engine, agent: Agent) -> None:
    """After each finished step of an agent on a pool's host, keep a copy of its
    workspace here, so a host lost under it costs at most one step."""
    pool = engine.pools.get(agent.run_id)
    if pool is None or agent.id not in pool.placed or not agent.steps:
        return
    start = time.perf_counter()
    if await engine.save_changes(agent, each_step=True):
        pool.sync_s.append(time.perf_counter() - start)


async def create_run(
    engine: Engine,
    *,
    title: str,
    kind: str = "task",
    recipe: str | None = None,
    workspace: Path | None = None,
    budget_usd: float = 0.0,
    params: dict[str, Any] | None = None,
    text: str = "",
    managed: bool = False,
) -> str:
    """A new run row. ``managed`` runs (recipes) are finished by their owner, not when
    their agents are."""
    engine.refresh_settings()
    run_id = _new_id("run")
    engine.adopt_policy(run_id)
    engine._done[run_id] = asyncio.Event()
    if managed or kind == "recipe":
        engine._managed.add(run_id)
    now = time.time()
    row = {
        "id": run_id,
        "title": title,
        "kind": kind,
        "recipe": recipe,
        "workspace": str(workspace or ""),
        "status": "running",
        "created_at": now,
        "updated_at": now,
        "budget_usd": budget_usd or engine.settings["budget.run_usd"] or None,
        "params": json.dumps(params or {}, default=str),
        "owner": OWNER,
    }
    engine.store.write(lambda db: db.table("runs").insert(engine.redactor.value(row)))
    engine._limits_usd[run_id] = float(row["budget_usd"] or 0.0)
    engine.emit(
        EventType.RUN_CREATED,
        None,
        {"title": title, "kind": kind},
        text or title,
        run_id=run_id,
    )
    return run_id


def adopt_policy(engine: Engine, run_id: str) -> None:
    engine._policies.setdefault(
        run_id,
        Policy(ask=list(engine.settings["policy.ask"]), deny=list(engine.settings["policy.deny"])),
    )


async def adopt_run(engine: Engine, run_id: str) -> None:
    """Take up an existing run again (``recipe resume``) in this engine."""
    engine.adopt_policy(run_id)
    engine._managed.add(run_id)
    engine._reopen_run(run_id)


async def _start_agents(
    engine: Engine, run_id: str, options: RunOptions, model: ModelSpec, backend: str
) -> list[Agent]:
    engine.runs[run_id] = options
    started = []
    for i in range(options.agents):
        base = options.title or "agent"
        name = base if options.agents == 1 else f"{base}-{i + 1}"
        started.append(
            await engine._start_agent(run_id, options.task, name, model, backend, parent=None)
        )
    return started


async def run_agents(engine: Engine, run_id: str, options: RunOptions) -> list[str]:
    """Start agents in an existing run and wait for them; their final statuses."""
    model, backend = engine._check_options(options)
    agents = await engine._start_agents(run_id, options, model, backend)
    await asyncio.gather(*(engine.tasks[a.id] for a in agents), return_exceptions=True)
    return [a.status for a in agents]


def finish_run(engine: Engine, run_id: str, status: str) -> None:
    now = time.time()
    engine.store.write(
        lambda db: db.table("runs").update(
            run_id, {"status": status, "finished_at": now, "updated_at": now}
        )
    )
    engine.emit(EventType.RUN_STATUS, None, {"status": status}, run_id=run_id)
    engine._done.setdefault(run_id, asyncio.Event()).set()


async def run_in_sandbox(
    engine: Engine,
    run_id: str,
    task: str,
    sandbox: Sandbox,
    *,
    name: str,
    model: str | None = None,
    exclude_tools: tuple[str, ...] = (),
    max_steps: int = 0,
) -> Agent:
    """Run one agent in a sandbox someone else owns (a recipe step's), until it
    finishes; the sandbox is left as it is."""
    spec = engine.models.registry.resolve(model or engine.settings["model"])
    check_usable(spec)
    engine.adopt_policy(run_id)
    agent = Agent(
        engine,
        id=_new_id(_slug(name)),
        run_id=run_id,
        name=name,
        task=task,
        model=spec,
        sandbox=sandbox,
        tools={n: t for n, t in engine.tools.items() if n not in exclude_tools},
        limits=engine._limits(max_steps),
        policy=engine._policies[run_id],
        role="worker",
        scope_key=sandbox.spec.labels.get("scope", ""),
    )
    agent.owns_sandbox = False
    engine._register(agent, sandbox.backend, sandbox_id=sandbox.id)
    task_handle = asyncio.get_running_loop().create_task(agent.run())
    engine.tasks[agent.id] = task_handle
    await asyncio.gather(task_handle, return_exceptions=True)
    return agent


async def spawn(
    engine: Engine,
    parent: Agent,
    task: str,
    *,
    name: str | None = None,
    model: str | None = None,
    sandbox: str | None = None,
) -> Agent:
    engine._check_team(parent)
    from supervisor.errors import InputError

    with contextlib.suppress(InputError):  # bad settings: the worker starts on the old
        engine.refresh_settings()
    spec = engine.models.registry.resolve(model) if model else parent.model
    check_usable(spec)
    count = len(engine.children(parent)) + 1
    return await engine._start_agent(
        parent.run_id,
        task,
        name or f"{parent.name}.{count}",
        spec,
        sandbox or parent.sandbox.backend,
        parent=parent,
    )


def _check_team(engine: Engine, parent: Agent) -> None:
    """Refuse a worker beyond the run's bounds (team.max_depth, team.max_agents), or
    in a run being stopped: workers that start workers must not grow without end."""
    from supervisor.errors import InputError

    if parent.run_id in engine._stopping:
        raise InputError("the run is being stopped; no new agents start in it")
    depth, up = 1, engine.agents.get(parent.parent_id or "")
    while up is not None:
        depth, up = depth + 1, engine.agents.get(up.parent_id or "")
    max_depth = int(engine.settings.get("team.max_depth", 2))
    if depth > max_depth:
        raise InputError(
            f"team depth limit reached (team.max_depth = {max_depth}): "
            "do this part yourself or hand it back to your lead"
        )
    spawned = sum(1 for a in engine.agents.values() if a.run_id == parent.run_id and a.parent_id)
    max_agents = int(engine.settings.get("team.max_agents", 16))
    if spawned >= max_agents:
        raise InputError(
            f"team size limit reached ({spawned} agents started by agents in this run; "
            f"team.max_agents = {max_agents}): use the agents you have"
        )


async def _start_agent(
    engine: Engine,
    run_id: str,
    task: str,
    name: str,
    model: ModelSpec,
    backend: str,
    parent: Agent | None,
) -> Agent:
    options = engine.runs[run_id]
    agent_id = _new_id(_slug(name))
    sandbox = engine._new_sandbox(run_id, agent_id, options, backend)
    limits = engine._limits(options.max_steps)
    agent = Agent(
        engine,
        id=agent_id,
        run_id=run_id,
        name=name,
        task=task,
        model=model,
        sandbox=sandbox,
        tools=dict(engine.tools),
        limits=limits,
        policy=engine._policies[run_id],
        role="lead" if parent is None and options.agents == 1 else "worker",
        parent_id=parent.id if parent else None,
        scope_key=options.workspace.name if options.workspace else "",
    )
    engine._register(agent, backend)
    engine.tasks[agent_id] = asyncio.get_running_loop().create_task(engine._run_agent(agent))
    return agent


def _take_gpus(engine: Engine, agent_id: str, placed: Placement) -> None:
    """The placement's GPUs, held by the agent in the engine's slots of its host, so
    experiments and other runs wait for them until it ends."""
    if placed.gpus:
        engine.host_gpu_slots(placed.host).take(agent_id, [str(i) for i in placed.gpus])


def _release_place(engine: Engine, pool: Pool, agent_id: str, *, failed: bool = False) -> None:
    """The agent's place in the pool, and its GPUs in the engine's slots, free now."""
    placed = pool.placed.get(agent_id)
    pool.release(agent_id, failed=failed)
    slots = engine.host_gpus.get(placed.host) if placed and placed.gpus else None
    if slots is not None and slots.drop(agent_id):
        _later(engine, slots.notify())  # an experiment may be waiting for them


def _new_sandbox(
    engine: Engine,
    run_id: str,
    agent_id: str,
    options: RunOptions,
    backend: str,
    *,
    again: bool = False,
) -> Sandbox:
    """A sandbox object (not started) for an agent of a run, from the settings."""
    pool, host, gpus = None, options.host, None
    if options.hosts:
        host = _place(engine, run_id, agent_id, options, again=again)
        pool = engine.pools[run_id]
        placed = pool.placed.get(agent_id)
        gpus = [str(i) for i in placed.gpus] if placed else None
    try:
        return engine._make_sandbox(
            run_id,
            agent_id,
            backend,
            workspace=options.workspace,
            network=options.network,
            gpus=gpus,
            host=host,
        )
    except BaseException:
        if pool is not None:  # no sandbox: its place and GPUs go back
            _release_place(engine, pool, agent_id)
        raise


def step_sandbox(
    engine: Engine,
    run_id: str,
    name: str,
    *,
    workspace: Path | None = None,
    network: bool = False,
    gpus: list[str] | None = None,
    labels: dict[str, str] | None = None,
    backend: str = "",
    image: str = "",
    host: str = "",
) -> Sandbox:
    """A sandbox (not started) for a recipe step, from the person's settings; on
    registered host ``host`` when one is named."""
    if host:
        from supervisor.errors import InputError
        from supervisor.hosts import get_host

        if backend not in ("", "ssh"):
            raise InputError(f"a sandbox on host {host} is an ssh sandbox, not {backend!r}")
        backend = "ssh"
        get_host(host, engine.store)
    backend = backend or engine.settings["sandbox.backend"]
    if backend not in engine.backends:
        from supervisor.errors import InputError

        raise InputError(
            f"unknown sandbox backend {backend!r} (have: {', '.join(sorted(engine.backends))})"
        )
    return engine._make_sandbox(
        run_id,
        f"{_slug(name)}-{secrets.token_hex(2)}",
        backend,
        workspace=workspace,
        network=network,
        gpus=gpus,
        labels=labels,
        image=image,
        host=host,
    )


def named_hosts(engine: Engine, spec: str) -> list[Host]:
    """The registered hosts ``spec`` names (``a,b,c``, ``all`` or a pool from the
    settings), in that order: what ``--hosts`` and a step's ``ctx.hosts`` read."""
    from supervisor import fleet
    from supervisor.hosts import list_hosts

    known = {h.name: h for h in list_hosts(engine.store)}
    return [known[n] for n in fleet.resolve(spec, list(known), _pool_settings(engine))]


def _pool_settings(engine: Engine) -> dict[str, list[str]]:
    """``pools.NAME.hosts`` of the settings, by pool name."""
    return {
        key.split(".")[1]: list(value)
        for key, value in engine.settings.items()
        if key.startswith("pools.") and key.endswith(".hosts")
    }


def pool_name(engine: Engine, spec: str) -> str:
    """The pool ``spec`` names (a ``--hosts`` or ``-p hosts=`` value), or "": a name that
    is a pool's and no host's, as :func:`supervisor.fleet.resolve` reads it. Runs on a pool
    count against its budget (``pools.NAME.budget_usd``)."""
    from supervisor.hosts import find_host

    spec = spec.strip()
    if not spec or spec not in _pool_settings(engine):
        return ""
    return "" if find_host(spec, engine.store) is not None else spec


def host_gpu_slots(engine: Engine, name: str) -> GpuSlots:
    """One :class:`GpuSlots` per registered host for the engine's life, its devices the
    GPU indices of the host's last check."""
    from supervisor.hosts import get_host
    from supervisor.sandbox.gpus import GpuSlots

    slots = engine.host_gpus.get(name)
    if slots is None:
        gpus = get_host(name, engine.store).facts.get("gpus") or []
        slots = engine.host_gpus[name] = GpuSlots(
            [str(g["index"]) for g in gpus if g.get("index") is not None]
        )
    return slots


def _make_sandbox(
    engine: Engine,
    run_id: str,
    agent_id: str,
    backend: str,
    *,
    workspace: Path | None,
    network: bool,
    gpus: list[str] | None = None,
    labels: dict[str, str] | None = None,
    image: str = "",
    host: str = "",
) -> Sandbox:
    """The one place a sandbox is made from the person's settings: limits, image,
    environment allow-list, network grants; refused early if its backend cannot give
    what the spec asks."""
    from supervisor.sandbox.manager import check_spec

    spec = SandboxSpec(
        run_id=run_id,
        agent_id=agent_id,
        workspace=workspace,
        network=network,
        network_host=engine.settings.get("sandbox.network_host", False),
        gpus=list(gpus or []),
        memory=engine.settings["sandbox.memory"],
        cpus=engine.settings["sandbox.cpus"],
        pids=engine.settings["sandbox.pids"],
        image=image or engine.settings["sandbox.image"],
        env=engine._sandbox_env(),
        labels={**(labels or {}), **({"supervisor.host": host} if host else {})},
        host=host,
    )
    check_spec(engine.backends[backend], spec)
    sandbox: Sandbox = engine.backends[backend].factory(
        spec, **engine.sandbox_kwargs.get(backend, {})
    )
    return sandbox


def _limits(engine: Engine, max_steps: int = 0) -> Limits:
    return Limits(
        max_steps=max_steps or engine.settings["agent.max_steps"],
        max_tokens=engine.settings["agent.max_tokens"],
        max_cost_usd=engine.settings["budget.agent_usd"],
        max_wall_s=engine.settings["agent.max_wall_s"],
    )


def _register(engine: Engine, agent: Agent, backend: str, sandbox_id: str = "") -> None:
    """Make an agent known: in memory, as a row, and as an event."""
    engine.agents[agent.id] = agent
    now = time.time()
    row = {
        "id": agent.id,
        "run_id": agent.run_id,
        "parent_id": agent.parent_id,
        "name": agent.name,
        "role": agent.role,
        "task": agent.task,
        "model": agent.model.alias,
        "sandbox": backend,
        "sandbox_id": sandbox_id or None,
        "status": "starting",
        "created_at": now,
        "updated_at": now,
    }
    engine.store.write(lambda db: db.table("agents").insert(engine.redactor.value(row)))
    data = {
        "name": agent.name,
        "parent_id": agent.parent_id,
        "model": agent.model.alias,
        "sandbox": backend,
        "host": agent.sandbox.spec.host,  # where it runs: the TUI's host column
    }
    engine.emit(EventType.AGENT_CREATED, agent, data, agent.task)


def _said_placed(engine: Engine, agent: Agent) -> None:
    """The placement, in the agent's own transcript (it had no id when it was placed),
    once; a move off a lost host is said with it."""
    pool = engine.pools.get(agent.run_id)
    placed = pool.placed.get(agent.id) if pool else None
    if pool is None or placed is None or agent.id not in pool.unsaid:
        return
    pool.unsaid.discard(agent.id)
    host = pool.hosts[placed.host]
    old, left = pool.moved.pop(agent.id, ("", ""))
    engine.emit(
        EventType.PLACEMENT,
        agent,
        {
            "phase": "placed",
            "host": placed.host,
            "gpus": list(placed.gpus),
            "compared": list(placed.compared),
            **({"moved_from": old, "left_sandbox": left} if old else {}),
        },
        f"placed on host {placed.host} ({len(host.running)}/{host.cap} sandboxes there"
        + (f", GPU {','.join(map(str, placed.gpus))}" if placed.gpus else "")
        + f"; compared {', '.join(placed.compared)})"
        + (
            f"; moved from host {old} "
            f"({pool.hosts[old].why_not() if old in pool.hosts else 'not in the pool'}): "
            f"its sandbox there is left as it was ({left})"
            if old
            else ""
        ),
    )


async def _run_agent(engine: Engine, agent: Agent) -> str:
    _said_placed(engine, agent)
    if not await engine.admit(agent):  # a spent budget holds new agents back
        return str(agent.status)
    try:
        agent.set_status("starting", "starting its sandbox")
        await engine._start_sandbox(agent)
        sandbox_id = agent.sandbox.id
        engine.store.write(
            lambda db: db.table("agents").update(agent.id, {"sandbox_id": sandbox_id})
        )
    except Exception as exc:
        agent.summary = f"sandbox failed to start: {exc}"
        agent.status = "failed"
        engine.agent_finished(agent, "failed")
        return "failed"
    note = agent.sandbox.describe().get("note")
    if note:  # where the agent works and how isolated, said plainly (remote hosts)
        agent.set_status("starting", f"working {note}")
    return await agent.run()


async def _leave_dead_host(engine: Engine, agent: Agent) -> None:
    """A resumed agent counted again on its old host, whose sandbox there could not be
    re-adopted: if that host is dead (it died while no supervisor watched it), the agent
    is placed on a live host of the pool instead of failing to start on the dead one."""
    pool = engine.pools.get(agent.run_id)
    options = engine.runs.get(agent.run_id)
    if pool is None or options is None or agent.id not in pool.claimed:
        return
    name = pool.where(agent.id)
    host = pool.hosts[name]
    pool.claimed.discard(agent.id)
    if not host.down:
        from supervisor.sandbox.ssh import host_down

        host.down = await host_down(name)
        if not host.down:
            return  # alive: its sandbox is made again there
        _record_unreachable(engine, name, host.down)
    _release_place(engine, pool, agent.id)
    agent.sandbox = engine._new_sandbox(agent.run_id, agent.id, options, agent.sandbox.backend)


async def _start_sandbox(engine: Engine, agent: Agent) -> None:
    """Start the agent's sandbox; a failed start is tried once more, and said so."""
    from supervisor.sandbox.manager import start_sandbox

    def retrying(why: str) -> None:
        engine.emit(
            EventType.LOG,
            agent,
            {"sandbox_retry": why},
            f"sandbox start failed, trying once more: {why}",
        )

    await _leave_dead_host(engine, agent)
    _said_placed(engine, agent)  # a resumed agent placed anew says where, before it starts
    if engine._pool is None:
        from supervisor.sandbox.manager import warm_pool

        engine._pool = warm_pool(engine.settings, engine.sandbox_kwargs)
    if engine._pool is not None and agent.sandbox.backend == engine._pool.backend:
        warm = await engine._pool.take(agent.sandbox.spec)  # refills in the background
        if warm is not None:
            agent.sandbox = warm
            engine.emit(EventType.LOG, agent, {"warm_sandbox": warm.name}, "warm sandbox")
            return
    await start_sandbox(agent.sandbox, on_retry=retrying)


def _sandbox_env(engine: Engine) -> dict[str, str]:

    return {k: os.environ[k] for k in engine.settings["sandbox.env_allow"] if k in os.environ}


def agent_status(engine: Engine, agent: Agent, status: str, doing: str) -> None:
    values = {
        "status": status,
        "doing": engine.redactor.text(doing)[:200],
        "steps": agent.steps,
        "updated_at": time.time(),
    }
    engine.store.write(lambda db: db.table("agents").update(agent.id, values))
    engine.emit(EventType.AGENT_STATUS, agent, {"status": status, "doing": doing})


def agent_finished(engine: Engine, agent: Agent, status: str) -> None:
    pool = engine.pools.get(agent.run_id)
    host_lost = pool is not None and status == "stopped" and agent.id in pool.lost
    if pool is not None and host_lost:
        status = agent.status = "interrupted"  # its host died; resume goes on elsewhere
        agent.summary = pool.lost.pop(agent.id)
    if engine.closing and status == "stopped":
        # The process is going away under the agent, not a person stopping it: it
        # continues when its run is resumed.
        status = agent.status = "interrupted"
    now = time.time()
    values = {
        "status": status,
        "summary": engine.redactor.text(agent.summary),
        "steps": agent.steps,
        "finished_at": now,
        "updated_at": now,
        "doing": "",
    }
    engine.store.write(lambda db: db.table("agents").update(agent.id, values))
    engine.emit(
        EventType.AGENT_STATUS,
        agent,
        {"status": status, "summary": agent.summary},
        agent.summary,
    )
    if pool is not None:  # its slot frees for the next agent placed
        _release_place(engine, pool, agent.id, failed=status in ("failed", "interrupted"))
        if not any(h.running for h in pool.hosts.values()) and pool.watcher is not None:
            pool.watcher.cancel()
    options = engine.runs.get(agent.run_id)
    if host_lost and agent.owns_sandbox:
        # Its sandbox cannot be read on a dead host (asking would only delay the run's
        # end, and so its resume): it stays there as it was; the copy kept after its
        # last finished step is what a resume puts back.
        engine.kept.add(agent.id)
        engine.emit(
            EventType.LOG,
            agent,
            {"sandbox_kept": True, "host_lost": True},
            "its sandbox stays on the lost host as it was; a resume starts from the copy of "
            "its workspace kept after its last finished step",
        )
    elif agent.owns_sandbox and options is not None and not engine.closing:
        engine._wrap_up_later(agent, keep=agent.id in engine.kept or options.keep_sandboxes)
    engine._check_run_done(agent.run_id)


async def _release(engine: Engine, agent: Agent) -> None:
    with contextlib.suppress(Exception):
        await agent.sandbox.destroy()


def _check_run_done(engine: Engine, run_id: str) -> None:
    if run_id in engine._managed or engine.closing:
        return
    members = [a for a in engine.agents.values() if a.run_id == run_id]
    if any(a.status not in ENDED for a in members):
        return
    saving = [t for a in members if (t := engine._wrapups.get(a.id)) is not None and not t.done()]
    if saving:
        # The run ends once its agents' changes are kept: whoever reads "run done" (a
        # person, `wait_run`, a late subscriber) finds every change saved, and no event of
        # the run follows its end.
        _later(engine, _done_after(engine, run_id, saving))
        return
    status = (
        "interrupted"  # a pool's host was lost under some: `resume` goes on
        if any(a.status == "interrupted" for a in members)
        else "done"
        if all(a.status == "done" for a in members)
        else "failed"
        if any(a.status == "failed" for a in members)
        else "stopped"
    )
    finish_run(engine, run_id, status)  # also a run taken up again


async def _done_after(engine: Engine, run_id: str, saving: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*saving, return_exceptions=True)
    engine._check_run_done(run_id)  # again: an agent may have been restarted meanwhile


async def wait_run(engine: Engine, run_id: str) -> str:
    await engine._done[run_id].wait()
    # Sandboxes are released in the background; let them go before the caller exits.
    if engine._releasing:
        await asyncio.gather(*engine._releasing, return_exceptions=True)
    row = engine.store.db.table("runs").get(run_id) if engine.store.flush(10) else {}
    return str(row.get("status", "done"))


async def stop_run(engine: Engine, run_id: str) -> None:
    """Stop every agent of the run, those started while it stops included."""
    engine._stopping.add(run_id)
    try:
        while live := [
            t for a, t in engine.tasks.items() if engine.agents[a].run_id == run_id and not t.done()
        ]:
            await cancel_and_wait(live)
    finally:
        engine._stopping.discard(run_id)
    # An agent whose task ended before it could say so (cancelled while starting) is
    # stopped too: nothing of a stopped run stays "starting" or "running".
    for agent in [a for a in engine.agents.values() if a.run_id == run_id]:
        if agent.status not in ENDED:
            agent.status = "stopped"
            engine.agent_finished(agent, "stopped")


def children(engine: Engine, lead: Agent) -> list[Agent]:
    return [a for a in engine.agents.values() if a.parent_id == lead.id]


def find_agent(engine: Engine, key: str) -> Agent | None:
    """A live agent by id, or by a name no other live agent has (else bad input)."""
    if key in engine.agents:
        return engine.agents[key]
    named = [a for a in engine.agents.values() if a.name == key]
    if len(named) > 1:
        from supervisor.errors import InputError

        ids = ", ".join(f"{a.id} (run {a.run_id})" for a in named[:8])
        raise InputError(f"{len(named)} agents are named {key!r}; name one by its id: {ids}")
    return named[0] if named else None


async def wait_agents(
    engine: Engine, waiter: Agent, team: list[Agent], timeout: float
) -> list[Agent]:
    waiter.set_status("running", f"waiting for {len(team)} agents")
    tasks = [engine.tasks[a.id] for a in team]
    await asyncio.wait(tasks, timeout=timeout)
    return team


def _row(engine: Engine, table: str, key: str) -> dict[str, Any]:
    rows = list(engine.store.db.query(f"SELECT * FROM {table} WHERE id = ?", [key]))
    return dict(rows[0]) if rows else {}
