"""The ssh sandbox backend and `supervisor run --host`, against a real sshd on 127.0.0.x.

The "remote host" is this machine reached over SSH, so its Docker engine is the local one:
a user in the docker group gets a container there, a user outside it a folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd_kit
from agent_kit import engine, last_results, scripted
from conftest import run_cli

from supervisor import hosts as h
from supervisor.engine import RunOptions
from supervisor.sandbox.base import SandboxError, SandboxSpec
from supervisor.sandbox.ssh import SSHSandbox
from supervisor.testing import Reply

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd_kit.SSHServer]:
    """One sshd: users[0] outside the docker group (folder mode), users[1] inside it."""
    users = [sshd_kit.create_user(), sshd_kit.create_user(docker=True)]
    srv = sshd_kit.SSHServer(tmp_path_factory.mktemp("sshd"), users=users)
    try:
        yield srv.start()
    finally:
        srv.stop()
        for u in users:
            sshd_kit.remove_user(u)


@pytest.fixture(scope="module")
def narrow(
    server: sshd_kit.SSHServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sshd_kit.SSHServer]:
    """A second sshd for the folder user that allows only 3 sessions per connection."""
    srv = sshd_kit.SSHServer(
        tmp_path_factory.mktemp("narrow"), users=[server.users[0]], max_sessions=3
    )
    try:
        yield srv.start()
    finally:
        srv.stop()


def register(server: sshd_kit.SSHServer, name: str, u: sshd_kit.User) -> h.Host:
    return h.add_host(
        name,
        f"{u.name}@{server.host}:{server.port}",
        password=lambda: u.password,
        trust=server.fingerprint(),
    )


async def test_folder_sandbox_on_a_host_without_docker(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    u = server.users[0]
    register(server, "box", u)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("first\n")
    box = SSHSandbox(
        SandboxSpec(
            run_id="r1", agent_id="a1", workspace=tmp_path / "ws", env={"GREETING": "hi there"}
        ),
        host="box",
    )
    await box.start()
    try:
        assert box.mode == "folder" and not box.isolated
        assert "NOT isolated" in box.note and "box" in box.note
        root = Path(box.root)
        assert root.parent == u.home / ".supervisor" / "sandboxes"
        assert (root / "workspace" / "notes.txt").read_text() == "first\n"
        first = await box.exec('echo "$GREETING from $(whoami)"; cd /tmp')
        assert first.stdout == f"hi there from {u.name}\n"
        assert (await box.exec("pwd")).stdout == "/tmp\n"  # the shell persists
        # One channel, one shell: a command is a round trip, not a new session.
        start = time.perf_counter()
        for _ in range(50):
            assert (await box.exec("true")).ok
        assert (time.perf_counter() - start) / 50 < 0.05
        await box.write_file("sub/new.txt", b"made here\n")
        assert await box.read_file(f"{box.workdir}/sub/new.txt") == b"made here\n"
        names = [Path(f.path).name for f in await box.list_files(box.workdir)]
        assert "notes.txt" in names and "sub" in names
        await box.copy_out(box.workdir, tmp_path / "out")
        assert (tmp_path / "out" / "sub" / "new.txt").read_text() == "made here\n"
        # A command past its timeout is killed on the host; the shell stays usable.
        slow = await box.exec("sleep 300 & sleep 301", timeout=1)
        assert slow.timed_out
        assert (await box.exec("echo still here")).stdout == "still here\n"
        ps = await box.exec(f"pgrep -u {u.name} -f 'sleep 30[01]' || true")
        assert ps.stdout == ""
        # The connection drops while the shell is idle: the next command reconnects, says so.
        assert (await box.exec("cd /tmp")).ok
        server.kill_sessions()
        deadline = time.monotonic() + 10
        while not (box._channel is not None and box._channel.ended):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        back = await box.exec("pwd")
        assert back.ok and back.stdout == f"{box.workdir}\n"
        assert "was lost and made again; cwd and variables were reset" in back.stderr
        # Re-adoption by id (what `agent diff` and a restarted supervisor do).
        again = SSHSandbox.attach(box.id)
        assert (await again.exec("cat notes.txt")).stdout == "first\n"
        await again.stop()
        await again.destroy()  # releases its link; the folder goes with it
        assert not root.exists()
    finally:
        await box.destroy()


@pytest.mark.docker
async def test_container_sandbox_on_a_host_with_docker(
    server: sshd_kit.SSHServer, home: Path, sandbox_image: str
) -> None:
    register(server, "dock", server.users[1])
    box = SSHSandbox(SandboxSpec(run_id="r1", agent_id="a2"), host="dock")
    await box.start()
    try:
        assert box.mode == "container" and box.isolated and "container" in box.note
        who = await box.exec("id -u; grep CapEff /proc/self/status; cat /proc/net/dev | wc -l")
        uid, caps, netdevs = who.stdout.split("\n")[:3]
        assert uid == "1000" and caps.split()[1] == "0" * 16
        assert int(netdevs) == 3  # header lines + lo only: no network
        assert (await box.exec("touch /etc/x")).exit_code != 0  # read-only root
        await box.write_file("a.txt", b"in the container\n")
        assert await box.read_file("/workspace/a.txt") == b"in the container\n"
        import docker

        client = docker.from_env()
        container = client.containers.get(box.container)
        assert container.labels["supervisor.host"] == "dock"
        assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    finally:
        await box.destroy()
    import docker

    assert not docker.from_env().containers.list(all=True, filters={"id": box.container})


def agent_script(marker: str) -> list[Reply]:
    return [
        Reply(tool_calls=[("shell", {"command": f"echo {marker} >> notes.txt && hostname"})]),
        Reply(tool_calls=[("finish", {"summary": "noted"})]),
    ]


async def run_on_host(name: str, workspace: Path) -> tuple[list[list[str]], str]:
    """An agent's run on host NAME; its results, and `agent diff` while its sandbox lives."""
    with scripted(agent_script("added-by-agent")) as server:
        async with engine() as eng:
            run_id = await eng.start_run(
                RunOptions(task="add a line", host=name, workspace=workspace, keep_sandboxes=True)
            )
            assert await eng.wait_run(run_id) == "done"
            (agent,) = eng.agents.values()
            diff = await asyncio.to_thread(run_cli, "agent", "diff", agent.name)
            assert diff.returncode == 0, diff.stderr
    return [last_results(r) for r in server.requests], diff.stdout


async def test_agent_runs_on_a_host_in_a_folder(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    register(server, "box", server.users[0])
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("first\n")
    results, diff = await run_on_host("box", tmp_path / "ws")
    assert results[1][0].endswith("[exit code 0]")
    agents = json.loads(run_cli("agents", "ls", "--json").stdout)
    assert agents[0]["status"] == "done" and agents[0]["sandbox"] == "ssh"
    transcript = run_cli("transcript", agents[0]["id"], "--format", "jsonl").stdout
    assert "NOT isolated" in transcript and "on host box" in transcript
    assert "+added-by-agent" in diff and "notes.txt" in diff


@pytest.mark.docker
async def test_agent_runs_on_a_host_in_a_container(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path, sandbox_image: str
) -> None:
    register(server, "dock", server.users[1])
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("first\n")
    results, diff = await run_on_host("dock", tmp_path / "ws")
    assert results[1][0].startswith("sandbox\n")  # the container's hostname
    agents = json.loads(run_cli("agents", "ls", "--json").stdout)
    assert agents[0]["status"] == "done" and agents[0]["sandbox"] == "ssh"
    transcript = run_cli("transcript", agents[0]["id"], "--format", "jsonl").stdout
    assert "in a container on host dock" in transcript
    assert "+added-by-agent" in diff and "notes.txt" in diff


async def test_run_on_an_unknown_host_is_bad_input(home: Path) -> None:
    with scripted([]):
        result = run_cli("run", "--foreground", "--host", "nosuch", "do it")
        clash = run_cli("run", "--foreground", "--host", "nosuch", "--sandbox", "local", "do it")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no host named 'nosuch' (known: none yet; add one: supervisor hosts add)"
    ]
    assert clash.returncode == 2
    assert clash.stderr.strip().splitlines() == [
        "error: --host runs agents in ssh sandboxes, not 'local'"
    ]


async def test_agent_is_told_when_its_host_stops_answering(tmp_path: Path, home: Path) -> None:
    with sshd_kit.sshd(tmp_path / "sshd", "") as (srv, (u,)):
        register(srv, "box", u)
        script = [
            Reply(tool_calls=[("shell", {"command": "sleep 120"})]),
            Reply(tool_calls=[("shell", {"command": "echo back"})]),
            Reply(tool_calls=[("finish", {"summary": "ok"})]),
        ]
        with scripted(script) as model:
            async with engine() as eng:
                run_id = await eng.start_run(RunOptions(task="wait", host="box"))
                deadline = time.monotonic() + 60
                while len(model.requests) < 1 or not srv.sessions():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # the sleep is running on the host
                frozen = srv.freeze()
                start = time.monotonic()
                try:
                    while len(model.requests) < 2:
                        assert time.monotonic() - start < 30, "the dead host was not noticed"
                        await asyncio.sleep(0.2)
                    noticed = time.monotonic() - start
                finally:
                    srv.kill_sessions(frozen)
                assert await eng.wait_run(run_id) == "done"
        told = last_results(model.requests[1])[0]
        assert "stopped answering" in told and "outcome is unknown" in told
        assert noticed < 30
        assert last_results(model.requests[2])[0].startswith("back")  # reconnected


@pytest.mark.parametrize("mode", ["folder", pytest.param("container", marks=pytest.mark.docker)])
def test_kill_9_of_the_supervisor_then_resume_readopts_the_host_sandbox(
    server: sshd_kit.SSHServer, home: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    import signal
    import subprocess

    from conftest import SUPERVISOR
    from test_server import db_rows, slow_worker, wait_for

    from supervisor.client import Client

    if mode == "container":
        request.getfixturevalue("sandbox_image")
    register(server, "box", server.users[0 if mode == "folder" else 1])
    with scripted(slow_worker(steps=5, delay_s=0.2)) as model:

        async def start_and_kill() -> str:
            client = await Client.connect(home)
            run_id = (await client.call("run.start", task="w", host="box"))["run_id"]
            await wait_for(lambda: len(model.requests) >= 3, timeout=60, what="a few steps")
            os.kill(client.pid, signal.SIGKILL)
            await wait_for(lambda: not client.connected, what="the disconnect")
            await client.close()
            return str(run_id)

        run_id = asyncio.run(start_and_kill())
        (before,) = db_rows(
            home, "SELECT sandbox, sandbox_id FROM agents WHERE run_id = ?", (run_id,)
        )
        assert before["sandbox"] == "ssh" and before["sandbox_id"].startswith(f"ssh:box:{mode}:")
        result = subprocess.run(
            [*SUPERVISOR, "resume", run_id], capture_output=True, text=True, timeout=120
        )
        assert result.returncode in (0, 2), result.stderr  # 2: the new process resumed it first
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
            if run["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert run["status"] == "done"
        # Re-adopted, not recreated: the same sandbox, with the file written before the crash.
        (after,) = db_rows(home, "SELECT sandbox_id FROM agents WHERE run_id = ?", (run_id,))
        assert after["sandbox_id"] == before["sandbox_id"]
        assert "kept-across-crash" in last_results(model.requests[-1])[-1]


@pytest.mark.docker
async def test_images_on_a_host(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path, sandbox_image: str
) -> None:
    """An image the person named but the host lacks: a folder, and the status says why.
    The default image, when missing, is built on the host from a context streamed there."""
    import docker

    from supervisor.sandbox.ssh import HostLink, build_image

    register(server, "dock", server.users[1])
    missing = f"supervisor-sandbox:missing-{os.urandom(3).hex()}"
    box = SSHSandbox(SandboxSpec(run_id="r", agent_id="img", image=missing), host="dock")
    await box.start()
    try:
        assert box.mode == "folder" and f"image {missing} is not on the host" in box.note
    finally:
        await box.destroy()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nRUN echo built-on-the-host > /tmp/mark\n"
    )
    tag = f"svtest-build:{os.urandom(3).hex()}"
    marker = ""
    lines: list[str] = []
    link = HostLink.get(h.get_host("dock"))
    link.users += 1
    try:
        assert await build_image(link, context, tag, lines.append) == ""
        assert any("Step 2/2" in line or "RUN echo" in line for line in lines)  # progress shown
        out = docker.from_env().containers.run(tag, ["cat", "/tmp/mark"], remove=True)
        assert out == b"built-on-the-host\n"
        marker = f"exit 3 # {tag}"
        (context / "Dockerfile").write_text(f"FROM {sandbox_image}\nRUN {marker}\n")
        failed = await build_image(link, context, tag + "x", lines.append)
        assert failed and "\n" not in failed  # the reason, in one line
    finally:
        await link.release()
        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"status": "exited"}):
            if marker in " ".join(c.attrs["Config"].get("Cmd") or []):  # the failed step's
                c.remove(force=True)
        client.images.remove(tag, force=True)


