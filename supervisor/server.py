"""The supervisor process: one per data directory, owning the runs; clients come and go.

Like a tmux server, it is started on demand by the first client (``supervisor``, ``run``,
``recipe run``) and keeps working after every client has closed. It hosts the engine, and
speaks a small protocol over a Unix socket in the data directory (owner-only).

Protocol, version 1 — one JSON object per line, UTF-8, in both directions:

``{"hello": {"protocol": 1, "version": "0.1.0", "client": "tui"}}``
    The client's first line. The server answers ``{"hello": {"protocol", "version", "pid",
    "data_dir"}}``, or ``{"error": "...", "code": "version"}`` and closes when the client's
    version differs from its own (stop the old server; a new one starts on demand).
``{"id": 7, "cmd": "run.start", "args": {...}}``
    A command. The answer carries the same id: ``{"id": 7, "ok": true, "result": ...}`` or
    ``{"id": 7, "ok": false, "error": "one line", "code": "input" | "busy" | "error"}``.
    ``input`` is the person's to fix (exit code 2 in the CLI).
``{"bye": {"reason": "stopped", "pid": ...}}``
    Sent to every client when the server stops on purpose (``supervisor server stop``, a
    signal), just before it closes the socket; a connection that ends without it was lost.
``{"events": [event, ...]}``
    Pushed after ``subscribe``: committed events (``id, ts, run_id, agent_id, type, data,
    text``) in id order — first those after the client's ``after`` id, read from SQLite,
    then live ones as they are committed, with no gap and no repeat. Text deltas
    (``message.delta``) come only for the agents named by ``watch`` (or all, ``"*"``), so a
    busy fleet cannot flood a client that shows one transcript. An event is sent only after
    it is committed: whatever a client has shown survives a crash of this process.

Commands (``args`` in brackets): ``ping``, ``status``, ``subscribe [after, watch]``,
``watch [agents]``, ``run.start [task, model, workspace, sandbox, agents, network,
max_cost_usd, max_steps, keep_sandboxes, title]``, ``run.stop [run]``, ``run.resume
[run]``, ``recipe.start [path, params]``, ``agent.message [agent, text]``, ``agent.answer
[agent, text]`` (an answer, or ``approve | deny | always`` for a pending tool call),
``agent.pause | agent.resume | agent.stop | agent.restart | agent.keep [agent]``,
``agent.diff [agent]``, ``budget.set [scope, target, usd, tokens]``, ``shutdown
[force]``.

One server per data directory: it holds an exclusive lock on ``server.lock`` for its whole
life, so a second one refuses to start, and a socket file whose lock is free belongs to a
dead server and is replaced. After a crash (even ``kill -9``) the next server marks runs
the dead one was driving ``interrupted`` and, with ``server.auto_resume`` (the default),
resumes them: recipes from their last finished step, agents from their transcripts in
their re-adopted (or recreated) sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from supervisor import __version__
from supervisor.errors import InputError, SupervisorError

PROTOCOL = 1
LINE_LIMIT = 64 * 1024 * 1024  # a single protocol line; history chunks and pastes fit
MAX_MESSAGE_CHARS = 100_000  # what a person may send an agent in one message
HISTORY_CHUNK = 2_000
SLOW_CLIENT_EVENTS = 200_000  # a client this far behind is dropped; it reconnects from SQLite
AUTO_RESUME_MAX = 3  # automatic resumes of one run after crashes, then it waits for a person
SERVER_NICENESS = 5  # the started-on-demand process runs a little below interactive work
SETTINGS_POLL_S = 1.0  # how soon a changed settings file reaches running agents' policy


def socket_path(data_dir: Path) -> Path:
    """The socket for a data directory. Unix socket paths are limited to ~107 bytes, so a
    deep data directory gets a short path in an owner-only folder under the temp dir."""
    path = data_dir / "supervisor.sock"
    if len(os.fsencode(path)) <= 100:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"supervisor-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise SupervisorError(f"{folder} is not owner-only; refusing to put a socket there")
    return folder / f"{digest}.sock"


def lock_path(data_dir: Path) -> Path:
    return data_dir / "server.lock"


def log_path(data_dir: Path) -> Path:
    return data_dir / "server.log"


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server holding this data directory's lock, or None."""
    path = lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def event_json(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "ts": event.ts,
        "run_id": event.run_id,
        "agent_id": event.agent_id,
        "type": str(event.type),
        "data": event.data,
        "text": event.text,
    }


