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
from supervisor.sandbox.base import Sandbox

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


DIFF_FILE = ".git/supervisor.diff"
BUNDLE_FILE = ".git/supervisor.bundle"


async def diff(sandbox: Sandbox) -> str:
    """Everything the agent changed since its workspace was made (committed or not)."""
    # Written to a file and read back: a diff is often larger than a command's output cap.
    script = (
        f"cd {sandbox.workdir} && git add -A -N . >/dev/null 2>&1; "
        f"git -c core.pager=cat diff --binary {BASE_REF} > {DIFF_FILE}"
    )
    result = await sandbox.exec(script)
    if not result.ok:
        raise WorkspaceError(f"cannot diff the workspace: {result.stderr.strip()[-300:]}")
    data = await sandbox.read_file(f"{sandbox.workdir}/{DIFF_FILE}")
    return data.decode("utf-8", errors="replace")


async def apply(sandbox: Sandbox, target: Path, *, as_patch: bool = False) -> str:
    """Bring the agent's work into ``target``; returns what was done, in one line.

    A git repo the workspace was cloned from gets a branch ``supervisor/<agent>`` (its
    working tree is not touched); otherwise, or with ``as_patch``, the diff is applied
    only if it applies cleanly, and is saved for the user in any case.
    """
    from supervisor import config

    target = check(target)
    branch = await sandbox.exec(f"cd {sandbox.workdir} && git rev-parse --abbrev-ref HEAD")
    branch_name = branch.stdout.strip() or "supervisor/agent"
    agent = branch_name.removeprefix("supervisor/")
    if not as_patch and is_git_repo(target):
        known = subprocess.run(
            [
                "git",
                "-C",
                str(target),
                "cat-file",
                "-e",
                (
                    await sandbox.exec(f"cd {sandbox.workdir} && git rev-parse {BASE_REF}")
                ).stdout.strip(),
            ],
            capture_output=True,
        )
        if known.returncode == 0:
            return await _fetch_branch(sandbox, target, branch_name)
    patch_text = await diff(sandbox)
    if not patch_text.strip():
        return "no changes"
    patches = config.ensure_data_dir() / "patches"
    patches.mkdir(exist_ok=True)
    patch = patches / f"{agent}.patch"
    patch.write_text(patch_text)
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


async def _fetch_branch(sandbox: Sandbox, target: Path, branch: str) -> str:
    script = (
        f"cd {sandbox.workdir} && git add -A && "
        f"(git diff --cached --quiet || {GIT} commit -q -m 'supervisor: uncommitted work') && "
        f'if [ "$(git rev-parse HEAD)" = "$(git rev-parse {BASE_REF})" ]; then echo none; '
        f"else git bundle create -q {BUNDLE_FILE} {BASE_REF}..{branch}; fi"
    )
    result = await sandbox.exec(script)
    if not result.ok:
        raise WorkspaceError(f"cannot package the agent's work: {result.stderr.strip()[-300:]}")
    if result.stdout.strip() == "none":
        return "no changes"
    data = await sandbox.read_file(f"{sandbox.workdir}/{BUNDLE_FILE}")
    with tempfile.NamedTemporaryFile(suffix=".bundle") as fh:
        fh.write(data)
        fh.flush()
        fetched = subprocess.run(
            ["git", "-C", str(target), "fetch", "--quiet", fh.name, f"{branch}:{branch}"],
            capture_output=True,
            text=True,
        )
    if fetched.returncode != 0:
        raise WorkspaceError(f"cannot create branch {branch} in {target}: {fetched.stderr.strip()}")
    return f"branch {branch} created in {target}; review and merge it when ready"


def _git(args: list[str]) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout
