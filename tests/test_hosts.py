"""`supervisor hosts` against real OpenSSH servers on 127.0.0.x (see tests/sshd_kit.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd_kit
from conftest import SUPERVISOR, run_cli

from supervisor import hosts as h

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd_kit.SSHServer]:
    """One sshd for the module, with a plain user and one per scripted GPU layout."""
    with sshd_kit.sshd(tmp_path_factory.mktemp("sshd"), "", "one", "eight-mixed", "gb10") as (
        srv,
        _users,
    ):
        yield srv


def user(server: sshd_kit.SSHServer, i: int = 0) -> sshd_kit.User:
    return server.users[i]


def target(server: sshd_kit.SSHServer, u: sshd_kit.User) -> str:
    return f"{u.name}@{server.host}:{server.port}"


def add(
    server: sshd_kit.SSHServer, name: str, u: sshd_kit.User, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`hosts add --password`, the password typed on stdin as a person would."""
    return run_cli(
        "hosts",
        "add",
        name,
        target(server, u),
        "--password",
        "--trust",
        server.fingerprint(),
        *extra,
        input=u.password + "\n",
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def refused_after_prompt(result: subprocess.CompletedProcess[str]) -> str:
    """The error line after a question the person answered no to."""
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last
    return last


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_password_bootstrap_then_key_only_login(server: sshd_kit.SSHServer, home: Path) -> None:
    u = user(server)
    result = add(server, "box", u)
    assert result.returncode == 0, result.stderr
    assert f"added box ({target(server, u)}), key {server.fingerprint()}" in result.stdout
    assert "installed supervisor's key" in result.stderr
    # Installed as ssh-copy-id does: owner-only .ssh and authorized_keys, our key once.
    ssh = u.home / ".ssh"
    assert ssh.stat().st_mode & 0o777 == 0o700
    assert (ssh / "authorized_keys").stat().st_mode & 0o777 == 0o600
    public = (home / "ssh" / "id_ed25519.pub").read_text().strip()
    assert u.authorized_keys().splitlines().count(public) == 1
    assert (home / "ssh").stat().st_mode & 0o777 == 0o700
    assert (home / "ssh" / "id_ed25519").stat().st_mode & 0o777 == 0o600
    # Adding again adds no second line.
    again = add(server, "box", u)
    assert again.returncode == 0 and "already in" in again.stderr
    assert u.authorized_keys().splitlines().count(public) == 1
    # The password changes on the host: supervisor does not need it any more.
    subprocess.run(
        ["chpasswd"], input=f"{u.name}:changed-{os.urandom(4).hex()}\n", text=True, check=True
    )
    done = run_cli("hosts", "exec", "box", "--", "whoami")
    assert done.returncode == 0 and done.stdout == f"{u.name}\n", done.stderr
    assert "Accepted publickey for " + u.name in server.log
    # The password is nowhere: not in the data directory, the database, or any output.
    outputs = result.stdout + result.stderr + again.stdout + again.stderr + done.stdout
    assert u.password not in outputs
    assert u.password.encode() not in all_bytes(home)
    subprocess.run(["chpasswd"], input=f"{u.name}:{u.password}\n", text=True, check=True)
    listed = json.loads(run_cli("hosts", "ls", "--json").stdout)
    assert listed[0]["name"] == "box" and listed[0]["reachable"] is True
    assert listed[0]["host_key"] == server.fingerprint()


def test_unknown_key_is_refused_unless_trusted(server: sshd_kit.SSHServer, home: Path) -> None:
    u = user(server)
    fp = server.fingerprint()
    authorized = u.authorized_keys()
    # Asked, and the person says no: nothing recorded, the password never asked for.
    refused = run_cli("hosts", "add", "box", target(server, u), "--password", input="n\n")
    line = refused_after_prompt(refused)
    assert fp in line and "not trusted" in line
    assert "password for" not in refused.stderr
    assert json.loads(run_cli("hosts", "ls", "--json").stdout) == []
    pins = home / "ssh" / "known_hosts"
    assert not pins.exists() or f"[{server.host}]:{server.port}" not in pins.read_text()
    # A script passing the wrong fingerprint is refused too.
    wrong = "SHA256:" + "A" * 43
    line = one_line_error(
        run_cli(
            "hosts",
            "add",
            "box",
            target(server, u),
            "--password",
            "--trust",
            wrong,
            input=u.password + "\n",
        )
    )
    assert fp in line and f"--trust {fp}" in line
    assert u.authorized_keys() == authorized
    # Shown the fingerprint and told yes: trusted, then the password is asked.
    ok = run_cli("hosts", "add", "box", target(server, u), "--password", input=f"y\n{u.password}\n")
    assert ok.returncode == 0, ok.stderr
    assert fp in ok.stderr
    pins = (home / "ssh" / "known_hosts").read_text()
    assert f"[{server.host}]:{server.port} ssh-ed25519 " in pins


def test_changed_key_is_refused_with_both_fingerprints(tmp_path: Path, home: Path) -> None:
    with sshd_kit.sshd(tmp_path / "sshd", "") as (srv, (u,)):
        old = srv.fingerprint()
        assert add(srv, "box", u).returncode == 0
        pins_before = (home / "ssh" / "known_hosts").read_text()
        srv.new_host_key()
        srv.restart()
        new = srv.fingerprint()
        line = one_line_error(run_cli("hosts", "exec", "box", "--", "true"))
        assert "CHANGED" in line and old in line and new in line
        assert f"supervisor hosts add box {u.name}@{srv.host}:{srv.port} --trust {new}" in line
        assert "Accepted" not in srv.log.split("Server listening")[-1]  # never logged in
        # Re-trusting deliberately, with the command the error gave:
        retrust = line.split("re-trust it deliberately: supervisor ")[1].split()
        assert run_cli(*retrust).returncode == 0
        assert run_cli("hosts", "exec", "box", "--", "true").returncode == 0
        # known_hosts was appended to, never rewritten.
        assert (home / "ssh" / "known_hosts").read_text().startswith(pins_before)
        # The old key is refused again, now that the new one is pinned.
        assert h.read_pins()[f"[{srv.host}]:{srv.port}"]["ssh-ed25519"].get_base64() in (
            srv.host_key_path.with_suffix(".pub").read_text()
        )


def test_unreachable_hosts_fail_within_the_deadline(home: Path) -> None:
    host, port = sshd_kit.free_address()  # nobody listens there
    start = time.monotonic()
    line = one_line_error(
        run_cli("hosts", "add", "gone", f"me@{host}:{port}", "--trust", "SHA256:" + "A" * 43)
    )
    assert "connection refused" in line and f"{host}:{port}" in line
    assert time.monotonic() - start < 10
    sock, host, port = sshd_kit.silent_listener()
    try:
        start = time.monotonic()
        line = one_line_error(
            run_cli("hosts", "add", "mute", f"me@{host}:{port}", "--trust", "SHA256:" + "A" * 43)
        )
        took = time.monotonic() - start
    finally:
        sock.close()
    assert "no SSH banner or handshake within 10 s" in line
    assert took < h.TIMEOUT_S + 8
    assert json.loads(run_cli("hosts", "ls", "--json").stdout) == []


def test_a_host_that_stops_answering_is_noticed_within_30s(tmp_path: Path, home: Path) -> None:
    with sshd_kit.sshd(tmp_path / "sshd", "") as (srv, (u,)):
        assert add(srv, "box", u).returncode == 0
        conn = h.connect(h.get_host("box"))
        outcome: dict[str, object] = {}

        def long_command() -> None:
            try:
                outcome["result"] = h.run(conn, "sleep 120", timeout=300)
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=long_command, daemon=True)
        worker.start()
        time.sleep(0.5)
        frozen = srv.freeze()  # the TCP connection stays open; nothing answers
        start = time.monotonic()
        try:
            with pytest.raises(h.HostLost, match="stopped answering"):
                h.watch(conn, every=1.0)
            noticed = time.monotonic() - start
            conn.close()
            worker.join(15)
        finally:
            srv.kill_sessions(frozen)
        assert noticed < 30
        assert not worker.is_alive()
        assert "error" in outcome  # the command's caller is told, not left hanging
        # `hosts exec` notices by itself, without anyone watching.
        proc = subprocess.Popen(
            [*SUPERVISOR, "hosts", "exec", "box", "--", "echo started; sleep 120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        frozen = srv.freeze()
        start = time.monotonic()
        try:
            _, err = proc.communicate(timeout=45)
        finally:
            srv.kill_sessions(frozen)
        assert time.monotonic() - start < 30
        assert proc.returncode == 1 and "stopped answering during a command" in err
        assert len(err.strip().splitlines()) == 1


def test_facts_for_each_gpu_layout(server: sshd_kit.SSHServer, home: Path) -> None:
    for i, name in enumerate(["plain", "one", "mixed", "spark"]):
        assert add(server, name, user(server, i)).returncode == 0
    checked = run_cli("hosts", "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {o["name"] for o in json.loads(checked.stdout) if o["ok"]} == {
        "plain",
        "one",
        "mixed",
        "spark",
    }
    hosts = {x["name"]: x for x in json.loads(run_cli("hosts", "ls", "--json").stdout)}
    facts = {name: x["facts"] for name, x in hosts.items()}
    for f in facts.values():
        assert f["arch"] and f["kernel"] and f["cpus"] >= 1 and f["ram_mb"] > 0
        assert f["disk_free_gb"] > 0 and f["os"] and f["python"]
    assert facts["plain"]["gpus"] == [] and facts["plain"]["gpu_error"] == ""
    (gpu,) = facts["one"]["gpus"]
    assert gpu["name"] == "NVIDIA GeForce RTX 4090" and gpu["memory_total_mb"] == 24564
    assert (
        gpu["compute_capability"] == "8.9"
        and gpu["cuda"] == "12.4"
        and gpu["driver"] == "550.54.14"
    )
    assert gpu["mig"] is None and gpu["power_w"] == pytest.approx(28.43) and not gpu["busy"]
    assert len(gpu) >= 12
    mixed = facts["mixed"]["gpus"]
    assert [g["index"] for g in mixed] == list(range(8))
    assert {g["name"] for g in mixed} == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"}
    assert [g["memory_total_mb"] for g in mixed] == [81559] * 4 + [81920] * 4
    assert [g["compute_capability"] for g in mixed] == ["9.0"] * 4 + ["8.0"] * 4
    assert mixed[5]["mig"] == "Enabled" and mixed[0]["mig"] == "Disabled"
    assert len({g["uuid"] for g in mixed}) == 8
    assert hosts["mixed"]["gpus_busy"] == 3
    (spark,) = facts["spark"]["gpus"]
    assert spark["name"] == "NVIDIA GB10" and spark["memory_unified"] is True
    assert spark["memory_total_mb"] == facts["spark"]["ram_mb"]  # [N/A]: sized from RAM
    assert spark["compute_capability"] == "12.1" and spark["cuda"] == "13.0"
    assert spark["power_limit_w"] is None
    table = run_cli("hosts", "ls").stdout
    assert "8 GPUs, 5 free" in table and "reachable" in table
    # The load each check read, over the host's cores, as the TUI's hosts view shows it.
    mixed_line = next(line for line in table.splitlines() if line.startswith("mixed "))
    load = f"load {facts['mixed']['load1']:.1f}/{facts['mixed']['cpus']}"
    assert load in mixed_line
    # A host that went away is shown unreachable, with why, and the others still answer.
    srv_down = run_cli(
        "hosts", "add", "gone", f"x@{sshd_kit.free_address()[0]}:1", "--trust", "SHA256:" + "A" * 43
    )
    assert srv_down.returncode == 2


def test_exec_timeout_kills_the_remote_process_group(
    server: sshd_kit.SSHServer, home: Path
) -> None:
    u = user(server)
    assert add(server, "box", u).returncode == 0
    marker = f"sv{os.urandom(3).hex()}"
    start = time.monotonic()
    result = run_cli(
        "hosts",
        "exec",
        "box",
        "--timeout",
        "1",
        "--",
        f"sh -c 'sleep 300; echo {marker}' & sleep 301",
    )
    assert result.returncode == 124 and "killed after 1 s" in result.stderr
    assert time.monotonic() - start < 20
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = subprocess.run(
            ["pgrep", "-u", u.name, "-f", "sleep 30"], capture_output=True, text=True
        ).stdout
        if not left:
            break
        time.sleep(0.1)
    assert left == ""


def test_forward_a_remote_port(server: sshd_kit.SSHServer, home: Path, tmp_path: Path) -> None:
    u = user(server)
    assert add(server, "box", u).returncode == 0
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from the host\n")
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "-d",
            str(tmp_path / "www"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    forward = None
    try:
        assert web.stdout is not None
        remote_port = int(web.stdout.readline().split("port ")[1].split()[0])
        forward = subprocess.Popen(
            [*SUPERVISOR, "hosts", "forward", "box", str(remote_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert forward.stdout is not None
        line = forward.stdout.readline()
        assert f"-> box:{remote_port}" in line, line
        local = int(line.split("127.0.0.1:")[1].split()[0])
        assert local != remote_port  # the remote's port is taken here (same machine)
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/hello.txt", timeout=10) as resp:
            assert resp.read() == b"hello from the host\n"
    finally:
        if forward is not None:
            forward.send_signal(2)
            forward.wait(15)
        web.kill()
        web.wait(10)


def test_ssh_config_is_honoured_but_not_its_host_key_policy(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    u = user(server)
    fake_home = tmp_path / "person"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "config").write_text(
        f"Host gpubox\n  HostName {server.host}\n  Port {server.port}\n  User {u.name}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  ForwardAgent yes\n"
    )
    env = {"HOME": str(fake_home)}
    line = refused_after_prompt(
        run_cli("hosts", "add", "g", "gpubox", "--password", env=env, input="n\n")
    )
    assert server.fingerprint() in line  # StrictHostKeyChecking no changed nothing
    ok = run_cli(
        "hosts",
        "add",
        "g",
        "gpubox",
        "--password",
        "--trust",
        server.fingerprint(),
        env=env,
        input=u.password + "\n",
    )
    assert ok.returncode == 0, ok.stderr
    assert run_cli("hosts", "exec", "g", "--", "whoami", env=env).stdout == f"{u.name}\n"


def test_bad_input_is_one_line_and_changes_nothing(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    u = user(server)
    assert add(server, "box", u).returncode == 0
    before = json.loads(run_cli("hosts", "ls", "--json").stdout)
    not_a_key = tmp_path / "id_fake"
    not_a_key.write_text("this is not a key\n")
    cases = [
        (["hosts", "add", "x", "bob@"], "is not user@host[:port]"),
        (["hosts", "add", "x", "bob@host:99999"], "port 99999"),
        (["hosts", "add", "x", "a@b@c"], "is not user@host[:port]"),
        (["hosts", "add", "bad name", "bob@127.0.0.1"], "host name"),
        (
            ["hosts", "add", "x", target(server, u), "--key", str(not_a_key)],
            "is not an SSH private key",
        ),
        (
            ["hosts", "add", "x", target(server, u), "--key", str(tmp_path / "missing")],
            "does not exist",
        ),
        (["hosts", "add", "x", target(server, u), "--jump", "nope@"], "jump host"),
        (["hosts", "add", "x", target(server, u), "--trust", "md5:00"], "not a SHA256 fingerprint"),
        (["hosts", "add", "box", f"other@{server.host}:{server.port}"], "already exists"),
        (["hosts", "exec", "nosuch", "--", "true"], "no host named 'nosuch'"),
        (["hosts", "rm", "nosuch"], "no host named 'nosuch'"),
        (["hosts", "check", "nosuch"], "no host named 'nosuch'"),
        (["hosts", "forward", "nosuch", "80"], "no host named 'nosuch'"),
    ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # each its own process; none changes anything
        results = list(pool.map(lambda case: run_cli(*case[0]), cases))
    for (args, expected), result in zip(cases, results, strict=True):
        line = one_line_error(result)
        assert expected in line, (args, line)
    assert json.loads(run_cli("hosts", "ls", "--json").stdout) == before
    assert run_cli("hosts", "rm", "box").returncode == 0
    assert json.loads(run_cli("hosts", "ls", "--json").stdout) == []


def test_jump_host_is_checked_the_same_way(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    with sshd_kit.sshd(tmp_path / "bastion", "") as (bastion, (b,)):
        jump = f"{b.name}@{bastion.host}:{bastion.port}"
        u = user(server)
        # The bastion's key is unknown: asked, refused, nothing recorded.
        line = refused_after_prompt(
            run_cli(
                "hosts",
                "add",
                "gpu",
                target(server, u),
                "--jump",
                jump,
                "--trust",
                server.fingerprint(),
                input="n\n",
            )
        )
        assert bastion.fingerprint() in line and "not trusted" in line
        assert json.loads(run_cli("hosts", "ls", "--json").stdout) == []
        # Registered first (its key pinned, supervisor's key installed), it carries the way.
        assert add(bastion, "bastion", b).returncode == 0
        before = bastion.log.count("Accepted publickey")
        added = add(server, "gpu", u, "--jump", jump)
        assert added.returncode == 0, added.stderr
        done = run_cli("hosts", "exec", "gpu", "--", "whoami")
        assert done.stdout == f"{u.name}\n"
        assert bastion.log.count("Accepted publickey") >= before + 2  # add + exec went through it
        assert json.loads(run_cli("hosts", "ls", "--json").stdout)[1]["jump"] == jump
        # A bastion whose key changed stops the way in.
        bastion.new_host_key()
        bastion.restart()
        line = one_line_error(run_cli("hosts", "exec", "gpu", "--", "true"))
        assert "CHANGED" in line and bastion.fingerprint() in line and "bastion" in line


def test_add_with_the_persons_own_key(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    u = user(server, 1)
    key = tmp_path / "id_mine"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    u.write(".ssh/authorized_keys", (tmp_path / "id_mine.pub").read_text(), mode=0o600)
    os.chmod(u.home / ".ssh", 0o700)
    added = run_cli(
        "hosts",
        "add",
        "mine",
        target(server, u),
        "--key",
        str(key),
        "--trust",
        server.fingerprint(),
    )
    assert added.returncode == 0, added.stderr
    assert not (home / "ssh" / "id_ed25519").exists()  # no key of supervisor's was needed
    assert run_cli("hosts", "exec", "mine", "--", "echo", "a b").stdout == "a b\n"
    assert (
        json.loads(run_cli("hosts", "ls", "--json").stdout)[0]["facts"]["gpus"][0]["name"]
        == "NVIDIA GeForce RTX 4090"
    )


def test_add_at_a_terminal_asks_and_hides_the_password(
    server: sshd_kit.SSHServer, home: Path
) -> None:
    """A person at a terminal: asked to trust the key, then for the password, not echoed."""
    import pty
    import select

    u = user(server, 2)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal
        os.execv(
            SUPERVISOR[0], [*SUPERVISOR, "hosts", "add", "tty", target(server, u), "--password"]
        )
    seen = b""

    def read_until(text: bytes, timeout: float = 60) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"[y/N]: ")
        assert server.fingerprint().encode() in seen
        os.write(fd, b"y\n")
        read_until(b"password for")
        read_until(b": ", timeout=10)
        os.write(fd, u.password.encode() + b"\n")
        read_until(b"added tty")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert u.password.encode() not in seen  # never echoed


def test_a_chatty_login_shell_does_not_get_in_the_way(
    server: sshd_kit.SSHServer, home: Path
) -> None:
    u = user(server, 3)
    rc = u.home / ".bashrc"
    old = rc.read_text() if rc.exists() else ""
    u.write(".bashrc", "echo noise-from-bashrc\n" + old)
    try:
        assert add(server, "chatty", u).returncode == 0  # facts still parse
        done = run_cli("hosts", "exec", "chatty", "--", "echo", "hi")
        assert done.stdout == "hi\n", done.stdout
    finally:
        u.write(".bashrc", old)


def test_a_host_that_opens_no_session_is_one_line(
    server: sshd_kit.SSHServer, home: Path, tmp_path: Path
) -> None:
    """sshd with MaxSessions 0 accepts the login but opens no session: `hosts add` says
    so in one line, exit 2, and records nothing."""
    closed = sshd_kit.SSHServer(tmp_path / "closed", users=[user(server)], max_sessions=0)
    closed.start()
    try:
        added = add(closed, "closed", user(server))
    finally:
        closed.stop()
    line = refused_after_prompt(added)  # after the password prompt and progress lines
    assert "logged in, but sshd refused to open a session" in line and "MaxSessions" in line
    assert json.loads(run_cli("hosts", "ls", "--json").stdout) == []
