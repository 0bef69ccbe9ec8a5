"""Registered remote hosts: reachable or not, cordoned or not, the agents on each, GPU
slots busy and free, when last checked."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from supervisor import hosts

if TYPE_CHECKING:
    from supervisor.client import Client

REFRESH_S = 2.0  # agents come and go on the hosts while the view is open

# The live agents, and the host each was placed on (a pool's `placement` event) or runs on
# (an ssh sandbox's id is ssh:HOST:MODE:...).
LIVE_AGENTS = """
SELECT a.name, a.sandbox_id,
  (SELECT e.data FROM events e WHERE e.agent_id = a.id AND e.type = 'placement'
   ORDER BY e.id DESC LIMIT 1) AS placed
FROM agents a WHERE a.status NOT IN ({ended}) ORDER BY a.created_at
"""

# GPUs that recipe steps of running runs hold (an experiment loop's), as their
# `placement` events of phase gpu_held / gpu_released say, in order.
STEP_GPUS = """
SELECT e.data FROM events e JOIN runs r ON r.id = e.run_id
WHERE r.status = 'running' AND e.type = 'placement'
  AND json_extract(e.data, '$.phase') IN ('gpu_held', 'gpu_released')
ORDER BY e.id
"""


def gpu_summary(facts: dict[str, Any], held: frozenset[int] = frozenset()) -> tuple[str, str]:
    """("3 busy / 5 free", "8× NVIDIA H100 …") for the table. A slot is busy when
    nvidia-smi saw it busy at the last check or one of our agents holds it (``held``)."""
    gpus = facts.get("gpus") or []
    if not gpus:
        return "—", facts.get("gpu_error") or "no GPU"
    busy = sum(1 for i, g in enumerate(gpus) if g.get("busy") or g.get("index", i) in held)
    names: dict[str, int] = {}
    for g in gpus:
        label = g.get("name", "?") + (" (unified)" if g.get("memory_unified") else "")
        names[label] = names.get(label, 0) + 1
    return f"{busy} busy / {len(gpus) - busy} free", ", ".join(
        f"{n}× {label}" for label, n in names.items()
    )


class HostsScreen(Screen[str | None]):
    """The hosts agents can run on (``supervisor hosts``); ``c`` checks them all now;
    Enter on a host goes back to the fleet showing that host's agents only."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back"),
        Binding("H", "close", "Back", show=False),
        Binding("c", "check", "Check all"),
        Binding("enter", "agents", "Its agents"),
    ]

    def __init__(self, client: Client, now: float) -> None:
        super().__init__()
        self.client = client
        self.now = now
        self.checking = False

    def compose(self) -> ComposeResult:
        with Vertical(id="hosts"):
            yield Static("Hosts", classes="section-title", id="hosts-title")
            yield DataTable(id="hosts-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        """Columns, then the rows from the hosts table."""
        table = self.query_one("#hosts-table", DataTable)
        for key, label, width in (
            ("name", "host", 12),
            ("target", "address", 16),
            ("state", "state", 11),
            ("agents", "agents", 14),
            ("load", "load", 11),
            ("gpus", "GPU slots", 16),
            ("models", "models", 24),
            ("checked", "checked", 10),
        ):
            table.add_column(label, key=key, width=width)
        self.refill()
        table.focus()
        self.set_interval(REFRESH_S, self.refill)

    def agents_by_host(self) -> tuple[dict[str, list[str]], dict[str, set[int]]]:
        """Each host's live agents (names), and the GPU slots they hold there."""
        from supervisor.status import ENDED

        ended = ", ".join(f"'{s}'" for s in sorted(ENDED))
        names: dict[str, list[str]] = {}
        held: dict[str, set[int]] = {}
        for row in self.client.query(LIVE_AGENTS.format(ended=ended)):
            placed = json.loads(row["placed"] or "{}")
            host = placed.get("host") if placed.get("phase") == "placed" else None
            sandbox_id = row["sandbox_id"] or ""
            if host is None and sandbox_id.startswith("ssh:"):
                host = sandbox_id.split(":")[1]
            if host is None:
                continue
            names.setdefault(host, []).append(row["name"])
            held.setdefault(host, set()).update(placed.get("gpus") or [])
        by_steps: dict[tuple[str, int], str] = {}  # (host, GPU) -> holder, the latest word
        for row in self.client.query(STEP_GPUS):
            data = json.loads(row["data"])
            for gpu in data.get("gpus") or []:
                if data["phase"] == "gpu_held":
                    by_steps[(data["host"], gpu)] = data.get("holder", "")
                else:
                    by_steps.pop((data["host"], gpu), None)
        for host, gpu in by_steps:
            held.setdefault(host, set()).add(gpu)
        return names, held

    def refill(self) -> None:
        """Show what the hosts table holds now."""
        table = self.query_one("#hosts-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        rows = self.client.query("SELECT * FROM hosts ORDER BY name")
        on_host, held = self.agents_by_host()
        for row in rows:
            facts = json.loads(row.get("facts") or "{}")
            busy, models = gpu_summary(facts, frozenset(held.get(row["name"], ())))
            reachable = row.get("reachable")
            state = (
                Text("reachable", style="green")
                if reachable == 1
                else Text("unreachable", style="red")
                if reachable == 0
                else Text("unchecked", style="dim")
            )
            if row.get("cordoned"):  # as `hosts ls` says it: no new agents go there
                state = Text("cordoned", style="bold yellow")
            agents = on_host.get(row["name"], [])
            agents_text = f"{len(agents)}: {', '.join(agents)}" if agents else "—"
            port = f":{row['port']}" if row.get("port") else ""
            user = f"{row['user']}@" if row.get("user") else ""
            table.add_row(
                row["name"],
                Text(f"{user}{row['address']}{port}", no_wrap=True, overflow="ellipsis"),
                state,
                Text(agents_text, no_wrap=True, overflow="ellipsis"),
                Text(
                    hosts.load_summary(facts, row.get("checked_at"), time.time()),
                    no_wrap=True,
                    overflow="ellipsis",
                ),
                busy,
                Text(models, no_wrap=True, overflow="ellipsis"),
                hosts.ago(row.get("checked_at"), self.now),
                key=row["name"],
            )
        title = f"Hosts — {len(rows)}" if rows else "Hosts — none yet: supervisor hosts add"
        if not self.checking:  # "checking…" stays up until the check is done
            self.query_one("#hosts-title", Static).update(title)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def action_agents(self) -> None:
        """Back to the fleet, filtered to the agents of the host under the cursor."""
        table = self.query_one("#hosts-table", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            self.dismiss(str(key.value))

    @on(DataTable.RowSelected, "#hosts-table")
    def host_chosen(self) -> None:
        """Enter (or a click) on a host's row: its agents."""
        self.action_agents()

    def action_close(self) -> None:
        """Back to the fleet."""
        self.dismiss(None)

    def action_check(self) -> None:
        """Connect to every host at once and refresh its facts."""
        self.query_one("#hosts-title", Static).update("Hosts — checking…")
        self.checking = True
        self._check()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _check(self) -> None:
        outcomes = hosts.check_hosts(hosts.list_hosts())
        failed = [o for o in outcomes if not o.ok]
        self.app.call_from_thread(self._checked, len(outcomes), failed)

    def _checked(self, total: int, failed: list[Any]) -> None:
        self.now = time.time()
        self.checking = False
        self.refill()
        if failed:
            self.notify("; ".join(o.detail for o in failed)[:300], severity="warning", timeout=8)
        else:
            self.notify(f"{total} host{'s' if total != 1 else ''} reachable", timeout=3)
