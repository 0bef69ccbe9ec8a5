"""The engine's room for a person's hand on a running fleet, and recovery after a crash:
pause, stop, restart, resume.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent
from supervisor.events import EventType
from supervisor.status import FINAL
from supervisor.system import owner_alive

if TYPE_CHECKING:
    pass
from supervisor.engine.common import OWNER, RunOptions, cancel_and_wait, sandbox_alive

if TYPE_CHECKING:
    from supervisor.engine import Engine


def agent(engine: Engine, key: str) -> Agent:
    """A live agent by id or name; bad input if there is none."""
    agent = engine.find_agent(key)
    if agent is None:
        from supervisor.errors import InputError

        raise InputError(f"no agent {key!r} in this supervisor (see `supervisor agents ls`)")
    return agent


def running(engine: Engine, agent: Agent) -> bool:
    task = engine.tasks.get(agent.id)
    return task is not None and not task.done()


def message(engine: Engine, key: str, text: str) -> str:
    """Tell an agent something. A waiting question takes it as the answer; a running
    agent reads it before its next step; a finished one is restarted with it. Returns
    what happened, in words."""
    agent = engine.agent(key)
    pending = engine._pending.get(agent.id)
    waiting = pending is not None and not pending.done() and agent.status == "waiting"
    if waiting and engine.answer(agent.id, text):
        return "answered"
    engine.emit(EventType.HUMAN_MESSAGE, agent, {"from": "person"}, text)
    if engine.running(agent):
        agent.inbox.put_nowait(text)
        return "sent"
    engine.restart(agent.id)
    return "restarted"


async def wait_while_paused(engine: Engine, agent: Agent) -> None:
    await engine.sync_step(agent)  # between two steps: the finished one's files kept
    gate = engine._paused.get(agent.id)
    if gate is None:
        return
    agent.set_status("paused", "paused by a person; resume to continue")
    await gate.wait()
    agent.set_status("running", "resumed")


def pause(engine: Engine, key: str) -> None:
    """Hold the agent before its next model call (the current step finishes)."""
    agent = engine.agent(key)
    if not engine.running(agent):
        from supervisor.errors import InputError

        raise InputError(f"agent {agent.name} is not running (it is {agent.status})")
    if agent.id not in engine._paused:
        engine._paused[agent.id] = asyncio.Event()
        engine.emit(EventType.LOG, agent, {"paused": True}, "paused by a person")


def resume(engine: Engine, key: str) -> None:
    agent = engine.agent(key)
    gate = engine._paused.pop(agent.id, None)
    if gate is not None:
        gate.set()
        engine.emit(EventType.LOG, agent, {"paused": False}, "resumed by a person")


async def stop(engine: Engine, key: str) -> None:
    """Stop an agent now; its status becomes ``stopped``."""
    agent = engine.agent(key)
    engine._paused.pop(agent.id, None)
    task = engine.tasks.get(agent.id)
    if task is not None:
        await cancel_and_wait([task])
    await engine._settled(agent)  # its changes are kept before the person hears "stopped"


def keep_sandbox(engine: Engine, key: str) -> None:
    """Keep the agent's sandbox when it ends (for a look inside, or a restart)."""
    agent = engine.agent(key)
    engine.kept.add(agent.id)
    engine.emit(EventType.LOG, agent, {"keep_sandbox": True}, "sandbox will be kept")


def restart(engine: Engine, key: str) -> Agent:
    """Start an ended agent again from its transcript, in its sandbox if that still
    exists (else a fresh one). A running agent is stopped first."""
    agent = engine.agent(key)
    task = engine.tasks.get(agent.id)

    async def go() -> str:
        if task is not None:
            await cancel_and_wait([task])
        return await engine._resume_agent(agent)

    engine.tasks[agent.id] = asyncio.get_running_loop().create_task(go())
    return agent


