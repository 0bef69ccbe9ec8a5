"""Read queries shared by the CLI and the TUI: plain functions over a read connection, so
both show the same numbers (they read committed rows; writes go through the engine)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from supervisor.events import Event


def rows(
    db: sqlite3.Connection, sql: str, args: list[Any] | tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    cursor = db.execute(sql, args)
    names = [c[0] for c in cursor.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cursor]


def last_event_id(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])


def runs(db: sqlite3.Connection, limit: int = 500) -> list[dict[str, Any]]:
    return rows(db, "SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", [limit])


def agents(db: sqlite3.Connection, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    if run_ids is None:
        return rows(db, "SELECT * FROM agents ORDER BY created_at")
    marks = ",".join("?" * len(run_ids))
    return rows(db, f"SELECT * FROM agents WHERE run_id IN ({marks}) ORDER BY created_at", run_ids)


def events(
    db: sqlite3.Connection,
    *,
    agent_id: str | None = None,
    run_id: str | None = None,
    after: int = 0,
    types: tuple[str, ...] = (),
    limit: int = 5000,
    newest: bool = False,
) -> list[Event]:
    """Events in order (or the newest ``limit``, still returned oldest first)."""
    where: list[str] = ["id > ?"]
    args: list[Any] = [after]
    if agent_id is not None:
        where.append("agent_id = ?")
        args.append(agent_id)
    if run_id is not None:
        where.append("run_id = ?")
        args.append(run_id)
    if types:
        where.append(f"type IN ({','.join('?' * len(types))})")
        args.extend(types)
    order = "DESC" if newest else "ASC"
    found = rows(
        db,
        f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
        [*args, limit],
    )
    result = [Event.from_row(r) for r in found]
    return result[::-1] if newest else result


def fts_query(db: sqlite3.Connection, words: str) -> str:
    """A person's words as a safe FTS5 query (quoted as the store quotes them)."""
    from sqlite_utils import Database

    return str(Database(db).quote_fts(words.strip())) if words.strip() else ""


def search(db: sqlite3.Connection, words: str, limit: int = 50) -> list[dict[str, Any]]:
    """Full-text search over every transcript (events), newest first."""
    match = fts_query(db, words)
    if not match:
        return []
    return rows(
        db,
        "SELECT events.id, events.ts, events.run_id, events.agent_id, events.type, "
        "snippet(events_fts, 0, '[', ']', '…', 12) AS snippet FROM events_fts "
        "JOIN events ON events.id = events_fts.rowid WHERE events_fts MATCH ? "
        "ORDER BY events.id DESC LIMIT ?",
        [match, limit],
    )


def notes(db: sqlite3.Connection, words: str = "", limit: int = 200) -> list[dict[str, Any]]:
    """Notes matching ``words`` (most relevant first), or the newest."""
    match = fts_query(db, words)
    if not match:
        return rows(db, "SELECT * FROM notes ORDER BY created_at DESC LIMIT ?", [limit])
    return rows(
        db,
        "SELECT notes.* FROM notes JOIN notes_fts ON notes.id = notes_fts.rowid "
        "WHERE notes_fts MATCH ? ORDER BY rank LIMIT ?",
        [match, limit],
    )


def spent_since(db: sqlite3.Connection, since: float) -> float:
    row = db.execute("SELECT coalesce(sum(cost_usd), 0) FROM costs WHERE ts >= ?", [since])
    return float(row.fetchone()[0])


@dataclass
class Metric:
    """One named series of ``metric`` events: values in order, which way is better (when
    the emitter said), and tallies of its string labels (e.g. ``status: keep 3``)."""

    name: str
    values: list[float] = field(default_factory=list)
    better: str = ""  # lower | higher | "" (not said)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def best(self) -> float | None:
        if not self.values or self.better not in ("lower", "higher"):
            return None
        return min(self.values) if self.better == "lower" else max(self.values)


@dataclass
class Progress:
    label: str
    done: float
    total: float | None
    unit: str


@dataclass
class Series:
    metrics: dict[str, Metric] = field(default_factory=dict)
    progress: dict[str, Progress] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.progress)


def run_series(db: sqlite3.Connection, run_id: str) -> Series:
    """Every ``metric`` and ``progress`` event of a run, in order (any plugin's)."""
    rows = db.execute(
        "SELECT type, data FROM events WHERE run_id = ? AND type IN ('metric', 'progress') "
        "ORDER BY id",
        [run_id],
    ).fetchall()
    series = Series()
    for kind, raw in rows:
        data: dict[str, Any] = json.loads(raw or "{}")
        if kind == "progress":
            label = str(data.get("label", ""))
            total = data.get("total")
            series.progress[label] = Progress(
                label,
                float(data.get("done") or 0),
                float(total) if total is not None else None,
                str(data.get("unit", "")),
            )
            continue
        name = str(data.get("name", ""))
        metric = series.metrics.setdefault(name, Metric(name))
        labels = data.get("labels") or {}
        if labels.get("better") in ("lower", "higher"):
            metric.better = str(labels["better"])
        for key, value in labels.items():
            if key != "better" and isinstance(value, str):
                counts = metric.tallies.setdefault(key, {})
                counts[value] = counts.get(value, 0) + 1
        value = data.get("value")
        if isinstance(value, int | float):
            metric.values.append(float(value))
    return series
