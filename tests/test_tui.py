"""The TUI against a real supervisor server: pilot tests of every screen and key, and
snapshots of the main screens (fixed data, fixed clock, fixed size).

Each test's app starts a real server in the test's SUPERVISOR_HOME (``Client.connect``
with ``start=True``); the ``server_stopped`` fixture stops it afterwards. Agents run in
local sandboxes against the scripted model server.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_kit import scripted, tool_results
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, Select, TabbedContent, TextArea

from supervisor import config
from supervisor.events import Event
from supervisor.server import MAX_MESSAGE_CHARS, running_pid
from supervisor.store import Store
from supervisor.testing import Reply
from supervisor.tui import app as tui_app
from supervisor.tui.app import SupervisorApp
from supervisor.tui.widgets.bars import AskBar, Banner
from supervisor.tui.widgets.detail import DetailPane
from supervisor.tui.widgets.fleet import FleetTable

SIZE = (120, 40)
SNAP_SIZE = (120, 36)
T0 = 1_767_000_000.0  # a fixed moment for the snapshot data


_stopping: list[tuple[int, Path]] = []


@pytest.fixture(autouse=True)
def server_stopped(home: Path) -> Iterator[None]:
    """Whatever a test started, no server outlives the tests: each is told to stop at the
    end of its test, and waited for (while later tests run) at the end of the session."""
    yield
    pid = running_pid(home)
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)
        _stopping.append((pid, home))


@pytest.fixture(autouse=True, scope="session")
def _servers_reaped() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    for pid, home in _stopping:
        while running_pid(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_pid(home):
            os.kill(pid, signal.SIGKILL)


# -- helpers


async def until(
    pilot: Pilot[Any], check: Callable[[], object], what: str, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def shows(pilot: Pilot[Any], app: SupervisorApp, text: str) -> None:
    """Wait until the screen shows ``text`` (panes load on the app's next tick; a loaded
    machine makes that later)."""
    await until(pilot, lambda: text in screen_text(app), repr(text))


def screen_text(app: SupervisorApp) -> str:
    """What the terminal shows, as text (read from the app's SVG screenshot)."""
    svg = app.export_screenshot()
    rows: dict[int, list[tuple[int, str]]] = {}
    for m in re.finditer(
        r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" '
        r'clip-path="url\(#[^)]*line-(\d+)\)">(.*?)</text>',
        svg,
        re.S,
    ):
        text = html.unescape(m.group(3)).replace("\xa0", " ").rstrip("\n")
        rows.setdefault(int(m.group(2)), []).append((round(float(m.group(1)) / 12.2), text))
    lines = []
    for number in sorted(rows):
        cells = [" "] * 300
        for col, text in rows[number]:
            for i, ch in enumerate(text):
                if col + i < len(cells):
                    cells[col + i] = ch
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


async def loaded(pilot: Pilot[Any]) -> SupervisorApp:
    app = pilot.app
    assert isinstance(app, SupervisorApp)
    await until(pilot, lambda: app.loaded, "the app to connect and load")
    return app


async def start_run(app: SupervisorApp, task: str, **kw: Any) -> str:
    assert app.client is not None
    result = await app.client.call("run.start", task=task, sandbox="local", **kw)
    return str(result["run_id"])


def agents_of(app: SupervisorApp, run_id: str) -> list[Any]:
    return [a for a in app.fleet.agents.values() if a.run_id == run_id]


async def select_agent_of(pilot: Pilot[Any], app: SupervisorApp, run_id: str) -> Any:
    await until(pilot, lambda: agents_of(app, run_id), "the run's agent to appear")
    agent = agents_of(app, run_id)[0]
    app._select(agent.id)
    await until(pilot, lambda: app.query_one(DetailPane).agent is agent, "the selection")
    await pilot.pause(0.15)  # the detail pane loads at the next tick
    return agent


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*[{" ": "space", "/": "slash", "-": "minus"}.get(c, c) for c in text])


def finish(summary: str = "done") -> Reply:
    return Reply(tool_calls=[("finish", {"summary": summary})])


def said(messages: list[dict[str, Any]], text: str) -> bool:
    return any(m["role"] == "user" and text in str(m.get("content")) for m in messages)


# -- the fleet and the detail tabs


async def test_fleet_shows_a_real_run_and_selection_changes_the_detail(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        task = messages[1]["content"]
        turns = sum(m["role"] == "assistant" for m in messages)
        if turns == 0:
            return Reply(
                text=f"Working on **{task}** now.",
                tool_calls=[("shell", {"command": f"echo output-of-{task}"})],
                usage=(1000, 100),
            )
        return Reply(tool_calls=[("finish", {"summary": f"finished {task}"})], usage=(1000, 100))

    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp(clock=time.time)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            first = await start_run(app, "alpha", title="alpha")
            second = await start_run(app, "beta", title="beta")
            await until(
                pilot,
                lambda: (
                    len(app.fleet.agents) == 2
                    and all(a.status == "done" for a in app.fleet.agents.values())
                ),
                "both agents to finish",
            )
            await pilot.pause(0.2)
            text = screen_text(app)
            # Runs are rows, their agents under them, with status, steps, tokens and cost.
            assert "▾ alpha" in text and "▾ beta" in text
            row = next(ln for ln in text.splitlines() if "finished alpha" in ln)
            assert "done" in row and " 2 " in row and "2.2k" in row and "$0.0024" in row
            assert "Fleet — 2 agents" in text

            agent_a = await select_agent_of(pilot, app, first)
            await shows(pilot, app, "Working on alpha now.")
            await shows(pilot, app, "→ shell: echo output-of-alpha")
            text = screen_text(app)
            assert "Working on alpha now." in text and "→ shell: echo output-of-alpha" in text
            # A tool call is folded; its output is one key away.
            assert "output-of-alpha\n" not in text.replace("→ shell: echo output-of-alpha", "")
            app.query_one("TranscriptView CollapsibleTitle").focus()
            await pilot.press("enter")
            await shows(pilot, app, "[exit code 0]")

            # Moving the cursor selects another agent: the tabs follow it.
            app.query_one(FleetTable).focus()
            agent_b = await select_agent_of(pilot, app, second)
            assert agent_b is not agent_a
            await shows(pilot, app, "Working on beta now.")
            text = screen_text(app)
            assert "Working on beta now." in text and "Working on alpha" not in text
            await pilot.press("3")  # Shell tab
            await shows(pilot, app, "$ echo output-of-beta")
            await pilot.press("5")  # Info tab
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "model  scripted" in text and "sandbox  local" in text
            assert "finished beta" in text and f"({second})" in text
            await pilot.press("1")
            assert app.query_one(TabbedContent).active == "transcript"


async def test_message_reaches_a_running_agent_and_a_question_is_answered(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        if said(messages, "hello from the tui"):
            if not any("The person answered" in r for r in tool_results({"messages": messages})):
                return Reply(tool_calls=[("ask_human", {"question": "Which branch?"})])
            return finish("got the message and the answer")
        return Reply(tool_calls=[("shell", {"command": "sleep 0.2"})])

    with scripted(script, sandbox__backend="local") as model:
        app = SupervisorApp()
        bells: list[int] = []
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "loop until told")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.steps >= 1, "the agent to work")
            await pilot.press("m")
            await type_text(pilot, "hello from the tui")
            await pilot.press("enter")
            # The agent reads the message, then asks; the person is told and the bell rings.
            await until(pilot, lambda: agent.status == "waiting", "the question")
            await pilot.pause(0.2)
            assert bells
            text = screen_text(app)
            assert "agent asks: Which branch?" in text
            assert "waiting for you" in text
            assert "Answer agent: Which branch?" in text
            assert app.query_one(MessageInputType).value == ""
            await pilot.press("m")  # sending gave the keys back to the fleet
            await type_text(pilot, "use main")
            await pilot.press("enter")
            await until(pilot, lambda: agent.status == "done", "the agent to finish")
            assert agent.summary == "got the message and the answer"
            assert not app.query_one(AskBar).display
    answers = [r for req in model.requests for r in tool_results(req)]
    assert "The person answered: use main" in answers


