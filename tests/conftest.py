from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import plugins

REPO = Path(__file__).resolve().parent.parent
# The reference plugin's own tests run from its wheel in a clean environment
# (test_install.py), never in this one, where the plugin is not installed.
collect_ignore = ["reference_plugin"]
SUPERVISOR = [sys.executable, "-m", "supervisor.cli"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own SUPERVISOR_HOME; the real home is never touched."""
    path = tmp_path / "home"
    monkeypatch.setenv("SUPERVISOR_HOME", str(path))
    for name in list(os.environ):
        if name.startswith("SUPERVISOR_") and name not in {
            "SUPERVISOR_HOME",
            "SUPERVISOR_REQUIRE_DOCKER",
        }:
            monkeypatch.delenv(name)
    # Tests never pull from a registry: images are built from Debian packages.
    monkeypatch.setenv("SUPERVISOR_SANDBOX_BUILD", "offline")
    plugins.reset()
    yield path
    plugins.reset()
    stopped = _stop_server(path)
    _remove_leftovers(force=stopped)


def _stop_server(path: Path) -> bool:
    """Stop a supervisor process a test started in its home; True if there was one."""
    import signal
    import time

    from supervisor.server import running_pid

    pid = running_pid(path) if path.exists() else None
    if not pid or pid < 0:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while running_pid(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running_pid(path):
        os.kill(pid, signal.SIGKILL)
    return True


def _remove_leftovers(force: bool = False) -> None:
    """Safety net: a failed test must not leave containers behind for the next one (nor
    a supervisor process the test started, which keeps sandboxes of interrupted runs).

    Tests that check cleanup assert it themselves before this runs.
    """
    import contextlib

    if "docker" not in sys.modules and not force:
        return
    with contextlib.suppress(Exception):
        from supervisor.sandbox.docker import docker_client, home_label, remove_container

        client = docker_client(timeout=10)
        label = f"supervisor.home={home_label()}"
        for container in client.containers.list(all=True, filters={"label": label}):
            remove_container(client, container)
        for volume in client.volumes.list(filters={"label": label}):
            volume.remove(force=True)
        from supervisor.sandbox.docker import remove_network

        for network in client.networks.list(filters={"label": label}):
            remove_network(client.networks.get(network.id))


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would, in the test's environment."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    kw.setdefault("timeout", 120)
    return subprocess.run([*SUPERVISOR, *args], capture_output=True, text=True, env=full_env, **kw)  # type: ignore[call-overload]


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("docker") for item in items):
        return
    if docker_available():
        return
    if os.environ.get("SUPERVISOR_REQUIRE_DOCKER") == "1":
        # CI must exercise the real engine: a missing one is a failure, not a skip.
        fail = pytest.mark.usefixtures("_docker_required_but_missing")
        for item in items:
            if item.get_closest_marker("docker"):
                item.add_marker(fail)
        return
    skip = pytest.mark.skip(reason="no Docker engine answers (start dockerd to run these)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (``SUPERVISOR_REQUIRE_DOCKER=1``) every real part is installed, so a test that
    skips for a missing one (sshd, tmux, chromium, ffmpeg) fails instead: a green run then
    means every test ran. Elsewhere such tests skip with the reason."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("SUPERVISOR_REQUIRE_DOCKER") == "1"
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped where every test must run (SUPERVISOR_REQUIRE_DOCKER=1): {reason}"
        )


@pytest.fixture
def _docker_required_but_missing() -> None:
    pytest.fail("SUPERVISOR_REQUIRE_DOCKER=1 but no Docker engine answers")


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The default sandbox image, built (offline) once per session if missing."""
    if not docker_available():
        pytest.skip("no Docker engine")
    from supervisor.sandbox import image
    from supervisor.sandbox.docker import docker_client

    return image.build(docker_client(), mode="offline", progress=lambda line: None)


@pytest.fixture
def docker_client():  # type: ignore[no-untyped-def]
    from supervisor.sandbox.docker import docker_client as make

    return make()


@pytest.fixture
async def sandbox_factory(sandbox_image, tmp_path):  # type: ignore[no-untyped-def]
    """Start Docker sandboxes for a test; every one is destroyed afterwards."""
    from supervisor.sandbox.base import SandboxSpec
    from supervisor.sandbox.docker import DockerSandbox

    made: list[DockerSandbox] = []

    async def make(**kw):  # type: ignore[no-untyped-def]
        spec = SandboxSpec(
            run_id=kw.pop("run_id", "run1"), agent_id=kw.pop("agent_id", f"a{len(made)}"), **kw
        )
        box = DockerSandbox(spec, spool_dir=tmp_path / "spool")
        made.append(box)
        await box.start()
        return box

    yield make
    for box in made:
        await box.destroy()
