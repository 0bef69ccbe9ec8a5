"""The selected agent in tabs: Transcript, Changes, Shell, Notes, Info."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Log,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from supervisor.events import Event
from supervisor.tui.state import AgentInfo, RunInfo, duration, money, tokens
from supervisor.tui.widgets.bars import AskBar
from supervisor.tui.widgets.transcript import (
    RUN_TYPES,
    SHOWN_ITEMS,
    TRANSCRIPT_TYPES,
    TranscriptView,
)

if TYPE_CHECKING:
    from supervisor.client import Client
    from supervisor.store.queries import Series

SHELL_CALLS = 30  # recent shell calls shown when an agent is selected
SHELL_OUTPUT_LINES = 200
TABS = ("transcript", "changes", "shell", "notes", "info")


def shell_lines(event: Event) -> list[str]:
    """A shell call as terminal lines: the command, then what it printed."""
    if str(event.type) == "tool.started":
        command = str((event.data.get("arguments") or {}).get("command", ""))
        return [f"$ {ln}" for ln in command.splitlines() or [""]]
    lines = event.text.splitlines()
    if len(lines) > SHELL_OUTPUT_LINES:
        cut = len(lines) - SHELL_OUTPUT_LINES
        lines = [f"[… {cut} lines]", *lines[-SHELL_OUTPUT_LINES:]]
    return [*lines, ""]


def is_shell(event: Event) -> bool:
    return str(event.type) in ("tool.started", "tool.finished") and (
        event.data.get("tool") == "shell"
    )


class DetailPane(Vertical):
    """Everything about the selected agent; the app feeds it events and selections."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent: AgentInfo | None = None
        self.run: RunInfo | None = None
        self._shell: list[str] = []
        self._shell_up_to = 0

    def compose(self) -> ComposeResult:
        yield AskBar(id="ask")
        with TabbedContent(id="tabs", initial="transcript"):
            with TabPane("Transcript", id="transcript"):
                yield TranscriptView(id="transcript-view")
            with TabPane("Changes", id="changes"):
                with Horizontal(classes="tab-tools"):
                    yield Static("The agent's changes (kept after it ends).", classes="hint")
                    yield Button("Refresh", id="diff-refresh")
                with VerticalScroll(id="diff-scroll"):
                    yield Static(id="diff")
            with TabPane("Shell", id="shell"):
                yield Static(
                    "Recent shell calls in the sandbox — o opens a shell there.", classes="hint"
                )
                yield Log(id="shell-log", max_lines=5000)
            with TabPane("Notes", id="notes"):
                yield Input(placeholder="search memory notes…", id="notes-query")
                yield DataTable(id="notes-table", cursor_type="row")
            with TabPane("Info", id="info"), VerticalScroll():
                yield Static(id="info-text")
                yield Static(id="experiments-text")
                yield Sparkline([], id="experiments")

    def on_mount(self) -> None:
        """Columns of the notes table; the ask bar starts hidden."""
        table = self.query_one("#notes-table", DataTable)
        table.add_column("scope", key="scope", width=14)
        table.add_column("agent", key="agent", width=20)
        table.add_column("note", key="note")
        self.query_one(AskBar).display = False
        self.query_one("#experiments", Sparkline).display = False

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active or "transcript"

    @property
    def transcript(self) -> TranscriptView:
        return self.query_one(TranscriptView)

    # -- selection

    def select(self, client: Client | None, agent: AgentInfo | None, run: RunInfo | None) -> None:
        """Show another agent: read its recent history from SQLite."""
        self.agent, self.run = agent, run
        self.show_pending()
        log = self.query_one("#shell-log", Log)
        log.clear()
        self._shell = []
        if client is None or (agent is None and run is None):
            self.transcript.show(None, [], "", 0, 0)
            self.query_one("#diff", Static).update("")
            self.show_info(client)
            return
        if agent is None and run is not None:
            self._select_run(client, run)
            return
        assert agent is not None
        db = client.db
        db.execute("BEGIN")  # one snapshot: the transcript and its up-to id agree
        try:
            up_to = client.last_event_id()
            recent = client.events(
                agent_id=agent.id, types=TRANSCRIPT_TYPES, newest=True, limit=SHOWN_ITEMS * 3
            )
            total = client.query(
                "SELECT count(*) AS n FROM events WHERE agent_id = ? AND type IN "
                "('message', 'tool.started', 'human.asked', 'human.message', "
                "'approval.asked')",
                [agent.id],
            )[0]["n"]
            tail = client.events(
                agent_id=agent.id, types=("message", "message.delta"), newest=True, limit=400
            )
            shell = [
                e
                for e in client.events(
                    agent_id=agent.id,
                    types=("tool.started", "tool.finished"),
                    newest=True,
                    limit=SHELL_CALLS * 4,
                )
                if is_shell(e)
            ]
        finally:
            db.execute("COMMIT")
        events = _last_items(recent, SHOWN_ITEMS)
        shown = sum(
            str(e.type)
            in ("message", "tool.started", "human.asked", "human.message", "approval.asked")
            for e in events
        )
        live: list[str] = []
        for event in reversed(tail):
            if str(event.type) == "message":
                break
            live.insert(0, str(event.data.get("delta", "")))
        running = agent.status in ("running", "starting")
        self.transcript.show(
            agent.id, events, "".join(live) if running else "", max(0, total - shown), up_to
        )
        for event in shell:
            self._shell.extend(shell_lines(event))
        self._shell_up_to = up_to
        self.flush()
        if self.active_tab == "changes":
            self.query_one("#diff", Static).update(Text("loading the diff…", style="dim"))
        self.show_info(client)

    def _select_run(self, client: Client, run: RunInfo) -> None:
        """A run's own events: its creation, recipe steps, logs and status."""
        db = client.db
        db.execute("BEGIN")
        try:
            up_to = client.last_event_id()
            events = [
                e
                for e in client.events(
                    run_id=run.id, types=RUN_TYPES, newest=True, limit=SHOWN_ITEMS * 3
                )
                if e.agent_id is None
            ]
        finally:
            db.execute("COMMIT")
        self.transcript.show(f"run:{run.id}", events[-SHOWN_ITEMS * 2 :], "", 0, up_to)
        self._shell_up_to = up_to
        self.show_info(client)

    def show_pending(self) -> None:
        agent = self.agent
        self.query_one(AskBar).show(agent.name if agent else "", agent.pending if agent else None)

    # -- live

    def feed(self, events: list[Event]) -> None:
        """The selected agent's new events."""
        self.transcript.feed(events)
        for event in events:
            if is_shell(event) and (event.id or 0) > self._shell_up_to:
                self._shell.extend(shell_lines(event))

    def flush(self) -> None:
        self.transcript.flush()
        if self._shell:
            lines, self._shell = self._shell, []
            self.query_one("#shell-log", Log).write_lines(lines)

    # -- tabs

    def show_diff(self, text: str, error: bool = False) -> None:
        diff = self.query_one("#diff", Static)
        if error:
            diff.update(Text(text, style="yellow"))
        elif not text.strip():
            diff.update(Text("No changes in the workspace.", style="dim"))
        else:
            diff.update(Syntax(text, "diff", theme="ansi_dark", word_wrap=False))

    def show_notes(self, rows: list[dict[str, Any]], names: dict[str, str]) -> None:
        table = self.query_one("#notes-table", DataTable)
        table.clear()
        for row in rows:
            body = " ".join(str(row.get("body") or "").split())
            scope = str(row.get("scope") or "")
            if row.get("scope_key"):
                scope += f":{row['scope_key']}"
            agent = names.get(row.get("agent_id") or "", row.get("agent_id") or "")
            table.add_row(scope, agent, body[:400], key=str(row["id"]))
        if not rows:
            table.add_row("", "", Text("no notes found", style="dim"))

    def show_info(self, client: Client | None, limits: dict[str, Any] | None = None) -> None:
        agent, run = self.agent, self.run
        info = self.query_one("#info-text", Static)
        spark = self.query_one("#experiments", Sparkline)
        counters = self.query_one("#experiments-text", Static)
        if agent is None and run is None:
            info.update(Text("Nothing selected.", style="dim"))
            spark.display = False
            counters.update("")
            return
        text = Text()

        def field(label: str, value: object) -> None:
            text.append(f"{label:>10}  ", style="bold")
            text.append(f"{value}\n")

        if agent is not None:
            field("agent", f"{agent.name}  ({agent.id})")
            field("status", agent.status_text + (f" — {agent.doing}" if agent.doing else ""))
            field("model", agent.model or "(default)")
            field("sandbox", agent.sandbox or "(default)")
            field("role", agent.role or "worker")
            field(
                "usage", f"{agent.steps} steps, {tokens(agent.tokens)} tokens, {money(agent.cost)}"
            )
            lim = limits or {}
            parts = [
                f"{lim.get('agent.max_steps') or '∞'} steps",
                f"{lim.get('agent.max_tokens') or '∞'} tokens",
                f"{duration(lim['agent.max_wall_s']) if lim.get('agent.max_wall_s') else '∞'}"
                " wall time",
                f"{money(agent.budget_usd or lim.get('budget.agent_usd'))} budget"
                if (agent.budget_usd or lim.get("budget.agent_usd"))
                else "no budget",
            ]
            field("limits", ", ".join(parts))
            if agent.summary:
                field("summary", agent.summary)
            field("task", agent.task.strip()[:2000])
        if run is not None:
            text.append("\n")
            field("run", f"{run.title[:120]}  ({run.id})")
            field("kind", run.kind + (f" — recipe {run.recipe}" if run.recipe else ""))
            field("status", run.status)
            budget = f" of {money(run.budget_usd)}" if run.budget_usd else ""
            field("cost", money(run.cost) + budget)
            if run.workspace:
                field("workspace", run.workspace)
        info.update(text)
        series = client.series(run.id) if run is not None and client is not None else None
        spark.display = bool(series and series.metrics)
        if not series:
            counters.update("")
            return
        self.show_series(series)

    def show_series(self, series: Series) -> None:
        """Any plugin's progress and metrics: the last value, best, count and tallies of
        each series, and a sparkline of the first one."""
        text = Text()
        for progress in series.progress.values():
            text.append(f"\n{progress.label:>10}  ", style="bold")
            if progress.total:
                share = min(1.0, progress.done / progress.total)
                filled = round(share * 20)
                text.append("█" * filled + "░" * (20 - filled), style="green")
                text.append(f" {progress.done:g}/{progress.total:g} {progress.unit}")
            else:
                text.append(f"{progress.done:g} {progress.unit}")
        for metric in series.metrics.values():
            text.append(f"\n{metric.name:>10}  ", style="bold")
            last = metric.values[-1] if metric.values else None
            text.append(f"{len(metric.values)} values")
            if last is not None:
                text.append(f"  last {last:.4g}")
            best = metric.best
            if best is not None:
                text.append(f"  best {best:.4g}", style="green")
                text.append(f" ({metric.better} is better)", style="dim")
            for label, counts in metric.tallies.items():
                styles = {"keep": "green", "discard": "yellow", "crash": "red", "invalid": "red"}
                text.append(f"\n{'':>10}  {label}: ", style="dim")
                for value, count in counts.items():
                    text.append(f"{value} {count}  ", style=styles.get(value, ""))
        self.query_one("#experiments-text", Static).update(text)
        first = next(iter(series.metrics.values()), None)
        self.query_one("#experiments", Sparkline).data = (first.values if first else []) or [0.0]


def _last_items(events: list[Event], count: int) -> list[Event]:
    """The newest ``count`` transcript items, starting at an item (never a lone result)."""
    starts = [
        i
        for i, e in enumerate(events)
        if str(e.type)
        in ("message", "tool.started", "human.asked", "human.message", "approval.asked")
    ]
    if len(starts) > count:
        return events[starts[-count] :]
    return events[starts[0] :] if starts else events