MessageInputType = tui_app.MessageInput


async def test_approve_deny_and_always(home: Path) -> None:
    script = [
        Reply(tool_calls=[("shell", {"command": "git push origin one"})]),
        Reply(tool_calls=[("shell", {"command": "git push origin two"})]),
        Reply(tool_calls=[("shell", {"command": "git push origin three"})]),
        Reply(tool_calls=[("shell", {"command": "git push origin four"})]),
        finish(),
    ]
    with scripted(script, sandbox__backend="local") as model:
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "push")
            agent = await select_agent_of(pilot, app, run_id)

            async def asked(command: str) -> None:
                await until(
                    pilot,
                    lambda: (
                        agent.pending is not None
                        and command in json.dumps(agent.pending.get("arguments"))
                    ),
                    f"the approval of {command}",
                )
                await pilot.pause(0.1)
                text = screen_text(app)
                assert f"agent asks to run shell: git push origin {command}" in text
                assert "Approve (y)" in text and "(policy shell:git push*)" in text

            await asked("one")
            assert "y Approve" in screen_text(app)  # the keys show while one waits
            await pilot.press("d")
            await asked("two")
            await pilot.click("#approve")  # the mouse works too
            await asked("three")
            await pilot.press("a")
            await until(pilot, lambda: agent.status == "done", "the agent to finish")
            assert "y Approve" not in screen_text(app)
    results = [tool_results(r)[-1] for r in model.requests[1:]]
    assert results[0] == "error: a person denied this call; choose another way"
    assert "[exit code" in results[1] and "[exit code" in results[2]
    assert "[exit code" in results[3]  # "always" covered the fourth push: nobody was asked


async def test_pause_resume_keep_stop_and_restart(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        if said(messages, "please finish"):
            return finish("finished after the restart")
        # A step every half second: enough to watch, without a transcript so long that
        # drawing it on a loaded machine outlasts the pilot's 30 s wait for the screen.
        return Reply(tool_calls=[("shell", {"command": "true"})], delay_s=0.5)

    with scripted(script, sandbox__backend="local", agent__max_steps="100000"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "loop")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.steps >= 2, "a few steps")
            await pilot.press("p")
            await until(pilot, lambda: agent.status == "paused", "the pause")
            steps = agent.steps
            await pilot.pause(0.4)
            assert agent.steps == steps  # no step while paused
            assert "paused" in screen_text(app)
            await pilot.press("p")
            await until(pilot, lambda: agent.status == "running" and agent.steps > steps, "resume")
            await pilot.press("k")
            await until(pilot, lambda: "sandbox will be kept" in screen_text(app), "the keep")
            await pilot.press("x")
            await until(pilot, lambda: agent.status == "stopped", "the stop")
            await shows(pilot, app, "stopped")
            await pilot.press("r")
            await until(pilot, lambda: agent.status == "running", "the restart")
            await pilot.press("m")
            await type_text(pilot, "please finish")
            await pilot.press("enter")
            await until(pilot, lambda: agent.status == "done", "the finish")
            assert agent.summary == "finished after the restart"


async def test_connection_lost_shows_a_banner_then_reconnects_and_resumes(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        if said(messages, "wrap up"):
            return finish("resumed and done")
        # A step every half second: enough to watch, without a transcript so long that
        # drawing it on a loaded machine outlasts the pilot's 30 s wait for the screen.
        return Reply(tool_calls=[("shell", {"command": "true"})], delay_s=0.5)

    with scripted(
        script, sandbox__backend="local", server__auto_resume="false", agent__max_steps="100000"
    ):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "long job")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.steps >= 1, "the agent to work")
            pid = running_pid(home)
            assert pid
            os.kill(pid, signal.SIGKILL)
            banner = app.query_one(Banner)
            await until(pilot, lambda: banner.display, "the banner")
            await pilot.pause(1.2)  # a failed reconnect does not take the app down
            assert "Connection to the supervisor server lost" in screen_text(app) or (
                "The supervisor server is lost" in screen_text(app)
            )
            assert app.is_running

            # A new server (as the next `supervisor` command would start): the TUI finds
            # it; the run the dead server drove is interrupted, and r resumes it.
            from supervisor.client import Client

            other = await Client.connect(home, start=True, name="test")
            await other.close()
            await until(pilot, lambda: not banner.display, "the reconnection", timeout=10)
            await until(
                pilot, lambda: app.fleet.runs[run_id].status == "interrupted", "interrupted"
            )
            await select_agent_of(pilot, app, run_id)
            assert "interrupted" in screen_text(app)
            await pilot.press("r")
            agent = app.fleet.agents[agent.id]
            await until(pilot, lambda: app.fleet.agents[agent.id].status == "running", "resumed")
            await pilot.press("m")
            await type_text(pilot, "wrap up")
            await pilot.press("enter")
            await until(pilot, lambda: app.fleet.agents[agent.id].status == "done", "done")


# -- dialogs


async def test_new_agent_dialog_starts_a_run_and_the_cursor_follows(
    home: Path, tmp_path: Path
) -> None:
    with scripted([Reply("hi"), Reply("hi again"), Reply("the answer")], sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            older = await start_run(app, "an older run", title="older")
            await until(pilot, lambda: agents_of(app, older), "the older run")
            await pilot.press("n")
            await until(pilot, lambda: app.screen.query("#new-agent"), "the dialog")
            assert "New agent" in screen_text(app)
            # Bad input shows inline; nothing starts and nothing crashes.
            await pilot.press("ctrl+s")
            await shows(pilot, app, "Give the agent a task.")
            app.screen.query_one("#task", TextArea).insert("count the files")
            app.screen.query_one("#workspace", Input).value = str(tmp_path / "missing")
            await pilot.press("ctrl+s")
            await shows(pilot, app, "No folder")
            app.screen.query_one("#workspace", Input).value = ""
            app.screen.query_one("#model", Input).value = "no-such-model-alias"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: "no-such-model-alias" in screen_text(app), "the refusal")
            assert app.screen.query("#new-agent")  # still open, to fix the field
            app.screen.query_one("#model", Input).value = ""
            app.screen.query_one("#sandbox", Select).value = "local"
            app.screen.query_one("#count", Input).value = "2"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not app.screen.query("#new-agent"), "the dialog to close")
            run = await _newest_run(pilot, app, older)
            await until(pilot, lambda: len(agents_of(app, run)) == 2, "two agents")
            # The cursor is on the new run's first agent.
            await until(pilot, lambda: app.selected_agent in agents_of(app, run), "the cursor")
            assert app.selected_agent is not None and app.selected_agent.name.endswith("-1")
            assert app.selected_agent.task == "count the files"

            await pilot.press("n")
            await until(pilot, lambda: app.screen.query("#new-agent"), "the dialog")
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.query("#new-agent"), "cancel")


async def _newest_run(pilot: Pilot[Any], app: SupervisorApp, older: str) -> str:
    await until(pilot, lambda: len(app.fleet.runs) == 2, "the new run")
    return next(r for r in app.fleet.runs if r != older)


RECIPE = """---
name: tui-demo
description: Writes a greeting, for the TUI test.
parameters:
  greeting: {type: str, default: hello, help: what to write}
  count: {type: int, default: 2, help: how many lines}
steps:
  - id: write
    kind: shell
    run: "for i in $(seq {count}); do echo {greeting}; done > {run_dir}/out.txt"
---
Write the greeting.
"""


