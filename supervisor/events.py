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
    RUN_CREATED = "run.created"
    RUN_STATUS = "run.status"
    AGENT_CREATED = "agent.created"
    AGENT_STATUS = "agent.status"
    MESSAGE_DELTA = "message.delta"
    MESSAGE = "message"
    TOOL_STARTED = "tool.started"
    TOOL_FINISHED = "tool.finished"
    COST = "cost"
    NOTE_WRITTEN = "note.written"
    APPROVAL_ASKED = "approval.asked"
    APPROVAL_RESOLVED = "approval.resolved"
    HUMAN_ASKED = "human.asked"
    HUMAN_ANSWERED = "human.answered"
    HUMAN_MESSAGE = "human.message"
    ARTIFACT = "artifact"
    STEP = "step"
    LOG = "log"


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