@pytest.mark.parametrize("max_sessions", [10, 3])
async def test_ten_sandboxes_on_one_host_run_their_commands_at_once(
    server: sshd_kit.SSHServer, narrow: sshd_kit.SSHServer, home: Path, max_sessions: int
) -> None:
    """Every sandbox on a host runs its command at the same time as the others (none waits
    for another's to end), also where sshd allows fewer sessions per connection than
    supervisor would open; files move meanwhile. Then half of them end while the others
    keep working: sshd still counts a closed shell's session until its bash has exited,
    and the others' commands must not fail for it."""
    srv = server if max_sessions == 10 else narrow
    assert srv.max_sessions == max_sessions
    u = server.users[0]
    register(srv, "busy", u)
    boxes = [SSHSandbox(SandboxSpec(run_id="r", agent_id=f"a{i}"), host="busy") for i in range(10)]

    async def work(i: int, box: SSHSandbox) -> tuple[str, bytes]:
        command = "date +%s.%N; sleep 2; date +%s.%N; whoami"
        ran = box.exec(command, timeout=60)
        moved = box.write_file(f"f{i}.txt", f"file {i}".encode())
        result, _ = await asyncio.gather(ran, moved)
        assert result.exit_code == 0 and result.stderr == "", result
        return result.stdout, await box.read_file(f"f{i}.txt")

    try:
        await asyncio.wait_for(asyncio.gather(*(b.start() for b in boxes)), 90)
        done = await asyncio.wait_for(
            asyncio.gather(*(work(i, b) for i, b in enumerate(boxes))), 60
        )

        async def keep_working(box: SSHSandbox) -> list[str]:
            outs = []
            for k in range(10):
                result, _ = await asyncio.gather(
                    box.exec("whoami", timeout=60), box.write_file(f"g{k}.txt", b"g")
                )
                outs.append(f"{result.exit_code} {result.stdout.strip()} {result.stderr}")
            return outs

        ending = asyncio.gather(*(b.destroy() for b in boxes[1::2]))
        working = asyncio.gather(*(keep_working(b) for b in boxes[::2]))
        _, worked = await asyncio.wait_for(asyncio.gather(ending, working), 60)
        assert all(outs == [f"0 {u.name} "] * 10 for outs in worked), worked
        # sshd never dropped a connection for a message on a channel it had closed.
        assert "nonexistent channel" not in srv.log
    finally:
        await asyncio.gather(*(b.destroy() for b in boxes), return_exceptions=True)
    assert [read for _, read in done] == [f"file {i}".encode() for i in range(10)]
    assert all(out.split()[2] == u.name for out, _ in done)
    starts = [float(out.split()[0]) for out, _ in done]
    ends = [float(out.split()[1]) for out, _ in done]
    assert max(starts) < min(ends), "a sandbox's command waited for another's to end"


async def test_a_host_that_keeps_refusing_channels_is_said_plainly(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshd with MaxSessions 0 logs in but opens no session: after the retries, the
    sandbox's error says what the host refused and where to look."""
    from supervisor.sandbox import ssh

    monkeypatch.setattr(ssh, "REFUSED_RETRY_S", 2.0)  # the product waits 20 s
    srv = sshd_kit.SSHServer(tmp_path / "closed", users=[server.users[0]])
    srv.start()
    try:
        register(srv, "closed", server.users[0])
        srv.max_sessions = 0
        srv.restart()
        box = SSHSandbox(SandboxSpec(run_id="r", agent_id="a"), host="closed")
        with pytest.raises(SandboxError) as refused:
            await asyncio.wait_for(box.start(), 30)
    finally:
        srv.stop()
    assert str(refused.value).startswith("host closed refused to open an SSH channel ")
    assert "over 2 s" in str(refused.value) and "MaxSessions" in str(refused.value)
