"""Finding, pooling, listing and pruning sandboxes.

The warm pool keeps a few started, unassigned Docker sandboxes so a new agent gets one at
once; it refills in the background. Pool members are labelled with their owner process;
once handed out, a sandbox belongs to the agent whose ``agents.sandbox_id`` names it.

Pruning removes what no live run owns: containers of finished or vanished runs, pool
members whose owner process is gone, and volumes and networks nothing uses. It only ever
looks at objects labelled with this data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.sandbox.base import Sandbox, SandboxSpec
from supervisor.sandbox.docker import (
    LABEL,
    DockerSandbox,
    docker_client,
    home_label,
    remove_container,
)
from supervisor.sandbox.shell import quote
from supervisor.system import owner_alive, process_owner

# An interrupted run keeps its sandboxes: resuming it picks them up again.
LIVE_RUN_STATES = ("running", "paused", "waiting", "interrupted")


def backends() -> dict[str, Any]:
    """Sandbox backends registered by plugins, by name."""
    from supervisor.plugins import get_plugins

    return {b.name: b for _, b in get_plugins().collect("register_sandboxes")}


def new_sandbox(spec: SandboxSpec, backend: str = "docker", **kwargs: Any) -> Sandbox:
    found = backends()
    if backend not in found:
        from supervisor.errors import InputError

        raise InputError(f"unknown sandbox backend {backend!r} (have: {', '.join(sorted(found))})")
    sandbox: Sandbox = found[backend].factory(spec, **kwargs)
    return sandbox


class SandboxPool:
    """Ready Docker sandboxes for new agents (no network, default limits)."""

    def __init__(
        self,
        size: int,
        *,
        client: Any = None,
        defaults: SandboxSpec | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.size = size
        self._client = client
        self.defaults = defaults or SandboxSpec(run_id="", agent_id="")
        self._spool_dir = spool_dir
        self._ready: asyncio.Queue[DockerSandbox] = asyncio.Queue()
        self._filling: set[asyncio.Task[None]] = set()
        self._owner = process_owner()
        self.errors: list[str] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def poolable(self, spec: SandboxSpec) -> bool:
        d = self.defaults
        return (
            not spec.network
            and not spec.gpus
            and (spec.image or d.image) == d.image
            and (spec.memory, spec.cpus, spec.pids) == (d.memory, d.cpus, d.pids)
        )

    def fill(self) -> None:
        """Start members in the background until the pool is full."""
        missing = self.size - self._ready.qsize() - len(self._filling)
        for _ in range(max(0, missing)):
            task = asyncio.get_running_loop().create_task(self._add_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _add_one(self) -> None:
        sandbox = DockerSandbox(
            SandboxSpec(
                run_id="",
                agent_id="",
                image=self.defaults.image,
                memory=self.defaults.memory,
                cpus=self.defaults.cpus,
                pids=self.defaults.pids,
            ),
            client=self.client,
            spool_dir=self._spool_dir,
        )
        try:
            await sandbox.start(pool_owner=self._owner, prepare=False)
        except Exception as exc:  # a failed refill must not take the engine down
            self.errors.append(str(exc))
            return
        self._ready.put_nowait(sandbox)

    async def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the pool is full (benchmarks and tests)."""
        deadline = time.monotonic() + timeout
        while self._ready.qsize() < self.size and time.monotonic() < deadline:
            if not self._filling:
                self.fill()
            await asyncio.sleep(0.02)

    async def acquire(self, spec: SandboxSpec) -> DockerSandbox:
        """A started sandbox for ``spec``: a pool member if one fits, else a new one."""
        if self.poolable(spec):
            try:
                sandbox = self._ready.get_nowait()
            except asyncio.QueueEmpty:
                sandbox = None
            if sandbox is not None:
                self.fill()
                try:
                    await self._hand_out(sandbox, spec)
                    return sandbox
                except BaseException:
                    await sandbox.destroy()
                    raise
        sandbox = DockerSandbox(spec, client=self.client, spool_dir=self._spool_dir)
        await sandbox.start()
        return sandbox

    async def _hand_out(self, sandbox: DockerSandbox, spec: SandboxSpec) -> None:
        sandbox.spec = spec
        await asyncio.to_thread(sandbox.container.rename, sandbox._container_name())
        await asyncio.to_thread(sandbox.container.reload)
        await sandbox.prepare()
        if spec.env:
            exports = "; ".join(f"export {k}={quote(v)}" for k, v in spec.env.items())
            await sandbox.exec(exports)

    async def close(self) -> None:
        for task in list(self._filling):
            task.cancel()
        while not self._ready.empty():
            await self._ready.get_nowait().destroy()


# -- listing and pruning


@dataclass
class SandboxRow:
    name: str
    id: str
    run: str
    agent: str
    pool: bool
    state: str
    age_s: float
    memory_mb: float | None
    network: bool


def _managed(client: Any, kind: str) -> list[Any]:
    filters = {"label": [f"{LABEL}.managed=1", f"{LABEL}.home={home_label()}"]}
    if kind == "containers":
        return list(client.containers.list(all=True, filters=filters))
    if kind == "volumes":
        return list(client.volumes.list(filters=filters))
    return list(client.networks.list(filters=filters))


def _age(container: Any) -> float:
    from datetime import datetime

    created = container.attrs.get("Created", "")
    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return 0.0
    return max(0.0, time.time() - stamp.timestamp())


