"""The supervisor TUI: the fleet, the selected agent, and a hand on every agent.

The app is a client of the supervisor process (see :mod:`supervisor.client`): it draws its
first frame at once, connects in a worker (starting the server if none runs), reads one
snapshot of the fleet from SQLite and then follows the server's events. Events are never
drawn one by one: they are buffered and applied ~15 times a second inside one
``batch_update``, redrawing only the cells that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Input, TabbedContent

from supervisor.errors import InputError, SupervisorError
from supervisor.server import MAX_MESSAGE_CHARS
from supervisor.status import ENDED, FINAL
from supervisor.tui.commands import FleetCommands
from supervisor.tui.state import HOST_FILTER, SORT_KEYS, AgentInfo, Fleet, RunInfo
from supervisor.tui.widgets.bars import Banner, CostBar
from supervisor.tui.widgets.detail import TABS, DetailPane
from supervisor.tui.widgets.fleet import FleetTable

if TYPE_CHECKING:
    from supervisor.client import Client
    from supervisor.events import Event

FLUSH_HZ = 15
SERIES_TYPES = ("metric", "progress")  # events drawn in the Info tab
RECONNECT_S = 1.0
FOLLOW_S = 15.0  # how long a new run's first agent is waited for, to move the cursor to it
STOPPED_BANNER = (
    "■ The supervisor server was stopped: runs it was driving are interrupted (r on a run "
    "resumes it once the server runs again)."
)
NEWLINE = "↵"  # how a pasted line break shows in the one-line message input


def shell_command(agent_id: str) -> list[str]:
    """``supervisor sandbox shell AGENT``, as this installation runs it."""
    exe = shutil.which("supervisor")
    base = [exe] if exe else [sys.executable, "-m", "supervisor.cli"]
    return [*base, "sandbox", "shell", agent_id]


class MessageInput(Input):
    """The line to message the selected agent; a paste too big to send is refused."""

    def _on_paste(self, event: events.Paste) -> None:
        text = event.text.replace("\r\n", "\n").replace("\n", NEWLINE)
        if len(self.value) + len(text) > MAX_MESSAGE_CHARS:
            event.stop()
            event.prevent_default()
            self.app.notify(
                f"Paste refused: {len(text):,} characters, and a message holds at most "
                f"{MAX_MESSAGE_CHARS:,}. Put long material in a file in the workspace and "
                "point the agent to it.",
                title="Too long to send",
                severity="error",
                timeout=8,
            )
            return
        event.stop()
        event.prevent_default()  # Input's own paste would insert the first line again
        self.insert_text_at_cursor(text)


class SupervisorApp(App[int]):
    """The fleet of agents, live."""

    CSS_PATH = Path(__file__).with_name("supervisor.tcss")  # absolute: subclasses live elsewhere
    TITLE = "supervisor"
    COMMANDS = App.COMMANDS | {FleetCommands}
    # Below these sizes the detail pane gives its room to the fleet.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (70, "-wide")]  # noqa: RUF012 (as textual types it)
    VERTICAL_BREAKPOINTS = [(0, "-short"), (20, "-tall")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "toggle_keys", "Keys"),
        Binding("f1", "toggle_keys", "Keys", show=False),
        Binding("q", "detach", "Detach"),
        Binding("n", "new_agent", "New"),
        Binding("R", "run_recipe", "Recipe"),
        Binding("h", "history", "History"),
        Binding("H", "hosts", "Hosts", show=False),  # in the palette; the footer is full
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("m", "message", "Message"),
        Binding("y", "approve('approve')", "Approve"),
        Binding("d", "approve('deny')", "Deny"),
        Binding("a", "approve('always')", "Always"),
        Binding("p", "pause", "Pause"),
        Binding("x", "stop", "Stop"),
        Binding("r", "restart", "Restart"),
        Binding("k", "keep", "Keep"),
        Binding("o", "shell", "Shell"),
        Binding("escape", "focus_fleet", "Fleet", show=False),
        *(
            Binding(str(i), f"tab('{tab}')", tab.title(), show=False)
            for i, tab in enumerate(TABS, start=1)
        ),
    ]

    # The actions of the keys above, by name: they act on the fleet screen only.
    FLEET_ACTIONS: ClassVar[frozenset[str]] = frozenset(
        b.action.split("(")[0] for b in BINDINGS if isinstance(b, Binding)
    )

    def __init__(
        self, data_dir: Path | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.clock = clock
        self.client: Client | None = None
        self.fleet = Fleet()
        self.settings: dict[str, Any] = {}
        self.selected: str | None = None  # a row key: an agent id or "run:<id>"
        self.loaded = False  # the first snapshot is shown (tests wait for it)
        self.sort = SORT_KEYS[0]
        self.query_text = ""
        self._inbox: list[Event] = []
        self._detaching = False
        self._select_due = False
        self._follow: tuple[str, float] | None = None
        self._notes_timer: Timer | None = None
        self._watched: str | None = None
        self.server_stopped = False  # it said goodbye: a deliberate stop, not a crash

    # -- layout and life

    def compose(self) -> ComposeResult:
        yield Banner("Connecting to the supervisor server…", id="banner")
        yield CostBar(id="costbar")
        yield Input(
            placeholder="filter: name, run, status, task or host:NAME (Enter: done, Esc: clear)",
            id="filter",
        )
        yield FleetTable(id="fleet")
        yield DetailPane(id="detail")
        yield MessageInput(placeholder="Message the selected agent (m, Enter sends)", id="message")
        yield Footer()

    def on_mount(self) -> None:
        """Start the buffered redraw and connect in the background."""
        self.query_one("#filter", Input).display = False
        self.query_one(FleetTable).focus()
        self.set_interval(1 / FLUSH_HZ, self._apply_events)
        self.set_interval(1.0, self._tick)
        self.connect(start=True)

    async def on_unmount(self) -> None:
        """Detach from the server; the agents keep running there."""
        self._detaching = True
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    @work(exclusive=True, group="connect", exit_on_error=False)
    async def connect(self, start: bool = False) -> None:
        """Connect (or reconnect every second), load a snapshot, follow the events."""
        from supervisor import config
        from supervisor.client import Client

        banner = self.query_one(Banner)
        attempt = 0
        while True:
            try:
                client = await Client.connect(
                    self.data_dir, start=start and attempt == 0, name="tui"
                )
                break
            except Exception as exc:  # any failure: say so and keep trying
                attempt += 1
                if self.server_stopped:
                    banner.update(
                        f"{STOPPED_BANNER} Waiting for it to start again "
                        f"(`supervisor server start`; attempt {attempt})."
                    )
                else:
                    lost = "lost" if self.loaded else "not reached"
                    banner.update(
                        f"⚠ The supervisor server is {lost}: {exc} — retrying every "
                        f"{RECONNECT_S:g}s (attempt {attempt}). Agents keep running in the "
                        "server."
                    )
                banner.display = True
                await asyncio.sleep(RECONNECT_S)
        try:
            self.settings = dict((await asyncio.to_thread(config.load)).values)
        except SupervisorError as exc:
            self.notify(str(exc), title="config", severity="error")
        extra = {
            self.fleet.agents[a].run_id for a in self._selected_ids() if a in self.fleet.agents
        }
        try:
            fleet = await asyncio.to_thread(Fleet.load, client, extra)
        except Exception as exc:
            await client.close()
            banner.update(f"⚠ Cannot read the fleet: {exc}")
            banner.display = True
            self.set_timer(RECONNECT_S, lambda: self.connect(start=False))
            return
        self._inbox.clear()
        self.fleet = fleet
        self.client = client
        client.on_events(self._receive)
        client.on_disconnect(lambda: self._lost(client))
        watch = [self.selected] if self.selected and self.selected in fleet.agents else []
        self._watched = watch[0] if watch else None
        try:
            await client.subscribe(after=fleet.last_event_id, watch=watch)
        except SupervisorError:
            return  # it went away again: _lost() has started the next attempt
        banner.display = False
        self.server_stopped = False
        self._show_fleet()
        if self.selected is None or not self._select(self.selected):
            first = next((k for k in self.query_one(FleetTable).order if k in fleet.agents), None)
            if first is not None:
                self._select(first)
        self._select_due = True
        self.loaded = True
        self._apply_events()

    def _lost(self, client: Client) -> None:
        """The server went away: say so, and keep trying to reconnect."""
        if self._detaching or client is not self.client:
            return
        self.client = None
        banner = self.query_one(Banner)
        self.server_stopped = client.bye is not None
        if self.server_stopped:
            banner.update(f"{STOPPED_BANNER} q quits.")
        else:
            banner.update(
                "⚠ Connection to the supervisor server lost — reconnecting… "
                "(agents keep running in the server; q quits)"
            )
        banner.display = True
        self.connect(start=False)

    # -- events in, buffered

    def _receive(self, batch: list[Event]) -> None:
        # Called by the client for every batch read from the socket: only buffered here,
        # drawn at the next tick.
        self._inbox.extend(batch)

    def _apply_events(self) -> None:
        """Apply the events that arrived since the last tick, in one screen update."""
        if not self.is_running:
            return  # shutting down: the widgets are being removed
        if self._select_due:
            self._select_due = False
            self._load_selection()
        if not self._inbox:
            return
        batch, self._inbox = self._inbox, []
        table = self.query_one(FleetTable)
        detail = self.query_one(DetailPane)
        with self.batch_update():
            changes = self.fleet.apply(batch)
            now = self.clock()
            if changes.structure:
                self._show_fleet()
            elif changes.rows:
                table.refresh_rows(self.fleet, changes.rows, now, table.depths())
            agent = self.selected_agent
            run = self.selected_run
            if agent is not None:
                mine = [e for e in batch if e.agent_id == agent.id]
            elif run is not None:
                mine = [e for e in batch if e.run_id == run.id and e.agent_id is None]
            else:
                mine = []
            if mine:
                detail.feed(mine)
            detail.flush()
            if agent is not None and agent.id in changes.rows:
                detail.show_pending()
                self._update_message_hint()
                self.refresh_bindings()
                if detail.active_tab == "info":
                    detail.show_info(self.client, self.settings)
            if detail.active_tab == "info" and detail.run is not None:
                # Any plugin's progress and metrics: the Info tab follows them live.
                shown = detail.run.id
                if any(e.run_id == shown and e.type in SERIES_TYPES for e in batch):
                    detail.show_info(self.client, self.settings)
            if changes.notes and detail.active_tab == "notes":
                self._load_notes()
            if changes.rows or changes.spent or changes.structure:
                self._show_costs()
        self._follow_new_run()
        if changes.asked:
            self._alert(changes.asked)

    def _tick(self) -> None:
        """Once a second: elapsed times move on."""
        if not self.loaded or not self.is_running:
            return
        keys = {a.id for a in self.fleet.agents.values() if a.status not in FINAL}
        keys |= {r.id for r in self.fleet.runs.values() if r.active}
        if keys:
            table = self.query_one(FleetTable)
            with self.batch_update():
                table.refresh_rows(self.fleet, keys, self.clock(), table.depths())
                self.query_one(DetailPane).transcript.tick(self.clock())

    def _alert(self, agents: list[AgentInfo]) -> None:
        """Someone is needed: a notification and the terminal bell."""
        for agent in agents[:3]:
            pending = agent.pending or {}
            what = (
                f"approve {pending.get('tool')}: {pending.get('text', '')[:120]}"
                if pending.get("kind") == "approval"
                else str(pending.get("text", ""))[:160]
            )
            self.notify(what, title=f"{agent.name} is waiting for you", timeout=10)
        if len(agents) > 3:
            self.notify(f"and {len(agents) - 3} more", title="waiting for you")
        self.bell()

    # -- drawing

    def _show_fleet(self) -> None:
        rows = self.fleet.rows(query=self.query_text, sort=self.sort, now=self.clock())
        table = self.query_one(FleetTable)
        table.show(self.fleet, rows, self.clock(), self.selected)
        count = sum(1 for _, _, item in rows if isinstance(item, AgentInfo))
        table.border_title = f"Fleet — {count} agents"
        self._show_costs()

    def _show_costs(self) -> None:
        self.query_one(CostBar).show(
            self.fleet,
            float(self.settings.get("budget.daily_usd") or 0),
            self.sort,
            self.query_text,
        )

    def _update_message_hint(self) -> None:
        agent = self.selected_agent
        box = self.query_one(MessageInput)
        if agent is None:
            box.placeholder = "Select an agent to message it"
        elif agent.pending and agent.pending.get("kind") == "question":
            box.placeholder = f"Answer {agent.name}: {agent.pending.get('text', '')}"[:200]
        else:
            box.placeholder = f"Message {agent.name} (m, Enter sends)"

    # -- selection

    @property
    def selected_agent(self) -> AgentInfo | None:
        return self.fleet.agents.get(self.selected or "")

    @property
    def selected_run(self) -> RunInfo | None:
        if self.selected and self.selected.startswith("run:"):
            return self.fleet.runs.get(self.selected[4:])
        agent = self.selected_agent
        return self.fleet.runs.get(agent.run_id) if agent else None

    def _selected_ids(self) -> list[str]:
        return [self.selected] if self.selected else []

    def _select(self, key: str) -> bool:
        """Move the cursor to a row (the highlight then selects it); False if not shown."""
        table = self.query_one(FleetTable)
        if key not in table.order:
            return False
        table.move_cursor(row=table.order.index(key), animate=False, scroll=True)
        if self.selected != key:
            self.selected = key
            self._selection_changed()
        return True

    @on(DataTable.RowHighlighted, "#fleet")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Selection follows the cursor."""
        key = str(event.row_key.value)
        if key != self.selected:
            self.selected = key
            self._follow = None
            self._selection_changed()

    def _selection_changed(self) -> None:
        # The detail pane loads at the next tick: holding an arrow key down moves the
        # cursor at once and loads only where it stops.
        self._select_due = True
        detail = self.query_one(DetailPane)
        detail.agent, detail.run = self.selected_agent, self.selected_run
        detail.show_pending()
        self._update_message_hint()
        self.refresh_bindings()

    def _load_selection(self) -> None:
        self._watch_selected()
        detail = self.query_one(DetailPane)
        with self.batch_update():
            detail.select(self.client, self.selected_agent, self.selected_run)
            if self.client is not None:
                detail.show_info(self.client, self.settings)
        if detail.active_tab == "changes":
            self._load_diff()
        elif detail.active_tab == "notes":
            self._load_notes()

    def _watch_selected(self) -> None:
        """Ask the server for the selected agent's text deltas only."""
        agent = self.selected_agent
        wanted = agent.id if agent is not None else None
        if self.client is not None and wanted != self._watched:
            self._watched = wanted
            self._command("watch", "", agents=[wanted] if wanted else [])

    @on(DataTable.RowSelected, "#fleet")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a run folds it; on an agent, starts a message to it."""
        key = str(event.row_key.value)
        if key.startswith("run:"):
            self._toggle_run(key[4:])
        else:
            self.action_message()

    @on(FleetTable.Toggle)
    def run_toggled(self, event: FleetTable.Toggle) -> None:
        """Fold or unfold a run's agents."""
        self._toggle_run(event.run_id)

    def _toggle_run(self, run_id: str) -> None:
        run = self.fleet.runs.get(run_id)
        if run is not None:
            run.collapsed = not run.collapsed
            self._show_fleet()

    def _follow_new_run(self) -> None:
        """After starting a run from a dialog, the cursor goes to its first agent."""
        if self._follow is None:
            return
        run_id, until = self._follow
        first = next(
            (
                k
                for k in self.query_one(FleetTable).order
                if k in self.fleet.agents and self.fleet.agents[k].run_id == run_id
            ),
            None,
        )
        if first is not None:
            self._follow = None
            self._select(first)
            return
        if time.monotonic() > until:
            self._follow = None
        if self.selected != f"run:{run_id}":
            self._select(f"run:{run_id}")
            self._follow = (run_id, until) if self._follow else None

    # -- talking to the server

    def _command(self, cmd: str, done: str = "", **args: Any) -> None:
        """Send a command in the background; refusals become notifications."""
        self.run_worker(self._call(cmd, done, args), group="commands", exit_on_error=False)

    async def _call(self, cmd: str, done: str, args: dict[str, Any]) -> Any:
        client = self.client
        if client is None:
            self.notify("Not connected to the supervisor server (reconnecting…)", severity="error")
            return None
        try:
            result = await client.call(cmd, **args)
        except InputError as exc:
            self.notify(str(exc), title=cmd, severity="warning", timeout=8)
            return None
        except SupervisorError as exc:
            self.notify(str(exc), title=cmd, severity="error", timeout=8)
            return None
        if done:
            self.notify(done, timeout=3)
        return result if result is not None else True

    async def _submit(self, cmd: str, args: dict[str, Any]) -> Any:
        """A dialog's request: errors go back to the dialog to show inline."""
        if self.client is None:
            raise SupervisorError("not connected to the supervisor server (reconnecting…)")
        return await self.client.call(cmd, **args)

    # -- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Fleet keys work on the fleet screen only; approval keys only when one waits."""
        if action in ("quit", "command_palette", "change_theme"):
            return True
        if self.screen is not self.screen_stack[0]:
            # Over a dialog only the fleet's own keys rest; Tab, Shift+Tab and the other
            # keys every Textual app has still move through the dialog's fields.
            return action not in self.FLEET_ACTIONS or action in ("focus_fleet", "toggle_keys")
        if action == "approve":
            agent = self.selected_agent
            return bool(agent and agent.pending and agent.pending.get("kind") == "approval")
        return True

    def _need_agent(self) -> AgentInfo | None:
        agent = self.selected_agent
        if agent is None:
            self.notify("Select an agent first (arrow keys in the fleet).", severity="warning")
        return agent

    def action_detach(self) -> None:
        """Quit the TUI; the agents keep running in the server."""
        self._detaching = True
        self.exit(0)

    def action_toggle_keys(self) -> None:
        """Show (or hide) the list of keys for what has focus."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_focus_fleet(self) -> None:
        """Back to the fleet (and clear a filter being typed, or close the key list)."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
            return
        box = self.query_one("#filter", Input)
        if box.has_focus:
            box.value = ""
            box.display = False
        self.query_one(FleetTable).focus()

    def action_filter(self) -> None:
        """Show only the agents whose name, run, status or task match."""
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        """Refilter as the person types."""
        self.query_text = event.value
        self._show_fleet()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        """Keep the filter and go back to the fleet."""
        box = self.query_one("#filter", Input)
        box.display = bool(box.value)
        self.query_one(FleetTable).focus()

    def action_sort(self) -> None:
        """Cycle the sort key of agents within each run."""
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self._show_fleet()
        self.notify(f"sorted by {self.sort}", timeout=2)

    def action_message(self) -> None:
        """Write to the selected agent (an answer, when it asked a question)."""
        if self._need_agent() is not None:
            # set_focus, not focus(): focus() waits behind keys already queued, so a
            # person typing straight after `m` would have letters taken as commands.
            self.screen.set_focus(self.query_one(MessageInput))

    @on(Input.Submitted, "#message")
    def message_submitted(self, event: Input.Submitted) -> None:
        """Send the line to the agent: a message, or the answer it waits for."""
        agent = self._need_agent()
        text = event.value.replace(NEWLINE, "\n")
        if agent is None or not text.strip():
            return
        if len(text) > MAX_MESSAGE_CHARS:
            self.notify(
                f"Too long to send ({len(text):,} characters; at most {MAX_MESSAGE_CHARS:,}).",
                severity="error",
            )
            return
        self._send_message(agent, text, event.value)
        # Keys typed next are commands again, not more text for the agent.
        self.query_one(FleetTable).focus()

    @work(group="commands", exit_on_error=False)
    async def _send_message(self, agent: AgentInfo, text: str, typed: str) -> None:
        result = await self._call("agent.message", "", {"agent": agent.id, "text": text})
        if result is None:
            return
        box = self.query_one(MessageInput)
        if box.value == typed:
            box.value = ""
        said = {"answered": "answered", "sent": "sent", "restarted": "sent; it restarts"}
        self.notify(f"{agent.name}: {said.get(str(result), str(result))}", timeout=3)

    def action_approve(self, verdict: str) -> None:
        """Answer the tool call the selected agent waits on: approve, deny or always."""
        agent = self.selected_agent
        if agent is None or not agent.pending or agent.pending.get("kind") != "approval":
            self.notify("The selected agent is not waiting for an approval.")
            return
        words = {"approve": "approved", "deny": "denied", "always": "always allowed"}
        self._command(
            "agent.answer", f"{agent.name}: {words[verdict]}", agent=agent.id, text=verdict
        )

    @on(Button.Pressed, "#approve, #deny, #always")
    def approval_button(self, event: Button.Pressed) -> None:
        """The approval bar's buttons, for the mouse."""
        self.action_approve(str(event.button.id))

    def action_pause(self) -> None:
        """Pause the selected agent before its next step, or resume it."""
        agent = self._need_agent()
        if agent is None:
            return
        if agent.status == "paused" or agent.paused:
            self._command("agent.resume", f"{agent.name}: resumed", agent=agent.id)
        else:
            self._command(
                "agent.pause", f"{agent.name}: pauses before its next step", agent=agent.id
            )

    def action_stop(self) -> None:
        """Stop the selected agent (or, on a run's row, the whole run)."""
        if self.selected and self.selected.startswith("run:"):
            run_id = self.selected[4:]
            run = self.fleet.runs.get(run_id)
            live = [a for a in self.fleet.children(run_id) if a.status not in ENDED]
            from supervisor.tui.screens.dialogs import ConfirmScreen

            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._command("run.stop", f"run {run_id}: stopping", run=run_id)

            title = run.title if run is not None else run_id
            self.push_screen(
                ConfirmScreen(
                    f"Stop the whole run “{title}” ({run_id}) and its {len(live)} working "
                    f"agent{'s' if len(live) != 1 else ''}?"
                ),
                confirmed,
            )
            return
        agent = self._need_agent()
        if agent is not None:
            self._command("agent.stop", f"{agent.name}: stopping", agent=agent.id)

    def action_restart(self) -> None:
        """Restart the agent from its transcript; an interrupted run is resumed."""
        run = self.selected_run
        agent = self.selected_agent
        if run is not None and (agent is None or run.status == "interrupted"):
            self._command("run.resume", f"run {run.id}: resuming", run=run.id)
            return
        if self._need_agent() is not None and agent is not None:
            self._command("agent.restart", f"{agent.name}: restarting", agent=agent.id)

    def action_keep(self) -> None:
        """Keep the selected agent's sandbox after it ends."""
        agent = self._need_agent()
        if agent is not None:
            self._command("agent.keep", f"{agent.name}: its sandbox will be kept", agent=agent.id)

    def action_shell(self) -> None:
        """Open a shell in the selected agent's sandbox (the TUI waits meanwhile)."""
        agent = self._need_agent()
        if agent is None:
            return
        command = shell_command(agent.id)
        try:
            with self.suspend():
                code = subprocess.call(command)
        except SuspendNotSupported:
            self.notify(
                f"This terminal cannot be handed over; run `supervisor sandbox shell "
                f"{agent.id}` in another one.",
                severity="warning",
            )
            return
        except OSError as exc:
            self.notify(f"cannot run {command[0]}: {exc}", severity="error")
            return
        if code:
            self.notify(f"the sandbox shell exited with code {code}", severity="warning")

    def action_tab(self, tab: str) -> None:
        """Show one of the detail tabs."""
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Tabs that read on demand: the diff and the notes."""
        tab = event.pane.id
        if tab == "changes":
            self._load_diff()
        elif tab == "notes":
            self._load_notes()
        elif tab == "info":
            self.query_one(DetailPane).show_info(self.client, self.settings)

    @on(Button.Pressed, "#diff-refresh")
    def diff_refresh(self) -> None:
        """Read the workspace diff again."""
        self._load_diff()

    @work(exclusive=True, group="diff", exit_on_error=False)
    async def _load_diff(self) -> None:
        agent = self.selected_agent
        detail = self.query_one(DetailPane)
        if agent is None or self.client is None:
            detail.show_diff("Select an agent to see its changes.", error=True)
            return
        detail.show_diff(f"reading {agent.name}'s workspace diff…", error=True)
        try:
            diff = await self.client.call("agent.diff", agent=agent.id)
        except SupervisorError as exc:
            if self.selected_agent is agent:
                detail.show_diff(str(exc), error=True)
            return
        if self.selected_agent is agent:
            detail.show_diff(str(diff or ""))

    @on(Input.Changed, "#notes-query")
    def notes_query_changed(self) -> None:
        """Search the notes a moment after the person stops typing."""
        if self._notes_timer is not None:
            self._notes_timer.stop()
        self._notes_timer = self.set_timer(0.25, self._load_notes)

    def _load_notes(self) -> None:
        if self.client is None:
            return
        query = self.query_one("#notes-query", Input).value
        try:
            rows = self.client.notes(query)
        except Exception as exc:  # a malformed FTS query must not take the app down
            self.notify(f"note search failed: {exc}", severity="warning")
            rows = []
        names = {a.id: a.name for a in self.fleet.agents.values()}
        self.query_one(DetailPane).show_notes(rows, names)

    # -- screens

    def action_new_agent(self) -> None:
        """Start agents on a task."""
        from supervisor.tui.screens.dialogs import NewAgentScreen

        hosts = (
            tuple(r["name"] for r in self.client.query("SELECT name FROM hosts ORDER BY name"))
            if self.client is not None
            else ()
        )
        self.push_screen(
            NewAgentScreen(
                self._submit,
                model=str(self.settings.get("model") or ""),
                sandbox=str(self.settings.get("sandbox.backend") or "docker"),
                hosts=hosts,
            ),
            self._started,
        )

    def action_run_recipe(self) -> None:
        """Start a recipe run."""
        from supervisor.tui.screens.dialogs import RecipeScreen

        self.push_screen(RecipeScreen(self._submit), self._started)

    def _started(self, run_id: str | None) -> None:
        if run_id:
            self.notify(f"run {run_id} started", timeout=3)
            self._follow = (run_id, time.monotonic() + FOLLOW_S)
            self.query_one(FleetTable).focus()
            self._follow_new_run()

    def action_history(self) -> None:
        """Every run, and search over every transcript."""
        from supervisor.tui.screens.history import HistoryScreen

        if self.client is None:
            self.notify("Not connected to the supervisor server.", severity="error")
            return
        self.push_screen(HistoryScreen(self.client, self.clock()), self._jump)

    def action_hosts(self) -> None:
        """Remote hosts: reachable, GPUs busy and free, last check."""
        from supervisor.tui.screens.hosts import HostsScreen

        if self.client is None:
            self.notify("Not connected to the supervisor server.", severity="error")
            return
        self.push_screen(HostsScreen(self.client, self.clock()), self.show_host)

    def show_host(self, host: str | None) -> None:
        """The fleet filtered to one host's agents (``host:NAME`` in the filter)."""
        if not host:
            return
        box = self.query_one("#filter", Input)
        box.value = f"{HOST_FILTER}{host}"  # Input.Changed refilters the fleet
        box.display = True
        self.query_text = box.value
        self._show_fleet()
        self.query_one(FleetTable).focus()

    def _jump(self, target: tuple[str, str] | None) -> None:
        """Show the agent (or run) chosen in the history screen."""
        if target is None or self.client is None:
            return
        kind, key = target
        run_id = key
        if kind == "agent":
            agent = self.fleet.agents.get(key)
            if agent is None:
                rows = self.client.query("SELECT run_id FROM agents WHERE id = ?", [key])
                if not rows:
                    self.notify(f"no agent {key}", severity="warning")
                    return
                run_id = rows[0]["run_id"]
            else:
                run_id = agent.run_id
        if run_id not in self.fleet.runs and not self.fleet.add_run_from_db(self.client, run_id):
            self.notify(f"no run {run_id}", severity="warning")
            return
        self.fleet.runs[run_id].collapsed = False
        self.query_text = ""
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self._show_fleet()
        if kind == "run":
            key = next((a.id for a in self.fleet.children(run_id)), f"run:{run_id}")
        self._select(key)
        self.query_one(FleetTable).focus()

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        """Back on the fleet: bindings depend on the screen."""
        self.refresh_bindings()


def run(data_dir: Path | None = None) -> int:
    app = SupervisorApp(data_dir)
    with contextlib.suppress(KeyboardInterrupt):
        code = app.run()
        return int(code or 0)
    return 0
