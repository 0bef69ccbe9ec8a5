"""One agent's transcript: messages as Markdown, tool calls folded, the live reply streaming.

Finished messages are rendered once (Markdown); the reply being streamed is plain text in
one widget that grows, so a token never makes the whole transcript parse again. Only the
latest items are mounted: an agent's whole history is `supervisor transcript ID`.
"""

from __future__ import annotations

import json
from typing import Any

from rich.markdown import Markdown
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Collapsible, Static

from supervisor.events import Event, tool_failed
from supervisor.status import ENDED

SHOWN_ITEMS = 40  # items mounted when an agent is selected
KEPT_ITEMS = 120  # items kept while it streams, before the oldest are dropped
# A budget's warning, brake, held agent and shrink: said in the transcripts they cover.
BUDGET_TYPES = ("budget.warning", "budget.brake", "budget.held", "budget.shrink")
TRANSCRIPT_TYPES = (
    "message",
    "tool.started",
    "tool.finished",
    "human.asked",
    "human.answered",
    "human.message",
    "approval.asked",
    "agent.status",
    "log",
    "note.written",
    *BUDGET_TYPES,
)
RUN_TYPES = ("run.created", "run.status", "step", "log", *BUDGET_TYPES)
OUTPUT_CHARS = 20_000  # of one tool's output shown inline


def tool_title(data: dict[str, Any]) -> str:
    args = data.get("arguments") or {}
    main = args.get("command") or args.get("path") or args.get("task") or args.get("question")
    shown = main if isinstance(main, str) else json.dumps(args)
    first = shown.strip().splitlines()[0] if shown.strip() else ""
    return f"→ {data.get('tool', '?')}: {first[:150]}"


class ToolCall(Collapsible):
    """A tool call, folded; its output one key (Enter) away."""

    def __init__(self, data: dict[str, Any], started: float = 0.0) -> None:
        self.call_id = str(data.get("id") or "")
        self.started = started  # while it runs, the title shows how long it has run
        self.running = True
        self.base_title = tool_title(data)
        self.output = Static(Text("(running…)", style="dim"), classes="tool-output")
        args = json.dumps(data.get("arguments") or {}, indent=1)
        super().__init__(
            Static(Text(args[:4000], style="dim"), classes="tool-args"),
            self.output,
            title=tool_title(data),
            collapsed=True,
        )

    def tick(self, now: float) -> None:
        """A call running for a while shows its clock (a long experiment is seen to move)."""
        if self.running and self.started and now - self.started >= 2:
            self.title = f"{self.base_title}  ⋯ {now - self.started:.0f}s"

    def finish(self, event: Event) -> None:
        self.running = False
        self.title = self.base_title
        text = (
            event.text
            if len(event.text) <= OUTPUT_CHARS
            else (
                event.text[:OUTPUT_CHARS]
                + f"\n[… {len(event.text) - OUTPUT_CHARS} more characters]"
            )
        )
        data = event.data
        if data.get("denied"):
            self.output.update(Text(f"refused by policy ({data['denied']})", style="red"))
            self.title = self.title + "  ✗ refused"
            return
        failed = tool_failed(event)
        self.output.update(Text(text or "(no output)", style="red" if failed else ""))
        code = data.get("exit_code")
        mark = ("✗" + (f" exit {code}" if code else "")) if failed else "✓"
        self.title = f"{self.title}  {mark} {float(data.get('duration_s') or 0):.1f}s"


def line(text: str, style: str = "") -> Static:
    return Static(Text(text, style=style), classes="transcript-line")


def message(text: str) -> Static:
    return Static(Markdown(text), classes="message")