async def test_run_recipe_dialog_starts_a_recipe_run(home: Path) -> None:
    folder = config.config_path().parent / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tui-demo.md").write_text(RECIPE)
    app = SupervisorApp()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("R")
        await until(pilot, lambda: app.screen.query("#run-recipe"), "the dialog")
        app.screen.query_one("#recipe", Select).value = "tui-demo"
        await until(pilot, lambda: app.screen.query("#param-count"), "the parameter form")
        text = screen_text(app)
        assert "Writes a greeting" in text
        assert "count (int) — how many lines" in text and "greeting (str) — what to write" in text
        assert app.screen.query_one("#param-count", Input).value == "2"  # the default
        app.screen.query_one("#param-count", Input).value = "three"
        await pilot.press("ctrl+s")
        await shows(pilot, app, "parameter count must be int, got 'three'")
        app.screen.query_one("#param-count", Input).value = "3"
        app.screen.query_one("#param-greeting", Input).value = "ahoy"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not app.screen.query("#run-recipe"), "the dialog to close")
        await until(pilot, lambda: app.fleet.runs, "the recipe run")
        run = next(iter(app.fleet.runs.values()))
        await until(pilot, lambda: run.status == "done", "the recipe to finish")
        assert app.selected == f"run:{run.id}"  # the cursor went to the new run
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "recipe tui-demo" in text and "✓ write" in text
    assert (home / "runs" / run.id / "out.txt").read_text() == "ahoy\nahoy\nahoy\n"


# -- history, filter, sort, notes


async def test_history_search_finds_a_transcript_and_jumps_to_the_agent(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        task = messages[1]["content"]
        if sum(m["role"] == "assistant" for m in messages) == 0:
            return Reply(
                text=f"Notes on {task}: the zebracorn lives in the attic."
                if task == "first"
                else "Nothing special here."
            )
        return Reply(text="the end")  # two replies without tools end the agent

    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            first = await start_run(app, "first", title="first")
            await until(
                pilot,
                lambda: agents_of(app, first) and agents_of(app, first)[0].status == "done",
                "first",
            )
            second = await start_run(app, "second", title="second")
            await until(
                pilot,
                lambda: agents_of(app, second) and agents_of(app, second)[0].status == "done",
                "second",
            )
            await select_agent_of(pilot, app, second)
            await pilot.press("h")
            await until(pilot, lambda: app.screen.query("#history"), "the history screen")
            text = screen_text(app)
            assert "first" in text and "second" in text and "done" in text
            await pilot.press("slash")
            await type_text(pilot, "zebracorn")
            await pilot.press("enter")
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "[zebracorn]" in text and "message" in text
            await pilot.press("enter")  # choose the result
            await until(pilot, lambda: not app.screen.query("#history"), "the jump")
            assert app.selected_agent is agents_of(app, first)[0]
            await shows(pilot, app, "zebracorn lives in the attic")


async def test_filter_and_sort(home: Path) -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        return finish(f"finished {messages[1]['content']}")

    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            await start_run(app, "apple pie", title="apples", agents=2)
            await start_run(app, "banana bread", title="bananas")
            await until(
                pilot,
                lambda: (
                    len(app.fleet.agents) == 3
                    and all(a.status == "done" for a in app.fleet.agents.values())
                ),
                "three agents",
            )
            await pilot.press("slash")
            await type_text(pilot, "banana")
            await pilot.pause(0.1)
            text = screen_text(app)
            assert "bananas" in text and "apples-1" not in text
            assert "Fleet — 1 agents" in text and "filter: banana" in text
            await pilot.press("enter")
            assert app.focused is app.query_one(FleetTable)
            await pilot.press("slash", "escape")  # escape clears the filter
            await pilot.pause(0.1)
            text = screen_text(app)
            assert "apples-1" in text and "apples-2" in text and "Fleet — 3 agents" in text
            await pilot.press("s")
            assert app.sort == "name"
            await shows(pilot, app, "sort: name")
            app.fleet.agents[
                next(a for a in app.fleet.agents if a.startswith("apples-2"))
            ].cost = 9.0
            for _ in ("status", "cost"):
                await pilot.press("s")
            assert app.sort == "cost"
            order = [k for k in app.query_one(FleetTable).order if not k.startswith("run:")]
            assert order.index(next(k for k in order if k.startswith("apples-2"))) < order.index(
                next(k for k in order if k.startswith("apples-1"))
            )


async def test_changes_and_notes_tabs(home: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "app.py").write_text("print('old')\n")
    script = [
        Reply(
            tool_calls=[
                ("write_file", {"path": "app.py", "content": "print('new')\n"}),
                (
                    "remember",
                    {"note": "The build needs libfoo installed first.", "scope": "global"},
                ),
                ("remember", {"note": "Port 8080 is taken by the proxy.", "scope": "global"}),
            ]
        ),
        Reply(tool_calls=[("ask_human", {"question": "Look at the diff?"})]),
        finish(),
    ]
    with scripted(script, sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "change and learn", workspace=str(workspace))
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.status == "waiting", "the question")
            await pilot.press("2")  # Changes: the workspace diff, read on demand
            await until(pilot, lambda: "+print('new')" in screen_text(app), "the diff")
            assert "-print('old')" in screen_text(app)
            await pilot.press("4")  # Notes: every memory note, searchable
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "libfoo" in text and "Port 8080" in text
            app.query_one("#notes-query", Input).focus()
            await type_text(pilot, "proxy")
            await pilot.pause(0.5)
            text = screen_text(app)
            assert "Port 8080 is taken by the proxy." in text and "libfoo" not in text
            await pilot.press("escape", "m")
            await type_text(pilot, "yes")
            await pilot.press("enter")
            await until(pilot, lambda: agent.status == "done", "the agent")


# -- bad input and small screens


async def test_small_terminal_and_a_huge_paste_do_not_break_it(home: Path) -> None:
    with scripted([Reply("a"), Reply("b")], sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "small")
            await select_agent_of(pilot, app, run_id)
            # Text streams into the transcript as it arrives, then becomes Markdown.
            agent = app.selected_agent
            assert agent is not None
            base = app.fleet.last_event_id + 1000
            for i, word in enumerate(["Streaming ", "**live** ", "words"]):
                app._receive(
                    [Event("message.delta", run_id, agent.id, {"delta": word}, id=base + i)]
                )
                await shows(pilot, app, word.strip())
            app._receive(
                [Event("message", run_id, agent.id, {}, "Streaming **live** words", id=base + 9)]
            )
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "Streaming live words" in text and "**live**" not in text

            await pilot.resize_terminal(40, 10)
            await pilot.pause(0.2)
            assert (
                not app.query_one(DetailPane).display or not app.query_one(DetailPane).region.height
            )
            assert "small" in screen_text(app)
            await pilot.resize_terminal(*SIZE)
            await pilot.pause(0.2)
            assert app.query_one(DetailPane).region.height > 5

            box = app.query_one(tui_app.MessageInput)
            box.focus()
            started = time.monotonic()
            box.post_message(events.Paste("x" * 1_000_000))
            await pilot.pause(0.2)
            assert time.monotonic() - started < 2
            assert box.value == ""
            assert "Paste refused" in screen_text(app)
            assert f"{MAX_MESSAGE_CHARS:,}" in screen_text(app)
            box.post_message(events.Paste("line one\nline two"))
            await pilot.pause(0.1)
            assert box.value == "line one↵line two"  # a line break is kept, shown as ↵


async def test_command_palette_and_shell_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with scripted([Reply("a"), Reply("b")], sandbox__backend="local"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "palette")
            agent = await select_agent_of(pilot, app, run_id)
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            await type_text(pilot, "history")
            await shows(pilot, app, "Every run, and search over every transcript")
            await pilot.press("enter")
            await until(pilot, lambda: app.screen.query("#history"), "history from the palette")
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.query("#history"), "back")
            # o hands the terminal to `supervisor sandbox shell`; a test terminal cannot
            # be handed over, which the app says instead of crashing.
            await pilot.press("o")
            await shows(pilot, app, "cannot be handed over")
            assert tui_app.shell_command(agent.id)[-3:] == ["sandbox", "shell", agent.id]
            await pilot.press("q")
        assert app.return_code == 0
    assert running_pid(home)  # detaching leaves the server (and its agents) running


