"""The deploy API against real processes on this machine (the ``local`` sandbox backend).

systemd is not PID 1 here, nor on CI machines (their PID 1 is a container init), so
``manager="auto"`` picks the fallback supervisor — that is what these tests deploy with,
for real: a setsid loop keeping a small HTTP service alive on a loopback port. The systemd
path's unit text is checked as text; its commands run against a real systemd only on a
host that has one (see the ssh test).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import click
import pytest
import sshd_kit
from conftest import SUPERVISOR

from supervisor.deploy import (
    Deployer,
    DeployError,
    Manager,
    Result,
    Service,
    format_plan,
    render_template,
    systemd_unit,
)
from supervisor.errors import InputError
from supervisor.events import Event, EventType
from supervisor.sandbox.base import SandboxSpec
from supervisor.sandbox.docker import DockerSandbox
from supervisor.sandbox.local import LocalSandbox

SERVER = """\
# $version
import http.server, json, sys

CONFIG = "$config"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        else:
            with open(CONFIG) as f:
                body = json.load(f)["message"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request", fmt % args, flush=True)


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

CONFIG = '{\n  "service": "hello",\n  "message": "$message"\n}\n'
TOKEN = "tok-4f9a2b7c1d"  # an env value that must never reach an event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    sandbox = LocalSandbox(SandboxSpec(run_id="deploy", agent_id="deploy"), root=tmp_path / "box")
    await sandbox.start()
    yield sandbox
    await sandbox.destroy()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    # Safety net: a failed test must not leave its service running.
    for pid in processes_mentioning(str(path)):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


# systemd does not run this machine (nor CI's), so "auto" means the fallback here. Were a
# test machine booted with systemd, the local tests ask for the fallback by name rather
# than install units on it.
LOCAL_MANAGER: Manager = "fallback" if Path("/run/systemd/system").exists() else "auto"


async def deploy(
    d: Deployer,
    app: Path,
    port: int,
    message: str,
    manager: Manager = "auto",
    version: str = "v1",
) -> list[Result]:
    """The deploy a recipe would write: code, config, service, health."""
    code = await d.template(
        f"{app}/server.py", SERVER, {"config": f"{app}/config.json", "version": version}
    )
    config = await d.template(f"{app}/config.json", CONFIG, {"message": message}, mode=0o640)
    svc = await d.service(
        Service(
            name="hello",
            command=["python3", "-u", f"{app}/server.py", str(port)],
            workdir=str(app),
            env={"HELLO_TOKEN": TOKEN},
            description="hello test service",
        ),
        restart=code,
        manager=manager,
    )
    health = await d.wait_http(f"http://127.0.0.1:{port}/health", deadline_s=20)
    return [code, config, svc, health]


async def test_deploy_service_with_fallback_supervisor(
    box: LocalSandbox, tmp_path: Path, state: Path
) -> None:
    app, port = tmp_path / "srv" / "hello", free_port()
    events: list[Event] = []
    d = Deployer(box, host="here", emit=events.append, state_dir=str(state))

    code, config, svc, health = await deploy(d, app, port, "hello", LOCAL_MANAGER)
    assert [r.changed for r in (code, config, svc)] == [True, True, True]
    assert health.details["status"] == 200 and health.summary.startswith("answered 200")
    assert svc.manager == "fallback" and "start" in svc.summary
    why = svc.details["why"]
    assert "systemd is not running" in why or "not installed" in why or LOCAL_MANAGER != "auto"
    chosen = [e for e in events if e.data.get("op") == "service" and e.data.get("manager")]
    assert chosen and "using fallback" in chosen[0].text
    assert fetch(f"http://127.0.0.1:{port}/hello") == "hello"
    assert oct((app / "config.json").stat().st_mode & 0o777) == "0o640"
    assert oct((state / "hello" / "env").stat().st_mode & 0o777) == "0o600"

    logs = await d.logs("hello", lines=20)
    assert "GET /hello" in logs and "starting hello" in logs

    # Killing the service's process: the loop starts it again.
    status = await d.status("hello")
    assert status.manager == "fallback" and status.active and status.pid
    os.kill(status.pid, signal.SIGKILL)

    async def restarted() -> int | None:
        s = await d.status("hello")
        return s.pid if s.active and s.pid not in (None, status.pid) else None

    end = time.monotonic() + 15
    new_pid = None
    while new_pid is None and time.monotonic() < end:
        new_pid = await restarted()
        if new_pid is None:
            await asyncio.sleep(0.2)
    assert new_pid, "the supervisor loop did not restart the killed service"
    await d.wait_http(f"http://127.0.0.1:{port}/health", deadline_s=15)
    assert fetch(f"http://127.0.0.1:{port}/hello") == "hello"
    assert "exited with status" in await d.logs("hello", lines=50)

    # A second deploy, planned: nothing to change, nothing touched.
    mtime = (app / "config.json").stat().st_mtime_ns
    plan = Deployer(box, host="here", dry_run=True, state_dir=str(state))
    await deploy(plan, app, port, "hello", LOCAL_MANAGER)
    assert not plan.changed, plan.plan()
    assert plan.plan().startswith("Plan for here: nothing to change")

    # A changed template: exactly one change, shown with its diff, and still not made.
    plan = Deployer(box, host="here", dry_run=True, state_dir=str(state))
    await deploy(plan, app, port, "bonjour", LOCAL_MANAGER)
    changed = [r for r in plan.results if r.changed]
    assert [(r.op, r.target) for r in changed] == [("files.template", f"{app}/config.json")]
    assert '-  "message": "hello"' in changed[0].diff
    assert '+  "message": "bonjour"' in changed[0].diff
    table = plan.plan()
    assert "1 of 4 operation(s) would change something" in table
    assert "update: +1 -1 lines" in table
    assert (app / "config.json").stat().st_mtime_ns == mtime
    assert fetch(f"http://127.0.0.1:{port}/hello") == "hello"

    # Applied: the service reads it on the next request, without a restart.
    d2 = Deployer(box, host="here", emit=events.append, state_dir=str(state))
    results = await deploy(d2, app, port, "bonjour", LOCAL_MANAGER)
    assert [r.changed for r in results] == [False, True, False, False]
    assert fetch(f"http://127.0.0.1:{port}/hello") == "bonjour"
    assert (await d2.status("hello")).pid == new_pid

    # New code: the service is restarted because its code changed (restart=code).
    results = await deploy(d2, app, port, "bonjour", LOCAL_MANAGER, version="v2")
    assert [r.changed for r in results] == [True, False, True, False]
    assert results[2].summary == "restart"
    restarted_pid = (await d2.status("hello")).pid
    assert restarted_pid not in (None, new_pid)
    assert fetch(f"http://127.0.0.1:{port}/hello") == "bonjour"

    # Uninstall: nothing of it runs, its files are gone, the port is closed.
    removed = await d2.remove_service("hello")
    assert removed.changed and removed.manager == "fallback"
    assert processes_mentioning(str(state)) == []
    assert not (state / "hello").exists()
    assert (await d2.status("hello")).manager == ""
    with pytest.raises(OSError):
        fetch(f"http://127.0.0.1:{port}/hello", timeout=2)
    assert not (await d2.remove_service("hello")).changed

    # Every operation left an event; no secret reached one.
    ops = {e.data["op"] for e in events if e.type == EventType.DEPLOY}
    assert {"files.template", "service", "http.wait", "service.logs", "service.remove"} <= ops
    assert all(TOKEN not in json.dumps(e.data) + e.text for e in events)


def wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal real wheel (PEP 427) holding one module."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


@contextlib.contextmanager
def slow_index(delay_s: float) -> Iterator[str]:
    """A PEP 503 package index on loopback whose downloads stall for ``delay_s``."""
    filename, data = wheel("tinypkg", "1.0")
    sha = hashlib.sha256(data).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/simple/tinypkg":
                body = f'<a href="/files/{filename}#sha256={sha}">{filename}</a>'.encode()
            elif self.path == f"/files/{filename}":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(delay_s)
                self.wfile.write(data)
                return
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


async def test_pip_install_streams_progress_and_is_idempotent(
    box: LocalSandbox, tmp_path: Path
) -> None:
    venv = str(tmp_path / "venv")
    events: list[Event] = []
    d = Deployer(box, host="here", emit=events.append)
    with slow_index(1.5) as index:
        args = ["--index-url", index]
        result = await d.pip_install(venv, ["tinypkg==1.0"], pip_args=args)
        assert result.changed and "create venv" in result.summary
        progress = [e for e in events if e.data.get("phase") == "progress" and "lines" in e.data]
        lines = [(e.ts, line) for e in progress for line in e.data["lines"]]
        collecting = next(ts for ts, line in lines if "Collecting tinypkg" in line)
        installed = next(ts for ts, line in lines if "Successfully installed tinypkg" in line)
        # The lines came while pip ran, not in one blob at the end.
        assert installed - collecting >= 1.0, lines
        out = await box.exec(f"{venv}/bin/python -c 'import tinypkg; print(tinypkg.VERSION)'")
        assert out.stdout.strip() == "1.0"

        again = await d.pip_install(venv, ["tinypkg==1.0"], pip_args=args)
        assert not again.changed and again.summary == "no change"
        plan = Deployer(box, dry_run=True)
        newer = await plan.pip_install(venv, ["tinypkg>=2"], pip_args=args)
        assert newer.changed and newer.summary == "install tinypkg>=2"

        # A wheel file is not judged here: pip always gets it, and it is not a failure
        # that the venv cannot "satisfy" a path.
        filename, data = wheel("otherpkg", "0.1")
        (tmp_path / filename).write_bytes(data)
        local = await d.pip_install(venv, [str(tmp_path / filename)], pip_args=["--no-index"])
        assert local.changed and local.summary == f"install {tmp_path / filename}"

        with pytest.raises(DeployError) as err:
            await d.pip_install(venv, ["nosuchpkg-xyz"], pip_args=args)
    message = str(err.value)
    assert "\n" not in message and "nosuchpkg-xyz" in message and "failed (exit 1)" in message
    failed = [e for e in events if e.data.get("phase") == "failed"]
    assert failed and failed[-1].data["error"] == message


async def test_put_directory_uploads_what_differs(box: LocalSandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "static").mkdir(parents=True)
    (src / "app.py").write_text("print('hi')\n")
    (src / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (src / "run.sh").chmod(0o755)
    (src / "static" / "index.html").write_text("<p>v1</p>\n")
    (src / "link").symlink_to("app.py")
    dest = tmp_path / "remote" / "app"
    events: list[Event] = []
    d = Deployer(box, host="here", emit=events.append)

    first = await d.put_directory(src, str(dest))
    assert first.changed and first.summary == "wrote 3 of 3 file(s) (3 new)"
    assert first.details["skipped"] == ["link"]
    assert any("skipped (not regular files): link" in e.text for e in events)
    assert (dest / "static" / "index.html").read_text() == "<p>v1</p>\n"
    assert os.access(dest / "run.sh", os.X_OK) and not (dest / "link").exists()

    assert not (await d.put_directory(src, str(dest))).changed
    (src / "static" / "index.html").write_text("<p>v2</p>\n")
    plan = Deployer(box, dry_run=True)
    planned = await plan.put_directory(src, str(dest))
    assert planned.changed and planned.details["files"] == ["static/index.html"]
    assert (dest / "static" / "index.html").read_text() == "<p>v1</p>\n"
    again = await d.put_directory(src, str(dest))
    assert again.summary == "wrote 1 of 3 file(s) (0 new)"
    assert (dest / "static" / "index.html").read_text() == "<p>v2</p>\n"
    # The target's shell stays where it was: operations never move it.
    assert (await box.exec("pwd")).stdout.strip() == box.workdir


async def test_deploy_events_reach_the_run_transcript(box: LocalSandbox, tmp_path: Path) -> None:
    """Wired to the engine as the docs show: stored with the run, secrets redacted, and
    printed by the same printer as `supervisor run` and `logs`."""
    from agent_kit import engine

    from supervisor.render import Printer
    from supervisor.store import open_default

    secret = "pw-4b1d9c77e2"
    async with engine() as eng:
        run_id = await eng.create_run(title="deploy", kind="recipe", managed=True)
        d = Deployer(
            box,
            host="gpu1",
            sudo_password=secret,
            emit=lambda e: eng.emit(e.type, None, e.data, e.text, run_id=run_id),
        )
        await d.put_file(f"{tmp_path}/app.conf", f"password={secret}\n")
        with pytest.raises(DeployError):
            await d.wait_http(f"http://127.0.0.1:{free_port()}/", deadline_s=0.5)
    store = open_default()
    try:
        events = [e for e in store.events(run_id=run_id) if e.type == EventType.DEPLOY]
    finally:
        store.close()
    phases = [(e.data["op"], e.data["phase"]) for e in events]
    assert ("files.put", "done") in phases and ("http.wait", "failed") in phases
    done = next(e for e in events if e.data["phase"] == "done")
    assert "+password=[REDACTED:sudo password]" in done.data["diff"]
    assert all(secret not in json.dumps(e.data) + e.text for e in events)
    printed: list[str] = []
    printer = Printer(echo=lambda text="", nl=True: printed.append(click.unstyle(text)))
    for event in events:
        printer(event)
    assert f"⇡ gpu1: files.put {tmp_path}/app.conf: create (23 bytes)" in printed
    assert any(line.startswith("⇡ gpu1: http://127.0.0.1:") for line in printed), printed


async def test_long_command_past_its_timeout_is_killed(box: LocalSandbox) -> None:
    marker = f"sleep 3{free_port() % 100:02d}"  # a command line no one else runs
    events: list[Event] = []
    d = Deployer(box, host="here", emit=events.append)
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        await d.stream(f"echo started; {marker}", op="build", what="model", timeout=1)
    assert time.monotonic() - start < 10
    assert "build model timed out after 1s (last: started)" in str(err.value)
    assert processes_mentioning(marker) == []
    assert [e.data["lines"] for e in events if e.data.get("phase") == "progress"] == [["started"]]


async def test_health_wait_fails_within_its_deadline(box: LocalSandbox) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    events: list[Event] = []
    d = Deployer(box, host="here", emit=events.append)
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        await d.wait_http(url, deadline_s=2)
    took = time.monotonic() - start
    assert 2 <= took < 4, took
    message = str(err.value)
    assert "\n" not in message and url in message and "within 2s" in message
    assert "Couldn't connect" in message or "refused" in message.lower()
    assert events[-1].data["phase"] == "failed"


async def test_bad_input_is_one_line_and_touches_nothing(box: LocalSandbox, tmp_path: Path) -> None:
    d = Deployer(box, host="here")
    cases = [
        (d.service(Service(name="web/evil", command=["true"])), "service name 'web/evil'"),
        (d.put_file("etc/app.conf", "x"), "remote path 'etc/app.conf' must be absolute"),
        (d.remove_service("../x"), "service name '../x'"),
        (d.template(f"{tmp_path}/a.conf", "port=$port", {}), "uses $port, which has no value"),
        (d.wait_http("127.0.0.1:80/health"), "must be an http(s):// URL"),
        (d.pip_install("venv", ["x"]), "venv 'venv' must be absolute"),
        (
            d.service(Service(name="web", command=["true"], env={"A-B": "1"})),
            "environment name 'A-B'",
        ),
    ]
    for call, expected in cases:
        with pytest.raises(InputError) as err:
            await call
        assert expected in str(err.value) and "\n" not in str(err.value)
    assert d.results == []
    assert not (tmp_path / "a.conf").exists()


async def test_root_owned_file_gets_owner_and_mode(box: LocalSandbox, tmp_path: Path) -> None:
    """As root, privileged files are installed directly with the owner asked for."""
    d = Deployer(box, host="here", sudo_password="hunter2-password")
    facts = await d.facts()
    if facts.uid != 0:
        pytest.skip("runs as root (CI and this machine); a non-root sudo path is tested over ssh")
    dest = tmp_path / "etc" / "app.conf"
    result = await d.put_file(str(dest), "a=1\n", mode=0o600, owner="root", group="root")
    assert result.changed and dest.read_text() == "a=1\n"
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert not (await d.put_file(str(dest), "a=1\n", mode=0o600, owner="root")).changed


def test_systemd_unit_text() -> None:
    svc = Service(
        name="web",
        command=["/opt/web/venv/bin/python", "-m", "web", "--greeting", "50% off $HOME"],
        workdir="/opt/web",
        user="web",
        after=["vllm"],
    )
    unit = systemd_unit(svc, env_file="/var/lib/supervisor-deploy/web/env")
    assert (
        'ExecStart=/opt/web/venv/bin/python -m web --greeting "50%% off $$HOME"'
        in unit.splitlines()
    )
    for line in [
        "After=vllm.service",
        "Wants=vllm.service",
        "WorkingDirectory=/opt/web",
        "EnvironmentFile=/var/lib/supervisor-deploy/web/env",
        "User=web",
        "Restart=always",
        "StartLimitIntervalSec=0",
        "WantedBy=multi-user.target",
    ]:
        assert line in unit.splitlines(), line
    user_unit = systemd_unit(svc, user_mode=True)
    assert "User=web" not in user_unit and "WantedBy=default.target" in user_unit
    assert "network-online.target" not in user_unit


def test_templates_and_plan_table() -> None:
    assert render_template("port=$port ${name}x $$5", {"port": 80, "name": "a"}) == "port=80 ax $5"
    results = [
        Result("files.put", "/a", False, "no change", dry_run=True),
        Result("service", "web", True, "restart", dry_run=True, manager="fallback"),
    ]
    table = format_plan(results, host="gpu1").splitlines()
    assert table[0] == "Plan for gpu1: 1 of 2 operation(s) would change something"
    assert table[2].startswith("  files.put") and table[2].endswith("no change")
    assert table[3].startswith("* service (fallback)") and table[3].endswith("restart")


def test_docs_example_runs() -> None:
    """docs/plugins.md's deploy example runs as printed and shows the plan it promises."""
    import re
    import sys

    doc = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    section = doc.split("## Deploying to hosts", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, "docs/plugins.md has no example under 'Deploying to hosts'"
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Changes for this machine: 2 of 3 operation(s) changed something" in out.stdout
    assert "Plan for this machine: 1 of 3 operation(s) would change something" in out.stdout
    assert "+<h1>Hello again</h1>" in out.stdout
    removed = re.search(r"^stop; remove (/\S+)$", out.stdout, flags=re.M)
    assert removed, out.stdout[-1000:]
    assert not Path(removed.group(1)).exists()
    assert processes_mentioning(removed.group(1)) == []


# -- a real systemd host: a container whose PID 1 is systemd, logged into as a user whose
# sudo asks for a password (tests/images/deploy-systemd)

SUDO_PASSWORD = "deploy-test-password"


@pytest.fixture
async def systemd_host() -> AsyncIterator[DockerSandbox]:
    from supervisor.sandbox import image
    from supervisor.sandbox.docker import LABEL, docker_client, home_label, remove_container

    client = docker_client(timeout=600)
    directory = Path(__file__).parent / "images" / "deploy-systemd"
    tag = await asyncio.to_thread(
        image.build, client, name="deploy-systemd", mode="offline", directory=directory
    )
    # cgroup v1 (this machine): systemd needs only to read the host's tree and makes its
    # own under its container's cgroup. cgroup v2: the usual way for an unprivileged
    # systemd container is the host's cgroup namespace with the tree writable.
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    container = client.containers.run(
        tag,
        detach=True,
        cgroupns="host" if v2 else None,
        user="0",  # systemd itself; the sandbox's shell logs in as uid 1000
        network_mode="none",  # loopback only
        hostname="sdhost",
        extra_hosts={"sdhost": "127.0.0.1"},  # sudo looks its host name up
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw" if v2 else "ro"}},
        labels={f"{LABEL}.managed": "1", f"{LABEL}.home": home_label(), f"{LABEL}.test": "deploy"},
    )
    try:
        box = DockerSandbox.attach(container.id, client=client)
        # systemd takes a moment to reach its default target.
        end = time.monotonic() + 60
        while True:
            state = (await box.exec("systemctl is-system-running 2>&1")).stdout.strip()
            if state in ("running", "degraded") or time.monotonic() > end:
                break
            await asyncio.sleep(0.3)
        logs = container.logs(tail=30).decode(errors="replace")
        assert state in ("running", "degraded"), f"systemd did not start: {state}\n{logs}"
        yield box
        await box.destroy()
    finally:
        remove_container(client, container)


def journal(box: DockerSandbox) -> str:
    container = box.container
    _, out = container.exec_run(["journalctl", "--no-pager", "-o", "cat"], user="0")
    return str(out.decode(errors="replace"))


@pytest.mark.docker
async def test_systemd_units_with_sudo_password(systemd_host: DockerSandbox) -> None:
    box = systemd_host
    app, port = "/opt/hello", 8080

    # Without a password: said plainly, nothing written.
    bare = Deployer(box, host="sd")
    with pytest.raises(DeployError) as err:
        await bare.put_file("/etc/hello/app.conf", "a=1\n")
    assert "sudo asks for a password: pass sudo_password=" in str(err.value)
    with pytest.raises(DeployError) as err:
        await bare.service(Service(name="hello", command=["true"]), manager="systemd")
    assert "system units need root" in str(err.value)
    wrong = Deployer(box, host="sd", sudo_password="not-the-password")
    with pytest.raises(DeployError) as err:
        await wrong.put_file("/etc/hello/app.conf", "a=1\n")
    assert "sudo refused the password" in str(err.value)
    assert (await box.exec("test -e /etc/hello")).exit_code == 1

    events: list[Event] = []
    d = Deployer(box, host="sd", sudo_password=SUDO_PASSWORD, emit=events.append)
    code, _, svc, _ = await deploy(d, Path(app), port, "hello")
    assert svc.manager == "systemd" and "start" in svc.summary and "enable" in svc.summary
    assert code.details["sudo"] is True  # /opt is root's: written through sudo install
    unit = await box.read_file("/etc/systemd/system/hello.service")
    assert b"ExecStart=python3 -u /opt/hello/server.py 8080" in unit
    assert b"EnvironmentFile=/var/lib/supervisor-deploy/hello/env" in unit
    env = await box.exec("stat -c '%a %U' /var/lib/supervisor-deploy/hello/env")
    assert env.stdout.strip() == "600 root"
    status = await d.status("hello")
    assert status.manager == "systemd" and status.active and status.enabled and status.pid
    served = await box.exec(f"curl -sS http://127.0.0.1:{port}/hello")
    assert served.stdout == "hello"
    logs = await d.logs("hello", lines=20)
    assert "GET /hello" in logs

    # systemd restarts it when it dies.
    await d.sudo(f"kill -KILL {status.pid}")
    end = time.monotonic() + 20
    while time.monotonic() < end:
        now = await d.status("hello")
        if now.active and now.pid not in (None, status.pid):
            break
        await asyncio.sleep(0.3)
    assert now.pid != status.pid and now.active
    await d.wait_http(f"http://127.0.0.1:{port}/health", deadline_s=15)

    plan = Deployer(box, host="sd", sudo_password=SUDO_PASSWORD, dry_run=True)
    await deploy(plan, Path(app), port, "hello")
    assert not plan.changed, plan.plan()

    removed = await d.remove_service("hello")
    assert removed.changed and removed.manager == "systemd"
    assert (await d.status("hello")).manager == ""
    assert (await box.exec("test -e /etc/systemd/system/hello.service")).exit_code == 1
    gone = await box.exec(f"curl -sS --max-time 2 http://127.0.0.1:{port}/health")
    assert not gone.ok

    # The password went to sudo's stdin only: sudo logs every command it ran, and none
    # of them holds it; no event does either.
    assert "COMMAND=/usr/bin/sh -c 'exec </dev/null; install -D -m 644" in journal(box)
    assert SUDO_PASSWORD not in journal(box)
    assert all(SUDO_PASSWORD not in json.dumps(e.data) + e.text for e in events)


@pytest.mark.docker
async def test_user_services_fallback_then_systemd_user_unit(
    systemd_host: DockerSandbox,
) -> None:
    """Logged in without root: the fallback in the user's own state folder, then the same
    service moved to a --user unit (lingering turned on through sudo)."""
    box = systemd_host
    events: list[Event] = []
    d = Deployer(box, host="sd", sudo_password=SUDO_PASSWORD, emit=events.append)
    web = Service(
        name="web",
        command=["python3", "-m", "http.server", "8081", "--bind", "127.0.0.1"],
        workdir="/home/agent/site",
    )
    with pytest.raises(DeployError) as err:
        await d.service(web, manager="systemd --user")
    assert "pass linger=True" in str(err.value)
    # Without a sudo password and without a user manager, "auto" means the fallback.
    chosen, why = await Deployer(box).choose_manager()
    assert chosen == "fallback" and "neither sudo nor a user manager" in why

    await d.put_file("/home/agent/site/index.html", "<p>user unit</p>\n")
    fallback = await d.service(web, manager="fallback")
    state = "/home/agent/.local/state/supervisor-deploy/web"
    assert fallback.manager == "fallback" and fallback.details["script"] == f"{state}/run.sh"
    await d.wait_http("http://127.0.0.1:8081/", deadline_s=20)
    owner = await box.exec(f"stat -c %U {state}/run.sh && pgrep -u agent -f {state}/run.sh")
    assert owner.ok and owner.stdout.startswith("agent\n"), owner

    svc = await d.service(web, manager="systemd --user", linger=True)
    assert svc.manager == "systemd --user"
    assert "remove the fallback copy (stop; remove" in svc.summary
    assert "enable lingering for agent" in svc.summary
    assert svc.details["unit"] == "/home/agent/.config/systemd/user/web.service"
    assert (await box.exec(f"test -e {state}")).exit_code == 1
    await d.wait_http("http://127.0.0.1:8081/", deadline_s=20)
    status = await d.status("web")
    assert status.manager == "systemd --user" and status.active and status.enabled
    linger = await box.exec("loginctl show-user agent -p Linger --value")
    assert linger.stdout.strip() == "yes"
    # Lingering on and a user manager running: "auto" without sudo picks a user unit
    # (sudo -k: sudo remembers the password given a moment ago, and -n would succeed).
    await box.exec("sudo -k")
    assert (await Deployer(box).choose_manager())[0] == "systemd --user"
    assert not (await d.service(web, manager="systemd --user")).changed
    assert "GET / HTTP" in await d.logs("web", lines=20)
    assert (await d.remove_service("web")).changed
    assert not (await box.exec("curl -sS --max-time 2 http://127.0.0.1:8081/")).ok


# -- over SSH: the same deploy through the ssh sandbox backend, against a real sshd on
# 127.0.0.x (tests/sshd_kit.py), logged in as a plain user without sudo


@pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())
async def test_deploy_over_ssh(tmp_path: Path, home: Path) -> None:
    from supervisor import hosts
    from supervisor.sandbox.ssh import SSHSandbox

    user = sshd_kit.create_user()
    server = sshd_kit.SSHServer(tmp_path / "sshd", users=[user]).start()
    box: SSHSandbox | None = None
    try:
        hosts.add_host(
            "web1",
            f"{user.name}@{server.host}:{server.port}",
            password=lambda: user.password,
            trust=server.fingerprint(),
        )
        box = SSHSandbox(SandboxSpec(run_id="deploy", agent_id="deploy"), host="web1")
        await box.start()
        # A deploy belongs to the account, not to the sandbox folder (whose shell has a
        # private HOME): by default service files go to the account's own home.
        app, state, port = (
            user.home / "hello",
            user.home / ".local/state/supervisor-deploy",
            free_port(),
        )
        events: list[Event] = []
        d = Deployer(box, host="web1", emit=events.append)
        code, config, svc, health = await deploy(d, app, port, "hello over ssh")
        assert all(r.changed for r in (code, config, svc)) and svc.manager == "fallback"
        assert health.details["status"] == 200
        # Fetched from this side too: the service runs on the host's loopback.
        assert fetch(f"http://127.0.0.1:{port}/hello") == "hello over ssh"
        pids = processes_mentioning(f"{state}/hello/run.sh")
        assert pids and all(Path(f"/proc/{p}").stat().st_uid == user.uid for p in pids)
        assert "GET /hello" in await d.logs("hello", lines=20)

        # Through `supervisor hosts forward`, as a person reaches a service on a GPU box.
        forward = subprocess.Popen(
            [*SUPERVISOR, "hosts", "forward", "web1", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert forward.stdout is not None
            ready, _, _ = select.select([forward.stdout], [], [], 30)
            assert ready, "hosts forward printed nothing within 30 s"
            line = forward.stdout.readline()
            local = int(line.split("127.0.0.1:")[1].split()[0])
            # Fabric's forward_local binds its listener in a thread of its own, so the
            # line can come a moment before the port answers.
            end = time.monotonic() + 5
            while True:
                try:
                    served = fetch(f"http://127.0.0.1:{local}/hello", timeout=10)
                    break
                except urllib.error.URLError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)
            assert served == "hello over ssh"
        finally:
            forward.send_signal(signal.SIGINT)
            forward.wait(15)

        # The service outlives the connection that started it.
        await box.stop()
        assert fetch(f"http://127.0.0.1:{port}/hello") == "hello over ssh"

        plan = Deployer(box, host="web1", dry_run=True)
        await deploy(plan, app, port, "hello over ssh")
        assert plan.plan().startswith("Plan for web1: nothing to change"), plan.plan()

        assert (await d.remove_service("hello")).changed
        assert processes_mentioning(f"{state}/hello") == []
        with pytest.raises(OSError):
            fetch(f"http://127.0.0.1:{port}/hello", timeout=2)
        assert all(TOKEN not in json.dumps(e.data) + e.text for e in events)
    finally:
        if box is not None:
            await box.destroy()
        server.stop()
        sshd_kit.remove_user(user)
