"""The fleet table: every run, then its agents (a lead's workers indented under it)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from supervisor.fleet import LOCAL
from supervisor.tui.state import AgentInfo, Fleet, RunInfo, duration, money, tokens

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("agent", "agent", 26),
    ("status", "status", 15),
    ("doing", "doing now", 28),
    ("steps", "steps", 5),
    ("tokens", "tokens", 7),
    ("cost", "cost", 12),
    ("elapsed", "elapsed", 8),
)
STATUS_STYLE = {
    "running": "green",
    "starting": "green",
    "waiting": "bold magenta",
    "paused": "yellow",
    "done": "dim",
    "failed": "red",
    "stopped": "yellow",
    "interrupted": "bold yellow",
}

# Shown once any agent runs on a remote host (a pool or --host run): where each runs.
HOST_COLUMN = ("host", "host", 12)
Cells = tuple[str | Text, ...]
NARROW = {"status": 9, "steps": 5, "tokens": 6, "cost": 9, "elapsed": 7}
MIN_DOING = 16  # "doing" gives the host column its room down to this width


def columns(host: bool) -> tuple[tuple[str, str, int], ...]:
    return (COLUMNS[0], HOST_COLUMN, *COLUMNS[1:]) if host else COLUMNS


def column_widths(total: int, host: bool = False) -> dict[str, int]:
    """Column widths for a table ``total`` cells wide: as designed when it fits, else the
    numbers keep their room and the name and "doing" columns share what is left."""
    shown = columns(host)
    wide = {key: width for key, _, width in shown}
    spacing = 2 * len(shown) + 2  # cell padding and the scrollbar
    over = sum(wide.values()) + spacing - total
    if not total or over <= 0:
        return wide
    if host and wide["doing"] - over >= MIN_DOING:
        return {**wide, "doing": wide["doing"] - over}
    narrow = {**NARROW, **({"host": 8} if host else {})}
    rest = total - spacing - sum(narrow.values())
    agent = max(12, rest * 2 // 5)  # a name stays readable even where nothing else fits
    return {**narrow, "agent": agent, "doing": max(8, rest - agent)}


class FleetTable(DataTable[str | Text]):
    """Agents grouped by run; only cells whose text changed are redrawn."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("space", "toggle_run", "Fold run", show=False)]

    class Toggle(Message):
        """Fold or unfold the run on the cursor's row."""

        def __init__(self, run_id: str) -> None:
            self.run_id = run_id
            super().__init__()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._order: list[str] = []
        self._cells: dict[str, Cells] = {}
        self._depth: dict[str, int] = {}
        self._widths: dict[str, int] = {}
        self.with_host = False  # the host column is shown

    def on_mount(self) -> None:
        """Fixed widths: a changed cell never makes the table measure every row again."""
        self._widths = column_widths(self.size.width, self.with_host)
        for key, label, _ in columns(self.with_host):
            self.add_column(label, key=key, width=self._widths[key])

    def on_resize(self) -> None:
        """In a narrow terminal the name and "doing" columns give way, so that steps,
        tokens and cost stay on screen."""
        self._relayout()

    def _relayout(self, force: bool = False) -> None:
        widths = column_widths(self.size.width, self.with_host)
        if widths == self._widths and not force:
            return
        self._widths = widths
        cursor = self.cursor_row
        self.clear(columns=True)
        for key, label, _ in columns(self.with_host):
            self.add_column(label, key=key, width=widths[key])
        for key in self._order:
            self.add_row(*self._cells[key], key=key)
        if self._order:
            self.move_cursor(row=min(cursor, len(self._order) - 1), animate=False)

    @property
    def order(self) -> list[str]:
        return self._order

    def show(
        self,
        fleet: Fleet,
        rows: list[tuple[str, int, RunInfo | AgentInfo]],
        now: float,
        selected: str | None,
    ) -> None:
        """Show these rows; rebuilds only if the set or order of rows changed (or the
        host column comes or goes: it is there once any agent runs on a remote host)."""
        with_host = any(a.host not in ("", LOCAL) for a in fleet.agents.values())
        relayout = with_host != self.with_host
        self.with_host = with_host
        order = [key for key, _, _ in rows]
        cells = {key: self._row_cells(item, depth, fleet, now) for key, depth, item in rows}
        if relayout:
            self._order, self._cells = order, cells
            self._relayout(force=True)
            if selected in cells:
                self.move_cursor(row=order.index(selected), animate=False, scroll=True)
            return
        if order != self._order:
            self.clear()
            self._order = order
            self._cells = cells
            for key in order:
                self.add_row(*cells[key], key=key)
            if selected in cells:
                self.move_cursor(row=order.index(selected), animate=False, scroll=True)
            return
        for key in order:
            self._update(key, cells[key])

    def refresh_rows(self, fleet: Fleet, keys: set[str], now: float, depth: dict[str, int]) -> None:
        """Redraw the changed cells of these rows only."""
        for key in keys:
            row_key = key if key in fleet.agents else f"run:{key}"
            if row_key not in self._cells:
                continue
            item: RunInfo | AgentInfo | None = fleet.agents.get(key) or fleet.runs.get(key)
            if item is None:
                continue
            self._update(row_key, self._row_cells(item, depth.get(row_key, 1), fleet, now))

    def _update(self, key: str, cells: Cells) -> None:
        old = self._cells.get(key)
        if old == cells:
            return
        self._cells[key] = cells
        shown = columns(self.with_host)
        for (column, _, _), value, before in zip(shown, cells, old or (), strict=False):
            if value != before:
                self.update_cell(key, column, value)

    def _row_cells(self, item: RunInfo | AgentInfo, depth: int, fleet: Fleet, now: float) -> Cells:
        self._depth[item.id if isinstance(item, AgentInfo) else f"run:{item.id}"] = depth
        if isinstance(item, RunInfo):
            members = fleet.children(item.id)
            fold = "▸" if item.collapsed else "▾"
            title = Text(f"{fold} {item.title}", style="bold", no_wrap=True, overflow="ellipsis")
            status = Text(item.status, style=STATUS_STYLE.get(item.status, ""))
            budget = f"/{money(item.budget_usd)}" if item.budget_usd else ""
            return (
                title,
                *(("",) if self.with_host else ()),
                status,
                Text(
                    f"{len(members)} agent{'s' if len(members) != 1 else ''} · {item.id}",
                    style="dim",
                ),
                str(sum(a.steps for a in members)),
                tokens(sum(a.tokens for a in members)),
                money(item.cost) + budget if budget else money(item.cost),
                duration(item.elapsed(now)),
            )
        indent = "  " * depth if item.parent_id is None else "  " * (depth - 1) + "└ "
        name = Text(indent + item.name, no_wrap=True, overflow="ellipsis")
        if item.pending is not None:
            name.append(" ●", style="bold magenta")
        word = item.status_text
        if item.paused and item.status == "running":
            word = "pausing…"
        doing = Text(
            item.doing or (item.summary if item.status != "running" else ""),
            no_wrap=True,
            overflow="ellipsis",
            style="dim" if not item.doing else "",
        )
        busy = now - item.doing_since
        if item.status == "running" and item.doing and item.doing_since and busy >= 2:
            # A long command or experiment shows its clock, so it is seen to progress.
            doing = Text.assemble(
                (f"{duration(busy)} ", "bold"), doing, no_wrap=True, overflow="ellipsis"
            )
        host = Text(item.host or "—", no_wrap=True, overflow="ellipsis", style="dim")
        return (
            name,
            *((host,) if self.with_host else ()),
            Text(word, style=STATUS_STYLE.get(item.status, "")),
            doing,
            str(item.steps),
            tokens(item.tokens),
            money(item.cost),
            duration(item.elapsed(now)),
        )

    def depths(self) -> dict[str, int]:
        return self._depth

    def action_toggle_run(self) -> None:
        """Fold or unfold the run under the cursor."""
        if 0 <= self.cursor_row < len(self._order):
            key = self._order[self.cursor_row]
            if key.startswith("run:"):
                self.post_message(self.Toggle(key[4:]))
