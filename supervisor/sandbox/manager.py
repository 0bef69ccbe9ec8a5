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
from pathlib import Path
from typing import Any

from supervisor.sandbox.base import Sandbox, SandboxError, SandboxSpec
from supervisor.sandbox.docker import (
    LABEL,
    DockerSandbox,
    docker_client,
    home_label,
    remove_container,
    remove_network,
)
from supervisor.sandbox.shell import quote
from supervisor.status import LIVE
from supervisor.system import owner_alive, process_owner
from supervisor.types import SandboxBackend, SandboxRow

# An interrupted run keeps its sandboxes: resuming it picks them up again.
LIVE_RUN_STATES = tuple(sorted(LIVE))


def backends() -> dict[str, Any]:
    """Sandbox backends registered by plugins, by name."""
    from supervisor.plugins import get_plugins

    return {b.name: b for _, b in get_plugins().collect("register_sandboxes")}


def new_sandbox(spec: SandboxSpec, backend: str = "docker", **kwargs: Any) -> Sandbox:
    found = _backend(backend)
    check_spec(found, spec)
    sandbox: Sandbox = found.factory(spec, **kwargs)
    return sandbox


def check_spec(backend: SandboxBackend, spec: SandboxSpec) -> None:
    """Refuse a spec asking for what the backend cannot give (its capability flags)."""
    from supervisor.errors import InputError

    wanted = {
        "network access": spec.network and not backend.network,
        "GPUs": bool(spec.gpus) and not backend.gpus,
        f"another host ({spec.host})": bool(spec.host) and not backend.remote,
    }
    missing = [what for what, lacking in wanted.items() if lacking]
    if missing:
        raise InputError(
            f"the {backend.name} sandbox backend cannot give {' or '.join(missing)}; "
            "choose another backend (--sandbox)"
        )


START_ATTEMPTS = 2  # a failed start is retried once, then the agent fails with the reason


async def start_sandbox(
    sandbox: Sandbox,
    *,
    attempts: int = START_ATTEMPTS,
    on_retry: Callable[[str], None] | None = None,
) -> None:
    """Start ``sandbox``, trying once more after a failed start (the first attempt's
    leftovers are destroyed first). Bad input (a missing workspace, no Docker engine) is
    raised at once: trying again cannot help."""
    from supervisor.errors import InputError

    for attempt in range(1, attempts + 1):
        try:
            await sandbox.start()
            return
        except InputError:
            raise
        except SandboxError as exc:
            with contextlib.suppress(Exception):
                await sandbox.destroy()
            if attempt == attempts:
                raise SandboxError(f"{exc} (tried {attempts} times)") from None
            if on_retry is not None:
                on_retry(str(exc))


class SandboxPool:
    """Ready Docker sandboxes for new agents (no network, default limits)."""

    def __init__(
        self,
        size: int,
        *,
        client: Any = None,
        defaults: SandboxSpec | None = None,
        spool_dir: Path | None = None,
        sandbox_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.size = size
        self.backend = "docker"
        self._kwargs = dict(sandbox_kwargs or {})
        self._closing = False
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
            and not spec.host
            and (spec.image or d.image) == d.image
            and (spec.memory, spec.cpus, spec.pids) == (d.memory, d.cpus, d.pids)
        )

    def fill(self) -> None:
        """Start members in the background until the pool is full."""
        if self._closing:
            return
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
            **self._member_kwargs(),
        )
        try:
            await sandbox.start(pool_owner=self._owner, prepare=False)
        except Exception as exc:  # a failed refill must not take the engine down
            self.errors.append(str(exc))
            return
        if self._closing:
            await sandbox.destroy()
            return
        self._ready.put_nowait(sandbox)

    def _member_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"spool_dir": self._spool_dir, **self._kwargs}
        kwargs["client"] = self.client
        return kwargs

    async def take(self, spec: SandboxSpec) -> DockerSandbox | None:
        """A ready member handed out for ``spec``, or None when none is ready or the spec
        does not fit the pool; either way the pool refills in the background."""
        sandbox = None
        if self.poolable(spec):
            with contextlib.suppress(asyncio.QueueEmpty):
                sandbox = self._ready.get_nowait()
        self.fill()
        if sandbox is None:
            return None
        try:
            await self._hand_out(sandbox, spec)
        except Exception as exc:
            self.errors.append(str(exc))
            await sandbox.destroy()
            return None
        return sandbox

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
        sandbox = DockerSandbox(spec, **self._member_kwargs())
        await sandbox.start()
        return sandbox

    async def _hand_out(self, sandbox: DockerSandbox, spec: SandboxSpec) -> None:
        sandbox.spec = spec
        await asyncio.to_thread(sandbox.container.rename, sandbox._container_name())
        await asyncio.to_thread(sandbox.container.reload)
        await sandbox.prepare()
        if spec.env:
            sandbox.shell_env = dict(spec.env)  # for shells opened later (a restart)
            exports = "; ".join(f"export {k}={quote(v)}" for k, v in spec.env.items())
            await sandbox.exec(exports)

    async def close(self) -> None:
        """Destroy the ready members; members still starting are let finish (a cancelled
        start would leave its container behind) and destroyed too."""
        self._closing = True
        if self._filling:
            await asyncio.wait(list(self._filling), timeout=120)
        for task in list(self._filling):
            task.cancel()
        while not self._ready.empty():
            await self._ready.get_nowait().destroy()


