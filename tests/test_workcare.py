"""An agent's work is never lost: kept across stop and restart, reviewable and appliable
after the agent finished, never left in orphan containers, and never written to a branch
of the person's repo other than the one supervisor names."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from agent_kit import scripted
from conftest import run_cli
from test_server import db_rows, wait_for

from supervisor.client import Client
from supervisor.sandbox.docker import docker_client, home_label
from supervisor.server import running_pid
from supervisor.testing import Reply


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
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    return path


def containers(run_id: str) -> list[Any]:
    client = docker_client()
    labels = [f"supervisor.home={home_label()}", f"supervisor.run={run_id}"]
    return list(client.containers.list(all=True, filters={"label": labels}))


def last_tool_result(messages: list[dict[str, Any]]) -> str:
    results = [m["content"] for m in messages if m["role"] == "tool"]
    return str(results[-1]) if results else ""


def saved_diff(home: Path, agent_id: str) -> list[dict[str, Any]]:
    return db_rows(
        home,
        "SELECT path FROM artifacts WHERE agent_id = ? AND kind = 'diff' AND name = 'changes'",
        (agent_id,),
    )


@pytest.mark.docker
@pytest.mark.parametrize("server_restarts", [False, True], ids=["same-server", "server-restart"])
async def test_stop_then_restart_keeps_the_workspace(
    home: Path, sandbox_image: str, server_restarts: bool
) -> None:
    """`x` then `r` in the TUI: the agent goes on in its own sandbox, with its files —
    also when the supervisor process was restarted in between."""
    restarted = {"yes": False}

    def script(messages: list[dict[str, Any]]) -> Reply:
        if not any(m["role"] == "tool" for m in messages):
            return Reply(tool_calls=[("shell", {"command": "echo made-before-stop > made.txt"})])
        if not restarted["yes"]:
            return Reply(tool_calls=[("shell", {"command": "sleep 0.2"})], delay_s=0.1)
        if "made-before-stop" in last_tool_result(messages):
            return Reply(tool_calls=[("finish", {"summary": "found my file"})])
        return Reply(tool_calls=[("shell", {"command": "cat made.txt"})])

    with scripted(script) as model:
        client = await Client.connect(home)
        try:
            run_id = (await client.call("run.start", task="w", sandbox="docker"))["run_id"]

            def agent() -> dict[str, Any]:
                rows = db_rows(home, "SELECT * FROM agents WHERE run_id = ?", (run_id,))
                return rows[0] if rows else {}

            await wait_for(lambda: agent().get("steps", 0) >= 3, 120, "a few steps")
            first = agent()
            await client.call("agent.stop", agent=first["id"])
            assert agent()["status"] == "stopped"
            # Stopped with it: no process of the agent runs on, but the files stay.
            (box,) = containers(run_id)
            assert box.id == first["sandbox_id"] and box.status == "exited"
            count = len(model.requests)
            if server_restarts:
                await client.call("shutdown")
                await client.close()
                await wait_for(lambda: running_pid(home) is None, 30, "the server to stop")
                client = await Client.connect(home)  # a new one, which reconciles sandboxes
                assert [c.id for c in containers(run_id)] == [first["sandbox_id"]]

            restarted["yes"] = True
            await client.call("agent.restart", agent=first["id"])
            await wait_for(lambda: agent().get("status") == "done", 120, "the agent to finish")
            assert agent()["summary"] == "found my file"
            assert "made-before-stop" in last_tool_result(model.requests[-1]["messages"])
            assert agent()["sandbox_id"] == first["sandbox_id"]  # re-adopted, not recreated
            notes = db_rows(
                home,
                "SELECT text FROM events WHERE agent_id = ? AND type = 'log'",
                (first["id"],),
            )
            assert not [n for n in notes if "recreated" in n["text"]]
            assert len(model.requests) > count
        finally:
            await client.close()


@pytest.mark.docker
async def test_restart_after_the_sandbox_is_gone_says_so_and_puts_the_work_back(
    home: Path, sandbox_image: str
) -> None:
    """If re-adoption truly fails, the agent and the transcript say so plainly, and the
    changes kept when it stopped come back."""
    restarted = {"yes": False}

    def script(messages: list[dict[str, Any]]) -> Reply:
        if not any(m["role"] == "tool" for m in messages):
            return Reply(tool_calls=[("shell", {"command": "echo kept-copy > made.txt"})])
        if not restarted["yes"]:
            return Reply(tool_calls=[("shell", {"command": "sleep 0.2"})], delay_s=0.1)
        if "kept-copy" in last_tool_result(messages):
            return Reply(tool_calls=[("finish", {"summary": "restored"})])
        return Reply(tool_calls=[("shell", {"command": "cat made.txt"})])

    with scripted(script) as model:
        client = await Client.connect(home)
        try:
            run_id = (await client.call("run.start", task="w", sandbox="docker"))["run_id"]

            def agent() -> dict[str, Any]:
                rows = db_rows(home, "SELECT * FROM agents WHERE run_id = ?", (run_id,))
                return rows[0] if rows else {}

            await wait_for(lambda: agent().get("steps", 0) >= 3, 120, "a few steps")
            first = agent()
            await client.call("agent.stop", agent=first["id"])
            for box in containers(run_id):  # lost: removed behind supervisor's back
                box.remove(force=True)
            restarted["yes"] = True
            await client.call("agent.restart", agent=first["id"])
            await wait_for(lambda: agent().get("status") == "done", 120, "the agent to finish")
            assert agent()["sandbox_id"] != first["sandbox_id"]
            (note,) = db_rows(
                home,
                "SELECT text FROM events WHERE agent_id = ? AND type = 'log' "
                "AND text LIKE '%recreated%'",
                (first["id"],),
            )
            assert "sandbox was lost" in note["text"] and "put back" in note["text"]
            told = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "user"]
            assert note["text"] in told  # the agent read the same words
            assert agent()["summary"] == "restored"
        finally:
            await client.close()


def edit_and_finish(messages: list[dict[str, Any]]) -> Reply:
    """Changes a tracked file, adds one, commits one change, leaves one uncommitted."""
    if not any(m["role"] == "tool" for m in messages):
        command = "sed -i 's/0.1/0.05/' train.py && git commit -qam tune && echo new > notes.md"
        return Reply(tool_calls=[("shell", {"command": command})])
    return Reply(tool_calls=[("finish", {"summary": "tuned"})])


@pytest.mark.docker
async def test_a_finished_agents_work_can_be_reviewed_and_applied(
    home: Path, sandbox_image: str, repo: Path
) -> None:
    with scripted(edit_and_finish):
        client = await Client.connect(home)
        try:
            run_id = (
                await client.call("run.start", task="tune", sandbox="docker", workspace=str(repo))
            )["run_id"]
            agent_id = await wait_for(
                lambda: db_rows(home, "SELECT id FROM agents WHERE run_id = ?", (run_id,)),
                what="the agent",
            )
            agent_id = agent_id[0]["id"]
            # Once the run reads done, its work is kept and its sandbox gone: nothing of the
            # run happens after its end.
            await wait_for(
                lambda: db_rows(
                    home, "SELECT 1 FROM runs WHERE id = ? AND status = 'done'", (run_id,)
                ),
                120,
                "the run to end",
            )
            assert saved_diff(home, agent_id)
            assert not containers(run_id)
            last = db_rows(
                home, "SELECT type FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)
            )
            assert last == [{"type": "run.status"}]

            # The TUI's Changes tab asks the supervisor process.
            shown = await client.call("agent.diff", agent=agent_id)
            assert "+lr = 0.05" in shown and "+new" in shown and "notes.md" in shown
        finally:
            await client.close()

    diff = run_cli("agent", "diff", agent_id)
    assert diff.returncode == 0, diff.stderr
    assert "-lr = 0.1" in diff.stdout and "+lr = 0.05" in diff.stdout and "notes.md" in diff.stdout

    applied = run_cli("agent", "apply", agent_id)
    assert applied.returncode == 0, applied.stderr
    assert f"branch supervisor/{agent_id} created" in applied.stdout
    assert git(repo, "show", f"supervisor/{agent_id}:train.py") == "lr = 0.05\n"
    assert git(repo, "show", f"supervisor/{agent_id}:notes.md") == "new\n"
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert (repo / "train.py").read_text() == "lr = 0.1\n"

    # As a patch, to a plain copy of the folder.
    plain = repo.parent / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("lr = 0.1\n")
    patched = run_cli("agent", "apply", agent_id, "--repo", str(plain), "--patch")
    assert patched.returncode == 0, patched.stderr
    assert (plain / "train.py").read_text() == "lr = 0.05\n"
    assert (plain / "notes.md").read_text() == "new\n"


def test_apply_never_moves_an_existing_branch(home: Path, repo: Path) -> None:
    """An agent that works on `release` cannot make `apply` move the person's `release`."""
    git(repo, "branch", "release")
    release = git(repo, "rev-parse", "release").strip()

    def script(messages: list[dict[str, Any]]) -> Reply:
        if not any(m["role"] == "tool" for m in messages):
            command = (
                "git checkout -q -B release && echo agent > agent.txt && git add -A && "
                "git -c user.name=a -c user.email=a@a commit -qm 'agent work'"
            )
            return Reply(tool_calls=[("shell", {"command": command})])
        return Reply(tool_calls=[("finish", {"summary": "committed on release"})])

    with scripted(script):
        # Kept, so that the sandbox exists as it did before work was kept at finish.
        started = run_cli(
            "run", "t", "--sandbox", "local", "--workspace", str(repo), "--keep-sandboxes"
        )
        assert started.returncode == 0, started.stderr
    (agent,) = db_rows(home, "SELECT id FROM agents")
    agent_id = agent["id"]

    applied = run_cli("agent", "apply", agent_id)
    assert applied.returncode == 0, applied.stderr
    assert git(repo, "rev-parse", "release").strip() == release
    assert git(repo, "show", f"supervisor/{agent_id}:agent.txt") == "agent\n"

    # A branch the person names is created; one that exists is refused, and not moved.
    refused = run_cli("agent", "apply", agent_id, "--branch", "release")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "already exists" in refused.stderr and "nothing was moved" in refused.stderr
    assert git(repo, "rev-parse", "release").strip() == release
    named = run_cli("agent", "apply", agent_id, "--branch", "review/agent-work")
    assert named.returncode == 0, named.stderr
    assert git(repo, "show", "review/agent-work:agent.txt") == "agent\n"
    again = run_cli("agent", "apply", agent_id)
    assert again.returncode == 0 and "already holds this work" in again.stdout
    assert sorted(git(repo, "branch", "--format=%(refname:short)").split()) == sorted(
        ["main", "release", "review/agent-work", f"supervisor/{agent_id}"]
    )


@pytest.mark.docker
def test_kill_9_while_sandboxes_start_leaves_no_orphan_containers(
    home: Path, sandbox_image: str, repo: Path
) -> None:
    """The supervisor process dies while agents' sandboxes are being made; the next one
    finishes the run, and no container outlives it."""
    with scripted(edit_and_finish):
        started = run_cli(
            "run", "t", "--sandbox", "docker", "--agents", "2", "--workspace", str(repo),
            "--detach",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip()
        pid = running_pid(home)
        assert pid and pid > 0

        async def a_start_under_way() -> None:
            def unrecorded() -> bool:
                recorded = {
                    r["sandbox_id"]
                    for r in db_rows(
                        home, "SELECT sandbox_id FROM agents WHERE run_id = ?", (run_id,)
                    )
                }
                return any(c.id not in recorded for c in containers(run_id))

            await wait_for(unrecorded, 60, "a container not yet handed to its agent")

        asyncio.run(a_start_under_way())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        assert containers(run_id)  # what the dead process left

        # The next supervisor process resumes the run and reconciles its containers.
        assert run_cli("server", "start").returncode == 0

        async def finished() -> None:
            def done() -> bool:
                (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
                return run["status"] in ("done", "failed")

            await wait_for(done, 120, "the resumed run to finish")
            await wait_for(lambda: not containers(run_id), 60, "every container to go")

        asyncio.run(finished())
        (run,) = db_rows(home, "SELECT status FROM runs WHERE id = ?", (run_id,))
        assert run["status"] == "done"
        # And across a clean restart nothing comes back or is left.
        assert run_cli("server", "stop").returncode == 0
        assert run_cli("server", "start").returncode == 0
        assert containers(run_id) == []


@pytest.mark.docker
async def test_prune_copies_unreviewed_work_out_first(
    home: Path, sandbox_factory: Any, repo: Path
) -> None:
    """`sandbox prune` never deletes an agent's unreviewed work without saying so."""
    from test_sandbox_workspace import record_agent

    box = await sandbox_factory(run_id="run1", agent_id="worker", workspace=repo)
    await box.exec("echo unreviewed >> train.py")
    broken = await sandbox_factory(run_id="run1", agent_id="wrecker", workspace=repo)
    await broken.exec("rm -rf .git && echo lost > x")
    record_agent(home, "worker", "docker", box.id, repo)
    from supervisor.store import Store

    store = Store.open(home / "supervisor.db")

    def finish(db: Any) -> None:
        db.execute("UPDATE runs SET status = 'done'")
        db.execute("UPDATE agents SET status = 'done'")
        db.table("agents").insert(
            {
                "id": "wrecker",
                "run_id": "run1",
                "name": "wrecker",
                "status": "done",
                "sandbox": "docker",
                "sandbox_id": broken.id,
                "created_at": time.time(),
            }
        )

    store.write(finish).result()
    store.close()

    pruned = await asyncio.to_thread(run_cli, "sandbox", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "kept a copy of agent worker's changes" in pruned.stdout
    assert f"container {box.name}" in pruned.stdout
    assert f"kept {broken.name}" in pruned.stdout and "--force" in pruned.stdout
    assert [c.name for c in containers("run1")] == [broken.name]
    shown = await asyncio.to_thread(run_cli, "agent", "diff", "worker")
    assert shown.returncode == 0 and "+unreviewed" in shown.stdout

    forced = await asyncio.to_thread(run_cli, "sandbox", "prune", "--force")
    assert forced.returncode == 0 and f"container {broken.name}" in forced.stdout
    assert containers("run1") == []


async def test_the_changes_tab_shows_a_finished_agents_work(home: Path, tmp_path: Path) -> None:
    """The TUI's Changes tab, after the agent finished and its sandbox was removed."""
    from test_tui import loaded, screen_text, select_agent_of, start_run, until

    from supervisor.tui.app import SupervisorApp

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "app.py").write_text("print('old')\n")
    script = [
        Reply(tool_calls=[("write_file", {"path": "app.py", "content": "print('new')\n"})]),
        Reply(tool_calls=[("finish", {"summary": "changed"})]),
    ]
    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "change it", workspace=str(workspace))
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.status == "done", "the agent to finish", 60)
            (row,) = db_rows(home, "SELECT sandbox_id FROM agents WHERE id = ?", (agent.id,))
            await until(pilot, lambda: not Path(row["sandbox_id"]).exists(), "the release", 30)
            await pilot.press("2")
            await until(pilot, lambda: "+print('new')" in screen_text(app), "the diff", 30)
            assert "-print('old')" in screen_text(app)
