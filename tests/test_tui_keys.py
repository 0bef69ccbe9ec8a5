"""Keys a person uses without a mouse: Tab through every dialog, the key list on ? and F1,
confirmation before a run is stopped, focus back on the fleet after a message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent_kit import scripted
from test_tui import (
    SIZE,
    finish,
    loaded,
    said,
    screen_text,
    select_agent_of,
    shows,
    start_run,
    type_text,
    until,
)
from textual.pilot import Pilot
from textual.widgets import Checkbox, Select

from supervisor import config
from supervisor.testing import Reply
from supervisor.tui.app import SupervisorApp
from supervisor.tui.widgets.fleet import FleetTable

DEMO = """---
name: keys-demo
description: A recipe with every kind of parameter.
parameters:
  greeting: {type: str, default: hello, help: what to write}
  count: {type: int, default: 2, help: how many lines}
  loud: {type: bool, default: false, help: shout it}
steps:
  - id: write
    kind: shell
    run: "echo {greeting} {count} {loud} > {run_dir}/out.txt"
---
Write the greeting.
"""


def _demo_recipe() -> None:
    folder = config.config_path().parent / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keys-demo.md").write_text(DEMO)


async def open_demo_recipe(pilot: Pilot[Any], app: SupervisorApp) -> None:
    """R, then the demo recipe chosen: its parameter form is shown."""
    await pilot.press("R")
    await until(pilot, lambda: focused(app) == "recipe", "the recipe dialog")
    app.screen.query_one("#recipe", Select).value = "keys-demo"
    await until(pilot, lambda: app.screen.query("#param-loud"), "the parameter form")


def focused(app: SupervisorApp) -> str:
    return str(app.focused.id if app.focused is not None else None)


async def tab_through(pilot: Pilot[Any], app: SupervisorApp, ids: list[str]) -> None:
    """Tab visits ``ids`` in order; Shift+Tab walks back."""
    for expected in ids[1:]:
        await pilot.press("tab")
        await until(pilot, lambda e=expected: focused(app) == e, f"tab to {expected}", 5)
    for expected in reversed(ids[:-1]):
        await pilot.press("shift+tab")
        await until(pilot, lambda e=expected: focused(app) == e, f"shift+tab to {expected}", 5)


async def test_tab_and_shift_tab_move_through_every_dialog(home: Path) -> None:
    _demo_recipe()
    app = SupervisorApp()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("n")
        await until(pilot, lambda: focused(app) == "task", "the new-agent dialog")
        await tab_through(pilot, app, ["task", "model", "workspace", "sandbox", "count"])
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the dialog to close")

        await open_demo_recipe(pilot, app)
        await tab_through(
            pilot, app, ["recipe", "param-greeting", "param-count", "param-loud", "start"]
        )
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the dialog to close")

        await pilot.press("h")
        await until(pilot, lambda: app.screen.query("#history"), "the history")
        first = focused(app)
        await pilot.press("tab")
        await until(pilot, lambda: focused(app) not in (first, "None"), "tab in history", 5)
        moved = focused(app)
        await pilot.press("shift+tab")
        await until(pilot, lambda: focused(app) == first, "shift+tab in history", 5)
        assert moved != first


async def test_question_mark_and_f1_show_the_keys_and_escape_closes_them(home: Path) -> None:
    app = SupervisorApp()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            await until(pilot, lambda: app.screen.query("HelpPanel"), f"the key list on {key}")
            await shows(pilot, app, "Detach")
            assert "Restart" in screen_text(app) and "Stop" in screen_text(app)
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.query("HelpPanel"), "the list to close")
        # ? again closes it too.
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen.query("HelpPanel"), "the key list")
        await pilot.press("question_mark")
        await until(pilot, lambda: not app.screen.query("HelpPanel"), "the list to close")


def looping(messages: list[dict[str, Any]]) -> Reply:
    if said(messages, "please finish"):
        return finish("finished")
    if "sleep" in str(messages[1]["content"]):
        return Reply(tool_calls=[("shell", {"command": "sleep 4"})])
    return Reply(tool_calls=[("shell", {"command": "true"})], delay_s=0.1)


async def test_stopping_a_run_asks_and_a_sent_message_gives_keys_back(home: Path) -> None:
    with scripted(looping, sandbox__backend="local", agent__max_steps="100000"):
        app = SupervisorApp()
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "loop", title="loop")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: agent.steps >= 1, "the agent to work")
            # A message: once sent, the next keys are commands again.
            await pilot.press("m")
            await type_text(pilot, "hello")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.focused, FleetTable), "focus on the fleet")
            # x on the run's row asks first; n keeps it running.
            app._select(f"run:{run_id}")
            await pilot.pause(0.1)
            await pilot.press("x")
            await until(pilot, lambda: app.screen.query("#confirm"), "the question")
            await shows(pilot, app, "Stop the whole run “loop”")
            await pilot.press("n")
            await until(pilot, lambda: not app.screen.query("#confirm"), "the question to close")
            steps = agent.steps
            await until(pilot, lambda: agent.steps > steps, "the run to go on")
            assert agent.status == "running"
            await pilot.press("x")
            await until(pilot, lambda: app.screen.query("#confirm"), "the question")
            await pilot.press("y")
            await until(pilot, lambda: agent.status == "stopped", "the stop")


async def test_a_long_command_shows_its_clock_and_80x24_keeps_the_numbers(home: Path) -> None:
    with scripted(looping, sandbox__backend="local", agent__max_steps="100000"):
        app = SupervisorApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            run_id = await start_run(app, "sleep a while", title="sleepy")
            agent = await select_agent_of(pilot, app, run_id)
            await until(pilot, lambda: "sleep 4" in agent.doing, "the long command")
            await until(pilot, lambda: re.search(r"\b[23]s shell sl", screen_text(app)), "clock")
            # The transcript's running call shows its clock too.
            await until(
                pilot, lambda: re.search(r"→ shell: sleep 4  ⋯ [23]s", screen_text(app)), "call"
            )
            lines = screen_text(app).splitlines()
            head = next(ln for ln in lines if "steps" in ln)
            assert "tokens" in head and "cost" in head and "elapsed" in head, head
            row = next(ln for ln in lines if "s shell sl" in ln)
            assert "$" in row and max(len(ln) for ln in lines) <= 80, row


async def test_a_boolean_recipe_parameter_is_a_checkbox(home: Path) -> None:
    _demo_recipe()
    app = SupervisorApp()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await open_demo_recipe(pilot, app)
        box = app.screen.query_one("#param-loud")
        assert isinstance(box, Checkbox) and box.value is False
        box.focus()
        await pilot.press("space")
        await until(pilot, lambda: box.value is True, "the tick")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.fleet.runs, "the recipe run")
        run = next(iter(app.fleet.runs.values()))
        await until(pilot, lambda: run.status == "done", "the recipe to finish")
    assert (home / "runs" / run.id / "out.txt").read_text() == "hello 2 True\n"