class _Conn:
    """One connected client: its socket, what it watches, and its outgoing events."""

    def __init__(self, writer: asyncio.StreamWriter, name: str) -> None:
        self.writer = writer
        self.name = name
        self.subscribed = False
        self.catching_up = False  # live events wait in `held` while history is sent
        self.held: list[Any] = []
        self.outbox: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.last_sent = 0
        self.watch: set[str] = set()
        self.closed = False

    def wants(self, event: Any) -> bool:
        if event.type != "message.delta":
            return True
        return "*" in self.watch or event.agent_id in self.watch

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.append(message)
        self.wake.set()

    def offer(self, events: list[Any]) -> None:
        if not self.subscribed or self.closed:
            return
        if self.catching_up:
            self.held.extend(events)
            return
        fresh = [event_json(e) for e in events if e.id > self.last_sent and self.wants(e)]
        if events:
            self.last_sent = max(self.last_sent, max(e.id for e in events))
        if fresh:
            self.send({"events": fresh})


Handler = Callable[[_Conn, dict[str, Any]], Awaitable[Any]]


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket = socket_path(data_dir)
        self.conns: set[_Conn] = set()
        self.recipe_tasks: dict[str, asyncio.Task[str]] = {}
        self.resumed_from: dict[str, int] = {}  # run id -> last event id before its resume
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self.commands: dict[str, Handler] = {
            "ping": self._ping,
            "status": self._status,
            "subscribe": self._subscribe,
            "watch": self._watch,
            "run.start": self._run_start,
            "run.stop": self._run_stop,
            "run.resume": self._run_resume,
            "recipe.start": self._recipe_start,
            "agent.message": self._agent_message,
            "agent.answer": self._agent_answer,
            "agent.pause": self._agent_simple("pause"),
            "agent.resume": self._agent_simple("resume"),
            "agent.stop": self._agent_stop,
            "agent.restart": self._agent_restart,
            "agent.keep": self._agent_simple("keep_sandbox"),
            "agent.diff": self._agent_diff,
            "budget.set": self._budget_set,
            "note.add": self._note_add,
            "note.rm": self._note_rm,
            "shutdown": self._shutdown,
        }

    # -- life

    def lock(self) -> None:
        """Take the data directory's server lock, or say who holds it."""
        fd = os.open(lock_path(self.data_dir), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(
                f"a supervisor server already runs for {self.data_dir} (pid {holder}); "
                "`supervisor server status` shows it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    async def main(self) -> int:
        from supervisor.engine import Engine
        from supervisor.plugins import get_plugins
        from supervisor.store import open_default

        self.lock()
        self.loop = asyncio.get_running_loop()
        self.store = open_default()
        self.engine = Engine(self.store, get_plugins())
        self.store.subscribe(self._committed)
        # Before listening: a client's `resume` must find recovered runs already driven.
        await self._recover()
        # The lock is ours, so a socket file here is a dead server's: replace it.
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        old_umask = os.umask(0o177)  # the socket is created owner-only, no window
        try:
            server = await asyncio.start_unix_server(
                self._client, path=str(self.socket), limit=LINE_LIMIT
            )
        finally:
            os.umask(old_umask)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        watcher = self.loop.create_task(self._watch_settings())
        log(f"supervisor server {__version__} (pid {os.getpid()}) on {self.socket}")
        try:
            await self.stopping.wait()
        finally:
            log("stopping: interrupting active runs (they resume when it starts again)")
            watcher.cancel()
            server.close()
            # Clients hear that this was a deliberate stop, not a crash, before the socket
            # closes (the TUI then says "stopped" instead of "lost").
            for conn in list(self.conns):
                conn.send({"bye": {"reason": "stopped", "pid": os.getpid()}})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drained(), 1)
            for conn in list(self.conns):
                conn.closed = True
                conn.writer.close()
            for task in self.recipe_tasks.values():
                task.cancel()
            await asyncio.gather(*self.recipe_tasks.values(), return_exceptions=True)
            await self.engine.close(interrupt=True)
            self.store.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            log("stopped")
        return 0

    async def _watch_settings(self) -> None:
        """Take up settings a person changes while this process runs: tool-call policy at
        once, the rest for new runs and agents (see ``Engine.refresh_settings``)."""
        said = ""
        while True:
            await asyncio.sleep(SETTINGS_POLL_S)
            try:
                changed = self.engine.refresh_settings()
            except InputError as exc:  # said once; new runs are refused with the reason
                if str(exc) != said:
                    said = str(exc)
                    log(f"settings not taken up: {exc}")
                continue
            said = ""
            if changed:
                log(f"settings changed: {', '.join(changed)}")

    async def _drained(self) -> None:
        """Wait until every client's outgoing messages are written."""
        while any(conn.outbox and not conn.closed for conn in self.conns):
            await asyncio.sleep(0.01)
        for conn in list(self.conns):
            with contextlib.suppress(ConnectionError, OSError):
                await conn.writer.drain()

    async def _recover(self) -> None:
        """Take up what a dead server left: interrupted runs resume (a few times at most)."""
        from supervisor import config

        orphans = self.engine.interrupt_orphans()
        await self._reconcile_sandboxes()
        auto = config.load()["server.auto_resume"]
        for row in orphans:
            resumes = row.get("resumes") or 0
            if not auto or resumes >= AUTO_RESUME_MAX:
                log(f"run {row['id']} interrupted; resume it with `supervisor resume {row['id']}`")
                continue
            self.store.write(_set_resumes(row["id"], resumes + 1))
            try:
                await self.resume(row["id"])
                log(f"run {row['id']} resumed after a crash")
            except Exception as exc:
                log(f"run {row['id']} could not be resumed: {exc}")

    async def _reconcile_sandboxes(self) -> None:
        """Containers a dead server left are matched with their runs before any resumes:
        those of finished agents (or never handed to one) go, their changes kept."""
        from supervisor.sandbox.leftovers import reconcile

        try:
            await asyncio.to_thread(reconcile, self.store, report=log)
        except Exception as exc:  # a clean-up must never keep the server from starting
            log(f"could not reconcile sandboxes with their runs: {exc}")

    def driving(self, run_id: str) -> bool:
        """Is this process working on the run now?"""
        return run_id in self.recipe_tasks or any(
            a.run_id == run_id and self.engine.running(a) for a in self.engine.agents.values()
        )

    async def resume(self, run_id: str) -> None:
        row = self.engine._row("runs", run_id)
        if not row:
            raise InputError(f"no run {run_id!r}")
        if self.driving(run_id):
            raise InputError(f"run {run_id} is already running")
        self.store.flush()
        self.resumed_from[run_id] = self.store.db.execute(
            "SELECT coalesce(max(id), 0) FROM events"
        ).fetchone()[0]
        if row["kind"] == "recipe":
            from supervisor import recipes

            saved = json.loads(row["params"] or "{}")
            path = Path(saved.get("recipe_path", ""))
            recipe = recipes.parse(path) if path.exists() else recipes.load(row["recipe"])
            await self.engine.adopt_run(run_id)
            self._drive_recipe(recipe, run_id, saved.get("params", {}))
        else:
            await self.engine.resume_task_run(run_id)

    def _drive_recipe(self, recipe: Any, run_id: str, params: dict[str, Any]) -> None:
        from supervisor.recipes import RecipeRunner

        runner = RecipeRunner(self.engine, recipe, progress=lambda line: None)

        async def drive() -> str:
            try:
                return await runner.run(run_id, params)
            except InputError as exc:
                from supervisor.events import EventType

                self.engine.emit(EventType.LOG, None, {"error": str(exc)}, str(exc), run_id=run_id)
                return "failed"
            finally:
                self.recipe_tasks.pop(run_id, None)

        self.recipe_tasks[run_id] = self.loop.create_task(drive())

    # -- events out

    def _committed(self, events: list[Any]) -> None:
        """Called in the store's writer thread after each commit."""
        if events:
            self.loop.call_soon_threadsafe(self._fan_out, events)

    def _fan_out(self, events: list[Any]) -> None:
        for conn in list(self.conns):
            conn.offer(events)
            if len(conn.outbox) > SLOW_CLIENT_EVENTS:
                log(f"client {conn.name} fell too far behind; dropping it")
                conn.closed = True
                conn.writer.close()

    async def _pump(self, conn: _Conn) -> None:
        """Write a client's outgoing messages, many per write."""
        while not conn.closed:
            await conn.wake.wait()
            conn.wake.clear()
            batch, conn.outbox = conn.outbox, []
            if not batch:
                continue
            data = "".join(json.dumps(m, separators=(",", ":"), default=str) + "\n" for m in batch)
            conn.writer.write(data.encode())
            try:
                await conn.writer.drain()
            except (ConnectionError, OSError):
                conn.closed = True

    # -- a client

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer, "?")
        pump: asyncio.Task[None] | None = None
        try:
            hello = await self._hello(reader, writer)
            if hello is None:
                return
            conn.name = str(hello.get("client", "?"))
            self.conns.add(conn)
            pump = self.loop.create_task(self._pump(conn))
            while not conn.closed:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    conn.send({"error": "line too long", "code": "input"})
                    break
                if not line:
                    break
                await self._handle(conn, line)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True
            conn.wake.set()
            self.conns.discard(conn)
            if pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pump, 1)
            writer.close()

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        def refuse(message: str, code: str) -> None:
            writer.write((json.dumps({"error": message, "code": code}) + "\n").encode())

        try:
            first = json.loads(await asyncio.wait_for(reader.readline(), 10))
            hello = first["hello"]
            protocol, version = hello.get("protocol"), hello.get("version")
        except (ValueError, KeyError, TypeError, AttributeError, TimeoutError):
            refuse("expected a hello line first (see supervisor/server.py)", "protocol")
            return None
        if protocol != PROTOCOL or version != __version__:
            refuse(
                f"this supervisor server (pid {os.getpid()}) runs version {__version__} "
                f"(protocol {PROTOCOL}); the client is {version} (protocol {protocol}): "
                "stop the server with `supervisor server stop` and try again",
                "version",
            )
            return None
        info = {
            "protocol": PROTOCOL,
            "version": __version__,
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
        }
        writer.write((json.dumps({"hello": info}) + "\n").encode())
        return dict(hello)

    async def _handle(self, conn: _Conn, line: bytes) -> None:
        try:
            message = json.loads(line)
            request_id = message.get("id")
            cmd = message["cmd"]
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            conn.send({"id": None, "ok": False, "error": "malformed request", "code": "input"})
            return
        handler = self.commands.get(cmd)
        try:
            if handler is None:
                raise InputError(f"unknown command {cmd!r}")
            result = await handler(conn, args)
            conn.send({"id": request_id, "ok": True, "result": result})
        except InputError as exc:
            conn.send({"id": request_id, "ok": False, "error": str(exc), "code": "input"})
        except _Busy as exc:
            conn.send({"id": request_id, "ok": False, "error": str(exc), "code": "busy"})
        except SupervisorError as exc:
            conn.send({"id": request_id, "ok": False, "error": str(exc), "code": "error"})
        except Exception as exc:  # a bug: the client hears of it; the server keeps going
            log(f"command {cmd} failed: {type(exc).__name__}: {exc}")
            conn.send(
                {
                    "id": request_id,
                    "ok": False,
                    "error": f"internal error: {type(exc).__name__}: {exc}",
                    "code": "error",
                }
            )

    # -- commands

    async def _ping(self, conn: _Conn, args: dict[str, Any]) -> str:
        return "pong"

    def active_agents(self) -> list[Any]:
        return [a for a in self.engine.agents.values() if self.engine.running(a)]

    async def _status(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        agents = self.active_agents()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "data_dir": str(self.data_dir),
            "socket": str(self.socket),
            "uptime_s": round(time.time() - self.started_at, 1),
            "clients": len(self.conns),
            "active_agents": len(agents),
            "waiting": [a.id for a in self.engine.waiting()],
            "active_runs": sorted(
                {a.run_id for a in agents} | set(self.recipe_tasks),
            ),
        }

    async def _subscribe(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        after = int(args.get("after") or 0)
        conn.watch = set(args.get("watch") or [])
        conn.catching_up = True
        conn.subscribed = True
        conn.last_sent = after
        try:
            while True:
                chunk = await asyncio.to_thread(self._history, after)
                if not chunk:
                    break
                after = chunk[-1].id
                wanted = [event_json(e) for e in chunk if conn.wants(e)]
                if wanted:
                    conn.send({"events": wanted})
                conn.last_sent = after
                if len(chunk) < HISTORY_CHUNK:
                    break
                await conn.writer.drain()
        finally:
            conn.catching_up = False
            held, conn.held = conn.held, []
            conn.offer(held)
        return {"after": conn.last_sent}

    def _history(self, after: int) -> list[Any]:
        return list(self.store.events(after=after, limit=HISTORY_CHUNK))

    async def _watch(self, conn: _Conn, args: dict[str, Any]) -> None:
        conn.watch = set(args.get("agents") or [])

    async def _run_start(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        from supervisor.engine import RunOptions

        task = str(args.get("task") or "").strip()
        if not task:
            raise InputError("a run needs a task")
        if len(task) > MAX_MESSAGE_CHARS:
            raise InputError(
                f"task too long ({len(task):,} characters; at most {MAX_MESSAGE_CHARS:,})"
            )
        workspace = args.get("workspace") or None
        try:
            options = RunOptions(
                task=task,
                model=str(args.get("model") or ""),
                workspace=Path(workspace) if workspace else None,
                sandbox=str(args.get("sandbox") or ""),
                agents=int(args.get("agents") or 1),
                network=bool(args.get("network")),
                max_cost_usd=float(args.get("max_cost_usd") or 0),
                max_steps=int(args.get("max_steps") or 0),
                keep_sandboxes=bool(args.get("keep_sandboxes")),
                title=str(args.get("title") or ""),
                host=str(args.get("host") or ""),
                hosts=str(args.get("hosts") or ""),
                gpus=int(args.get("gpus") or 0),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad run options: {exc}") from None
        if not 1 <= options.agents <= 1000:
            raise InputError("agents must be between 1 and 1000")
        from supervisor.config import between

        for name, value in (
            ("max_cost_usd", options.max_cost_usd),
            ("max_steps", options.max_steps),
        ):
            problem = between(0)(value)
            if problem:
                raise InputError(f"{name} must be {problem}, got {value!r}")
        run_id = await self.engine.start_run(options)
        return {"run_id": run_id}

    async def _run_stop(self, conn: _Conn, args: dict[str, Any]) -> None:
        run_id = str(args.get("run") or "")
        if run_id in self.recipe_tasks:
            task = self.recipe_tasks[run_id]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not self.engine._row("runs", run_id):
            raise InputError(f"no run {run_id!r}")
        await self.engine.stop_run(run_id)
        # Answered once every agent's stop is committed: a client reading the database
        # next sees the run stopped, not agents still "starting".
        await asyncio.to_thread(self.store.flush)

    async def _run_resume(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        run_id = str(args.get("run") or "")
        row = self.engine._row("runs", run_id)
        if not row:
            raise InputError(f"no run {run_id!r}")
        if row["status"] == "done":
            raise InputError(f"run {run_id} already finished")
        if not self.driving(run_id):  # else resumed on start already (after a crash)
            await self.resume(run_id)
        # Where the resumed part begins, so the client shows all of it.
        return {"run_id": run_id, "since": self.resumed_from.get(run_id, 0)}

    async def _recipe_start(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        from supervisor import recipes

        path = Path(str(args.get("path") or ""))
        if not path.is_file():
            raise InputError(f"no recipe file {path}")
        recipe = recipes.parse(path)
        given = args.get("params") or {}
        if not isinstance(given, dict):
            raise InputError("recipe params must be a mapping")
        values = recipe.params({str(k): str(v) for k, v in given.items()})
        recipes.validate(recipe)
        run_id = await recipes.RecipeRunner(self.engine, recipe).start(values)
        self._drive_recipe(recipe, run_id, values)
        return {"run_id": run_id}

    def _text(self, args: dict[str, Any]) -> str:
        text = str(args.get("text") or "")
        if not text.strip():
            raise InputError("nothing to send (the message is empty)")
        if len(text) > MAX_MESSAGE_CHARS:
            raise InputError(
                f"message too long ({len(text):,} characters; at most {MAX_MESSAGE_CHARS:,}); "
                "put long material in a file in the workspace and point the agent to it"
            )
        return text

    async def _agent_message(self, conn: _Conn, args: dict[str, Any]) -> str:
        return self.engine.message(str(args.get("agent") or ""), self._text(args))

    async def _agent_answer(self, conn: _Conn, args: dict[str, Any]) -> bool:
        key = str(args.get("agent") or "")
        agent = self.engine.find_agent(key)
        if agent is None:
            row = self.engine._row("agents", key) or self.engine._agent_row_by_name(key)
            if not row:
                raise InputError(f"no agent {key!r} (see `supervisor agents ls`)")
            raise InputError(
                f"agent {row['name']} ({row['id']}) is not waiting here (it is "
                f"{row['status']}); a --foreground run is answered in its own terminal"
            )
        if not self.engine.answer(agent.id, self._text(args)):
            raise InputError(
                f"agent {agent.name} ({agent.id}) is not waiting (it is {agent.status})"
            )
        return True

    async def _budget_set(self, conn: _Conn, args: dict[str, Any]) -> str:
        usd: float | None = None
        tokens: int | None = None
        try:
            if args.get("usd") is not None:
                usd = float(args["usd"])
            if args.get("tokens") is not None:
                tokens = int(args["tokens"])
        except (TypeError, ValueError):
            raise InputError("give the limit in USD, or in tokens, as a number") from None
        return await self.engine.set_budget(
            str(args.get("scope") or ""), str(args.get("target") or ""), usd, tokens
        )

    async def _note_add(self, conn: _Conn, args: dict[str, Any]) -> int:
        return await self.engine.add_note(
            self._text(args), str(args.get("scope") or "global"), str(args.get("key") or "")
        )

    async def _note_rm(self, conn: _Conn, args: dict[str, Any]) -> bool:
        try:
            note_id = int(args.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError("give the note's id as a number") from None
        if not await self.engine.forget(None, note_id, by="person"):
            raise InputError(f"no note {note_id}")
        return True

    def _agent_simple(self, method: str) -> Handler:
        async def handler(conn: _Conn, args: dict[str, Any]) -> None:
            getattr(self.engine, method)(str(args.get("agent") or ""))

        return handler

    async def _agent_stop(self, conn: _Conn, args: dict[str, Any]) -> None:
        await self.engine.stop(str(args.get("agent") or ""))

    async def _agent_restart(self, conn: _Conn, args: dict[str, Any]) -> None:
        key = str(args.get("agent") or "")
        if self.engine.find_agent(key) is None:
            # An agent of an earlier server's run: take its run up first.
            row = self.engine._row("agents", key)
            if not row:
                raise InputError(f"no agent {key!r}")
            if row["run_id"] in self.recipe_tasks:
                raise InputError("agents of a running recipe are restarted by the recipe")
            await self.engine.resume_task_run(row["run_id"])
            if self.engine.running(self.engine.agent(key)):
                return
        self.engine.restart(key)

    async def _agent_diff(self, conn: _Conn, args: dict[str, Any]) -> str:
        from supervisor.engine import sandbox_alive
        from supervisor.sandbox import workspace

        key = str(args.get("agent") or "")
        agent = self.engine.find_agent(key)
        if agent is not None and self.engine.running(agent) and await sandbox_alive(agent.sandbox):
            return await workspace.diff(agent.sandbox)
        # Ended: the copy kept when it ended (its sandbox may be gone), else its sandbox.
        with tempfile.TemporaryDirectory(prefix="supervisor-review-") as tmp:
            _, changes = await workspace.agent_changes(key, Path(tmp))
            return changes.text()

    async def _shutdown(self, conn: _Conn, args: dict[str, Any]) -> dict[str, Any]:
        active = self.active_agents()
        if active and not args.get("force"):
            raise _Busy(
                f"{len(active)} agent(s) are running; stopping the server interrupts them "
                "(they resume when it starts again)"
            )
        self.loop.call_later(0.05, self.stopping.set)
        return {"interrupted": len(active)}


def _set_resumes(run_id: str, count: int) -> Callable[[Any], None]:
    def write(db: Any) -> None:
        db.table("runs").update(run_id, {"resumes": count})

    return write


class _Busy(Exception):
    pass


def log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)


def preflight(data_dir: Path) -> None:
    """Refuse, before a file is written beside them, settings or a database a supervisor
    process could not use: the person hears the reason, not that the process died."""
    from supervisor import config
    from supervisor.store import check_file, inspect_existing

    config.load()
    database = data_dir / "supervisor.db"
    check_file(database)
    inspect_existing(database)


def serve(data_dir: Path) -> int:
    """Run a server in this process until stopped (``supervisor server start --foreground``)."""
    try:
        preflight(data_dir)
        return asyncio.run(Server(data_dir).main())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main() -> None:
    from supervisor import config

    # Background work yields to the person's terminal: on a busy machine the TUI stays
    # responsive while agents stream (bench/tui.py measures key latency under load).
    with contextlib.suppress(OSError):
        os.nice(SERVER_NICENESS)
    sys.exit(serve(config.ensure_data_dir()))


if __name__ == "__main__":
    main()