# -- snapshots


def _snapshot_data(home: Path) -> None:
    """A fixed fleet: a finished team run and an interrupted one, written as the engine
    would (rows and events), so the server finds nothing to resume."""
    home.mkdir(parents=True, exist_ok=True)
    config.set_value("server.auto_resume", "false")
    store = Store.open(home / "supervisor.db")

    def rows(db: Any) -> None:
        db["runs"].insert_all(
            [
                {
                    "id": "run-aaa111",
                    "title": "fix the flaky test",
                    "kind": "task",
                    "status": "done",
                    "created_at": T0,
                    "updated_at": T0 + 300,
                    "finished_at": T0 + 300,
                    "cost_usd": 0.42,
                    "params": "{}",
                    "workspace": "/src/app",
                },
                {
                    "id": "run-bbb222",
                    "title": "recipe autoresearch",
                    "kind": "recipe",
                    "recipe": "autoresearch",
                    "status": "interrupted",
                    "created_at": T0 - 3600,
                    "updated_at": T0 - 3000,
                    "cost_usd": 1.5,
                    "budget_usd": 5.0,
                    "params": "{}",
                },
            ]
        )
        db["agents"].insert_all(
            [
                {
                    "id": "lead-1",
                    "run_id": "run-aaa111",
                    "parent_id": None,
                    "name": "lead",
                    "role": "lead",
                    "task": "fix the flaky test",
                    "model": "scripted",
                    "sandbox": "local",
                    "status": "done",
                    "doing": "",
                    "steps": 4,
                    "input_tokens": 12000,
                    "output_tokens": 800,
                    "cost_usd": 0.30,
                    "summary": "the test is fixed",
                    "created_at": T0,
                    "updated_at": T0 + 300,
                    "finished_at": T0 + 300,
                },
                {
                    "id": "worker-1",
                    "run_id": "run-aaa111",
                    "parent_id": "lead-1",
                    "name": "lead.1",
                    "role": "worker",
                    "task": "find the race",
                    "model": "scripted",
                    "sandbox": "local",
                    "status": "done",
                    "doing": "",
                    "steps": 2,
                    "input_tokens": 4000,
                    "output_tokens": 300,
                    "cost_usd": 0.12,
                    "summary": "found it",
                    "created_at": T0 + 10,
                    "updated_at": T0 + 200,
                    "finished_at": T0 + 200,
                },
                {
                    "id": "loop-1",
                    "run_id": "run-bbb222",
                    "parent_id": None,
                    "name": "agent-1",
                    "role": "worker",
                    "task": "improve val_bpb",
                    "model": "scripted",
                    "sandbox": "local",
                    "status": "interrupted",
                    "doing": "",
                    "steps": 9,
                    "input_tokens": 90000,
                    "output_tokens": 5000,
                    "cost_usd": 1.5,
                    "created_at": T0 - 3600,
                    "updated_at": T0 - 3000,
                },
            ]
        )

    store.write(rows)
    events = [
        Event("run.created", "run-aaa111", None, {"title": "fix the flaky test"}, "fix", T0),
        Event(
            "message",
            "run-aaa111",
            "lead-1",
            {"step": 1},
            "I will **reproduce** the failure first, then split the work:\n\n"
            "- run the test 50 times\n- read the fixture",
            T0 + 1,
        ),
        Event(
            "tool.started",
            "run-aaa111",
            "lead-1",
            {"tool": "shell", "id": "c1", "arguments": {"command": "pytest -x -q tests/"}},
            "shell pytest",
            T0 + 2,
        ),
        Event(
            "tool.finished",
            "run-aaa111",
            "lead-1",
            {"tool": "shell", "id": "c1", "error": False, "duration_s": 3.2},
            "1 failed, 41 passed\n[exit code 1]",
            T0 + 5,
        ),
        Event(
            "message",
            "run-aaa111",
            "lead-1",
            {"step": 2},
            "The fixture shares a port; a worker will find which test races.",
            T0 + 6,
        ),
        Event(
            "agent.status",
            "run-aaa111",
            "lead-1",
            {"status": "done", "summary": "the test is fixed"},
            "the test is fixed",
            T0 + 300,
        ),
    ]
    # The autoresearch plugin's experiments, as the metric and progress events any plugin
    # emits (the Info tab draws them without knowing the plugin).
    experiments = [(1.0, "keep"), (0.98, "keep"), (0.99, "discard"), (0.95, "keep")]
    experiments += [(None, "crash"), (0.94, "keep")]
    for n, (metric, status) in enumerate(experiments, 1):
        if metric is not None:
            labels = {"status": status, "better": "lower"}
            data = {"name": "val_bpb", "value": metric, "labels": labels}
        else:
            data = {"name": "val_bpb", "value": None, "labels": {"status": status}}
        events.append(Event("metric", "run-bbb222", None, data, f"val_bpb {status}", T0 + 60 + n))
        progress = {"label": "experiments", "done": n, "total": 8, "unit": ""}
        events.append(Event("progress", "run-bbb222", None, progress, f"{n}/8", T0 + 60 + n))
    for event in events:
        store.append(event)
    store.flush()
    store.close()


