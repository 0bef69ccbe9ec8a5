"""Events as terminal text, for `supervisor run` (live) and `supervisor logs` (replay)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from supervisor.events import Event, EventType, tool_failed
from supervisor.status import FINAL


class Printer:
    """Prints events compactly: text as it arrives, each tool call and result in short."""

    def __init__(
        self,
        names: dict[str, str] | None = None,
        echo: Callable[..., Any] = click.echo,
        show_names: bool = True,
    ) -> None:
        self.names = names if names is not None else {}
        self.echo = echo
        self.show_names = show_names
        self._open_line: str | None = None  # agent whose text line is still open

    def _who(self, event: Event) -> str:
        name = self.names.get(event.agent_id or "", event.agent_id or "")
        return click.style(f"[{name}] ", fg="cyan") if self.show_names and name else ""

    def _close(self) -> None:
        if self._open_line is not None:
            self.echo("")
            self._open_line = None

    def __call__(self, event: Event) -> None:
        t = event.type
        d = event.data
        if t == EventType.AGENT_CREATED and event.agent_id:
            self.names[event.agent_id] = d.get("name", event.agent_id)
            return
        if t == EventType.MESSAGE_DELTA:
            if self._open_line != event.agent_id:
                self._close()
                self.echo(self._who(event), nl=False)
                self._open_line = event.agent_id
            self.echo(d.get("delta", ""), nl=False)
            return
        if t in (EventType.MESSAGE, EventType.COST):
            return  # the text already arrived as deltas; costs are summed at the end
        self._close()
        line = self._line(t, d, event)
        if line:
            self.echo(self._who(event) + line)

    def _line(self, t: str, d: dict[str, Any], event: Event | None = None) -> str:
        if t == EventType.TOOL_STARTED:
            args = d.get("arguments", {})
            main = args.get("command") or args.get("path") or args.get("task") or ""
            shown = main if isinstance(main, str) else json.dumps(main)
            if not shown:
                shown = json.dumps(args)[:120]
            return click.style(f"→ {d.get('tool')}: ", fg="yellow") + shown.strip()[:200]
        if t == EventType.TOOL_FINISHED:
            if d.get("tool") == "finish":
                return ""
            if d.get("denied"):
                return click.style(f"✗ {d.get('tool')} refused by policy ({d['denied']})", fg="red")
            if d.get("refused"):
                told = event.text if event else ""
                return click.style(f"✗ {d.get('tool')} not run: ", fg="red") + told[:200]
            text = event.text if event else ""
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            if event is not None and tool_failed(event):
                code = d.get("exit_code")
                mark = click.style("← ✗" + (f" exit {code}" if code else ""), fg="red")
            else:
                mark = click.style("← ✓", fg="green")
            return f"{mark} {d.get('duration_s', 0):.2f}s {first[:160]}"
        if t == EventType.AGENT_STATUS:
            status = d.get("status", "")
            if status in FINAL:
                color = {"done": "green", "failed": "red"}.get(status, "yellow")
                return click.style(f"● {status}", fg=color) + (
                    f": {d.get('summary')}" if d.get("summary") else ""
                )
            if status == "paused":
                return click.style(f"‖ paused: {d.get('doing', '')}", fg="yellow")
            return ""
        if t == EventType.HUMAN_ASKED:
            return click.style("? asks: ", fg="magenta", bold=True) + str(d.get("question", ""))
        if t == EventType.HUMAN_ANSWERED:
            return click.style("  answered: ", fg="magenta") + str(d.get("answer", ""))
        if t == EventType.APPROVAL_ASKED:
            return click.style("! approval needed: ", fg="magenta", bold=True) + (
                f"{d.get('tool')} {json.dumps(d.get('arguments', {}))[:200]}"
            )
        if t == EventType.HUMAN_MESSAGE:
            return click.style("  you said: ", fg="magenta") + (event.text[:200] if event else "")
        if t == EventType.STEP:
            return event.text if event else ""
        if t == EventType.LOG:
            return click.style(f"· {event.text if event else ''}", dim=True)
        if t == EventType.DEPLOY:
            return click.style(
                f"⇡ {event.text if event else ''}", fg="red" if d.get("error") else None
            )
        if t == EventType.NOTE_WRITTEN:
            return click.style(f"✎ note ({d.get('scope')}): ", dim=True) + (
                event.text[:160] if event else ""
            )
        if t == EventType.ARTIFACT:
            return click.style(f"▤ {d.get('kind')}: {d.get('path')}", dim=True)
        if t == EventType.TOOL_REWRITTEN:
            return click.style("↻ rewritten: ", fg="yellow") + (event.text[:200] if event else "")
        if t == EventType.PLUGIN_ERROR:
            return click.style("✗ ", fg="red") + (event.text[:300] if event else "")
        if t == EventType.PROGRESS:
            return click.style(f"… {event.text if event else ''}", dim=True)
        if t == EventType.METRIC:
            return click.style(f"≡ {event.text if event else ''}", dim=True)
        if t in (EventType.NOTE_REMOVED, EventType.BUDGET_SET):
            return click.style(f"· {event.text if event else ''}", dim=True)
        if t in (EventType.BUDGET_WARNING, EventType.BUDGET_SHRINK, EventType.BUDGET_HELD):
            return click.style(f"$ {event.text if event else ''}", fg="yellow")
        if t == EventType.BUDGET_BRAKE:
            return click.style(f"$ {event.text if event else ''}", fg="red", bold=True)
        if t == EventType.RUN_STATUS:
            return click.style(f"run {event.run_id if event else ''}: {d.get('status')}", bold=True)
        return ""

    def finish(self) -> None:
        self._close()