def warm_pool(settings: dict[str, Any], sandbox_kwargs: dict[str, Any]) -> SandboxPool | None:
    """The warm pool agent starts take from (Docker sandboxes with the default limits), or
    None when ``sandbox.pool_size`` is 0."""
    size = int(settings.get("sandbox.pool_size", 0))
    if size <= 0:
        return None
    defaults = SandboxSpec(
        run_id="",
        agent_id="",
        image=settings["sandbox.image"],
        memory=settings["sandbox.memory"],
        cpus=settings["sandbox.cpus"],
        pids=settings["sandbox.pids"],
    )
    return SandboxPool(size, defaults=defaults, sandbox_kwargs=sandbox_kwargs.get("docker", {}))


# -- listing and pruning


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


def list_sandboxes(
    client: Any = None, *, memory: bool = True, full_ids: bool = False
) -> list[SandboxRow]:
    """The docker backend's sandboxes (containers) of this data directory."""
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
                id=c.id if full_ids else c.id[:12],
                run=labels.get(f"{LABEL}.run", ""),
                agent=labels.get(f"{LABEL}.agent", ""),
                pool=bool(labels.get(f"{LABEL}.pool")),
                state=c.status,
                age_s=round(_age(c), 1),
                memory_mb=mem,
                network=labels.get(f"{LABEL}.network") == "1",
                backend="docker",
                pool_owner=labels.get(f"{LABEL}.pool", ""),
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


def owned_by_live_run(db_path: Path | None = None) -> Callable[[SandboxRow], bool]:
    """Which sandboxes pruning keeps: those of live runs (by their run label, or the agent
    row that recorded their id) and idle pool members of a running supervisor."""
    from supervisor import config

    live, owners = live_owners(db_path or config.db_path())

    def keep(row: SandboxRow) -> bool:
        run = row.run or owners.get(row.id, "")
        if run:
            return run in live
        return bool(row.pool_owner) and owner_alive(row.pool_owner)

    return keep


def prune_docker(keep: Callable[[SandboxRow], bool], client: Any = None) -> list[str]:
    """The docker backend's prune: containers whose row ``keep`` refuses, then volumes and
    networks nothing uses."""
    client = client or docker_client()
    removed: list[str] = []
    rows = {r.id: r for r in list_sandboxes(client, memory=False, full_ids=True)}
    for container in _managed(client, "containers"):
        row = rows.get(container.id)
        if row is None or keep(row):
            continue
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
                remove_network(network)
                removed.append(f"network {network.name}")
    return removed


def prune(
    client: Any = None,
    *,
    db_path: Path | None = None,
    keep: Callable[[Any], bool] | None = None,
) -> list[str]:
    """Remove Docker sandboxes, volumes and networks no live run owns; what was removed."""
    client = client or docker_client()
    owned = owned_by_live_run(db_path)
    by_id = {c.id: c for c in _managed(client, "containers")}

    def kept(row: SandboxRow) -> bool:
        extra = keep is not None and row.id in by_id and keep(by_id[row.id])
        return extra or owned(row)

    return prune_docker(kept, client)


