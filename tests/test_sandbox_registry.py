"""Sandboxes managed through the backend registry: re-adopt by id, list and prune, for the
docker and local backends and a third-party one; capability flags; the GPU slot
allocator; the warm pool used by agent start."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from supervisor import SandboxBackend, hookimpl
from supervisor.plugins import get_plugins
from supervisor.sandbox.base import SandboxError, SandboxSpec
from supervisor.sandbox.manager import attach, list_all, new_sandbox, prune_all
from supervisor.store import Store
from supervisor.types import SandboxRow


def _runs(home: Path, **status: str) -> Path:
    """A database in which each named run has the given status."""
    home.mkdir(parents=True, exist_ok=True)
    db = home / "supervisor.db"
    store = Store.open(db)
    rows = [
        {"id": run, "title": "t", "kind": "task", "status": s, "created_at": 0.0}
        for run, s in status.items()
    ]
    store.write(lambda d: d.table("runs").insert_all(rows)).result()
    store.close()
    return db


async def _started(backend: str, run_id: str, agent_id: str) -> Any:
    box = new_sandbox(SandboxSpec(run_id=run_id, agent_id=agent_id), backend)
    await box.start()
    await box.exec(f"echo made-by-{agent_id} > note.txt")
    return box


async def _check_backend(backend: str, home: Path) -> None:
    db = _runs(home, live="running", over="done")
    keep = await _started(backend, "live", "keeper")
    drop = await _started(backend, "over", "dropper")
    try:
        rows = {r.agent: r for r in list_all() if r.backend == backend}
        assert {"keeper", "dropper"} <= set(rows)
        assert rows["keeper"].run == "live" and rows["dropper"].run == "over"
        # Re-adopted by the id its row (and the agent's record) holds: the same workspace.
        again = attach(backend, keep.id)
        r = await again.exec("cat note.txt")
        assert r.stdout == "made-by-keeper\n"
        # The CLI lists through the registry too.
        listed = json.loads(run_cli("sandbox", "ls", "--json").stdout)
        assert {(x["backend"], x["agent"]) for x in listed} >= {(backend, "keeper")}
        removed = prune_all(db)
        expected = f"folder {drop.id}" if backend == "local" else f"container {drop.name}"
        assert expected in removed, removed
        left = {r.agent for r in list_all() if r.backend == backend}
        assert "keeper" in left and "dropper" not in left
        with pytest.raises(SandboxError, match="no longer exists"):
            attach(backend, drop.id)
    finally:
        await keep.destroy()
        await drop.destroy()


async def test_local_sandboxes_through_the_registry(home: Path) -> None:
    await _check_backend("local", home)


@pytest.mark.docker
async def test_docker_sandboxes_through_the_registry(sandbox_image: str, home: Path) -> None:
    await _check_backend("docker", home)


class FolderBackend:
    """A third-party backend: the local shell in a folder of its own, with its own list,
    prune and attach — registered as any plugin would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _make(self, spec: SandboxSpec, **kw: Any) -> Any:
        from supervisor.sandbox.local import LocalSandbox

        return LocalSandbox(spec, root=self.root)

    def _rows(self) -> list[SandboxRow]:
        return [
            SandboxRow(
                d.name,
                str(d),
                "",
                d.name.split("-")[0],
                False,
                "present",
                0.0,
                None,
                False,
                backend="folder",
            )
            for d in sorted(self.root.iterdir())
        ]

    def _prune(self, keep: Any) -> list[str]:
        import shutil

        gone = [r for r in self._rows() if not keep(r)]
        for row in gone:
            shutil.rmtree(row.id)
        return [f"folder {r.name}" for r in gone]

    def _attach(self, sandbox_id: str) -> Any:
        from supervisor.sandbox.local import LocalSandbox

        return LocalSandbox.attach(Path(sandbox_id))

    @hookimpl
    def register_sandboxes(self, register: Any) -> None:
        register(
            SandboxBackend(
                "folder",
                self._make,
                isolated=False,
                attach=self._attach,
                list_all=self._rows,
                prune=self._prune,
            )
        )
        register(SandboxBackend("bare", self._make, isolated=False))


async def test_a_third_party_backend_is_managed_like_the_built_in_ones(
    tmp_path: Path, home: Path
) -> None:
    root = tmp_path / "folders"
    root.mkdir()
    get_plugins().pm.register(FolderBackend(root), name="folder-backend")
    box = await _started("folder", "gone-run", "thirdparty")
    rows = [r for r in list_all() if r.backend == "folder"]
    assert [r.agent for r in rows] == ["thirdparty"]
    assert (await attach("folder", box.id).exec("cat note.txt")).stdout == "made-by-thirdparty\n"
    assert prune_all(_runs(home)) == [f"folder {rows[0].name}"]
    assert not Path(box.id).exists()
    # A backend that cannot re-adopt says so, by name.
    with pytest.raises(SandboxError, match="the bare backend cannot re-adopt"):
        attach("bare", "whatever")


# -- capability flags and the spec


def test_a_spec_the_backend_cannot_give_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    from supervisor.errors import InputError

    get_plugins().pm.register(FolderBackend(tmp_path), name="folder-backend")
    for spec, what in [
        (SandboxSpec(run_id="r", agent_id="a", network=True), "network access"),
        (SandboxSpec(run_id="r", agent_id="a", gpus=["0"]), "GPUs"),
        (SandboxSpec(run_id="r", agent_id="a", host="gpu-box"), "another host (gpu-box)"),
    ]:
        with pytest.raises(
            InputError, match=re.escape(f"the folder sandbox backend cannot give {what};")
        ):
            new_sandbox(spec, "folder")
    assert list(tmp_path.iterdir()) == []
    # The built-in backends say what they can give.
    backends = {b.name: b for _, b in get_plugins().collect("register_sandboxes")}
    docker, local = backends["docker"], backends["local"]
    assert (docker.isolated, docker.network, docker.gpus, docker.remote) == (
        True,
        True,
        True,
        False,
    )
    assert (local.isolated, local.gpus, local.remote) == (False, False, False)


