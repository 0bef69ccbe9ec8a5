"""Preparing an agent's workspace from the user's folder or git repo, and bringing the
agent's changes back.

A git repo is cloned (its committed state; the user's uncommitted work is theirs alone)
and the agent works on branch ``supervisor/<agent>``. A plain folder is copied and made a
git repo in the sandbox, so every workspace has a base commit to diff against.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import InputError
from supervisor.sandbox.base import Sandbox
from supervisor.status import FINAL

BASE_REF = "refs/supervisor/base"
# Commits supervisor makes itself carry this identity, whatever the sandbox's git config.
GIT = "git -c user.name='supervisor agent' -c user.email=agent@supervisor.invalid"


class WorkspaceError(InputError):
    """The workspace the user named cannot be used."""


def is_git_repo(path: Path) -> bool:
    result = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and Path(result.stdout.strip()).resolve() == path.resolve()


def check(path: Path) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise WorkspaceError(f"workspace {path} does not exist")
    if not path.is_dir():
        raise WorkspaceError(f"workspace {path} is not a folder")
    return path.resolve()


def stage(path: Path, agent: str) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """A host copy of the workspace ready to copy into a sandbox.

    For a git repo: a clone with branch ``supervisor/<agent>`` checked out. Returns the
    temporary directory (keep it alive until copied) and the folder inside it.
    """
    path = check(path)
    tmp = tempfile.TemporaryDirectory(prefix="supervisor-ws-")
    dest = Path(tmp.name) / "ws"
    if is_git_repo(path):
        _git(["clone", "--quiet", "--no-hardlinks", str(path), str(dest)])
        _git(["-C", str(dest), "checkout", "--quiet", "-b", f"supervisor/{agent}"])
        _git(["-C", str(dest), "update-ref", BASE_REF, "HEAD"])
    else:
        shutil.copytree(path, dest, symlinks=True)
    return tmp, dest


def init_script(agent: str) -> str:
    """Shell run inside the sandbox after the copy: make a plain folder a repo."""
    return (
        "cd /workspace && if [ ! -d .git ]; then "
        "git init -q && git checkout -q -b supervisor/" + agent + " && git add -A && "
        f"{GIT} commit -q --allow-empty -m 'supervisor: workspace as given' && "
        f"git update-ref {BASE_REF} HEAD; fi"
    )


WORK_REF = "refs/supervisor/work"  # the agent's work, committed or not, as one commit
DIFF_FILE = ".git/supervisor.diff"
BUNDLE_FILE = ".git/supervisor.bundle"
SAVE_TIMEOUT_S = 300.0
# A subshell, so the agent's persistent shell keeps its folder and variables, and a
# temporary index, so its staged changes stay as it left them.
SAVE_SCRIPT = f"""(
set -e
cd "$1"
export GIT_INDEX_FILE=.git/supervisor-save.index
rm -f "$GIT_INDEX_FILE"
git read-tree HEAD
git add -A .
tree=$(git write-tree)
head=$(git rev-parse HEAD)
if [ "$tree" = "$(git rev-parse 'HEAD^{{tree}}')" ]; then work=$head
else work=$({GIT} commit-tree "$tree" -p "$head" -m 'supervisor: work the agent left uncommitted')
fi
rm -f "$GIT_INDEX_FILE"
unset GIT_INDEX_FILE
git update-ref {WORK_REF} "$work"
git -c core.pager=cat diff --binary {BASE_REF} "$work" > {DIFF_FILE}
rm -f {BUNDLE_FILE}
if [ "$work" = "$(git rev-parse {BASE_REF})" ]; then echo none
else git bundle create -q {BUNDLE_FILE} {BASE_REF}..{WORK_REF} && echo saved
fi
)"""


@dataclass(frozen=True)
class Changes:
    """An agent's changes kept on the host: ``diff`` (a patch against the workspace as it
    was given; empty when nothing changed) and ``bundle`` (a git bundle whose one ref,
    ``refs/supervisor/work``, holds the work; None when nothing changed)."""

    diff: Path
    bundle: Path | None

    @property
    def empty(self) -> bool:
        return self.bundle is None

    def text(self) -> str:
        return self.diff.read_text(encoding="utf-8", errors="replace")


async def save_changes(sandbox: Sandbox, folder: Path, name: str) -> Changes:
    """Copy everything the agent changed since its workspace was made (committed or not)
    out of the sandbox, as ``folder/NAME.diff`` and ``folder/NAME.bundle``.

    Leaves the agent's branch, index and working tree as they are."""
    script = f"bash -c {shlex.quote(SAVE_SCRIPT)} save {shlex.quote(sandbox.workdir)}"
    result = await sandbox.exec(script, timeout=SAVE_TIMEOUT_S)
    if not result.ok:
        why = (result.stderr.strip() or result.stdout.strip() or "timed out")[-300:]
        raise WorkspaceError(f"cannot read the agent's changes: {why}")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    diff_path = folder / f"{name}.diff"
    bundle_path = folder / f"{name}.bundle"
    _write_private(diff_path, await sandbox.read_file(f"{sandbox.workdir}/{DIFF_FILE}"))
    if result.stdout.strip().endswith("none"):
        bundle_path.unlink(missing_ok=True)
        return Changes(diff_path, None)
    _write_private(bundle_path, await sandbox.read_file(f"{sandbox.workdir}/{BUNDLE_FILE}"))
    return Changes(diff_path, bundle_path)