def _memory_mb(container: Any) -> float | None:
    if container.status != "running":
        return None
    try:
        stats = container.stats(stream=False, one_shot=True)
        return round(float(stats["memory_stats"]["usage"]) / 2**20, 1)
    except Exception:
        return None


def list_sandboxes(client: Any = None, *, memory: bool = True) -> list[SandboxRow]:
    client = client or docker_client()
    containers = _managed(client, "containers")
    with ThreadPoolExecutor(max_workers=8) as pool:
        mems = list(pool.map(_memory_mb, containers)) if memory else [None] * len(containers)
    rows = []
    for c, mem in zip(containers, mems, strict=True):
        labels = c.labels
        rows.append(
            SandboxRow(
                name=c.name,
                id=c.id[:12],
                run=labels.get(f"{LABEL}.run", ""),
                agent=labels.get(f"{LABEL}.agent", ""),
                pool=bool(labels.get(f"{LABEL}.pool")),
                state=c.status,
                age_s=round(_age(c), 1),
                memory_mb=mem,
                network=labels.get(f"{LABEL}.network") == "1",
            )
        )
    return sorted(rows, key=lambda r: r.age_s)


def live_owners(db_path: Path) -> tuple[set[str], dict[str, str]]:
    """Runs that are live, and which run owns each assigned sandbox id."""
    if not db_path.exists():
        return set(), {}
    from supervisor.store import Store

    store = Store.open(db_path)
    try:
        placeholders = ", ".join("?" * len(LIVE_RUN_STATES))
        live = {
            r["id"]
            for r in store.db.query(
                f"SELECT id FROM runs WHERE status IN ({placeholders})", LIVE_RUN_STATES
            )
        }
        owners = {
            r["sandbox_id"]: r["run_id"]
            for r in store.db.query("SELECT sandbox_id, run_id FROM agents WHERE sandbox_id != ''")
        }
    finally:
        store.close()
    return live, owners


def prune(
    client: Any = None,
    *,
    db_path: Path | None = None,
    keep: Callable[[Any], bool] | None = None,
) -> list[str]:
    """Remove sandboxes, volumes and networks no live run owns; returns what was removed."""
    from supervisor import config

    client = client or docker_client()
    live, owners = live_owners(db_path or config.db_path())
    removed: list[str] = []
    for container in _managed(client, "containers"):
        labels = container.labels
        pool_owner = labels.get(f"{LABEL}.pool", "")
        run = labels.get(f"{LABEL}.run", "") or owners.get(container.id, "")
        if keep is not None and keep(container):
            continue
        if run and run in live:
            continue
        if pool_owner and not run and owner_alive(pool_owner):
            continue  # an idle pool member of a running supervisor
        remove_container(client, container)
        removed.append(f"container {container.name}")
    in_use = {
        m.get("Name") for c in client.containers.list(all=True) for m in c.attrs.get("Mounts", [])
    }
    for volume in _managed(client, "volumes"):
        if volume.name not in in_use:
            with contextlib.suppress(Exception):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
    for network in _managed(client, "networks"):
        network.reload()
        if not network.attrs.get("Containers"):
            with contextlib.suppress(Exception):
                network.remove()
                removed.append(f"network {network.name}")
    return removed


def _agent_rows(sql: str, agent: str) -> list[dict[str, Any]]:
    """Rows about the newest agent with this id or name (none if there is no database)."""
    from supervisor import config

    db = config.db_path()
    if not db.exists():
        return []
    from supervisor.store import Store

    store = Store.open(db)
    try:
        return [dict(r) for r in store.db.query(sql, [agent, agent])]
    finally:
        store.close()


def attach(backend: str, sandbox_id: str) -> Sandbox:
    """A sandbox object for an existing sandbox, by the id recorded for its agent."""
    if backend == "local":
        from supervisor.sandbox.local import LocalSandbox

        return LocalSandbox.attach(Path(sandbox_id))
    if backend == "ssh":
        from supervisor.sandbox.ssh import SSHSandbox

        return SSHSandbox.attach(sandbox_id)
    return DockerSandbox.attach(sandbox_id)


def find_agent_sandbox(agent: str) -> Sandbox:
    """The sandbox of an agent, by agent id or name (or container name)."""
    from supervisor.errors import InputError

    rows = _agent_rows(
        "SELECT id, sandbox, sandbox_id FROM agents WHERE id = ? OR name = ? "
        "ORDER BY created_at DESC LIMIT 1",
        agent,
    )
    if rows and rows[0]["sandbox_id"]:
        return attach(rows[0]["sandbox"], rows[0]["sandbox_id"])
    client = docker_client()
    for container in _managed(client, "containers"):
        if agent in (container.labels.get(f"{LABEL}.agent"), container.name):
            return DockerSandbox.attach(container.id, client=client)
    raise InputError(f"no agent or sandbox named {agent!r}")


def run_workspace(agent: str) -> Path:
    """The folder the agent's run started from (for ``agent apply``)."""
    from supervisor.errors import InputError

    rows = _agent_rows(
        "SELECT runs.workspace FROM agents JOIN runs ON runs.id = agents.run_id "
        "WHERE agents.id = ? OR agents.name = ? ORDER BY agents.created_at DESC LIMIT 1",
        agent,
    )
    if rows and rows[0]["workspace"]:
        return Path(rows[0]["workspace"])
    raise InputError(f"no workspace is recorded for agent {agent!r}; name one with --repo")