@pytest.mark.docker
async def test_gpus_by_device_id_need_the_nvidia_runtime(sandbox_image: str, docker_client) -> None:  # type: ignore[no-untyped-def]
    from supervisor.sandbox.docker import DockerSandbox

    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime")
    box = DockerSandbox(SandboxSpec(run_id="r", agent_id="g", gpus=["1"]))
    with pytest.raises(SandboxError, match="no NVIDIA runtime"):
        await box.start()


# -- GPU slots


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """nvidia-smi as this machine has none: prints ``count`` GPU indices."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    lines = "\\n".join(str(i) for i in range(count))
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--query-gpu=index*) printf "' + lines + '\\n";; *) exit 9;; esac\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


async def test_gpu_slots_are_never_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.sandbox.gpus import GpuSlots

    _fake_nvidia_smi(tmp_path, monkeypatch, 3)
    slots = GpuSlots()
    in_use: dict[str, str] = {}
    clashes: list[str] = []
    served: list[tuple[str, list[str]]] = []

    async def work(holder: str, count: int) -> None:
        async with slots.hold(holder, count) as devices:
            assert len(devices) == count
            for d in devices:
                if d in in_use:
                    clashes.append(f"{d}: {in_use[d]} and {holder}")
                in_use[d] = holder
            served.append((holder, devices))
            await asyncio.sleep(random.uniform(0, 0.01))
            for d in devices:
                del in_use[d]

    random.seed(7)
    jobs = [work(f"h{i}", 1 + (i % 3 == 0)) for i in range(60)]
    await asyncio.wait_for(asyncio.gather(*jobs), 30)
    assert clashes == [] and len(served) == 60
    assert {d for _, ds in served for d in ds} == {"0", "1", "2"}
    assert slots.holders() == {} and slots.free() == ["0", "1", "2"]
    # Asking for more than the machine has is an error, not a wait forever.
    with pytest.raises(SandboxError, match="asked for 4 GPUs; this machine has 3"):
        await slots.acquire("greedy", 4)
    # A waiter gets its slot as soon as a holder lets go.
    first = await slots.acquire("a", 3)
    waiting = asyncio.ensure_future(slots.acquire("b", 1))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await slots.release("a") == first
    assert await asyncio.wait_for(waiting, 5) == ["0"]
    # A loop waiting for its own GPU (held by an agent) holds up no one whose GPU is free.
    await slots.release("b")
    slots.take("agent", ["0"])
    stuck = asyncio.ensure_future(slots.acquire("loop-0", 1, among=["0"]))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(slots.acquire("loop-1", 1, among=["1"]), 5) == ["1"]
    assert not stuck.done()
    await slots.release("agent")
    assert await asyncio.wait_for(stuck, 5) == ["0"]


def test_no_nvidia_smi_means_no_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from supervisor.sandbox.gpus import GpuSlots

    monkeypatch.setenv("PATH", str(tmp_path))
    assert GpuSlots().devices == []


# -- the warm pool and agent start


@pytest.mark.docker
async def test_agent_start_takes_a_warm_sandbox(
    sandbox_image: str, home: Path, docker_client, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from agent_kit import engine, last_results, scripted

    from supervisor.engine import RunOptions
    from supervisor.sandbox.docker import home_label
    from supervisor.testing import Reply

    monkeypatch.setenv("MODE", "from-host")
    script = [
        Reply(tool_calls=[("shell", {"command": "echo $MODE; pwd; git branch --show-current"})]),
        Reply(tool_calls=[("finish", {"summary": "ok"})]),
    ]
    with scripted(script) as server:
        async with engine(**{"sandbox.pool_size": 1, "sandbox.env_allow": ["MODE"]}) as eng:
            first = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(first), 60) == "done"
            assert eng._pool is not None
            await eng._pool.wait_ready(60)  # filling began with the first agent
            second = await eng.start_run(
                RunOptions(task="t", sandbox="docker", keep_sandboxes=True)
            )
            assert await asyncio.wait_for(eng.wait_run(second), 60) == "done"
            eng.store.flush()
            # `sandbox ls` names the run and agent of a sandbox taken from the pool.
            (kept,) = [r for r in list_all() if r.run == second]
            assert not kept.pool and kept.agent.startswith("agent")
            warm = {
                a.run_id: any(e.text == "warm sandbox" for e in eng.store.events(agent_id=a.id))
                for a in eng.agents.values()
            }
        # Closing the engine leaves no pool member behind; the sandbox kept on purpose
        # outlives it (--keep-sandboxes in the foreground too).
        label = f"supervisor.home={home_label()}"
        assert [r.run for r in list_all()] == [second]
        for c in docker_client.containers.list(all=True, filters={"label": label}):
            c.remove(force=True)
    assert warm == {first: False, second: True}
    (result,) = last_results(server.requests[-1])
    # The warm sandbox got the agent's environment, workspace and branch.
    assert result.splitlines()[:3] == [
        "from-host",
        "/workspace",
        f"supervisor/{next(a.id for a in eng.agents.values() if a.run_id == second)}",
    ]
