"""The Docker sandbox on a real engine: exec, limits, isolation, files, workspaces."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from supervisor.sandbox.base import SandboxError, SandboxSpec
from supervisor.sandbox.docker import DockerSandbox, docker_client

pytestmark = pytest.mark.docker


async def test_commands_keep_cwd_and_exports(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("echo out; echo err >&2; cd /tmp; export GREETING=hi")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "out\n", "err\n")
    r = await box.exec("pwd; echo $GREETING; printf 'no newline'")
    assert r.stdout == "/tmp\nhi\nno newline"
    assert (await box.exec("exit_code() { return 7; }; exit_code")).exit_code == 7
    r = await box.exec("ls /nope")
    assert r.exit_code == 2 and "No such file" in r.stderr


async def test_per_command_cwd_and_env_do_not_persist(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("pwd; echo $ONLY_HERE", cwd="/tmp", env={"ONLY_HERE": "x y'z"})
    assert r.stdout == "/tmp\nx y'z\n"
    r = await box.exec('pwd; echo "[$ONLY_HERE]"')
    assert r.stdout == "/workspace\n[]\n"


async def test_output_cannot_fake_the_end_marker(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("printf '__SV_deadbeef_0__\\n__SV_READY_x__\\n'; echo real")
    assert r.stdout.endswith("real\n") and "__SV_deadbeef_0__" in r.stdout


async def test_timeout_kills_the_command_and_keeps_the_shell(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    await box.exec("cd /tmp; export KEEP=1; sleep 300 >/dev/null 2>&1 &")
    r = await box.exec("echo started; sleep 100 | cat", timeout=1)
    assert r.timed_out and r.stdout == "started\n" and r.duration_s < 5
    r = await box.exec("pwd; echo $KEEP; pgrep -a sleep")
    # cwd and variables survive; the earlier background sleep survives, the timed-out one not.
    assert r.stdout.splitlines()[:2] == ["/tmp", "1"]
    assert "sleep 300" in r.stdout and "sleep 100" not in r.stdout


async def test_killing_processes_by_name_spares_the_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    await box.exec("pkill sleep; pkill -f sleep; killall -q bash")
    assert (await box.exec("echo still here")).stdout == "still here\n"


async def test_binary_and_invalid_utf8_output(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("printf 'caf\\xc3\\xa9 \\xff\\xfe\\x00 end'; echo 'ünïcödé ✓'")
    assert r.exit_code == 0
    assert r.stdout.startswith("café \ufffd\ufffd\x00 end") and "ünïcödé ✓" in r.stdout
    r = await box.exec('echo "quote \' backslash \\\\ dollar $HOME"; printf "a\tb\n"')
    assert r.stdout == "quote ' backslash \\ dollar /tmp/home\na\tb\n"


async def test_long_output_is_capped_and_saved(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("seq 1 200000")
    assert r.stdout_truncated and r.stdout.startswith("1\n2\n") and r.stdout.endswith("200000\n")
    assert "bytes cut" in r.stdout and len(r.stdout) < 40_000
    assert r.output_path is not None
    saved = Path(f"{r.output_path}.stdout").read_text()
    assert saved.splitlines()[-1] == "200000" and len(saved.splitlines()) == 200000


async def test_a_gigabyte_of_output_keeps_memory_bounded(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await box.exec("head -c 1000000000 /dev/zero | tr '\\0' 'x'", timeout=120)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.exit_code == 0 and r.stdout_truncated
    assert grown_mb < 150, f"supervisor grew by {grown_mb:.0f} MB for 1 GB of output"
    assert Path(f"{r.output_path}.stdout").stat().st_size == 100 * 1024 * 1024  # spool limit


async def test_concurrent_execs_never_interleave(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()

    async def one(i: int) -> None:
        r = await box.exec(f"for n in $(seq 300); do echo token{i}; done; export LAST={i}")
        assert set(r.stdout.split()) == {f"token{i}"} and len(r.stdout.split()) == 300

    await asyncio.gather(*(one(i) for i in range(20)))


async def test_files_roundtrip(sandbox_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    payload = bytes(range(256)) * 100
    await box.write_file("/workspace/deep/dir/blob.bin", payload, mode=0o600)
    assert await box.read_file("/workspace/deep/dir/blob.bin") == payload
    listing = await box.list_files("/workspace/deep/dir")
    assert [(f.path, f.kind, f.size, f.mode) for f in listing] == [
        ("/workspace/deep/dir/blob.bin", "file", len(payload), 0o600)
    ]
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha")
    (src / "b.bin").write_bytes(b"\x00\x01")
    await box.copy_in(src, "/tmp/tree")
    assert (
        await box.exec("cat /tmp/tree/sub/a.txt; stat -c %U /tmp/tree/b.bin")
    ).stdout == "alpha" + "agent\n"
    out = tmp_path / "out"
    await box.copy_out("/tmp/tree", out)
    assert (out / "sub" / "a.txt").read_text() == "alpha" and (
        out / "b.bin"
    ).read_bytes() == b"\x00\x01"
    with pytest.raises(SandboxError, match="cannot read /nope"):
        await box.read_file("/nope")


# -- security


async def test_hardening_inside_the_sandbox(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory()
    r = await box.exec("id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")
    lines = r.stdout.split("\n")
    assert lines[0] != "0" and lines[0] == "1000"
    assert "NoNewPrivs:\t1" in r.stdout and "CapEff:\t0000000000000000" in r.stdout
    for path in ("/etc/evil", "/usr/bin/evil", "/home/agent/evil", "/evil"):
        assert (await box.exec(f"touch {path}")).exit_code != 0, path
    assert (await box.exec("touch /workspace/ok /tmp/ok")).exit_code == 0
    assert (await box.exec("test -S /var/run/docker.sock")).exit_code != 0


@pytest.fixture
def host_server():  # type: ignore[no-untyped-def]
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"reached")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


async def test_no_network_by_default(sandbox_factory, host_server: int) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", host_server), timeout=2):
        pass  # the server answers on the host
    box = await sandbox_factory()
    assert (await box.exec("ls /sys/class/net")).stdout.split() == ["lo"]
    assert (await box.exec("getent hosts deb.debian.org")).exit_code != 0
    port = host_server
    probes = [
        f"curl -sS -m 3 http://127.0.0.1:{port}/",
        f"python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3)\"",
        f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; echo -e \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'",
    ]
    for probe in probes:
        r = await box.exec(probe, timeout=20)
        assert r.exit_code != 0 and "reached" not in r.stdout, probe


async def test_fork_bomb_hits_pids_limit_others_keep_answering(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    bombed = await sandbox_factory(pids=64)
    other = await sandbox_factory()
    r = await bombed.exec("bomb() { bomb | bomb & }; bomb; sleep 3; echo done", timeout=8)
    assert r.timed_out or "retry" in r.stderr or "Resource temporarily unavailable" in r.stderr
    t = asyncio.get_running_loop().time()
    assert (await other.exec("echo alive")).stdout == "alive\n"
    assert asyncio.get_running_loop().time() - t < 2
    assert subprocess.run(["true"]).returncode == 0  # the host still forks


async def test_memory_hog_is_killed_sandbox_survives(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory(memory="256m")
    r = await box.exec("python3 -c 'x = bytearray(2 * 1024**3); print(len(x))'", timeout=60)
    assert r.exit_code == 137 and not r.stdout
    assert (await box.exec("echo survived")).stdout == "survived\n"


async def test_host_secret_is_absent(sandbox_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUPERVISOR_TEST_SECRET", "hunter2-very-secret")
    box = await sandbox_factory(env={"ALLOWED": "yes"})
    r = await box.exec("env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert "hunter2-very-secret" not in r.stdout and "ALLOWED=yes" in r.stdout


# -- lifecycle and bad input


async def test_labels_name_and_cleanup(sandbox_factory, docker_client, home: Path) -> None:  # type: ignore[no-untyped-def]
    from supervisor.sandbox.docker import home_label

    box = await sandbox_factory(run_id="run-abc", agent_id="researcher")
    container = docker_client.containers.get(box.id)
    assert container.name.startswith("sv-run-abc-researcher-")
    assert container.labels["supervisor.run"] == "run-abc"
    assert container.labels["supervisor.agent"] == "researcher"
    assert container.labels["supervisor.home"] == home_label()
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert container.attrs["HostConfig"]["Init"] is True
    await box.destroy()
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"supervisor.home={home_label()}"}
    )
    volumes = docker_client.volumes.list(filters={"label": f"supervisor.home={home_label()}"})
    assert leftovers == [] and volumes == []


async def test_missing_workspace_is_refused_before_anything_starts(
    sandbox_image, docker_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from supervisor.sandbox.docker import home_label
    from supervisor.sandbox.workspace import WorkspaceError

    box = DockerSandbox(SandboxSpec(run_id="r", agent_id="a", workspace=tmp_path / "nope"))
    with pytest.raises(WorkspaceError, match="does not exist"):
        await box.start()
    assert (
        docker_client.containers.list(
            all=True, filters={"label": f"supervisor.home={home_label()}"}
        )
        == []
    )


async def test_sandbox_killed_under_a_command_comes_back(sandbox_factory, docker_client) -> None:  # type: ignore[no-untyped-def]
    doomed = await sandbox_factory()
    other = await sandbox_factory()
    await doomed.exec("echo kept > /workspace/made-before")
    task = asyncio.create_task(doomed.exec("sleep 60"))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(docker_client.containers.get(doomed.id).kill)
    r = await asyncio.wait_for(task, 30)
    assert r.sandbox_restarted and "the sandbox was restarted" in r.stderr
    assert (await doomed.exec("cat /workspace/made-before")).stdout == "kept\n"
    assert (await other.exec("echo fine")).stdout == "fine\n"
    # A removed container cannot come back: that is an error naming it.
    await asyncio.to_thread(docker_client.containers.get(doomed.id).remove, force=True)
    with pytest.raises(SandboxError, match="no longer exists"):
        await asyncio.wait_for(doomed.exec("true"), 30)


async def test_no_engine_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.sandbox.docker import EngineUnavailable

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineUnavailable, match="--sandbox local"):
        docker_client(timeout=2)


async def test_missing_image_is_a_clear_error(sandbox_image) -> None:  # type: ignore[no-untyped-def]
    box = DockerSandbox(SandboxSpec(run_id="r", agent_id="a", image="supervisor-sandbox:nope"))
    with pytest.raises(SandboxError, match="supervisor sandbox build"):
        await box.start()
