"""The client of the supervisor process, shared by the CLI and the TUI.

Commands go over the socket (see :mod:`supervisor.server` for the protocol); history is read
straight from SQLite (read-only, WAL readers never block the server's writer), then the
client follows live events from the id it has read up to. The TUI talks to the engine in
no other way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import __version__, config
from supervisor.errors import InputError, SupervisorError
from supervisor.events import Event
from supervisor.server import LINE_LIMIT, PROTOCOL, log_path, running_pid, socket_path
from supervisor.store import queries
from supervisor.store.queries import Series

START_TIMEOUT_S = 20.0

EventsCallback = Callable[[list[Event]], None]


class ServerGone(SupervisorError):
    """The connection to the supervisor process was lost."""


class Busy(SupervisorError):
    """The server refused because work is running (``shutdown`` without force)."""


class Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: dict[str, Any],
        data_dir: Path,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.info = info
        self.data_dir = data_dir
        self.pid = int(info.get("pid", 0))
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._listeners: list[EventsCallback] = []
        self._gone: list[Callable[[], None]] = []
        self._db: sqlite3.Connection | None = None
        self.connected = True
        self.bye: dict[str, Any] | None = None  # the server said it stops on purpose
        self._reading = asyncio.get_running_loop().create_task(self._read())

    # -- connecting

    @classmethod
    async def connect(
        cls, data_dir: Path | None = None, *, start: bool = True, name: str = "cli"
    ) -> Client:
        """Connect to the data directory's server, starting one if none runs (``start``)."""
        data_dir = data_dir or config.ensure_data_dir()
        try:
            return await cls._open(data_dir, name)
        except (FileNotFoundError, ConnectionRefusedError):
            if not start:
                raise ServerGone(
                    f"no supervisor server runs for {data_dir}; start one with "
                    "`supervisor server start`"
                ) from None
        start_server(data_dir)
        return await cls._open(data_dir, name)

    @classmethod
    async def _open(cls, data_dir: Path, name: str) -> Client:
        reader, writer = await asyncio.open_unix_connection(
            str(socket_path(data_dir)), limit=LINE_LIMIT
        )
        hello = {"hello": {"protocol": PROTOCOL, "version": __version__, "client": name}}
        writer.write((json.dumps(hello) + "\n").encode())
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            answer: dict[str, Any] = (
                json.loads(line) if line else {"error": "the server closed the connection"}
            )
        except (TimeoutError, ValueError):
            writer.close()
            where = socket_path(data_dir)
            raise ServerGone(f"the supervisor server at {where} does not answer") from None
        if "hello" not in answer:
            writer.close()
            raise InputError(str(answer.get("error", "the server refused the connection")))
        return cls(reader, writer, dict(answer["hello"]), data_dir)

    async def close(self) -> None:
        self.connected = False
        self._reading.cancel()
        with contextlib.suppress(BaseException):
            await self._reading
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- commands and events

    async def call(self, cmd: str, **args: Any) -> Any:
        """Send a command and wait for its answer; errors become exceptions (bad input:
        :class:`InputError`)."""
        if not self.connected:
            raise ServerGone("not connected to the supervisor server")
        self._ids += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = future
        line = json.dumps({"id": self._ids, "cmd": cmd, "args": args}, default=str) + "\n"
        self.writer.write(line.encode())
        await self.writer.drain()
        return await future

    def on_events(self, fn: EventsCallback) -> None:
        """Call ``fn(events)`` for every batch of live events (after :meth:`subscribe`)."""
        self._listeners.append(fn)

    def on_disconnect(self, fn: Callable[[], None]) -> None:
        self._gone.append(fn)

    async def subscribe(self, after: int = 0, watch: list[str] | None = None) -> int:
        """Receive every committed event after ``after`` (history first), then live ones."""
        result = await self.call("subscribe", after=after, watch=watch or [])
        return int(result["after"])

    async def watch(self, agents: list[str]) -> None:
        """Which agents' text deltas to receive (``["*"]`` for all)."""
        await self.call("watch", agents=agents)

    async def _read(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if "bye" in message:
                    self.bye = dict(message["bye"] or {})
                elif "events" in message:
                    events = [Event(**e) for e in message["events"]]
                    for fn in list(self._listeners):
                        fn(events)
                elif "id" in message:
                    future = self._waiting.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if message.get("ok"):
                        future.set_result(message.get("result"))
                    else:
                        error = str(message.get("error", "failed"))
                        code = message.get("code")
                        exc: Exception = (
                            InputError(error)
                            if code == "input"
                            else Busy(error)
                            if code == "busy"
                            else SupervisorError(error)
                        )
                        future.set_exception(exc)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.connected = False
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ServerGone("the supervisor server went away"))
            self._waiting.clear()
            for gone in self._gone:
                gone()

    # -- reading history (SQLite, read-only)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.data_dir / "supervisor.db"
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 5000")
        return self._db

    def query(self, sql: str, args: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(sql, args)]

    # The queries themselves live in supervisor.store.queries, shared with the CLI.

    def last_event_id(self) -> int:
        return queries.last_event_id(self.db)

    def runs(self, limit: int = 500) -> list[dict[str, Any]]:
        return queries.runs(self.db, limit)

    def agents(self, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        return queries.agents(self.db, run_ids)

    def events(
        self,
        *,
        agent_id: str | None = None,
        run_id: str | None = None,
        after: int = 0,
        types: tuple[str, ...] = (),
        limit: int = 5000,
        newest: bool = False,
    ) -> list[Event]:
        return queries.events(
            self.db,
            agent_id=agent_id,
            run_id=run_id,
            after=after,
            types=types,
            limit=limit,
            newest=newest,
        )

    def search(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Full-text search over every transcript (events), newest first."""
        return queries.search(self.db, query, limit)

    def notes(self, query: str = "", limit: int = 200) -> list[dict[str, Any]]:
        return queries.notes(self.db, query, limit)

    def series(self, run_id: str) -> Series:
        """The run's metric and progress events, summed up for the Info tab."""
        return queries.run_series(self.db, run_id)

    def spent_today(self) -> float:
        from supervisor.system import start_of_day

        return queries.spent_since(self.db, start_of_day())


def start_server(data_dir: Path) -> int:
    """Start a detached server for ``data_dir`` and wait until it answers; its pid."""
    import socket as socketlib

    from supervisor.server import preflight

    preflight(data_dir)
    log = log_path(data_dir)
    env = dict(os.environ)
    if data_dir != config.data_dir():
        env["SUPERVISOR_HOME"] = str(data_dir)
    with log.open("ab") as out:
        os.chmod(log, 0o600)
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.server"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C, hangups
            env=env,
            cwd=str(data_dir),
        )
    path = str(socket_path(data_dir))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            pid = running_pid(data_dir)
            if pid:  # another client started one at the same moment: use it
                return pid
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            if code == 2:  # the person's to fix, and the server said why in one line
                raise InputError(tail[0].removeprefix("error: "))
            raise SupervisorError(f"the supervisor server failed to start: {tail[0]}")
        with socketlib.socket(socketlib.AF_UNIX) as probe:
            try:
                probe.connect(path)
                return process.pid
            except OSError:
                pass
        time.sleep(0.02)
    raise SupervisorError(
        f"the supervisor server did not start within {START_TIMEOUT_S:g}s (see {log})"
    )