async def restore(sandbox: Sandbox, changes: Changes) -> None:
    """Put saved changes back into a fresh sandbox made from the same workspace (as
    uncommitted changes on the agent's branch)."""
    patch = f"{sandbox.workdir}/.git/supervisor-restore.diff"
    await sandbox.write_file(patch, changes.diff.read_bytes(), 0o600)
    result = await sandbox.exec(
        f"(cd {shlex.quote(sandbox.workdir)} && git apply --binary {shlex.quote(patch)})",
        timeout=SAVE_TIMEOUT_S,
    )
    if not result.ok:
        raise WorkspaceError(f"the kept changes do not apply: {result.stderr.strip()[-300:]}")


async def diff(sandbox: Sandbox) -> str:
    """Everything the agent changed since its workspace was made (committed or not)."""
    # Copied out rather than printed: a diff is often larger than a command's output cap.
    with tempfile.TemporaryDirectory(prefix="supervisor-diff-") as tmp:
        return (await save_changes(sandbox, Path(tmp), "changes")).text()


async def apply(
    sandbox: Sandbox,
    target: Path,
    *,
    as_patch: bool = False,
    branch: str | None = None,
    agent: str | None = None,
) -> str:
    """Bring the agent's work from its sandbox into ``target``; see :func:`apply_changes`."""
    target = check(target)
    with tempfile.TemporaryDirectory(prefix="supervisor-apply-") as tmp:
        changes = await save_changes(sandbox, Path(tmp), "changes")
        return apply_changes(
            changes,
            target,
            agent=agent or sandbox.spec.agent_id or "agent",
            branch=branch,
            as_patch=as_patch,
        )


def apply_changes(
    changes: Changes,
    target: Path,
    *,
    agent: str,
    branch: str | None = None,
    as_patch: bool = False,
) -> str:
    """Bring saved work into ``target``; returns what was done, in one line.

    A git repo the workspace was cloned from gets a new branch — ``supervisor/<agent>``,
    or ``branch`` — and nothing else: whichever branch the agent worked on, no existing
    branch is ever moved and the working tree is not touched. Otherwise, or with
    ``as_patch``, the diff is applied only if it applies cleanly, and is saved for the
    user in any case.
    """
    from supervisor import config

    target = check(target)
    if changes.empty:
        return "no changes"
    name = branch or f"supervisor/{agent}"
    if subprocess.run(
        ["git", "check-ref-format", "--branch", name], capture_output=True
    ).returncode:
        raise WorkspaceError(f"{name!r} is not a valid branch name")
    assert changes.bundle is not None
    if not as_patch and is_git_repo(target) and _bundle_fits(changes.bundle, target):
        return _create_branch(changes.bundle, target, name)
    patches = config.ensure_data_dir() / "patches"
    patches.mkdir(exist_ok=True)
    patch = patches / f"{agent}.patch"
    _write_private(patch, changes.diff.read_bytes())
    check_run = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=target, capture_output=True, text=True
    )
    if check_run.returncode != 0:
        raise WorkspaceError(
            f"the patch does not apply cleanly to {target} (it changed since); nothing was "
            f"touched; the patch is saved at {patch}"
        )
    subprocess.run(["git", "apply", str(patch)], cwd=target, check=True)
    return f"applied {patch} to {target}"


