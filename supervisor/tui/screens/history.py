"""Every run so far, and full-text search over every transcript."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from supervisor.tui.state import duration, money

if TYPE_CHECKING:
    from supervisor.client import Client

SEARCH_LIMIT = 100


def when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


class HistoryScreen(Screen[tuple[str, str] | None]):
    """Runs and search; choosing a row jumps to that agent (or run) in the fleet."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back"),
        Binding("h", "close", "Back", show=False),
        Binding("slash", "focus_search", "Search"),
    ]

    def __init__(self, client: Client, now: float) -> None:
        super().__init__()
        self.client = client
        self.now = now

    def compose(self) -> ComposeResult:
        with Vertical(id="history"):
            yield Static("Runs", classes="section-title")
            yield DataTable(id="runs", cursor_type="row")
            yield Static("Search every transcript", classes="section-title", id="search-title")
            yield Input(placeholder="words to find (Enter searches)", id="search")
            yield DataTable(id="results", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        """Fill the runs table from SQLite."""
        runs = self.query_one("#runs", DataTable)
        for key, label, width in (
            ("title", "run", 40),
            ("status", "status", 12),
            ("agents", "agents", 6),
            ("cost", "cost", 14),
            ("started", "started", 16),
            ("time", "time", 8),
        ):
            runs.add_column(label, key=key, width=width)
        counts = {
            r["run_id"]: r["n"]
            for r in self.client.query("SELECT run_id, count(*) AS n FROM agents GROUP BY run_id")
        }
        for row in self.client.runs():
            end = row.get("finished_at") or self.now
            budget = f" / {money(row['budget_usd'])}" if row.get("budget_usd") else ""
            runs.add_row(
                Text(f"{row['title']}", no_wrap=True, overflow="ellipsis"),
                row["status"],
                str(counts.get(row["id"], 0)),
                money(row.get("cost_usd")) + budget,
                when(row.get("created_at")),
                duration(max(0.0, end - (row.get("created_at") or end))),
                key=row["id"],
            )
        results = self.query_one("#results", DataTable)
        results.add_column("when", key="when", width=16)
        results.add_column("agent", key="agent", width=22)
        results.add_column("kind", key="kind", width=14)
        results.add_column("found", key="found")
        runs.focus()

    def action_close(self) -> None:
        """Back to the fleet."""
        self.dismiss(None)

    def action_focus_search(self) -> None:
        """Type words to find in any transcript."""
        self.query_one("#search", Input).focus()

    @on(Input.Submitted, "#search")
    def search(self, event: Input.Submitted) -> None:
        """Full-text search (FTS5) over every event's text."""
        results = self.query_one("#results", DataTable)
        results.clear()
        found = self.client.search(event.value, limit=SEARCH_LIMIT)
        names = {r["id"]: r["name"] for r in self.client.query("SELECT id, name FROM agents")}
        for row in found:
            key = f"{row['agent_id'] or ''}|{row['run_id'] or ''}|{row['id']}"
            results.add_row(
                when(row["ts"]),
                names.get(row["agent_id"], row["agent_id"] or "(run)"),
                row["type"],
                Text(" ".join(str(row["snippet"]).split()), no_wrap=True, overflow="ellipsis"),
                key=key,
            )
        count = f"{len(found)} found" if found else "nothing found"
        if len(found) == SEARCH_LIMIT:
            count = f"the newest {SEARCH_LIMIT} found"
        self.query_one("#search-title", Static).update(f"Search every transcript — {count}")
        if found:
            results.focus()

    @on(DataTable.RowSelected, "#results")
    def result_chosen(self, event: DataTable.RowSelected) -> None:
        """Jump to the agent whose transcript holds this text."""
        agent_id, run_id, _ = str(event.row_key.value).split("|", 2)
        self.dismiss(("agent", agent_id) if agent_id else ("run", run_id))

    @on(DataTable.RowSelected, "#runs")
    def run_chosen(self, event: DataTable.RowSelected) -> None:
        """Jump to this run in the fleet."""
        self.dismiss(("run", str(event.row_key.value)))