class TranscriptView(VerticalScroll):
    """The selected agent's transcript, following it live."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent_id: str | None = None
        self.loaded_up_to = 0
        self._live: Static | None = None
        self._live_text: list[str] = []
        self._live_dirty = False
        self._calls: dict[str, ToolCall] = {}
        self._queued: list[Widget] = []

    def show(
        self, agent_id: str | None, events: list[Event], live: str, hidden: int, up_to: int
    ) -> None:
        """Replace the view with these events (the newest of the agent's transcript)."""
        self.agent_id = agent_id
        self.loaded_up_to = up_to
        self._calls.clear()
        self._live = None
        self._live_text = [live] if live else []
        self._live_dirty = bool(live)
        self._queued = []
        widgets: list[Widget] = []
        if agent_id is None:
            widgets.append(line("No agent selected. Press n to start one.", "dim"))
        elif hidden:
            widgets.append(
                line(f"… {hidden} earlier items (supervisor transcript {agent_id})", "dim")
            )
        for event in events:
            self._add(event, widgets)
        self.remove_children()
        self.mount_all(widgets)
        self.flush()
        self.call_after_refresh(self.scroll_end, animate=False)

    def feed(self, events: list[Event]) -> None:
        """Take the selected agent's new events (applied at the next flush)."""
        for event in events:
            if event.id is not None and event.id <= self.loaded_up_to:
                continue
            if str(event.type) == "message.delta":
                self._live_text.append(str(event.data.get("delta", "")))
                self._live_dirty = True
            else:
                self._add(event, self._queued)

    def flush(self) -> None:
        """Mount what arrived since the last flush and grow the live reply."""
        at_end = self.scroll_y >= self.max_scroll_y - 1
        if self._queued:
            widgets, self._queued = self._queued, []
            if self._live is not None:
                self.mount_all(widgets, before=self._live)
            else:
                self.mount_all(widgets)
            extra = len(self.children) - KEPT_ITEMS
            if extra > 0:
                for child in list(self.children)[:extra]:
                    if child is not self._live:
                        child.remove()
        if self._live_dirty:
            self._live_dirty = False
            text = "".join(self._live_text)
            if self._live is None:
                self._live = Static(Text(text), classes="message live")
                self.mount(self._live)
            else:
                self._live.update(Text(text))
        if at_end:
            self.scroll_end(animate=False)

    def tick(self, now: float) -> None:
        """Move the clocks of the calls still running."""
        for call in self._calls.values():
            if call.running:
                call.tick(now)

    def _add(self, event: Event, out: list[Widget]) -> None:
        kind = str(event.type)
        data = event.data
        if kind == "message":
            self._live_text = []
            self._live_dirty = False
            if self._live is not None:
                self._live.remove()
                self._live = None
            out.append(message(event.text))
        elif kind == "tool.started":
            call = ToolCall(data, started=event.ts)
            self._calls[call.call_id] = call
            out.append(call)
        elif kind == "tool.finished":
            found = self._calls.get(str(data.get("id") or ""))
            if found is not None:
                found.finish(event)
            elif data.get("denied"):
                out.append(
                    line(f"✗ {data.get('tool')} refused by policy ({data['denied']})", "red")
                )
        elif kind == "human.asked":
            out.append(line(f"? asks: {data.get('question', event.text)}", "bold magenta"))
        elif kind == "approval.asked":
            out.append(line(f"! approval needed: {event.text[:300]}", "bold magenta"))
        elif kind == "human.answered":
            out.append(line(f"  answered: {data.get('answer', event.text)}", "magenta"))
        elif kind == "human.message":
            out.append(line(f"  you said: {event.text[:500]}", "magenta"))
        elif kind == "agent.status":
            status = data.get("status")
            if status in ENDED:
                summary = data.get("summary") or ""
                style = {"done": "green", "failed": "red"}.get(str(status), "yellow")
                out.append(line(f"● {status}" + (f": {summary}" if summary else ""), style))
            elif status == "paused":
                out.append(line(f"‖ paused: {data.get('doing', '')}", "yellow"))
        elif kind == "run.created":
            out.append(line(f"run created: {event.text[:500]}", "bold"))
        elif kind == "run.status":
            out.append(line(f"run {data.get('status')}", "bold"))
        elif kind == "step" and event.text:
            style = "red" if data.get("status") == "failed" else ""
            out.append(line(event.text[:2000], style))
        elif kind == "log" and event.text:
            out.append(line(f"· {event.text}", "dim"))
        elif kind == "note.written":
            out.append(line(f"✎ note ({data.get('scope')}): {event.text[:200]}", "dim"))
        elif kind in BUDGET_TYPES:
            out.append(line(f"$ {event.text}", "bold red" if kind == "budget.brake" else "yellow"))
