"""What an agent gone wrong (or an unlucky start) does to its sandbox, on a real engine:
starts that hang, timeouts an agent tries to defeat, a sandbox whose every process is
killed, network reach to the host, and outputs too large to keep in memory."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from agent_kit import engine, last_results, scripted

from supervisor import config
from supervisor.engine import Engine, RunOptions
from supervisor.plugins import get_plugins
from supervisor.sandbox.base import SandboxError, SandboxSpec
from supervisor.sandbox.docker import DockerSandbox, home_label
from supervisor.sandbox.manager import start_sandbox
from supervisor.store import open_default
from supervisor.testing import Reply

pytestmark = pytest.mark.docker

# bash expands BASH_ENV before it reads a command: this shell never gets to the handshake.
HANGING_SHELL = {"BASH_ENV": "$(sleep 3600)"}


def ours(client):  # type: ignore[no-untyped-def]
    return client.containers.list(all=True, filters={"label": f"supervisor.home={home_label()}"})


# -- finding 7: a start that hangs


async def test_a_shell_that_never_answers_fails_the_start_in_time(
    sandbox_image: str, docker_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    box = DockerSandbox(
        SandboxSpec(run_id="r", agent_id="stuck", env=HANGING_SHELL), start_timeout=2
    )
    retries: list[str] = []
    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"did not answer within 2 s \(tried 2 times\)"):
        await asyncio.wait_for(start_sandbox(box, on_retry=retries.append), 60)
    took = time.monotonic() - start
    assert len(retries) == 1 and "did not answer" in retries[0]
    assert 4 <= took < 30, took
    assert ours(docker_client) == []  # both attempts cleaned up


async def test_an_agent_whose_sandbox_hangs_fails_and_the_engine_goes_on(
    sandbox_image: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASH_ENV", HANGING_SHELL["BASH_ENV"])
    script = [Reply(tool_calls=[("finish", {"summary": "ok"})])]
    with scripted(script):
        settings = dict(config.load().values)
        settings["sandbox.env_allow"] = ["BASH_ENV"]
        store = open_default()
        eng = Engine(
            store,
            get_plugins(),
            settings=settings,
            sandbox_kwargs={"docker": {"start_timeout": 2}},
        )
        try:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 60) == "failed"
            (agent,) = [a for a in eng.agents.values() if a.run_id == run_id]
            assert agent.status == "failed"
            assert "did not answer within 2 s (tried 2 times)" in agent.summary
            eng.store.flush()
            logs = [e.text for e in eng.store.events(agent_id=agent.id)]
            assert any("trying once more" in (t or "") for t in logs)
            # The engine still runs agents whose sandboxes do start.
            eng.settings["sandbox.env_allow"] = []
            run2 = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run2), 60) == "done"
        finally:
            await eng.close()
            store.close()


# -- finding 10: timeouts an agent tries to defeat


async def _processes(box) -> list[str]:  # type: ignore[no-untyped-def]
    """The sandbox's live processes other than its own machinery and this listing: its
    init and idle process, and the shells the engine started (their parent is outside
    the sandbox, pid 0). A fork of the agent's shell has the shell's command line, so
    shells are told apart by parent, not by name; the dead (zombies) are not running."""
    r = await box.exec("ps -eo pid=,ppid=,stat=,args=")
    left = []
    for line in r.stdout.splitlines():
        pid, ppid, stat, args = line.split(None, 3)
        if pid == "1" or ppid == "0" or stat.startswith("Z"):
            continue
        if args.startswith(("sandbox-idle", "ps -eo")):
            continue
        left.append(f"{pid} {args}")
    return left


async def test_a_builtin_loop_in_the_shell_itself_is_stopped(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    start = time.monotonic()
    r = await box.exec("while :; do :; done", timeout=1)
    assert r.timed_out and time.monotonic() - start < 8
    assert "the shell was killed too" in r.stderr
    r = await box.exec("echo usable; cat /proc/loadavg")
    assert r.stdout.startswith("usable\n")
    # Nothing spins on: the old shell is gone (only the new shell and its reaper remain).
    shells = (await box.exec("pgrep -c -x bash")).stdout.strip()
    assert shells == "2", shells


async def test_a_fork_bomb_does_not_survive_its_timeout(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    await box.exec("sleep 600 >/dev/null 2>&1 &")  # an earlier background job
    r = await box.exec("bomb() { bomb | bomb & }; bomb; sleep 100", timeout=3)
    assert r.timed_out
    left = await _processes(box)
    assert [p for p in left if "sleep 600" not in p] == [], left[:10]
    assert any("sleep 600" in p for p in left)  # earlier background jobs are kept
    assert (await box.exec("echo fine")).stdout == "fine\n"


async def test_setsid_does_not_escape_the_timeout(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec(
        "setsid sleep 900 </dev/null >/dev/null 2>&1 & "
        "( setsid -f sleep 901 </dev/null >/dev/null 2>&1 ); sleep 100",
        timeout=1,
    )
    assert r.timed_out
    assert await _processes(box) == []


async def test_rewriting_the_start_mark_does_not_defeat_the_timeout(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    # What used to hold the command's start, and what the kill read, from inside.
    tamper = (
        "echo 99999999999 99999 > /tmp/.supervisor-cmd-start; chmod 444 /tmp/.supervisor-cmd-start"
    )
    await box.exec(tamper)
    start = time.monotonic()
    r = await box.exec(f"{tamper}; sleep 100 & sleep 100", timeout=1)
    assert r.timed_out and time.monotonic() - start < 6
    assert await _processes(box) == []


# -- finding 11: every process killed from inside


async def test_kill_all_inside_the_sandbox_restarts_it_with_its_workspace(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    await box.exec("echo precious > /workspace/notes.txt")
    # bash's kill spares the shell itself; the container's main process dies with the rest,
    # so the sandbox is found dead by this call or the next one, which says so.
    first = await box.exec("kill -9 -1", timeout=20)
    second = await box.exec("true", timeout=20)
    told = [x for x in (first, second) if x.sandbox_restarted]
    assert len(told) == 1 and "the sandbox was restarted" in told[0].stderr
    r = await box.exec("cat /workspace/notes.txt; id -u", timeout=20)
    assert r.stdout == "precious\n1000\n"
    assert not (await box.exec("true")).sandbox_restarted
    # Again, between two commands, through a background job: the next call says so too.
    await box.exec("(sleep 0.5; kill -9 -1) >/dev/null 2>&1 &")
    await asyncio.sleep(2)
    r = await box.exec("cat /workspace/notes.txt", timeout=20)
    assert r.stdout == "precious\n" and r.sandbox_restarted


# -- finding 14: a networked sandbox and this machine


@pytest.fixture
def listeners():  # type: ignore[no-untyped-def]
    """TCP listeners on this machine that answer "reached"; yields a function that starts
    one on an address and returns its port."""
    servers: list[socket.socket] = []
    stop = threading.Event()

    def serve(sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"reached\n")

    def start(address: str) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        sock.listen()
        servers.append(sock)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
        return int(sock.getsockname()[1])

    yield start
    stop.set()
    for sock in servers:
        sock.close()


def _gateway(client, name: str) -> str:  # type: ignore[no-untyped-def]
    config = client.networks.get(name).attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or ipaddress.ip_network(config["Subnet"])[1])


async def _reaches(box, address: str, port: int) -> bool:  # type: ignore[no-untyped-def]
    probe = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{port}; head -1 <&3'"
    return (await box.exec(probe, timeout=20)).stdout == "reached\n"


async def test_a_networked_sandbox_does_not_reach_this_machine(
    sandbox_factory, docker_client, listeners
) -> None:  # type: ignore[no-untyped-def]
    bridge = _gateway(docker_client, "bridge")  # docker0, e.g. 172.17.0.1
    on_all = listeners("0.0.0.0")
    on_bridge = listeners(bridge)
    box = await sandbox_factory(network=True)
    assert (await box.exec("ls /sys/class/net")).stdout.split() != ["lo"]  # it has a network
    own = next(iter(docker_client.containers.get(box.id).attrs["NetworkSettings"]["Networks"]))
    gateway = _gateway(docker_client, own)
    for address, port in [(gateway, on_all), (bridge, on_all), (bridge, on_bridge)]:
        assert not await _reaches(box, address, port), f"{address}:{port} answered"
    # Reaching this machine is a separate grant.
    granted = await sandbox_factory(network=True, network_host=True)
    own = next(iter(docker_client.containers.get(granted.id).attrs["NetworkSettings"]["Networks"]))
    assert await _reaches(granted, _gateway(docker_client, own), on_all)
    assert await _reaches(granted, bridge, on_bridge)


async def test_network_is_refused_when_the_host_cannot_be_fenced_off(
    sandbox_image, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # An iptables that refuses every change, first on PATH.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "iptables").write_text(
        "#!/bin/sh\necho 'Permission denied (you must be root)' >&2\nexit 4\n"
    )
    (fake / "iptables").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    box = DockerSandbox(SandboxSpec(run_id="r", agent_id="net", network=True))
    with pytest.raises(SandboxError, match=r"iptables refused \(Permission denied.*network_host"):
        await box.start()
    assert ours(docker_client) == []


# -- finding 15: a long output, and what of it is kept


async def test_a_long_output_is_saved_as_the_agent_is_told(sandbox_image: str, home: Path) -> None:
    size = 110_000_000  # past the 100 MiB kept per stream
    command = f"head -c {size} /dev/zero | tr '\\0' 'x'; echo done >&2"
    script = [
        Reply(tool_calls=[("shell", {"command": command})]),
        Reply(tool_calls=[("finish", {"summary": "ok"})]),
    ]
    with scripted(script) as server:
        async with engine() as eng:
            start = time.monotonic()
            run_id = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 60) == "done"
            took = time.monotonic() - start
    (result,) = last_results(server.requests[-1])
    found = re.search(r"\[stdout was (\d+) bytes; its first (\d+) bytes saved at (\S+)\]", result)
    assert found, result[-600:]
    assert int(found[1]) == size and int(found[2]) == 100 * 1024 * 1024
    saved = Path(found[3])
    assert saved.is_relative_to(home) and saved.stat().st_size == 100 * 1024 * 1024
    with saved.open("rb") as fh:
        assert set(fh.read(1 << 20)) == {ord("x")}
    assert "stderr was" not in result and "[exit code 0]" in result
    assert took < 40, took


async def test_file_tools_after_kill_all_find_the_sandbox_back(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    await box.exec(
        "echo precious > /workspace/notes.txt; (sleep 0.3; kill -9 -1) >/dev/null 2>&1 &"
    )
    await asyncio.sleep(2)
    assert await box.read_file("/workspace/notes.txt") == b"precious\n"  # no 409 Conflict
    await box.write_file("/workspace/after.txt", b"written")
    r = await box.exec("cat /workspace/after.txt")
    assert r.stdout == "written" and r.sandbox_restarted  # the agent is told once
    assert not (await box.exec("true")).sandbox_restarted