def _bundle_fits(bundle: Path, target: Path) -> bool:
    """Does ``target`` have the commits the agent's work builds on?"""
    return (
        subprocess.run(
            ["git", "-C", str(target), "bundle", "verify", "-q", str(bundle)], capture_output=True
        ).returncode
        == 0
    )


def _create_branch(bundle: Path, target: Path, name: str) -> str:
    heads = _git(["-C", str(target), "bundle", "list-heads", str(bundle), WORK_REF]).split()
    if not heads:
        raise WorkspaceError(f"{bundle} holds no work ({WORK_REF} is missing)")
    work = heads[0]
    existing = subprocess.run(
        ["git", "-C", str(target), "rev-parse", "--verify", "-q", f"refs/heads/{name}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if existing == work:
        return f"branch {name} in {target} already holds this work"
    if existing:
        raise WorkspaceError(
            f"branch {name} already exists in {target} (at {existing[:12]}); nothing was "
            "moved; name a new branch with --branch"
        )
    # Objects only (no ref is written by the fetch), then the one new branch, created
    # only if it still does not exist.
    _git(["-C", str(target), "fetch", "--quiet", "--no-tags", str(bundle), WORK_REF])
    _git(["-C", str(target), "update-ref", f"refs/heads/{name}", work, ""])
    return f"branch {name} created in {target}; review and merge it when ready"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


# -- changes kept in the data directory, for review after the agent (and its sandbox) ended

ENDED = FINAL  # ended for good: its changes are final


def changes_folder(data_dir: Path, run_id: str) -> Path:
    return data_dir / "runs" / run_id / "changes"


def changes_row(run_id: str, agent_id: str, changes: Changes) -> dict[str, Any]:
    """The ``artifacts`` row that records saved changes (the bundle lies beside the diff)."""
    import time

    return {
        "run_id": run_id,
        "agent_id": agent_id,
        "kind": "diff",
        "name": "changes",
        "path": str(changes.diff),
        "mime": "text/x-diff",
        "size": changes.diff.stat().st_size,
        "created_at": time.time(),
    }


def saved_changes(db: Any, agent_id: str) -> Changes | None:
    """The newest changes saved for an agent whose files still exist, or None."""
    rows = list(
        db.query(
            "SELECT path FROM artifacts WHERE agent_id = ? AND kind = 'diff' "
            "AND name = 'changes' ORDER BY id DESC LIMIT 1",
            [agent_id],
        )
    )
    if not rows or not Path(rows[0]["path"]).is_file():
        return None
    diff_path = Path(rows[0]["path"])
    bundle = diff_path.with_suffix(".bundle")
    return Changes(diff_path, bundle if bundle.is_file() else None)


def _lookup(key: str) -> tuple[dict[str, Any], Changes | None]:
    """The newest agent with this id or name, and its saved changes."""
    from supervisor import config

    db_path = config.db_path()
    if not db_path.exists():
        return {}, None
    from supervisor.store import Store

    store = Store.open(db_path)
    try:
        rows = [
            dict(r)
            for r in store.db.query(
                "SELECT id, status FROM agents WHERE id = ? OR name = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [key, key],
            )
        ]
        if not rows:
            return {}, None
        return rows[0], saved_changes(store.db, rows[0]["id"])
    finally:
        store.close()


async def agent_changes(key: str, scratch: Path) -> tuple[str, Changes]:
    """An agent's changes for review (``agent diff|apply``, the TUI's Changes tab): the
    copy saved when it ended, else read from its sandbox now (copied under ``scratch``).

    Returns the agent's id (or ``key`` for a sandbox no agent row names) and the changes.
    """
    import asyncio

    from supervisor.errors import SupervisorError
    from supervisor.sandbox.manager import find_agent_sandbox

    row, saved = await asyncio.to_thread(_lookup, key)
    agent_id = str(row.get("id") or key)
    if saved is not None and row.get("status") in ENDED:
        return agent_id, saved
    try:
        sandbox = await asyncio.to_thread(find_agent_sandbox, key)
        return agent_id, await save_changes(sandbox, scratch, "changes")
    except SupervisorError as exc:
        if saved is not None:
            return agent_id, saved
        if not row:
            raise
        raise SupervisorError(
            f"agent {key}: no copy of its changes was kept and its sandbox cannot be read ({exc})"
        ) from None


def _git(args: list[str]) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout
