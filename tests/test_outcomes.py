"""What a person sees is what happened: a failed command is marked failed everywhere, a
deliberate server stop is called a stop, and the data directory is owner-only."""

from __future__ import annotations

import stat
import time
from pathlib import Path

from agent_kit import engine, scripted
from conftest import run_cli
from test_tui import loaded, screen_text, select_agent_of, shows, start_run, until

from supervisor.engine import RunOptions
from supervisor.testing import Reply
from supervisor.tui.app import SupervisorApp
from supervisor.tui.widgets.bars import Banner

SIZE = (120, 40)

SCRIPT = [
    Reply(tool_calls=[("shell", {"command": "echo fine"})]),
    Reply(tool_calls=[("shell", {"command": "echo broken >&2; (exit 3)"})]),
    Reply(tool_calls=[("finish", {"summary": "tried twice"})]),
]


async def test_a_command_that_exits_non_zero_is_marked_failed_in_logs_and_transcript() -> None:
    with scripted(list(SCRIPT)):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="try", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
            agent_id = next(iter(eng.agents))
    logs = run_cli("logs", agent_id).stdout.splitlines()
    finished = [ln for ln in logs if ln.startswith("←")]
    assert len(finished) == 2, logs
    assert finished[0].startswith("← ✓") and "fine" in finished[0]
    assert finished[1].startswith("← ✗ exit 3")
    md = run_cli("transcript", agent_id).stdout
    assert md.count("**✗ failed (exit code 3)**") == 1, md
    failed_at = md.index("**✗ failed (exit code 3)**")
    assert md.index("echo broken") < failed_at < md.index("[exit code 3]")
    assert "[exit code 0]" in md[: md.index("echo broken")]
    events = [e for e in run_cli("transcript", agent_id, "--format", "jsonl").stdout.splitlines()]
    assert sum('"exit_code": 3' in e for e in events) == 1


async def test_tui_transcript_marks_a_failed_command(home: Path) -> None:
    with scripted(list(SCRIPT), sandbox__backend="local"):
        app = SupervisorApp(clock=time.time)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "try", title="try")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.status == "done", "the agent to finish")
            await shows(pilot, app, "✗ exit 3")
            text = screen_text(app)
            ok = next(ln for ln in text.splitlines() if "→ shell: echo fine" in ln)
            bad = next(ln for ln in text.splitlines() if "→ shell: echo broken" in ln)
            assert "✓" in ok and "✗" not in ok
            assert "✗ exit 3" in bad and "✓" not in bad


async def test_tui_says_the_server_was_stopped_not_lost(home: Path) -> None:
    with scripted([]):
        app = SupervisorApp(clock=time.time)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            result = run_cli("server", "stop", "--force")
            assert result.returncode == 0, result.stderr
            banner = app.query_one(Banner)
            await until(pilot, lambda: banner.display, "the banner")
            await shows(pilot, app, "The supervisor server was stopped")
            await pilot.pause(1.5)  # reconnect attempts keep saying so
            text = screen_text(app)
            assert "was stopped" in text and "lost" not in text, text


def _modes(home: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.lstat().st_mode) for p in home.iterdir()}


def test_data_directory_made_beforehand_becomes_owner_only(home: Path) -> None:
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    assert run_cli("config", "set", "model", "x").returncode == 0
    assert run_cli("server", "start").returncode == 0
    assert run_cli("agents", "ls").returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    modes = _modes(home)
    expected = {"config.toml", "supervisor.db", "supervisor.db-wal", "supervisor.db-shm"}
    expected |= {"server.log", "server.lock"}
    assert expected <= set(modes), modes
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not loose, loose
    assert run_cli("server", "stop").returncode == 0
