"""The one vocabulary of events.

Everything an agent does becomes an :class:`Event`: the engine emits it, the store persists
it, the server streams it, the TUI renders it, ``supervisor logs`` prints it, and resume
replays it. ``type`` is one of :class:`EventType`; ``data`` holds the type's fields as
JSON-able values; ``text`` is what full-text search sees (message text, a command, output).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """Every event type. :data:`CATALOGUE` says what each means and what ``data`` holds;
    docs/plugins.md prints it and a test keeps the two in step."""

    RUN_CREATED = "run.created"
    RUN_STATUS = "run.status"
    AGENT_CREATED = "agent.created"
    AGENT_STATUS = "agent.status"
    MESSAGE_DELTA = "message.delta"
    MESSAGE = "message"
    TOOL_STARTED = "tool.started"
    TOOL_FINISHED = "tool.finished"
    TOOL_REWRITTEN = "tool.rewritten"
    COST = "cost"
    NOTE_WRITTEN = "note.written"
    NOTE_REMOVED = "note.removed"
    APPROVAL_ASKED = "approval.asked"
    APPROVAL_RESOLVED = "approval.resolved"
    HUMAN_ASKED = "human.asked"
    HUMAN_ANSWERED = "human.answered"
    HUMAN_MESSAGE = "human.message"
    BUDGET_SET = "budget.set"
    BUDGET_WARNING = "budget.warning"
    BUDGET_BRAKE = "budget.brake"
    BUDGET_HELD = "budget.held"
    BUDGET_SHRINK = "budget.shrink"
    ARTIFACT = "artifact"
    STEP = "step"
    PROGRESS = "progress"
    METRIC = "metric"
    DEPLOY = "deploy"
    PLACEMENT = "placement"
    PLUGIN_ERROR = "plugin.error"
    LOG = "log"


CATALOGUE: dict[str, tuple[str, dict[str, str]]] = {
    "run.created": ("a run began; text is its task", {"title": "str", "kind": "task|recipe"}),
    "run.status": (
        "a run's status changed",
        {"status": "running|done|failed|stopped|interrupted"},
    ),
    "agent.created": (
        "an agent was made; text is its task",
        {"name": "str", "parent_id": "str|None", "model": "alias", "sandbox": "backend"},
    ),
    "agent.status": (
        "an agent's status or current activity changed",
        {"status": "see AgentInfo.status", "doing": "str", "summary": "str (when it ended)"},
    ),
    "message.delta": ("streamed model text, a few per second", {"delta": "str"}),
    "message": ("the model's whole text of one step", {"step": "int"}),
    "tool.started": (
        "a tool call began; text is the tool and its main argument",
        {
            "tool": "str",
            "id": "call id",
            "arguments": "dict (what runs)",
            "asked": "{tool, arguments} the model asked for, when a plugin rewrote it",
        },
    ),
    "tool.finished": (
        "a tool call ended, or was refused without running; text is exactly what the model "
        "was told",
        {
            "tool": "str",
            "id": "call id",
            "error": "bool",
            "duration_s": "float",
            "refused": "unknown_tool|malformed|policy|person|plugin (only when it never ran)",
            "arguments": "dict (refused calls)",
            "raw_arguments": "str (arguments that were not JSON)",
            "denied": "the policy pattern that refused it",
            "plugin": "the plugin that refused it",
        },
    ),
    "tool.rewritten": (
        "a before_tool_call plugin replaced a call (the new call faces the policy again)",
        {"id": "call id", "plugin": "str", "from": "{tool, arguments}", "to": "{tool, arguments}"},
    ),
    "cost": (
        "one model call's tokens and price",
        {
            "model": "str",
            "cost_usd": "float",
            "input_tokens": "int",
            "output_tokens": "int",
            "agent_cost_usd": "float",
        },
    ),
    "note.written": (
        "a memory note was saved; text is its body",
        {"note_id": "int", "scope": "str"},
    ),
    "note.removed": ("a memory note was removed", {"note_id": "int", "by": "agent|person"}),
    "approval.asked": (
        "a call waits for a person's verdict",
        {"call_id": "str", "tool": "str", "arguments": "dict", "pattern": "policy pattern"},
    ),
    "approval.resolved": ("a person decided", {"verdict": "approve|deny|always"}),
    "human.asked": ("an agent asked a person a question", {"question": "str"}),
    "human.answered": ("a person answered; text is the answer", {"answer": "str"}),
    "human.message": ("a person told an agent something", {"from": "person"}),
    "budget.set": (
        "a person set a spending limit",
        {
            "scope": "run|agent",
            "target": "id",
            "usd": "float (0: none)",
            "tokens": "int (0: none; when a token limit was set)",
        },
    ),
    "budget.warning": (
        "spend reached budget.warn_at of a budget (once per limit); text says how much is left",
        {
            "scope": "agent|run|fleet|daily",
            "target": "id (agent, run) or empty",
            "unit": "usd|tokens",
            "spent": "float",
            "limit": "float",
        },
    ),
    "budget.brake": (
        "a budget is spent: no new agent starts under it, running agents finish their step "
        "and then pause or stop (budget.at_limit)",
        {
            "scope": "agent|run|fleet|daily",
            "target": "id or empty",
            "unit": "usd|tokens",
            "spent": "float",
            "limit": "float",
            "at_limit": "pause|stop",
        },
    ),
    "budget.held": (
        "an agent was not started because a budget is spent (it waits, or ends unstarted)",
        {"scope": "run|fleet|daily", "reason": "str", "at_limit": "pause|stop"},
    ),
    "budget.shrink": (
        "fewer agents may take a step at once as a budget runs low",
        {
            "scope": "run|fleet|daily",
            "target": "id or empty",
            "unit": "usd|tokens",
            "allowed": "int (agents stepping at once)",
            "live": "int (agents under the budget)",
            "left": "float",
            "per_step": "float (spent per model call so far)",
        },
    ),
    "artifact": ("a report or big output was kept", {"kind": "str", "name": "str", "path": "str"}),
    "step": ("a recipe step's progress; text is what it says", {"step": "step id"}),
    "progress": (
        "long work advanced (a download, an experiment loop)",
        {"label": "str", "done": "float", "total": "float|None", "unit": "str"},
    ),
    "metric": (
        "one value of a named series (the TUI's Info tab draws it)",
        {"name": "str", "value": "float", "labels": "dict"},
    ),
    "deploy": (
        "a deploy operation on a host (upload, packages, service, health wait, logs)",
        {
            "op": "str",
            "target": "what it acted on",
            "host": "str",
            "phase": "start|progress|warning|done|failed",
            "changed": "bool (done)",
            "summary": "str (done)",
            "manager": "systemd|user|fallback (services)",
            "dry_run": "bool",
        },
    ),
    "placement": (
        "an agent's sandbox was placed on a host of a pool, or no host could take it; or a "
        "recipe step held (then released) GPUs of a host",
        {
            "phase": "placed|refused|gpu_held|gpu_released",
            "host": "str (placed, gpu_held, gpu_released)",
            "gpus": "list of device indexes (placed, gpu_held, gpu_released)",
            "holder": "who held the GPUs (gpu_held, gpu_released)",
            "compared": "hosts scored for it",
            "reasons": "dict host -> why it refused (refused)",
        },
    ),
    "plugin.error": (
        "a plugin raised inside a hook; the run went on without it",
        {"plugin": "str", "hook": "str", "error": "str", "effect": "what happened instead"},
    ),
    "log": ("anything else worth a line in the transcript", {}),
}


@dataclass
class Event:
    """One thing that happened. ``id`` is assigned by the store, in order, on append."""

    type: str
    run_id: str | None = None
    agent_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    ts: float = field(default_factory=time.time)
    id: int | None = None

    def to_row(self) -> dict[str, Any]:
        import json

        return {
            "id": self.id,
            "ts": self.ts,
            "run_id": self.run_id,
            "agent_id": self.agent_id,
            "type": str(self.type),
            "data": json.dumps(self.data, separators=(",", ":"), default=str),
            "text": self.text,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        import json

        return cls(
            id=row["id"],
            ts=row["ts"],
            run_id=row["run_id"],
            agent_id=row["agent_id"],
            type=row["type"],
            data=json.loads(row["data"]) if row["data"] else {},
            text=row["text"] or "",
        )


_EXIT_CODE = re.compile(r"\[exit code (-?\d+)\]\s*$")


def exit_code(text: str) -> int | None:
    """The exit code a command's tool output ends with (``[exit code N]``), if any."""
    match = _EXIT_CODE.search(text[-40:])
    return int(match[1]) if match else None


def tool_failed(event: Event) -> bool:
    """Did a finished tool call fail: an error, or a command that exited non-zero?

    Events written before ``exit_code`` was recorded are read from their output."""
    data = event.data
    if data.get("error") or data.get("denied"):
        return True
    if "exit_code" in data:
        return data["exit_code"] not in (None, 0)
    return data.get("tool") == "shell" and exit_code(event.text) not in (None, 0)