def _snap_app(home: Path) -> SupervisorApp:
    _snapshot_data(home)
    return SupervisorApp(home, clock=lambda: T0 + 900)


async def _ready(pilot: Pilot[Any]) -> None:
    app = await loaded(pilot)
    await until(pilot, lambda: app.query_one(DetailPane).agent is not None, "the selection")
    await pilot.pause(0.3)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_snapshot_fleet_and_transcript(home: Path, snap_compare: Any, utc: None) -> None:
    assert snap_compare(_snap_app(home), terminal_size=SNAP_SIZE, run_before=_ready)


def test_snapshot_new_agent_dialog(home: Path, snap_compare: Any, utc: None) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("n")
        # The dialog is on screen (a fixed pause alone missed it on a loaded machine).
        await until(pilot, lambda: len(pilot.app.screen_stack) > 1, "the new agent dialog")
        await pilot.pause(0.3)

    assert snap_compare(_snap_app(home), terminal_size=SNAP_SIZE, run_before=run_before)


def test_snapshot_run_recipe_dialog(home: Path, snap_compare: Any, utc: None) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("R")
        await until(pilot, lambda: pilot.app.screen.query("#recipe"), "the recipe dialog")
        await pilot.pause(0.3)
        pilot.app.screen.query_one("#recipe", Select).value = "autoresearch"
        await pilot.pause(0.3)

    assert snap_compare(_snap_app(home), terminal_size=SNAP_SIZE, run_before=run_before)


def test_snapshot_history(home: Path, snap_compare: Any, utc: None) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        await pilot.press("h")
        await pilot.pause(0.3)
        await pilot.press("slash")
        await type_text(pilot, "fixture")
        await pilot.press("enter")
        await pilot.pause(0.3)

    assert snap_compare(_snap_app(home), terminal_size=SNAP_SIZE, run_before=run_before)


def test_snapshot_autoresearch_info(home: Path, snap_compare: Any, utc: None) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot)
        app = pilot.app
        assert isinstance(app, SupervisorApp)
        app._select("loop-1")
        await pilot.pause(0.2)
        await pilot.press("5")
        await pilot.pause(0.3)

    assert snap_compare(_snap_app(home), terminal_size=SNAP_SIZE, run_before=run_before)


def test_max_message_chars_matches_the_server() -> None:
    assert tui_app.MAX_MESSAGE_CHARS == MAX_MESSAGE_CHARS


async def test_the_first_frame_comes_before_the_connection(home: Path) -> None:
    app = SupervisorApp()
    started = time.monotonic()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause(0)
        assert "Connecting to the supervisor server" in screen_text(app) or app.loaded
        first = time.monotonic() - started
        await loaded(pilot)
    assert first < 3.0  # a deadline on a loaded 2-core machine; bench/tui.py measures it
