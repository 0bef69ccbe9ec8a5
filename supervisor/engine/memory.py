"""The engine's room for memory notes and artifacts.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent
from supervisor.events import EventType

if TYPE_CHECKING:
    pass
from supervisor.engine.common import _slug

if TYPE_CHECKING:
    from supervisor.engine import Engine


async def add_note(engine: Engine, body: str, scope: str, key: str) -> int:
    """A person adds a memory note (redacted like everything else)."""
    from supervisor.errors import InputError

    if not body.strip():
        raise InputError("the note is empty")
    if scope not in ("global", "project", "host", "recipe"):
        raise InputError(f"scope must be global, project, host or recipe, not {scope!r}")
    return await engine.remember(None, body, scope, scope_key=key)


async def remember(
    engine: Engine,
    agent: Agent | None,
    body: str,
    scope: str,
    *,
    scope_key: str | None = None,
    run_id: str | None = None,
) -> int:
    """Save a memory note (redacted) for an agent, or for a run's step (no agent)."""
    own_key = agent.scope_key if agent is not None else (scope_key or "")
    key = {"project": own_key, "global": ""}.get(scope, own_key)
    row = {
        "scope": scope,
        "scope_key": key,
        "body": engine.redactor.text(body),
        "run_id": agent.run_id if agent is not None else run_id,
        "agent_id": agent.id if agent is not None else None,
        "created_at": time.time(),
    }
    note_id = await asyncio.wrap_future(
        engine.store.write(lambda db: db.table("notes").insert(row).last_pk)
    )
    engine.emit(
        EventType.NOTE_WRITTEN, agent, {"note_id": note_id, "scope": scope}, body, run_id=run_id
    )
    return int(note_id)


async def forget(engine: Engine, agent: Agent | None, note_id: int, *, by: str = "agent") -> bool:
    def delete(db: Any) -> bool:
        cursor = db.execute("DELETE FROM notes WHERE id = ?", [note_id])
        return bool(cursor.rowcount)

    removed = bool(await asyncio.wrap_future(engine.store.write(delete)))
    if removed:
        engine.emit(
            EventType.NOTE_REMOVED, agent, {"note_id": note_id, "by": by}, f"note {note_id}"
        )
    return removed


def recall(engine: Engine, query: str, scope_key: str, limit: int = 5) -> list[dict[str, Any]]:
    """Notes most relevant to ``query``: global ones and this project's."""
    words = [w for w in re.findall(r"[A-Za-z0-9_]{3,}", query.lower())][:40]
    if not words:
        return []
    # No flush: notes are committed before `remember` returns, so reading here never
    # waits on the writer (this runs at every agent's start).
    match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
    sql = (
        "SELECT notes.id, notes.scope, notes.body FROM notes JOIN notes_fts "
        "ON notes.id = notes_fts.rowid WHERE notes_fts MATCH ? AND "
        "(notes.scope = 'global' OR notes.scope_key = ?) ORDER BY rank LIMIT ?"
    )
    return [dict(r) for r in engine.store.db.query(sql, [match, scope_key, limit])]


def save_artifact(engine: Engine, agent: Agent, kind: str, name: str, text: str) -> Path:
    folder = engine.data_dir / "runs" / agent.run_id / f"{kind}s"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{agent.name}-{_slug(name)}"
    clean = engine.redactor.text(text)
    path.write_text(clean)
    row = {
        "run_id": agent.run_id,
        "agent_id": agent.id,
        "kind": kind,
        "name": name,
        "path": str(path),
        "mime": "text/markdown" if kind == "report" else "text/plain",
        "size": len(clean.encode()),
        "content": clean if len(clean) < 100_000 else None,
        "created_at": time.time(),
    }
    engine.store.write(lambda db: db.table("artifacts").insert(row))
    engine.emit(
        EventType.ARTIFACT,
        agent,
        {"kind": kind, "name": name, "path": str(path)},
        clean[:2000] if kind == "report" else "",
    )
    return path
