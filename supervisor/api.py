"""What tools, policies and recipe steps receive: narrow services, never the engine.

A plugin imports these names from ``supervisor`` (they are re-exported there). Each is a
:class:`typing.Protocol`, so a plugin's code is checked by mypy against exactly what the
engine promises, and the engine stays free to change underneath.

- A tool's ``run(ctx, **arguments)`` gets a :class:`ToolContext`.
- A python recipe step's ``fn(ctx)`` gets a :class:`StepContext`.
- ``before_tool_call(call, agent)`` and other hooks that concern an agent get an
  :class:`AgentInfo` snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlite_utils

    from supervisor.events import Event
    from supervisor.sandbox.base import Sandbox


class Finished(Exception):
    """Raised by a tool to end its agent's work: ``summary`` is the agent's result (the
    built-in ``finish`` tool raises it)."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


@dataclass(frozen=True)
class AgentInfo:
    """A snapshot of one agent, as a plugin may see it.

    ``status`` is one of ``starting running waiting paused done failed stopped
    interrupted``; ``role`` is ``lead`` or ``worker``; ``scope_key`` names the project whose
    memory notes the agent reads (its workspace folder's name, or ``""``).
    """

    id: str
    name: str
    run_id: str
    role: str
    task: str
    model: str
    backend: str
    parent_id: str | None = None
    scope_key: str = ""
    status: str = ""
    steps: int = 0
    cost_usd: float = 0.0
    summary: str = ""


@dataclass(frozen=True)
class Note:
    """A memory note: ``scope`` is ``project`` or ``global``."""

    id: int
    scope: str
    body: str


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of a host, as its last ``supervisor hosts check`` saw it. ``id`` is what
    ``CUDA_VISIBLE_DEVICES`` and ``new_sandbox(gpus=...)`` take; ``name`` is the model
    (results measured on one model are compared with results of the same model); ``busy``:
    something else was using it then."""

    id: str
    name: str
    memory_mb: int | None = None
    busy: bool = False
    mig: bool = False  # split into MIG instances: the whole device is no slot


@dataclass(frozen=True)
class HostInfo:
    """A registered host (``supervisor hosts add``), as a recipe step may use it: a place
    for sandboxes (``new_sandbox(host=name)``) and, with its GPUs, for experiments."""

    name: str
    cpus: int
    ram_mb: int
    gpus: tuple[GpuInfo, ...] = ()
    cordoned: bool = False  # ``hosts cordon``: take no new work there
    reachable: bool | None = None  # at its last check; None: never checked


class Events(Protocol):
    """Emit events into the run's transcript (redacted, stored, streamed to clients)."""

    def emit(self, type: str, data: Mapping[str, Any], text: str = "") -> Event:
        """Any event type (see ``supervisor.EventType``); ``text`` is what people read."""
        ...

    def progress(self, label: str, done: float, total: float | None = None, unit: str = "") -> None:
        """Long work: ``done`` of ``total`` ``unit`` (total unknown: None). The TUI draws a
        bar in the Info tab; ``supervisor logs`` prints a line."""
        ...

    def metric(self, name: str, value: float | None, **labels: Any) -> None:
        """One value of a named series (a loss, a latency, a count; None for a try that
        gave none, such as a crash). The TUI's Info tab shows each series' last value, best
        (when a ``better="lower"|"higher"`` label says which way), count, a sparkline, and
        tallies of string labels (``status="keep"``)."""
        ...


class Memory(Protocol):
    """Memory notes that outlive the run: this project's and global ones."""

    async def remember(self, body: str, scope: str = "project") -> int: ...

    def recall(self, query: str, limit: int = 5) -> list[Note]: ...

    async def forget(self, note_id: int) -> bool: ...


class Human(Protocol):
    async def ask(self, question: str) -> str:
        """Park the agent until a person answers (TUI, ``supervisor answer``); the answer."""
        ...


class Team(Protocol):
    """Agents this agent leads."""

    async def spawn(
        self,
        task: str,
        *,
        name: str | None = None,
        model: str | None = None,
        sandbox: str | None = None,
    ) -> AgentInfo:
        """Start a worker in its own sandbox; returns at once. Team bounds apply."""
        ...

    def members(self) -> list[AgentInfo]: ...

    def send(self, agent: str, message: str) -> AgentInfo | None:
        """Put ``message`` in the inbox of the agent of this run named (name or id); None
        if none; ``InputError`` if several share the name."""
        ...

    async def wait(self, agents: list[str] | None, timeout: float) -> list[AgentInfo]: ...


class Artifacts(Protocol):
    def save(self, kind: str, name: str, text: str) -> Path:
        """Keep ``text`` in the data directory (redacted) and record it in ``artifacts``;
        ``kind`` is e.g. ``report`` or ``output``. Returns the file's path."""
        ...


