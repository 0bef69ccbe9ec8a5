"""Sandboxes left behind, and the work in them.

Two callers: ``supervisor sandbox prune`` (a person asking for a clean-up) and the
supervisor process when it starts (reconciling containers with the runs that own them,
after a crash left some behind). Both remove a container only after its agent's changes
are kept in the data directory (see ``workspace.save_changes``); a container whose
changes cannot be read is kept, and said so, unless the person forces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from supervisor.sandbox.docker import LABEL, DockerSandbox, docker_client, remove_container
from supervisor.sandbox.manager import _managed, wake
from supervisor.sandbox.workspace import (
    ENDED,
    changes_folder,
    changes_row,
    save_changes,
    saved_changes,
)
from supervisor.status import ACTIVE
from supervisor.system import owner_alive
from supervisor.types import SandboxRow

Report = Callable[[str], None]
# Statuses of a run the supervisor process is driving now (or, after interrupt_orphans,
# another live process is: a --foreground run).


def keep_unsaved(store: Any, client: Any, *, force: bool, report: Report) -> Callable[[Any], bool]:
    """A ``prune(keep=...)`` callback: True (keep it) for a container whose agent's
    changes are not kept in the data directory and cannot be read now. Changes that can
    be read are saved first, and the person told where."""

    def keep(container: Any) -> bool:
        agent_id = container.labels.get(f"{LABEL}.agent", "")
        if not agent_id:
            return False  # a pool member: never given to an agent, holds no work
        why = _ensure_saved(store, client, container, report)
        if not why:
            return False
        if force:
            report(f"removing {container.name}: agent {agent_id}'s changes not copied ({why})")
            return False
        report(
            f"kept {container.name}: agent {agent_id}'s changes could not be copied ({why}); "
            "`supervisor sandbox prune --force` removes it anyway"
        )
        return True

    return keep


def keep_unsaved_rows(store: Any, *, force: bool, report: Report) -> Callable[[SandboxRow], bool]:
    """:func:`keep_unsaved` for ``prune_all``, which asks about rows of every backend:
    only Docker sandboxes hold work that must be copied out first."""
    state: dict[str, Any] = {}

    def keep(row: SandboxRow) -> bool:
        if row.backend != "docker":
            return False
        if "keep" not in state:
            client = docker_client()
            state["client"] = client
            state["keep"] = keep_unsaved(store, client, force=force, report=report)
        container = state["client"].containers.get(row.id)
        return bool(state["keep"](container))

    return keep


def _ensure_saved(store: Any, client: Any, container: Any, report: Report) -> str:
    """Make sure the container's agent's changes are kept; '' if they are, else why not."""
    labels = container.labels
    agent_id = labels.get(f"{LABEL}.agent", "")
    run_id = labels.get(f"{LABEL}.run", "")
    store.flush()
    rows = list(store.db.query("SELECT run_id, status FROM agents WHERE id = ?", [agent_id]))
    row = dict(rows[0]) if rows else {}
    if row.get("status") in ENDED and saved_changes(store.db, agent_id) is not None:
        return ""
    try:
        return asyncio.run(_save(store, client, container, row, run_id or "unknown", report))
    except Exception as exc:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


async def _save(
    store: Any, client: Any, container: Any, row: dict[str, Any], run_id: str, report: Report
) -> str:
    sandbox = DockerSandbox.attach(container.id, client=client)
    await asyncio.to_thread(wake, sandbox)  # a stopped container is started to be read
    folder = changes_folder(store.path.parent, row.get("run_id") or run_id)
    agent_id = container.labels.get(f"{LABEL}.agent", "")
    try:
        changes = await save_changes(sandbox, folder, agent_id)
    finally:
        await sandbox.stop()  # its shell closed with this event loop; removed or kept stopped
    if changes.empty:
        return ""
    if row:
        saved = changes_row(row["run_id"], agent_id, changes)

        def write(db: Any) -> None:
            db.execute(
                "DELETE FROM artifacts WHERE agent_id = ? AND kind = 'diff' AND name = 'changes'",
                [agent_id],
            )
            db.table("artifacts").insert(saved)

        store.write(write).result()
    report(f"kept a copy of agent {agent_id}'s changes at {changes.diff} (see `agent diff`)")
    return ""


def reconcile(store: Any, *, report: Report) -> list[str]:
    """Match this data directory's containers with the runs that own them (the
    supervisor process does this when it starts, before resuming anything).

    Kept: the sandbox an agent of an unfinished run works in (the run resumes in it),
    a stopped agent's (a restart picks it up), one a person kept, and every container of
    a run another live process drives. Removed, once its agent's changes are kept: a
    finished agent's sandbox, one never handed to its agent (a start cut short by a
    crash) or replaced since, and any left by a finished run. Containers of runs this
    database does not know are left to ``sandbox prune``. Returns what was removed.
    """
    store.flush()
    if not store.db.execute("SELECT 1 FROM agents WHERE sandbox = 'docker' LIMIT 1").fetchone():
        return []  # this data directory never used Docker: do not even ask for an engine
    try:
        client = docker_client(timeout=10)
    except Exception:
        return []  # no Docker engine: nothing of ours can be running in one
    runs = {r["id"]: dict(r) for r in store.db.query("SELECT id, status, owner FROM runs")}
    agents = {
        r["id"]: dict(r)
        for r in store.db.query("SELECT id, run_id, status, sandbox_id FROM agents")
    }
    working_in = {a["sandbox_id"]: a for a in agents.values() if a["sandbox_id"]}
    kept = {
        r["agent_id"]
        for r in store.db.query(
            "SELECT DISTINCT agent_id FROM events WHERE type = 'log' "
            "AND json_extract(data, '$.keep_sandbox') = 1"
        )
    }
    keep_unreadable = keep_unsaved(store, client, force=False, report=report)
    removed = []
    for container in _managed(client, "containers"):
        labels = container.labels
        run = runs.get(labels.get(f"{LABEL}.run", ""))
        if run is None:
            continue
        worker = working_in.get(container.id)
        labelled = agents.get(labels.get(f"{LABEL}.agent", ""))
        if not _removable(run, worker, labelled, kept):
            continue
        # One no agent works in was never handed over (or was replaced): no work of its own.
        if worker is not None and keep_unreadable(container):
            continue
        remove_container(client, container)
        removed.append(container.name)
        why = "its agent ended" if worker else "no agent works in it"
        report(f"removed sandbox {container.name} of run {run['id']} ({run['status']}): {why}")
    return removed


def _removable(
    run: dict[str, Any],
    worker: dict[str, Any] | None,
    labelled: dict[str, Any] | None,
    kept: set[str],
) -> bool:
    """``worker``: the agent recorded as working in the container; ``labelled``: the
    agent its label names (a recipe's own sandboxes name none)."""
    if run["status"] in ACTIVE and owner_alive(run.get("owner")):
        return False
    if run["status"] not in ENDED:  # interrupted: it resumes in the sandboxes it recorded
        return worker is None and labelled is not None
    # A stopped agent's sandbox waits for a restart; a kept one for the person.
    return worker is None or (worker["id"] not in kept and worker["status"] != "stopped")