# -- every backend, through the registry


def _backend(name: str) -> SandboxBackend:
    from supervisor.errors import InputError

    found = backends()
    if name not in found:
        raise InputError(f"unknown sandbox backend {name!r} (have: {', '.join(sorted(found))})")
    backend: SandboxBackend = found[name]
    return backend


def list_all(errors: list[str] | None = None) -> list[SandboxRow]:
    """Every backend's sandboxes of this data directory. A backend that cannot list (no
    Docker engine) adds its reason to ``errors``; if every backend fails, the first
    failure is raised."""
    rows: list[SandboxRow] = []
    failures: list[Exception] = []
    listers = [b for b in backends().values() if b.list_all is not None]
    for backend in listers:
        try:
            rows.extend(backend.list_all())
        except Exception as exc:
            failures.append(exc)
            if errors is not None:
                errors.append(f"{backend.name}: {exc}")
    if failures and len(failures) == len(listers):
        raise failures[0]
    _name_assigned(rows)
    return sorted(rows, key=lambda r: r.age_s)


def _name_assigned(rows: list[SandboxRow]) -> None:
    """Fill in run and agent of sandboxes handed out from the warm pool: their labels were
    set before they had an agent; the agent's record names them."""
    from supervisor import config

    if not config.db_path().exists() or not any(r.pool for r in rows):
        return
    from supervisor.store import Store

    store = Store.open(config.db_path())
    try:
        assigned = list(
            store.db.query(
                "SELECT run_id, id, sandbox, sandbox_id FROM agents WHERE sandbox_id != ''"
            )
        )
    finally:
        store.close()
    for row in rows:
        for a in assigned:
            if row.pool and a["sandbox"] == row.backend and a["sandbox_id"].startswith(row.id):
                row.run, row.agent, row.pool = a["run_id"], a["id"], False


def prune_all(
    db_path: Path | None = None,
    errors: list[str] | None = None,
    also_keep: Callable[[SandboxRow], bool] | None = None,
) -> list[str]:
    """Prune every backend that can: remove what no live run owns. What was removed; a
    backend that cannot be reached adds its reason to ``errors`` (raised if all fail).
    ``also_keep`` is asked last, only about sandboxes about to go: it may copy the work
    out of one, or keep it."""
    live = owned_by_live_run(db_path)

    def keep(row: SandboxRow) -> bool:
        return live(row) or (also_keep is not None and also_keep(row))

    removed: list[str] = []
    failures: list[Exception] = []
    pruners = [b for b in backends().values() if b.prune is not None]
    for backend in pruners:
        try:
            removed.extend(backend.prune(keep))
        except Exception as exc:
            failures.append(exc)
            if errors is not None:
                errors.append(f"{backend.name}: {exc}")
    if failures and len(failures) == len(pruners):
        raise failures[0]
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
    """A sandbox object for an existing sandbox, by the id recorded for its agent, from
    the backend that made it."""
    found = _backend(backend)
    if found.attach is None:
        raise SandboxError(f"the {backend} backend cannot re-adopt its sandboxes")
    sandbox: Sandbox = found.attach(sandbox_id)
    return sandbox


def wake(sandbox: Sandbox) -> None:
    """Start a stopped Docker sandbox again: a stopped agent's sandbox is kept stopped,
    with its workspace, until the agent is restarted."""
    if isinstance(sandbox, DockerSandbox) and sandbox.container is not None:
        sandbox.container.reload()
        if sandbox.container.status in ("created", "exited"):
            sandbox.container.start()
            sandbox.container.reload()


def find_agent_sandbox(agent: str) -> Sandbox:
    """The sandbox of an agent, by agent id or name (or sandbox name)."""
    from supervisor.errors import InputError

    rows = _agent_rows(
        "SELECT id, sandbox, sandbox_id FROM agents WHERE id = ? OR name = ? "
        "ORDER BY created_at DESC LIMIT 1",
        agent,
    )
    if rows and rows[0]["sandbox_id"]:
        return attach(rows[0]["sandbox"], rows[0]["sandbox_id"])
    errors: list[str] = []
    for row in list_all(errors):
        if agent in (row.agent, row.name):
            return attach(row.backend, row.id)
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
