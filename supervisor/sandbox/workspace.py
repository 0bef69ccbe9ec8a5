"""Preparing an agent's workspace from the user's folder or git repo, and bringing the
agent's changes back.

A git repo is cloned (its committed state; the user's uncommitted work is theirs alone)
and the agent works on branch ``supervisor/<agent>``. A plain folder is copied and made a
git repo in the sandbox, so every workspace has a base commit to diff against.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from supervisor.errors import InputError

BASE_REF = "refs/supervisor/base"


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
        "git commit -q --allow-empty -m 'supervisor: workspace as given' && "
        f"git update-ref {BASE_REF} HEAD; fi"
    )


DIFF_SCRIPT = (
    "cd /workspace && git add -A -N . >/dev/null 2>&1; "
    f"git -c core.pager=cat diff --binary {BASE_REF}"
)


def commit_script(agent: str) -> str:
    """Commit everything on the agent's branch and bundle it, for ``agent apply``."""
    return (
        "cd /workspace && git add -A && "
        "(git diff --cached --quiet || git commit -q -m 'supervisor: work of agent "
        + agent
        + "') && git bundle create -q /tmp/agent.bundle "
        f"{BASE_REF}..supervisor/{agent} 2>&1"
    )


def _git(args: list[str]) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout
