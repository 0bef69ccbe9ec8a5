"""Registered remote hosts: reachable or not, GPUs busy and free, when last checked."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

if TYPE_CHECKING:
    from supervisor.client import Client


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, now - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def gpu_summary(facts: dict[str, Any]) -> tuple[str, str]:
    """("3 busy / 5 free", "8× NVIDIA H100 …") for the table."""
    gpus = facts.get("gpus") or []
    if not gpus:
        return "—", facts.get("gpu_error") or "no GPU"
    busy = sum(1 for g in gpus if g.get("busy"))
    names: dict[str, int] = {}
    for g in gpus:
        label = g.get("name", "?") + (" (unified)" if g.get("memory_unified") else "")
        names[label] = names.get(label, 0) + 1
    return f"{busy} busy / {len(gpus) - busy} free", ", ".join(
        f"{n}× {label}" for label, n in names.items()
    )


class HostsScreen(Screen[None]):
    """The hosts agents can run on (``supervisor hosts``); ``c`` checks them all now."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back"),
        Binding("H", "close", "Back", show=False),
        Binding("c", "check", "Check all"),
    ]

    def __init__(self, client: Client, now: float) -> None:
        super().__init__()
        self.client = client
        self.now = now

    def compose(self) -> ComposeResult:
        with Vertical(id="hosts"):
            yield Static("Hosts", classes="section-title", id="hosts-title")
            yield DataTable(id="hosts-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        """Columns, then the rows from the hosts table."""
        table = self.query_one("#hosts-table", DataTable)
        for key, label, width in (
            ("name", "host", 14),
            ("target", "address", 28),
            ("state", "state", 12),
            ("gpus", "GPUs", 16),
            ("models", "models", 30),
            ("checked", "checked", 10),
        ):
            table.add_column(label, key=key, width=width)
        self.refill()
        table.focus()

    def refill(self) -> None:
        """Show what the hosts table holds now."""
        table = self.query_one("#hosts-table", DataTable)
        table.clear()
        rows = self.client.query("SELECT * FROM hosts ORDER BY name")
        for row in rows:
            facts = json.loads(row.get("facts") or "{}")
            busy, models = gpu_summary(facts)
            reachable = row.get("reachable")
            state = (
                Text("reachable", style="green")
                if reachable == 1
                else Text("unreachable", style="red")
                if reachable == 0
                else Text("unchecked", style="dim")
            )
            port = f":{row['port']}" if row.get("port") else ""
            user = f"{row['user']}@" if row.get("user") else ""
            table.add_row(
                row["name"],
                Text(f"{user}{row['address']}{port}", no_wrap=True, overflow="ellipsis"),
                state,
                busy,
                Text(models, no_wrap=True, overflow="ellipsis"),
                ago(row.get("checked_at"), self.now),
                key=row["name"],
            )
        title = f"Hosts — {len(rows)}" if rows else "Hosts — none yet: supervisor hosts add"
        self.query_one("#hosts-title", Static).update(title)

    def action_close(self) -> None:
        """Back to the fleet."""
        self.dismiss(None)

    def action_check(self) -> None:
        """Connect to every host at once and refresh its facts."""
        self.query_one("#hosts-title", Static).update("Hosts — checking…")
        self._check()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _check(self) -> None:
        from supervisor import hosts

        outcomes = hosts.check_hosts(hosts.list_hosts())
        failed = [o for o in outcomes if not o.ok]
        self.app.call_from_thread(self._checked, len(outcomes), failed)

    def _checked(self, total: int, failed: list[Any]) -> None:
        self.now = time.time()
        self.refill()
        if failed:
            self.notify("; ".join(o.detail for o in failed)[:300], severity="warning", timeout=8)
        else:
            self.notify(f"{total} host{'s' if total != 1 else ''} reachable", timeout=3)
