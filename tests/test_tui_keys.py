"""Keys a person uses without a mouse: Tab through every dialog, the key list on ? and F1,
confirmation before a run is stopped, focus back on the fleet after a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_tui import SIZE, loaded, until
from textual.pilot import Pilot
from textual.widgets import Select

from supervisor import config
from supervisor.tui.app import SupervisorApp

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

        await pilot.press("R")
        await until(pilot, lambda: focused(app) == "recipe", "the recipe dialog")
        app.screen.query_one("#recipe", Select).value = "keys-demo"
        await until(pilot, lambda: app.screen.query("#param-loud"), "the parameter form")
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
