"""What the engine's rooms share: options, constants, small helpers."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent
from supervisor.events import Event, EventType
from supervisor.sandbox.base import Sandbox
from supervisor.system import process_owner

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from supervisor.engine import Engine


Listener = Callable[[Event], None]


DELTA_FLUSH_CHARS = 256


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. The cancel is repeated each
    second: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives
    just as its inner call completes (fixed in 3.12), and a stopped agent would run on."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


DELTA_FLUSH_S = 0.05


DEFAULT_CONTEXT = 128_000


OWNER = process_owner()  # recorded on the runs this process drives


@dataclass
class RunOptions:
    task: str
    model: str = ""
    workspace: Path | None = None
    sandbox: str = ""
    agents: int = 1
    network: bool = False
    max_cost_usd: float = 0.0
    max_steps: int = 0
    keep_sandboxes: bool = False
    title: str = ""
    host: str = ""  # a registered host (`supervisor hosts`): the ssh sandbox backend
    hosts: str = ""  # a pool: "a,b,c", "all" or a pools.NAME; each agent placed on one
    gpus: int = 0  # with hosts: whole GPUs of its host for each agent, held by it alone


class _DeltaStream:
    """Batches text deltas into a few events a second instead of one per token."""

    def __init__(self, engine: Engine, agent: Agent) -> None:
        self.engine, self.agent = engine, agent
        self.parts: list[str] = []
        self.size = 0
        self.since = 0.0

    def add(self, text: str) -> None:
        if not self.parts:
            self.since = time.monotonic()
        self.parts.append(text)
        self.size += len(text)
        if self.size >= DELTA_FLUSH_CHARS or time.monotonic() - self.since >= DELTA_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.engine.emit(EventType.MESSAGE_DELTA, self.agent, {"delta": "".join(self.parts)})
            self.parts, self.size = [], 0


async def sandbox_alive(sandbox: Sandbox) -> bool:
    """Does the sandbox still answer a command?"""
    try:
        return (await sandbox.exec("true", timeout=10)).exit_code == 0
    except Exception:
        return False


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:40] or "x"