class ToolContext(Protocol):
    """What a tool's ``run(ctx, **arguments)`` receives.

    ``sandbox`` is where the agent's commands run (``exec``, ``read_file``, ...); tools
    run in the supervisor process, never inside the sandbox.
    """

    @property
    def agent(self) -> AgentInfo: ...

    @property
    def sandbox(self) -> Sandbox: ...

    @property
    def memory(self) -> Memory: ...

    @property
    def human(self) -> Human: ...

    @property
    def team(self) -> Team: ...

    @property
    def artifacts(self) -> Artifacts: ...

    @property
    def events(self) -> Events: ...

    @property
    def data_dir(self) -> Path: ...


class PluginStore(Protocol):
    """The database, for a plugin's own tables (created by its ``register_migrations``)."""

    def write(self, fn: Any) -> Any:
        """Queue ``fn(db)`` on the single writer; returns a ``concurrent.futures.Future``."""
        ...

    def flush(self, timeout: float | None = None) -> bool: ...

    @property
    def db(self) -> sqlite_utils.Database:
        """A read connection for this thread (writes go through :meth:`write`)."""
        ...


class GpuSlots(Protocol):
    """This machine's GPUs, each held by one holder at a time (an agent, an experiment)."""

    @property
    def devices(self) -> list[str]:
        """Every device id (``nvidia-smi`` indices); empty without GPUs."""
        ...

    def hold(
        self, holder: str, count: int = 1, among: Sequence[str] = ()
    ) -> AbstractAsyncContextManager[list[str]]:
        """``async with ctx.gpu_slots.hold("loop-1") as devices:`` — waits until ``count``
        devices (of ``among``, when given: e.g. the one GPU a loop works on) are free; they
        are released on exit."""
        ...


class StepContext(Protocol):
    """What a python recipe step ``fn(ctx)`` receives.

    ``params`` are the run's parameters (typed), ``outputs`` what earlier steps returned,
    ``run_dir`` a folder of the run's own in the data directory.
    """

    run_id: str
    params: dict[str, Any]
    run_dir: Path
    outputs: dict[str, Any]

    @property
    def data_dir(self) -> Path: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...

    @property
    def events(self) -> Events: ...

    @property
    def store(self) -> PluginStore: ...

    @property
    def gpu_slots(self) -> GpuSlots:
        """The engine's GPU slots: pass the devices you hold to ``new_sandbox(gpus=...)``."""
        ...

    def hosts(self, spec: str) -> list[HostInfo]:
        """The registered hosts ``spec`` names, read as ``run --hosts`` reads it: ``a,b,c``,
        ``all``, or a pool from the settings (``pools.NAME.hosts``). Raises ``InputError``
        for a host or pool that does not exist."""
        ...

    def host_gpu_slots(self, host: str) -> GpuSlots:
        """The GPU slots of registered host ``host`` (its GPUs at its last check): what
        ``gpu_slots`` is for this machine, shared by every step of the supervisor process,
        so no two experiments (of this run or another) hold one of its GPUs at once."""
        ...

    @property
    def playbook(self) -> str:
        """The recipe's body, its English playbook, with ``{param}`` filled in: what an agent
        the step runs (``run_agent``) should be given, as ``prompt:`` steps give it."""
        ...

    def emit(self, text: str, **data: Any) -> None:
        """A ``step`` event with ``text`` (shown in the transcript and the CLI)."""
        ...

    def memory(self, scope_key: str) -> Memory:
        """Memory notes of the project ``scope_key`` (agents working on a workspace use its
        folder's name) and global ones."""
        ...

    def new_sandbox(
        self,
        name: str,
        *,
        workspace: Path | None = None,
        network: bool = False,
        gpus: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        backend: str = "",
        image: str = "",
        host: str = "",
    ) -> Sandbox:
        """A sandbox (not started) built from the person's settings — backend, image,
        limits, environment allow-list — labelled as this run's. ``gpus`` are device ids
        (see ``gpu_slots``, or ``host_gpu_slots`` with ``host``); ``image`` replaces the
        configured one; ``host`` puts it on that registered host (the ssh backend)."""
        ...

    async def run_agent(
        self,
        task: str,
        sandbox: Sandbox,
        *,
        name: str,
        model: str | None = None,
        exclude_tools: tuple[str, ...] = (),
        max_steps: int = 0,
    ) -> AgentInfo:
        """Run one agent in ``sandbox`` (which the step owns) until it ends."""
        ...

    async def sandbox_image(
        self,
        *,
        requirements: Sequence[str] = (),
        wheels: dict[str, bytes] | None = None,
        base: str = "",
        name: str = "",
    ) -> str:
        """A sandbox image with Python packages (pip requirements, wheel files' bytes) on
        top of ``base`` (the configured image), built once per content hash with its
        output shown as progress, and reused; its tag, for ``new_sandbox(image=...)``.
        Needs the docker backend."""
        ...

    async def bring_back(self, sandbox: Sandbox, target: Path, *, branch: str = "") -> str:
        """Bring a sandbox's committed work into the host folder or git repo ``target``: a
        repo gets a new branch (``branch``, else ``supervisor/<agent>``; an existing branch
        is never moved) and its working tree is not touched; a folder gets a patch that
        applies cleanly. Says what was done, in one line."""
        ...

    def check_model(self, model: str | None = None) -> str:
        """The model alias an agent would use; raises ``InputError`` if it is unusable."""
        ...