async def _resume_agent(engine: Engine, agent: Agent) -> str:
    """Run ``agent`` on from its recorded events (see ``messages_from_events``)."""
    from supervisor.agent import messages_from_events

    await engine._settled(agent)  # a sandbox being saved and stopped is not re-adopted midway
    engine.store.flush()
    events = list(engine.store.events(agent_id=agent.id))
    agent.messages = messages_from_events(events)
    agent.summary = ""
    agent.started = time.monotonic()
    engine._reopen_run(agent.run_id)
    pool, options = engine.pools.get(agent.run_id), engine.runs.get(agent.run_id)
    try:
        if options is not None and options.hosts and (pool is None or agent.id not in pool.placed):
            # A restarted agent of a pool: its place and GPUs went when it ended.
            agent.sandbox = engine._new_sandbox(
                agent.run_id, agent.id, options, agent.sandbox.backend, again=True
            )
        agent.set_status("starting", "re-adopting its sandbox")
        if not await engine._reattach(agent):
            await engine._start_sandbox(agent)
            sandbox_id = agent.sandbox.id
            engine.store.write(
                lambda db: db.table("agents").update(agent.id, {"sandbox_id": sandbox_id})
            )
            await engine._recreated(agent)
    except Exception as exc:
        agent.summary = f"sandbox failed to start: {exc}"
        agent.status = "failed"
        engine.agent_finished(agent, "failed")
        return "failed"
    return await agent.run()


async def _reattach(engine: Engine, agent: Agent) -> bool:
    """Point the agent at its existing sandbox (by the id recorded for it)."""
    row = engine._row("agents", agent.id)
    sandbox_id = row.get("sandbox_id")
    if not sandbox_id:
        return False
    if agent.sandbox.id == sandbox_id and await sandbox_alive(agent.sandbox):
        return True
    from supervisor.sandbox.manager import attach, wake

    try:
        found = await asyncio.to_thread(attach, agent.sandbox.backend, sandbox_id)
        found.spec = agent.sandbox.spec
        await asyncio.to_thread(wake, found)  # a stopped agent's sandbox was stopped too
        if not await sandbox_alive(found):
            return False
    except Exception:
        return False
    agent.sandbox = found
    return True


def _reopen_run(engine: Engine, run_id: str) -> None:
    """Mark a run running again, driven by this process (once, however many of its
    agents come back)."""
    done = engine._done.get(run_id)
    if done is not None and not done.is_set():
        return
    engine._done[run_id] = asyncio.Event()
    now = time.time()
    engine.store.write(
        lambda db: db.table("runs").update(
            run_id,
            {"status": "running", "updated_at": now, "finished_at": None, "owner": OWNER},
        )
    )
    engine.emit(EventType.RUN_STATUS, None, {"status": "running"}, run_id=run_id)


async def resume_task_run(engine: Engine, run_id: str) -> list[Agent]:
    """Take up a task run from the store (after the supervisor process died): every
    agent that had not ended continues from its transcript."""
    from supervisor.errors import InputError

    row = engine._row("runs", run_id)
    if not row:
        raise InputError(f"no run {run_id!r}")
    params = json.loads(row.get("params") or "{}")
    options = RunOptions(
        task=row.get("title") or "",
        model=params.get("model", ""),
        workspace=Path(row["workspace"]) if row.get("workspace") else None,
        sandbox=params.get("sandbox", ""),
        agents=int(params.get("agents", 1)),
        network=bool(params.get("network")),
        host=params.get("host", ""),
        hosts=params.get("hosts", ""),
        gpus=int(params.get("gpus") or 0),
    )
    if params.get("pool"):
        engine.run_pools[run_id] = str(params["pool"])
    engine.runs[run_id] = options
    engine.adopt_policy(run_id)
    resumed = []
    for a in engine.store.db.query(
        "SELECT * FROM agents WHERE run_id = ? ORDER BY created_at", [run_id]
    ):
        agent = engine._revive(a, options)
        if a["status"] not in FINAL:
            resumed.append(agent)
    pool = engine.pools.get(run_id)
    for agent in engine.agents.values():
        if pool is not None and agent.run_id == run_id and agent not in resumed:
            pool.release(agent.id)  # an ended agent holds no place on a host
    if resumed:  # at once: a caller's wait_run must not see the run's last ending
        engine._reopen_run(run_id)
    for agent in resumed:
        engine.tasks[agent.id] = asyncio.get_running_loop().create_task(engine._resume_agent(agent))
    if not resumed:
        engine._check_run_done(run_id)
    return resumed


def _revive(engine: Engine, row: dict[str, Any], options: RunOptions) -> Agent:
    """An Agent object for a recorded agent (not started)."""
    backend = row["sandbox"] or engine.settings["sandbox.backend"]
    if row["id"] in engine.agents:
        known = engine.agents[row["id"]]
        if options.hosts and row["status"] == "interrupted":  # its host may be gone: re-placed
            known.sandbox = engine._new_sandbox(row["run_id"], row["id"], options, backend)
        return known
    model = engine.models.registry.resolve(row["model"] or engine.settings["model"])
    agent = Agent(
        engine,
        id=row["id"],
        run_id=row["run_id"],
        name=row["name"],
        task=row["task"] or "",
        model=model,
        sandbox=engine._new_sandbox(row["run_id"], row["id"], options, backend),
        tools=dict(engine.tools),
        limits=engine._limits(options.max_steps),
        policy=engine._policies[row["run_id"]],
        role=row["role"] or "worker",
        parent_id=row["parent_id"],
        scope_key=options.workspace.name if options.workspace else "",
    )
    agent.status = row["status"]
    agent.steps = row.get("steps") or 0
    agent.input_tokens = row.get("input_tokens") or 0
    agent.output_tokens = row.get("output_tokens") or 0
    agent.cost_usd = row.get("cost_usd") or 0.0
    engine.agents[agent.id] = agent
    return agent


def interrupt_orphans(engine: Engine) -> list[dict[str, Any]]:
    """Runs left ``running`` by a process that died: mark them and their unfinished
    agents ``interrupted``; returns the runs' rows. Runs of live processes (another
    ``--foreground`` run) are left alone."""
    engine.store.flush()
    rows = [
        dict(r)
        for r in engine.store.db.query("SELECT * FROM runs WHERE status = 'running'")
        if not owner_alive(r.get("owner"))
    ]
    now = time.time()
    for row in rows:
        run_id = row["id"]

        def mark(db: Any, run_id: str = run_id) -> None:
            db.execute(
                "UPDATE runs SET status = 'interrupted', updated_at = ? WHERE id = ?",
                [now, run_id],
            )
            db.execute(
                "UPDATE agents SET status = 'interrupted', doing = '', updated_at = ? "
                "WHERE run_id = ? AND status NOT IN ('done', 'failed', 'stopped')",
                [now, run_id],
            )

        engine.store.write(mark)
        engine.emit(EventType.RUN_STATUS, None, {"status": "interrupted"}, run_id=run_id)
    engine.store.flush()
    return rows


async def close(engine: Engine, *, interrupt: bool = False) -> None:
    """Stop every agent. With ``interrupt`` (the supervisor process shutting down) the
    runs are recorded ``interrupted`` and the sandboxes kept, so a resume continues them
    where they were; otherwise sandboxes are released."""
    engine.closing = interrupt
    active = {a.run_id for a in engine.agents.values() if engine.running(a)}
    await cancel_and_wait(list(engine.tasks.values()))
    if interrupt:
        now = time.time()
        for run_id in active - engine._managed:  # recipe runs record it themselves

            def mark(db: Any, run_id: str = run_id) -> None:
                db.table("runs").update(run_id, {"status": "interrupted", "updated_at": now})

            engine.store.write(mark)
            engine.emit(EventType.RUN_STATUS, None, {"status": "interrupted"}, run_id=run_id)
    else:
        await asyncio.gather(*list(engine._releasing), return_exceptions=True)
        # Sandboxes kept on purpose (--keep-sandboxes, `k`) or for review (their changes
        # could not be copied out) outlive the engine too.
        await asyncio.gather(
            *(engine._release(a) for a in engine.agents.values() if a.id not in engine.kept),
            return_exceptions=True,
        )
    if engine._pool is not None:
        await engine._pool.close()
    engine.store.flush()
    # on_event observers run on this loop after each commit: let the last ones run.
    for _ in range(3):
        await asyncio.sleep(0)
