"""Small facts about this machine, light enough for any process (the TUI included): which
process owns something (a run, a pooled sandbox) — told apart from a later process that
reuses its pid — and when today began (for daily budgets)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path


def start_of_day() -> float:
    """Local midnight today, as a timestamp."""
    today = datetime.datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    return today.timestamp()


def process_owner() -> str:
    """This process, as ``pid:start-ticks`` (a reused pid does not look alive)."""
    return f"{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_alive(owner: str | None) -> bool:
    """Is the process ``owner`` names still running? A killed process whose parent has not
    reaped it yet (a zombie) keeps its pid and start time, but is dead all the same."""
    pid, _, ticks = (owner or "").partition(":")
    try:
        fields = _stat(int(pid))
    except (ValueError, OSError, IndexError):
        return False
    return fields[19] == ticks and fields[0] not in ("Z", "X", "x")


def _start_ticks(pid: int) -> str:
    return _stat(pid)[19]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name, from the state on."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()
