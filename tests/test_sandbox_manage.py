"""The warm pool, `sandbox ls|shell|prune|build`, crash leftovers, and the local backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from supervisor.sandbox import image
from supervisor.sandbox.base import SandboxSpec
from supervisor.sandbox.docker import DockerSandbox, home_label
from supervisor.sandbox.local import LocalSandbox
from supervisor.sandbox.manager import SandboxPool, new_sandbox
from supervisor.store import Store


def ours(client):  # type: ignore[no-untyped-def]
    return client.containers.list(all=True, filters={"label": f"supervisor.home={home_label()}"})


@pytest.mark.docker
async def test_pool_hands_out_ready_sandboxes(sandbox_image, docker_client) -> None:  # type: ignore[no-untyped-def]
    pool = SandboxPool(2)
    try:
        pool.fill()
        await pool.wait_ready()
        assert len(ours(docker_client)) == 2
        start = time.perf_counter()
        box = await pool.acquire(SandboxSpec(run_id="run9", agent_id="fast", env={"MODE": "warm"}))
        took = time.perf_counter() - start
        r = await box.exec("echo $MODE; git branch --show-current; id -u")
        assert r.stdout == "warm\nsupervisor/fast\n1000\n"
        assert box.name.startswith("sv-run9-fast-")
        assert took < 0.5, f"acquire from a warm pool took {took:.3f}s"
        # A sandbox with network is never taken from the (network-less) pool.
        assert not pool.poolable(SandboxSpec(run_id="r", agent_id="n", network=True))
        await pool.wait_ready()
        await box.destroy()
    finally:
        await pool.close()
    assert ours(docker_client) == []


@pytest.mark.docker
async def test_prune_removes_what_no_live_run_owns(
    sandbox_factory, docker_client, home: Path
) -> None:  # type: ignore[no-untyped-def]
    home.mkdir(parents=True, exist_ok=True)
    store = Store.open(home / "supervisor.db")

    def runs(db):  # type: ignore[no-untyped-def]
        db.table("runs").insert_all(
            [
                {
                    "id": "live",
                    "title": "t",
                    "kind": "task",
                    "status": "running",
                    "created_at": 0.0,
                },
                {"id": "over", "title": "t", "kind": "task", "status": "done", "created_at": 0.0},
            ]
        )

    store.write(runs).result()
    store.close()
    live = await sandbox_factory(run_id="live")
    done = await sandbox_factory(run_id="over")
    gone = await sandbox_factory(run_id="vanished")
    # A pool member whose owner process died (a crashed supervisor) is a leftover too.
    orphan = DockerSandbox(SandboxSpec(run_id="", agent_id=""))
    await orphan.start(pool_owner="999999:1", prepare=False)
    await asyncio.to_thread(docker_client.containers.get(done.id).stop, timeout=1)

    result = run_cli("sandbox", "prune")
    assert result.returncode == 0, result.stderr
    names = {c.name for c in ours(docker_client)}
    assert names == {live.name}
    assert f"container {gone.name}" in result.stdout and f"container {orphan.name}" in result.stdout
    assert not [c for c in ours(docker_client) if c.status == "exited"]
    volumes = docker_client.volumes.list(filters={"label": f"supervisor.home={home_label()}"})
    assert len(volumes) == 1


@pytest.mark.docker
async def test_sandbox_ls_and_shell(sandbox_factory) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory(run_id="runls", agent_id="lister")
    await box.exec("echo from-agent > /workspace/mark")
    rows = json.loads(run_cli("sandbox", "ls", "--json").stdout)
    row = next(r for r in rows if r["name"] == box.name)
    assert (row["run"], row["agent"], row["state"]) == ("runls", "lister", "running")
    assert row["memory_mb"] is not None and row["memory_mb"] > 0
    table = run_cli("sandbox", "ls").stdout
    assert box.name in table and "lister" in table
    shell = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "sandbox", "shell", "lister"],
        input="id -un; pwd; cat mark\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.stdout.split() == ["agent", "/workspace", "from-agent"]


def test_sandbox_shell_unknown_agent() -> None:
    result = run_cli("sandbox", "shell", "nobody", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1


@pytest.mark.docker
def test_build_skips_unchanged_sources(sandbox_image) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("sandbox", "build", "--offline")
    assert result.returncode == 0
    assert result.stdout.strip() == sandbox_image
    assert "up to date" in result.stderr
    assert sandbox_image == image.default_image_tag()


@pytest.mark.docker
def test_failed_build_names_step_and_log(sandbox_image, docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nRUN echo compiling the thing && exit 3\n"
    )
    with pytest.raises(image.ImageBuildError) as info:
        image.build(
            docker_client, name="broken", mode="online", directory=bad, progress=lambda _: None
        )
    message = str(info.value)
    assert (
        "docker build failed" in message and "exit" in message and "compiling the thing" in message
    )


def test_offline_build_derives_from_the_dockerfile() -> None:
    directory = REPO / "sandboxes" / "default"
    assert image.base_suite(directory) == "bookworm"
    changes = image.image_changes(directory)
    assert "USER agent" in changes and "WORKDIR /workspace" in changes
    assert "python3" in image.packages(directory) and "git" in image.packages(directory)


def test_tag_changes_with_sources(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    first = image.default_image_tag("x", tmp_path)
    (tmp_path / "packages.txt").write_text("git\n")
    assert image.default_image_tag("x", tmp_path) != first


# -- the local backend


async def test_local_backend_is_registered_and_unisolated(tmp_path: Path) -> None:
    box = new_sandbox(
        SandboxSpec(run_id="r", agent_id="l", env={"ONLY": "this"}), "local", root=tmp_path
    )
    assert isinstance(box, LocalSandbox) and box.describe()["isolated"] is False
    await box.start()
    try:
        r = await box.exec("echo $ONLY; cd sub 2>/dev/null || mkdir sub && cd sub; pwd")
        assert r.stdout.splitlines()[0] == "this" and r.stdout.strip().endswith("workspace/sub")
        r = await box.exec("sleep 30", timeout=0.5)
        assert r.timed_out and (await box.exec("pwd")).stdout.strip().endswith("sub")
        await box.write_file("x/y.txt", b"data")
        assert await box.read_file("x/y.txt") == b"data"
        assert [f.kind for f in await box.list_files("x")] == ["file"]
    finally:
        await box.destroy()
    assert not box.root or not box.root.exists()


def test_unknown_backend_is_input_error() -> None:
    from supervisor.errors import InputError

    with pytest.raises(InputError, match="unknown sandbox backend 'vm'"):
        new_sandbox(SandboxSpec(run_id="r", agent_id="a"), "vm")


@pytest.mark.docker
async def test_first_sandbox_builds_a_missing_default_image(
    sandbox_image, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # A variant of the default image whose base is already local, so the build is quick
    # and pulls nothing.
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nRUN echo layering the variant\nUSER agent\nWORKDIR /workspace\n"
    )
    monkeypatch.setattr(image, "sandboxes_dir", lambda: tmp_path)
    monkeypatch.setenv("SUPERVISOR_SANDBOX_BUILD", "online")
    tag = image.default_image_tag()
    lines: list[str] = []
    box = DockerSandbox(SandboxSpec(run_id="r", agent_id="first"), progress=lines.append)
    try:
        await box.start()
        assert (await box.exec("echo ready")).stdout == "ready\n"
        assert any("layering the variant" in line for line in lines)
        assert docker_client.images.get(tag)
    finally:
        await box.destroy()
        docker_client.images.remove(tag, force=True)
