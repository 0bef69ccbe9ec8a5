"""Events in SQLite on the host: one file, WAL, one connection guarded by a lock (the service
writes a few rows a minute; readers are the dashboard's requests). Frames live beside it as
JPEG files, ``events/<id>/<n>.jpg``."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATEGORIES = ("people", "vehicles", "animals", "packages")

# Append-only: a step once shipped is never edited (hosts keep their databases).
_MIGRATIONS = (
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        camera TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        created REAL NOT NULL,
        source TEXT NOT NULL,          -- 'model' (a vision language model) or 'detector'
        analyser TEXT NOT NULL,        -- the model's name, or the detector's
        title TEXT NOT NULL,
        summary TEXT NOT NULL,
        threat INTEGER NOT NULL,
        confidence REAL NOT NULL,
        people INTEGER NOT NULL, vehicles INTEGER NOT NULL,
        animals INTEGER NOT NULL, packages INTEGER NOT NULL,
        activity INTEGER NOT NULL,     -- 0: nothing of note (the dashboard can hide these)
        search TEXT NOT NULL,          -- title, scene, summary, observations, concerns
        analysis TEXT NOT NULL,        -- the whole answer, as JSON
        frames TEXT NOT NULL,          -- [{"n", "t"}], t in seconds from the first frame
        clip TEXT,
        error TEXT,
        test_run INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX events_started ON events(started);
    CREATE INDEX events_camera ON events(camera, started);
    CREATE TABLE clips (path TEXT PRIMARY KEY, mtime REAL NOT NULL, size INTEGER NOT NULL,
                        event_id INTEGER, seen REAL NOT NULL);
    """,
)


@dataclass(frozen=True)
class Filters:
    """The events API's filters; every one optional."""

    camera: str | None = None
    category: str | None = None
    min_threat: int = 0
    hours: float | None = None
    hide_no_activity: bool = False
    search: str | None = None
    limit: int = 100
    before_id: int | None = None
    since: float | None = None
    until: float | None = None


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.frames_dir = data_dir / "events"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / "events.db", check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for n, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self._db:
                self._db.executescript(script)
                self._db.execute(f"PRAGMA user_version={n}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_event(self, event: dict[str, Any], frames: list[bytes]) -> dict[str, Any]:
        """Store an event and its JPEG frames; returns it as the API shows it."""
        analysis = event["analysis"]
        cats = analysis.get("categories", {})
        search = " ".join(
            [
                analysis.get("title", ""),
                analysis.get("scene", ""),
                analysis.get("shortSummary", ""),
                *analysis.get("observations", []),
                *analysis.get("other_concerns", []),
                event.get("error") or "",
            ]
        )
        row = {
            "camera": event["camera"],
            "started": event["started"],
            "ended": event["ended"],
            "created": time.time(),
            "source": event["source"],
            "analyser": event["analyser"],
            "title": analysis.get("title", ""),
            "summary": analysis.get("shortSummary", ""),
            "threat": int(analysis.get("potential_threat_level", 0)),
            "confidence": float(analysis.get("confidence", 0.0)),
            **{c: int(bool(cats.get(c))) for c in CATEGORIES},
            "activity": int(event["activity"]),
            "search": search,
            "analysis": json.dumps(analysis),
            "frames": json.dumps(event["frames"]),
            "clip": event.get("clip"),
            "error": event.get("error"),
            "test_run": int(bool(event.get("test_run"))),
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock, self._db:
            cursor = self._db.execute(f"INSERT INTO events ({columns}) VALUES ({marks})", row)
            event_id = int(cursor.lastrowid or 0)
        folder = self.frames_dir / str(event_id)
        folder.mkdir(parents=True, exist_ok=True)
        for n, jpeg in enumerate(frames):
            (folder / f"{n}.jpg").write_bytes(jpeg)
        found = self.event(event_id)
        assert found is not None
        return found

    def event(self, event_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else _public(row)

    def frame_path(self, event_id: int, n: int) -> Path:
        return self.frames_dir / str(event_id) / f"{n}.jpg"

    def events(self, f: Filters) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if f.camera:
            where.append("camera = ?")
            args.append(f.camera)
        if f.category:
            if f.category not in CATEGORIES:
                raise ValueError(f"category {f.category!r} is not one of {', '.join(CATEGORIES)}")
            where.append(f"{f.category} = 1")
        if f.min_threat:
            where.append("threat >= ?")
            args.append(f.min_threat)
        if f.hours is not None:
            where.append("started >= ?")
            args.append(time.time() - f.hours * 3600)
        if f.since is not None:
            where.append("started >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("started < ?")
            args.append(f.until)
        if f.hide_no_activity:
            where.append("activity = 1")
        if f.search:
            for word in f.search.split():
                escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                where.append("(search LIKE ? ESCAPE '\\' OR camera LIKE ? ESCAPE '\\')")
                args += [f"%{escaped}%"] * 2
        if f.before_id is not None:
            # Paging follows the listing's order (by when it happened), not insertion order.
            where.append("(started, id) < (SELECT started, id FROM events WHERE id = ?)")
            args.append(f.before_id)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, id DESC LIMIT ?"
        args.append(f.limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_public(r) for r in rows]

    def latest_by_camera(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE id IN (SELECT MAX(id) FROM events GROUP BY camera)"
            ).fetchall()
        return {r["camera"]: _public(r) for r in rows}

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def clip_seen(self, path: str, mtime: float, size: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM clips WHERE path = ? AND mtime = ? AND size = ?",
                (path, mtime, size),
            ).fetchone()
        return row is not None

    def mark_clip(self, path: str, mtime: float, size: int, event_id: int | None) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO clips (path, mtime, size, event_id, seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (path, mtime, size, event_id, time.time()),
            )


def _public(row: sqlite3.Row) -> dict[str, Any]:
    """An event as the API returns it."""
    frames = json.loads(row["frames"])
    return {
        "id": row["id"],
        "camera": row["camera"],
        "started": row["started"],
        "ended": row["ended"],
        "source": row["source"],
        "analyser": row["analyser"],
        "title": row["title"],
        "summary": row["summary"],
        "threat": row["threat"],
        "confidence": row["confidence"],
        "categories": [c for c in CATEGORIES if row[c]],
        "activity": bool(row["activity"]),
        "analysis": json.loads(row["analysis"]),
        "frames": [{**fr, "url": f"/api/events/{row['id']}/frames/{fr['n']}.jpg"} for fr in frames],
        "clip": row["clip"],
        "error": row["error"],
        "test_run": bool(row["test_run"]),
    }
