"""The supervisor process: one per data directory, runs that outlive their clients, crash
recovery, and the protocol's refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agent_kit import scripted
from conftest import SUPERVISOR, run_cli

from supervisor.client import Client, start_server
from supervisor.events import Event
from supervisor.server import running_pid, socket_path
from supervisor.testing import Reply


def _turns(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def slow_worker(steps: int, delay_s: float = 0.4) -> Any:
    """An agent that writes a file, then works `steps` slow steps, then finishes."""

    def script(messages: list[dict[str, Any]]) -> Reply:
        n = _turns(messages)
        if n == 0:
            return Reply(tool_calls=[("shell", {"command": "echo kept-across-crash > mark.txt"})])
        if n < steps:
            return Reply(
                text=f"step {n}", tool_calls=[("shell", {"command": f"echo {n}"})], delay_s=delay_s
            )
        return (
            Reply(tool_calls=[("shell", {"command": "cat mark.txt"})])
            if n == steps
            else (Reply(tool_calls=[("finish", {"summary": "worked through"})]))
        )

    return script


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def db_rows(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{home / 'supervisor.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def test_server_start_status_stop_and_a_second_server(home: Path) -> None:
    started = run_cli("server", "start")
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    status = run_cli("server", "status", "--json")
    assert status.returncode == 0
    info = json.loads(status.stdout)
    assert info["pid"] == running_pid(home)
    # The socket and the data directory are owner-only.
    assert os.stat(info["socket"]).st_mode & 0o077 == 0
    assert os.stat(home).st_mode & 0o077 == 0

    again = run_cli("server", "start")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0
    assert "already runs" in again.stderr and "Traceback" not in again.stderr
    # A second server started directly (not through the CLI's check) is refused by the lock.
    direct = subprocess.run(
        [sys.executable, "-m", "supervisor.server"], capture_output=True, text=True, timeout=30
    )
    assert direct.returncode == 2
    assert f"pid {info['pid']}" in direct.stderr and "Traceback" not in direct.stderr

    stopped = run_cli("server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert running_pid(home) is None
    assert not Path(info["socket"]).exists()
    assert run_cli("server", "status").returncode == 1


def test_a_dead_servers_socket_is_replaced(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = socket_path(home)
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))  # what a killed server leaves: the file, nobody listening
    leftover.close()
    assert path.exists()

    async def go() -> str:
        client = await Client.connect(home, start=True)
        try:
            return str(await client.call("ping"))
        finally:
            await client.close()

    assert asyncio.run(go()) == "pong"


def test_a_client_of_another_version_is_told_what_to_do(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    start_server(home)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path(home)))
        hello = {"hello": {"protocol": 1, "version": "0.0.1", "client": "old"}}
        sock.sendall((json.dumps(hello) + "\n").encode())
        answer = json.loads(sock.makefile().readline())
    assert answer["code"] == "version"
    assert "0.0.1" in answer["error"] and "supervisor server stop" in answer["error"]
    # Garbage instead of a hello: refused, the server keeps serving others.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path(home)))
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert json.loads(sock.makefile().readline())["code"] == "protocol"

    async def go() -> None:
        client = await Client.connect(home, start=False)
        try:
            # A malformed request gets an error answer; the connection stays usable.
            client.writer.write(b"{not json\n")
            assert await client.call("ping") == "pong"
            with pytest.raises(Exception, match="unknown command"):
                await client.call("teleport")
        finally:
            await client.close()

    asyncio.run(go())


async def test_runs_outlive_the_client_and_late_joiners_see_everything(home: Path) -> None:
    with scripted(slow_worker(steps=4, delay_s=0.2)):
        client = await Client.connect(home)
        run_id = (await client.call("run.start", task="work", sandbox="local", agents=2))["run_id"]
        await client.close()  # the person closes the window: work goes on

        def finished() -> bool:
            rows = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
            return bool(rows) and rows[0]["status"] == "done"

        await wait_for(finished, what="the run to finish without a client")
        late = await Client.connect(home, start=False)
        seen: list[Event] = []
        late.on_events(seen.extend)
        upto = await late.subscribe(after=0, watch=["*"])
        await wait_for(lambda: seen and seen[-1].id == upto, what="history")
        # History up to the subscription point (an agent's changes may still be being kept
        # after its run ended, so later events can follow): every event once, in order,
        # deltas included (watch *).
        ids = [e.id for e in seen if e.id is not None and e.id <= upto]
        in_db = [
            r["id"]
            for r in db_rows(home, "SELECT id FROM events WHERE id <= ? ORDER BY id", (upto,))
        ]
        assert ids == in_db
        # Then live: a new run's events arrive without asking again.
        await late.call("run.start", task="more", sandbox="local")
        await wait_for(
            lambda: any(e.type == "run.created" and e.id > upto for e in seen), what="live"
        )
        await late.close()


async def test_bad_commands_are_refused_clearly(home: Path) -> None:
    with scripted(slow_worker(steps=30, delay_s=0.3)):
        client = await Client.connect(home)
        try:
            from supervisor.errors import InputError

            with pytest.raises(InputError, match="needs a task"):
                await client.call("run.start", task="  ")
            with pytest.raises(InputError, match="unknown sandbox backend"):
                await client.call("run.start", task="x", sandbox="teleporter")
            run_id = (await client.call("run.start", task="w", sandbox="local"))["run_id"]
            agent_id = await wait_for(
                lambda: db_rows(home, "SELECT id FROM agents WHERE run_id = ?", (run_id,)),
                what="the agent",
            )
            agent_id = agent_id[0]["id"]
            with pytest.raises(InputError, match="message too long"):
                await client.call("agent.message", agent=agent_id, text="x" * 1_048_576)
            with pytest.raises(InputError, match="not waiting"):
                await client.call("agent.answer", agent=agent_id, text="yes")
            with pytest.raises(InputError, match="no agent"):
                await client.call("agent.pause", agent="nobody")
            assert await client.call("ping") == "pong"  # still serving
            await client.call("run.stop", run=run_id)
        finally:
            await client.close()


def test_stop_asks_first_and_interrupted_runs_resume_with_their_transcript(home: Path) -> None:
    with scripted(slow_worker(steps=8, delay_s=0.5)) as model:
        started = run_cli("run", "work slowly", "--sandbox", "local", "--detach")
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(model.requests) < 3:
            time.sleep(0.05)

        refused = run_cli("server", "stop")  # not a terminal: no prompt, a clear refusal
        assert refused.returncode == 2
        assert "running" in refused.stderr and "--force" in refused.stderr
        assert running_pid(home)

        assert run_cli("server", "stop", "--force").returncode == 0
        (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
        assert run["status"] == "interrupted"
        before = len(model.requests)

        # The next server takes the run up again (server.auto_resume).
        followed = run_cli("resume", run_id)
        assert followed.returncode in (0, 2), followed.stderr
        if followed.returncode == 2:  # already resumed on start: follow it instead
            assert "already running" in followed.stderr
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
                if run["status"] == "done":
                    break
                time.sleep(0.1)
        (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
        assert run["status"] == "done"
        resumed = model.requests[before]
        results = [m["content"] for m in resumed["messages"] if m["role"] == "tool"]
        # The agent went on from its transcript, not from scratch...
        assert len(results) >= 2
        # ...in the same sandbox: the file it wrote before the stop is still there.
        last = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]
        assert "kept-across-crash" in last[-1]


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_kill_9_mid_run_then_resume(
    home: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """The supervisor process dies without warning: nothing a client saw is lost, the
    database is intact, and the run carries on in a new process, in the same sandboxes."""
    if backend == "docker":
        request.getfixturevalue("sandbox_image")
    with scripted(slow_worker(steps=10, delay_s=0.4)) as model:

        async def start_and_watch() -> tuple[str, list[int], int]:
            client = await Client.connect(home)
            seen: list[Event] = []
            client.on_events(seen.extend)
            await client.subscribe(after=client.last_event_id(), watch=["*"])
            run_id = (await client.call("run.start", task="w", sandbox="local", agents=2))["run_id"]
            await wait_for(lambda: len(model.requests) >= 6, what="a few steps")
            pid = client.pid
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: not client.connected, what="the disconnect")
            await client.close()
            return run_id, [e.id for e in seen if e.id is not None], pid

        run_id, seen_ids, pid = asyncio.run(start_and_watch())
        assert seen_ids
        conn = sqlite3.connect(home / "supervisor.db")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {r[0] for r in conn.execute("SELECT id FROM events")}
        finally:
            conn.close()
        assert set(seen_ids) <= stored  # every event a client was shown survived

        sandboxes = db_rows(home, "SELECT sandbox_id FROM agents WHERE run_id = ?", (run_id,))
        before = len(model.requests)
        result = subprocess.run(
            [*SUPERVISOR, "resume", run_id], capture_output=True, text=True, timeout=120
        )
        if result.returncode == 2:  # the new server resumed it on start already
            assert "already running" in result.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
            if run["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert run["status"] == "done"
        agents = db_rows(home, "SELECT status, summary FROM agents WHERE run_id = ?", (run_id,))
        assert [a["status"] for a in agents] == ["done", "done"]
        # Re-adopted, not recreated: the same sandboxes carried on.
        assert db_rows(home, "SELECT sandbox_id FROM agents WHERE run_id = ?", (run_id,)) == (
            sandboxes
        )
        assert running_pid(home) not in (None, pid)
        assert len(model.requests) > before
        assert any(
            "kept-across-crash" in str(m.get("content"))
            for r in model.requests[before:]
            for m in r["messages"]
        )


def test_ctrl_c_detaches_and_the_agents_keep_working(home: Path) -> None:
    forever = lambda messages: Reply(  # noqa: E731
        text="working", tool_calls=[("shell", {"command": "sleep 0.2"})]
    )
    with scripted(forever) as model:
        proc = subprocess.Popen(
            [*SUPERVISOR, "run", "t", "--sandbox", "local"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(model.requests) < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "→ shell: sleep 0.2" in out and "detached" in err
        steps = len(model.requests)
        time.sleep(1.5)
        assert len(model.requests) > steps  # still working without the terminal
        (agent,) = db_rows(home, "SELECT status FROM agents")
        assert agent["status"] == "running"


async def test_steering_a_running_agent(home: Path) -> None:
    forever = lambda messages: Reply(  # noqa: E731
        text="working", tool_calls=[("shell", {"command": "echo step"})], delay_s=0.1
    )
    with scripted(forever) as model:
        client = await Client.connect(home)
        try:
            run_id = (await client.call("run.start", task="w", sandbox="local"))["run_id"]

            def agent_row() -> dict[str, Any]:
                rows = db_rows(home, "SELECT * FROM agents WHERE run_id = ?", (run_id,))
                return rows[0] if rows else {}

            await wait_for(lambda: agent_row().get("steps", 0) >= 2, what="steps")
            agent_id = agent_row()["id"]

            await client.call("agent.pause", agent=agent_id)
            await wait_for(lambda: agent_row()["status"] == "paused", what="paused")
            count = len(model.requests)
            await asyncio.sleep(1.0)
            assert len(model.requests) == count  # no model calls while paused

            await client.call("agent.resume", agent=agent_id)
            await wait_for(lambda: len(model.requests) > count + 1, what="working again")

            assert await client.call("agent.message", agent=agent_id, text="use blue") == "sent"
            await wait_for(
                lambda: any(
                    m["role"] == "user" and m["content"] == "use blue"
                    for m in model.requests[-1]["messages"]
                ),
                what="the message to reach the model",
            )

            await client.call("agent.keep", agent=agent_id)
            await client.call("agent.stop", agent=agent_id)
            await wait_for(lambda: agent_row()["status"] == "stopped", what="stopped")
            sandbox = Path(agent_row()["sandbox_id"])
            assert sandbox.is_dir()  # kept
            await asyncio.sleep(0.3)
            count = len(model.requests)

            await client.call("agent.restart", agent=agent_id)
            await wait_for(lambda: len(model.requests) > count, what="restarted")
            replayed = model.requests[count]["messages"]
            # It goes on from its transcript, the person's message included, in its sandbox.
            assert sum(1 for m in replayed if m["role"] == "tool") >= 3
            assert any(m["role"] == "user" and m["content"] == "use blue" for m in replayed)
            assert agent_row()["sandbox_id"] == str(sandbox)
            await client.call("run.stop", run=run_id)
        finally:
            await client.close()
