"""Workspaces: copied in, reviewed with `agent diff`, brought back with `agent apply`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli

from supervisor.sandbox.base import SandboxSpec
from supervisor.sandbox.local import LocalSandbox
from supervisor.sandbox.workspace import WorkspaceError, apply, diff
from supervisor.store import Store


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("lr = 0.1\n")
    (path / "README").write_text("hello\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    return path


def record_agent(home: Path, agent: str, sandbox: str, sandbox_id: str, workspace: Path) -> None:
    """The rows the engine writes for an agent, so the CLI can find it."""
    home.mkdir(parents=True, exist_ok=True)
    store = Store.open(home / "supervisor.db")

    def rows(db):  # type: ignore[no-untyped-def]
        db.table("runs").insert(
            {
                "id": "run1",
                "title": "t",
                "kind": "task",
                "status": "running",
                "workspace": str(workspace),
                "created_at": time.time(),
            }
        )
        db.table("agents").insert(
            {
                "id": agent,
                "run_id": "run1",
                "name": agent,
                "status": "running",
                "sandbox": sandbox,
                "sandbox_id": sandbox_id,
                "created_at": time.time(),
            }
        )

    store.write(rows).result()
    store.close()


@pytest.mark.docker
async def test_git_repo_is_cloned_on_a_branch_and_applied_as_branch(
    sandbox_factory, repo: Path, home: Path
) -> None:  # type: ignore[no-untyped-def]
    (repo / "README").write_text("uncommitted work of the user\n")
    box = await sandbox_factory(agent_id="tuner", workspace=repo)
    r = await box.exec("git branch --show-current; cat README; cat train.py")
    assert r.stdout == "supervisor/tuner\nhello\nlr = 0.1\n"  # committed state, not the user's edit
    await box.exec("sed -i 's/0.1/0.05/' train.py && echo 'new' > notes.md")
    patch = await diff(box)
    assert "-lr = 0.1" in patch and "+lr = 0.05" in patch and "notes.md" in patch

    record_agent(home, "tuner", "docker", box.id, repo)
    shown = run_cli("agent", "diff", "tuner")
    assert shown.returncode == 0 and "+lr = 0.05" in shown.stdout

    applied = run_cli("agent", "apply", "tuner")
    assert applied.returncode == 0, applied.stderr
    assert "branch supervisor/tuner created" in applied.stdout
    assert git(repo, "show", "supervisor/tuner:train.py") == "lr = 0.05\n"
    # The user's checkout and uncommitted work are untouched.
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert (repo / "README").read_text() == "uncommitted work of the user\n"
    assert (repo / "train.py").read_text() == "lr = 0.1\n"


@pytest.mark.docker
async def test_plain_folder_applies_as_patch_never_over_changed_files(
    sandbox_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n")
    box = await sandbox_factory(workspace=folder)
    assert (await box.exec("git log --oneline | wc -l")).stdout.strip() == "1"
    await box.exec("echo two >> a.txt")
    (folder / "a.txt").write_text("the user changed this\n")
    with pytest.raises(WorkspaceError, match="does not apply cleanly"):
        await apply(box, folder)
    assert (folder / "a.txt").read_text() == "the user changed this\n"
    (folder / "a.txt").write_text("one\n")
    message = await apply(box, folder)
    assert message.startswith("applied") and (folder / "a.txt").read_text() == "one\ntwo\n"


@pytest.mark.docker
async def test_no_changes(sandbox_factory, repo: Path) -> None:  # type: ignore[no-untyped-def]
    box = await sandbox_factory(workspace=repo)
    assert await diff(box) == ""
    assert await apply(box, repo) == "no changes"


async def test_local_backend_workspace_and_diff(repo: Path, tmp_path: Path, home: Path) -> None:
    box = LocalSandbox(
        SandboxSpec(run_id="r", agent_id="loc", workspace=repo), root=tmp_path / "sb"
    )
    await box.start()
    try:
        assert not box.isolated
        r = await box.exec("git branch --show-current; echo x >> README")
        assert r.stdout == "supervisor/loc\n"
        assert "+x" in await diff(box)
        record_agent(home, "loc", "local", box.id, repo)
        applied = run_cli("agent", "apply", "loc")
        assert "branch supervisor/loc created" in applied.stdout
        assert git(repo, "show", "supervisor/loc:README") == "hello\nx\n"
    finally:
        await box.destroy()


def test_apply_unknown_agent_is_exit_2() -> None:
    result = run_cli("agent", "apply", "ghost", "--repo", "/tmp")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
