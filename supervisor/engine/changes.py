"""The engine's room for an agent's work kept when it ends, and put back when its sandbox
is lost.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent
from supervisor.events import EventType

if TYPE_CHECKING:
    pass
from supervisor.engine.common import sandbox_alive

if TYPE_CHECKING:
    from supervisor.engine import Engine


def _later(engine: Engine, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``work`` in the background; closing the engine waits for it."""
    task = asyncio.get_running_loop().create_task(work)
    engine._releasing.add(task)
    task.add_done_callback(engine._releasing.discard)
    return task


def _wrap_up_later(engine: Engine, agent: Agent, *, keep: bool) -> None:
    engine._wrapups[agent.id] = _later(engine, engine._wrap_up(agent, keep=keep))


async def _settled(engine: Engine, agent: Agent) -> None:
    """Wait until the agent's last ending is wrapped up (changes saved, sandbox handled)."""
    task = engine._wrapups.get(agent.id)
    if task is not None and task is not asyncio.current_task():
        await asyncio.gather(task, return_exceptions=True)


async def _wrap_up(engine: Engine, agent: Agent, *, keep: bool) -> None:
    """Keep a copy of the agent's changes, then remove its sandbox — or, for a stopped
    agent, stop it with its files, so a restart picks it up again. A sandbox whose
    changes could not be copied is kept for review."""
    if not await engine.save_changes(agent) or keep:
        engine.kept.add(agent.id)  # closing the engine must not remove it either
        return
    if agent.status == "stopped":
        with contextlib.suppress(Exception):
            await agent.sandbox.stop()
        return
    await engine._release(agent)


async def save_changes(engine: Engine, agent: Agent, *, each_step: bool = False) -> bool:
    """Copy what the agent changed into the data directory (an ``artifacts`` row of
    kind ``diff``), so it can be reviewed and applied after its sandbox is gone.
    False, with an event saying why, when the sandbox could not be read. ``each_step``:
    the routine copy after a step of an agent on a pool's host, said only if it fails."""
    from supervisor.sandbox import workspace

    if not await sandbox_alive(agent.sandbox):
        if agent.steps:
            engine.emit(
                EventType.LOG,
                agent,
                {"changes_saved": False, "error": "the sandbox does not answer"},
                "no copy of the agent's changes could be kept: its sandbox does not "
                "answer; the sandbox is kept (`supervisor sandbox prune` saves or removes it)",
            )
        return False
    folder = workspace.changes_folder(engine.data_dir, agent.run_id)
    try:
        changes = await workspace.save_changes(agent.sandbox, folder, agent.id)
    except Exception as exc:
        engine.emit(
            EventType.LOG,
            agent,
            {"changes_saved": False, "error": str(exc)},
            f"no copy of the agent's changes could be kept ({exc}); its sandbox is kept",
        )
        return False
    row = workspace.changes_row(agent.run_id, agent.id, changes)

    def write(db: Any) -> None:
        db.execute(
            "DELETE FROM artifacts WHERE agent_id = ? AND kind = 'diff' AND name = 'changes'",
            [agent.id],
        )
        db.table("artifacts").insert(row)

    engine.store.write(write)
    if each_step:
        return True
    engine.emit(
        EventType.ARTIFACT,
        agent,
        {"kind": "diff", "name": "changes", "path": str(changes.diff), "empty": changes.empty},
        "no changes" if changes.empty else f"changes kept for review: {changes.diff}",
    )
    return True


async def _recreated(engine: Engine, agent: Agent) -> None:
    """A fresh sandbox replaced one that was lost: put back the changes kept when the
    agent last ended, and tell the agent and the person what happened."""
    from supervisor.sandbox import workspace

    saved = workspace.saved_changes(engine.store.db, agent.id)
    restored, why = False, ""
    if saved is not None and not saved.empty:
        try:
            await workspace.restore(agent.sandbox, saved)
            restored = True
        except Exception as exc:
            why = f" (putting back the kept copy failed: {exc})"
    if restored:
        note = (
            "Note: your sandbox was lost and has been recreated from the workspace. The "
            "changes you had made were put back from the copy kept when you last stopped "
            "(as uncommitted changes); processes and files outside the workspace are gone."
        )
    else:
        note = (
            "Note: your sandbox was lost and has been recreated from the workspace; "
            f"files you made before are gone{why}."
        )
    engine.emit(EventType.LOG, agent, {"sandbox": "recreated", "restored": restored}, note)
    agent.messages.append({"role": "user", "content": note})
