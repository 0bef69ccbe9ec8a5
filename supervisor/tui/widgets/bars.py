"""One-line bars: the fleet's costs, the lost-connection banner, and what an agent asks."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Static

from supervisor.tui.state import Fleet, money


class CostBar(Static):
    """Fleet totals: running and waiting agents, spent today against the daily budget."""

    def show(self, fleet: Fleet, daily_usd: float, sort: str, query: str) -> None:
        counts = fleet.counts()
        running = counts.get("running", 0) + counts.get("starting", 0)
        waiting = counts.get("waiting", 0)
        text = Text()
        text.append(f"● {running} running", style="green")
        text.append("  ")
        text.append(f"◐ {waiting} waiting for you", style="bold magenta" if waiting else "dim")
        paused = counts.get("paused", 0)
        if paused:
            text.append(f"  ‖ {paused} paused", style="yellow")
        text.append("   spent today ")
        spent = fleet.spent_today
        if daily_usd:
            share = min(1.0, spent / daily_usd)
            style = "red" if share >= 0.9 else "yellow" if share >= 0.6 else "green"
            filled = round(share * 10)
            text.append(f"{money(spent)} / {money(daily_usd)} ", style=style)
            text.append("▰" * filled + "▱" * (10 - filled), style=style)
        else:
            text.append(money(spent))
            text.append(" (no daily budget)", style="dim")
        budgets = [r for r in fleet.runs.values() if r.active and r.budget_usd]
        for run in budgets[:3]:
            text.append(
                f"   {run.title[:16]} {money(run.cost)}/{money(run.budget_usd)}",
                style="red" if run.budget_usd and run.cost >= run.budget_usd else "",
            )
        for words, level in list(fleet.budgets.values())[:3]:
            text.append(f"   {words}", style="bold red" if level == "brake" else "yellow")
        text.append(f"   sort: {sort}", style="dim")
        if query:
            text.append(f"   filter: {query}", style="dim")
        self.update(text)


class Banner(Static):
    """Shown while the server cannot be reached."""


class AskBar(Horizontal):
    """What the selected agent waits on: a tool call to approve, or a question."""

    def compose(self) -> ComposeResult:
        yield Static(id="ask-text")
        yield Button("Approve (y)", id="approve", variant="success")
        yield Button("Deny (d)", id="deny", variant="error")
        yield Button("Always (a)", id="always", variant="primary")

    def show(self, name: str, pending: dict[str, Any] | None) -> None:
        self.display = pending is not None
        if pending is None:
            return
        approval = pending.get("kind") == "approval"
        self.set_class(approval, "-approval")
        text = Text()
        if approval:
            args = pending.get("arguments") or {}
            shown = args.get("command") if isinstance(args, dict) else None
            shown = shown or json.dumps(args)[:200]
            text.append(f"{name} asks to run ", style="bold magenta")
            text.append(f"{pending.get('tool')}: {shown}", style="bold")
            if pending.get("pattern"):
                text.append(f"  (policy {pending['pattern']})", style="dim")
        else:
            text.append(f"{name} asks: ", style="bold magenta")
            text.append(str(pending.get("text", "")))
            text.append("  — type the answer below and press Enter (m)", style="dim")
        self.query_one("#ask-text", Static).update(text)
        for button in self.query(Button):
            button.display = approval
