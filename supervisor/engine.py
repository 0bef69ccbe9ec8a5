"""The engine: runs agents, routes their events, keeps budgets, answers and approvals.

Every event goes one way: redacted → the store (batched) → ``on_event`` plugins → live
listeners (the CLI printing a run, later the server streaming to clients). Agents run as
asyncio tasks; one slow model or sandbox never blocks the others. Questions and approvals
park an agent until a person answers — in this process (:meth:`answer`, :meth:`resolve`)
or from another one (``supervisor answer``), which writes the answer as an event that the
engine picks up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor import config
from supervisor.agent import Agent, Limits, Policy, Verdict
from supervisor.events import Event, EventType
from supervisor.models import Completion, ModelClient, ModelRegistry, RetryInfo, check_usable
from supervisor.plugins import Plugins
from supervisor.redact import Redactor
from supervisor.sandbox.base import Sandbox, SandboxSpec
from supervisor.sandbox.gpus import GpuSlots
from supervisor.store import Store
from supervisor.system import owner_alive, process_owner, start_of_day
from supervisor.types import ModelSpec, Tool, ToolCall

if TYPE_CHECKING:
    from supervisor.api import ToolContext
    from supervisor.sandbox.manager import SandboxPool

Listener = Callable[[Event], None]
DELTA_FLUSH_CHARS = 256
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


class Engine:
    def __init__(
        self,
        store: Store,
        plugins: Plugins,
        *,
        models: ModelClient | None = None,
        settings: dict[str, Any] | None = None,
        redactor: Redactor | None = None,
        sandbox_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.plugins = plugins
        self._settings_from_config = settings is None
        self.settings = settings if settings is not None else config.load().values
        self.models = models or ModelClient(
            ModelRegistry.load(plugins),
            max_concurrent=self.settings["model.max_concurrent"],
            retries=self.settings["model.retries"],
            stall_timeout_s=self.settings["model.stall_timeout_s"],
        )
        self.redactor = redactor or Redactor.from_environment()
        self.tools: dict[str, Tool] = {t.name: t for _, t in plugins.collect("register_tools")}
        self.backends = {b.name: b for _, b in plugins.collect("register_sandboxes")}
        self.sandbox_kwargs = sandbox_kwargs or {}
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[str]] = {}
        self.runs: dict[str, RunOptions] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}  # agent id -> answer or verdict
        self._listeners: list[Listener] = []
        self._done: dict[str, asyncio.Event] = {}
        self._policies: dict[str, Policy] = {}
        self._spent_today = self._spent_since(start_of_day())
        self._limits_usd: dict[str, float] = {}  # agent or run id -> budget, once read
        self._releasing: set[asyncio.Task[None]] = set()
        self._wrapups: dict[str, asyncio.Task[None]] = {}  # agent id -> saving its work
        self._managed: set[str] = set()
        self._stopping: set[str] = set()  # runs being stopped: no new agents in them
        self._settings_stamp: tuple[int, int] = self._config_stamp()
        self._windows: dict[str, int] = {}
        self._paused: dict[str, asyncio.Event] = {}  # agent id -> set when resumed
        self.kept: set[str] = set()  # agents whose sandbox outlives them
        self.gpu_slots = GpuSlots()  # who holds which GPU of this machine
        self._pool: SandboxPool | None = None  # sandbox.pool_size warm, from the first on
        self.closing = False  # set by close(interrupt=True): runs stop to resume later
        self.data_dir = store.path.parent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plugin_errors: set[tuple[str | None, str, str, str]] = set()
        self._hook_run: str | None = None  # the run whose event a plugin is observing
        plugins.on_failure = self._plugin_failed
        self._migrate_plugins()
        # Observers see events once they are committed, with their ids, as clients do.
        store.subscribe(self._committed)

    # -- events

    def listen(self, fn: Listener) -> Callable[[], None]:
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def emit(
        self,
        type: str,
        agent: Agent | None,
        data: dict[str, Any],
        text: str = "",
        run_id: str | None = None,
    ) -> Event:
        """Record an event: redacted, queued for the store, shown to live listeners now
        and to ``on_event`` plugins once it is committed (with its id)."""
        event = Event(
            type=type,
            run_id=agent.run_id if agent else run_id,
            agent_id=agent.id if agent else None,
            data=self.redactor.value(data),
            text=self.redactor.text(text),
        )
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        self.store.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def _migrate_plugins(self) -> None:
        """Create and update plugins' own tables before anything runs."""
        sets = self.plugins.collect("register_migrations")
        if not sets:
            return
        for plugin, error in self.store.migrate_plugins(sets):
            info = self.plugins.info.get(plugin)
            if info is not None and info.error is None:
                info.error = f"raised in register_migrations: {error}"
            self._plugin_failed(plugin, "register_migrations", error, "its tables are missing")

    def _committed(self, events: list[Event]) -> None:
        """In the store's writer thread, after a commit: hand the events to ``on_event``
        plugins on the engine's loop."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self.plugins.pm.hook.on_event.get_hookimpls():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._observe, events)

    def _observe(self, events: list[Event]) -> None:
        for event in events:
            self._hook_run = event.run_id
            try:
                self.plugins.call("on_event", event=event)
            finally:
                self._hook_run = None

    def _plugin_failed(self, plugin: str, hook: str, error: str, effect: str) -> None:
        """A plugin raised inside a hook: say so once per run, in the transcript and the
        log (``supervisor plugins list`` and ``doctor`` read it from there)."""
        key = (self._hook_run, plugin, hook, error)
        if key in self._plugin_errors:
            return
        self._plugin_errors.add(key)
        import sys

        print(f"plugin {plugin} raised in {hook}: {error}", file=sys.stderr)
        row = {
            "ts": time.time(),
            "plugin": plugin,
            "hook": hook,
            "error": self.redactor.text(error),
            "run_id": self._hook_run,
        }
        self.store.write(lambda db: db.table("plugin_errors").insert(row))
        self.emit(
            EventType.PLUGIN_ERROR,
            None,
            {"plugin": plugin, "hook": hook, "error": error, "effect": effect},
            f"plugin {plugin} failed in {hook}: {error}" + (f"; {effect}" if effect else ""),
            run_id=self._hook_run,
        )

    # -- what the agent loop asks of its runtime (supervisor.agent.Runtime)

    async def complete(
        self,
        agent: Agent,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        on_retry: Callable[[RetryInfo], Awaitable[None]] | None = None,
    ) -> Completion:
        return await self.models.complete(
            agent.model, messages, tools, on_delta=on_delta, on_retry=on_retry
        )

    def before_tool_call(self, agent: Agent, call: ToolCall) -> Verdict:
        """Ask the ``before_tool_call`` plugins. A plugin that raises refuses the call: a
        guard that cannot decide must not let everything through."""
        self._hook_run = agent.run_id
        try:
            answers = self.plugins.each(
                "before_tool_call",
                firstresult=True,
                effect="the call was refused (a failing guard fails closed)",
                call=call,
                agent=agent.info(),
            )
        finally:
            self._hook_run = None
        for plugin, result, error in answers:
            if error is not None:
                return Verdict(plugin, refused=f"{plugin} failed while checking it ({error})")
            if result is None:
                continue
            if isinstance(result, str):
                return Verdict(plugin, refused=result)
            if isinstance(result, ToolCall):
                return Verdict(plugin, rewritten=result)
            return Verdict(
                plugin, refused=f"{plugin} returned {type(result).__name__}, not a verdict"
            )
        return Verdict()

    def tool_context(self, agent: Agent) -> ToolContext:
        from supervisor.context import AgentContext

        return AgentContext(self, agent)

    def delta_stream(self, agent: Agent) -> _DeltaStream:
        return _DeltaStream(self, agent)

    # -- runs and agents

    # Settings a running process cannot take up: they are fixed when it starts.
    RESTART_SETTINGS = ("model.max_concurrent", "plugins.disabled", "sandbox.pool_size")

    def refresh_settings(self) -> list[str]:
        """Read the settings file again if it changed since it was last read; returns the
        keys whose values changed. New runs and agents use the new values; tool-call policy
        applies to running agents at their next call; what cannot change under agents
        already running is said in each active run's transcript. Bad settings raise."""
        if not self._settings_from_config:
            return []
        stamp = self._config_stamp()
        if stamp == self._settings_stamp:
            return []
        fresh = config.load().values
        self._settings_stamp = stamp
        changed = sorted(
            k for k in fresh.keys() | self.settings.keys() if fresh.get(k) != self.settings.get(k)
        )
        if not changed:
            return []
        self.settings = fresh
        if any(k == "model" or k.startswith("models.") for k in changed):
            self.models.registry = ModelRegistry.load()
        self.models.retries = fresh["model.retries"]
        self.models.stall_timeout_s = fresh["model.stall_timeout_s"]
        for policy in self._policies.values():
            policy.ask[:] = fresh["policy.ask"]
            policy.deny[:] = fresh["policy.deny"]
        later = [k for k in changed if k in self.RESTART_SETTINGS]
        note = f"settings changed ({', '.join(changed)}): new agents use them"
        if any(k.startswith("policy.") for k in changed):
            note += "; tool-call policy applies from each agent's next call"
        if any(k.startswith(("sandbox.", "agent.", "model", "budget.agent")) for k in changed):
            note += "; agents already running keep their sandbox, model and limits"
        if later:
            note += f"; {', '.join(later)} apply when the supervisor process restarts"
        active = {a.run_id for a in self.agents.values() if self.running(a)}
        for run_id in sorted(active):
            data = {"settings_changed": changed, "restart_needed": later}
            self.emit(EventType.LOG, None, data, note, run_id=run_id)
        return changed

    @staticmethod
    def _config_stamp() -> tuple[int, int]:
        try:
            info = config.config_path().stat()
        except OSError:
            return (0, 0)
        return (info.st_mtime_ns, info.st_size)

    async def start_run(self, options: RunOptions) -> str:
        """Create a run and start its agents; returns the run id."""
        self.refresh_settings()
        model, backend = self._check_options(options)
        run_id = await self.create_run(
            title=options.title or options.task[:200],
            kind="task",
            workspace=options.workspace,
            budget_usd=options.max_cost_usd,
            params={
                "model": model.alias,
                "agents": options.agents,
                "sandbox": backend,
                "network": options.network,
                "host": options.host,
            },
            text=options.task,
        )
        await self._start_agents(run_id, options, model, backend)
        return run_id

    def _check_options(self, options: RunOptions) -> tuple[ModelSpec, str]:
        model = self.models.registry.resolve(options.model or self.settings["model"])
        check_usable(model)
        backend = options.sandbox or self.settings["sandbox.backend"]
        if options.host:
            backend = self._check_host(options)
        if backend not in self.backends:
            from supervisor.errors import InputError

            raise InputError(
                f"unknown sandbox backend {backend!r} (have: {', '.join(sorted(self.backends))})"
            )
        if options.workspace is not None:
            from supervisor.sandbox.workspace import check

            options.workspace = check(options.workspace)
        return model, backend

    def _check_host(self, options: RunOptions) -> str:
        """``--host NAME``: the host must be registered; its agents use the ssh backend."""
        from supervisor.errors import InputError
        from supervisor.hosts import get_host

        if options.sandbox not in ("", "ssh"):
            raise InputError(f"--host runs agents in ssh sandboxes, not {options.sandbox!r}")
        get_host(options.host, self.store)
        return "ssh"

    async def create_run(
        self,
        *,
        title: str,
        kind: str = "task",
        recipe: str | None = None,
        workspace: Path | None = None,
        budget_usd: float = 0.0,
        params: dict[str, Any] | None = None,
        text: str = "",
        managed: bool = False,
    ) -> str:
        """A new run row. ``managed`` runs (recipes) are finished by their owner, not when
        their agents are."""
        self.refresh_settings()
        run_id = _new_id("run")
        self.adopt_policy(run_id)
        self._done[run_id] = asyncio.Event()
        if managed or kind == "recipe":
            self._managed.add(run_id)
        now = time.time()
        row = {
            "id": run_id,
            "title": title,
            "kind": kind,
            "recipe": recipe,
            "workspace": str(workspace or ""),
            "status": "running",
            "created_at": now,
            "updated_at": now,
            "budget_usd": budget_usd or self.settings["budget.run_usd"] or None,
            "params": json.dumps(params or {}, default=str),
            "owner": OWNER,
        }
        self.store.write(lambda db: db.table("runs").insert(self.redactor.value(row)))
        self._limits_usd[run_id] = float(row["budget_usd"] or 0.0)
        self.emit(
            EventType.RUN_CREATED,
            None,
            {"title": title, "kind": kind},
            text or title,
            run_id=run_id,
        )
        return run_id

    def adopt_policy(self, run_id: str) -> None:
        self._policies.setdefault(
            run_id,
            Policy(ask=list(self.settings["policy.ask"]), deny=list(self.settings["policy.deny"])),
        )

    async def adopt_run(self, run_id: str) -> None:
        """Take up an existing run again (``recipe resume``) in this engine."""
        self.adopt_policy(run_id)
        self._managed.add(run_id)
        self._reopen_run(run_id)

    async def _start_agents(
        self, run_id: str, options: RunOptions, model: ModelSpec, backend: str
    ) -> list[Agent]:
        self.runs[run_id] = options
        started = []
        for i in range(options.agents):
            base = options.title or "agent"
            name = base if options.agents == 1 else f"{base}-{i + 1}"
            started.append(
                await self._start_agent(run_id, options.task, name, model, backend, parent=None)
            )
        return started

    async def run_agents(self, run_id: str, options: RunOptions) -> list[str]:
        """Start agents in an existing run and wait for them; their final statuses."""
        model, backend = self._check_options(options)
        agents = await self._start_agents(run_id, options, model, backend)
        await asyncio.gather(*(self.tasks[a.id] for a in agents), return_exceptions=True)
        return [a.status for a in agents]

    def finish_run(self, run_id: str, status: str) -> None:
        now = time.time()
        self.store.write(
            lambda db: db.table("runs").update(
                run_id, {"status": status, "finished_at": now, "updated_at": now}
            )
        )
        self.emit(EventType.RUN_STATUS, None, {"status": status}, run_id=run_id)
        self._done.setdefault(run_id, asyncio.Event()).set()

    async def run_in_sandbox(
        self,
        run_id: str,
        task: str,
        sandbox: Sandbox,
        *,
        name: str,
        model: str | None = None,
        exclude_tools: tuple[str, ...] = (),
        max_steps: int = 0,
    ) -> Agent:
        """Run one agent in a sandbox someone else owns (a recipe step's), until it
        finishes; the sandbox is left as it is."""
        spec = self.models.registry.resolve(model or self.settings["model"])
        check_usable(spec)
        self.adopt_policy(run_id)
        agent = Agent(
            self,
            id=_new_id(_slug(name)),
            run_id=run_id,
            name=name,
            task=task,
            model=spec,
            sandbox=sandbox,
            tools={n: t for n, t in self.tools.items() if n not in exclude_tools},
            limits=self._limits(max_steps),
            policy=self._policies[run_id],
            role="worker",
            scope_key=sandbox.spec.labels.get("scope", ""),
        )
        agent.owns_sandbox = False
        self._register(agent, sandbox.backend, sandbox_id=sandbox.id)
        task_handle = asyncio.get_running_loop().create_task(agent.run())
        self.tasks[agent.id] = task_handle
        await asyncio.gather(task_handle, return_exceptions=True)
        return agent

    async def spawn(
        self,
        parent: Agent,
        task: str,
        *,
        name: str | None = None,
        model: str | None = None,
        sandbox: str | None = None,
    ) -> Agent:
        self._check_team(parent)
        from supervisor.errors import InputError

        with contextlib.suppress(InputError):  # bad settings: the worker starts on the old
            self.refresh_settings()
        spec = self.models.registry.resolve(model) if model else parent.model
        check_usable(spec)
        count = len(self.children(parent)) + 1
        return await self._start_agent(
            parent.run_id,
            task,
            name or f"{parent.name}.{count}",
            spec,
            sandbox or parent.sandbox.backend,
            parent=parent,
        )

    def _check_team(self, parent: Agent) -> None:
        """Refuse a worker beyond the run's bounds (team.max_depth, team.max_agents), or
        in a run being stopped: workers that start workers must not grow without end."""
        from supervisor.errors import InputError

        if parent.run_id in self._stopping:
            raise InputError("the run is being stopped; no new agents start in it")
        depth, up = 1, self.agents.get(parent.parent_id or "")
        while up is not None:
            depth, up = depth + 1, self.agents.get(up.parent_id or "")
        max_depth = int(self.settings.get("team.max_depth", 2))
        if depth > max_depth:
            raise InputError(
                f"team depth limit reached (team.max_depth = {max_depth}): "
                "do this part yourself or hand it back to your lead"
            )
        spawned = sum(1 for a in self.agents.values() if a.run_id == parent.run_id and a.parent_id)
        max_agents = int(self.settings.get("team.max_agents", 16))
        if spawned >= max_agents:
            raise InputError(
                f"team size limit reached ({spawned} agents started by agents in this run; "
                f"team.max_agents = {max_agents}): use the agents you have"
            )

    async def _start_agent(
        self,
        run_id: str,
        task: str,
        name: str,
        model: ModelSpec,
        backend: str,
        parent: Agent | None,
    ) -> Agent:
        options = self.runs[run_id]
        agent_id = _new_id(_slug(name))
        sandbox = self._new_sandbox(run_id, agent_id, options, backend)
        limits = self._limits(options.max_steps)
        agent = Agent(
            self,
            id=agent_id,
            run_id=run_id,
            name=name,
            task=task,
            model=model,
            sandbox=sandbox,
            tools=dict(self.tools),
            limits=limits,
            policy=self._policies[run_id],
            role="lead" if parent is None and options.agents == 1 else "worker",
            parent_id=parent.id if parent else None,
            scope_key=options.workspace.name if options.workspace else "",
        )
        self._register(agent, backend)
        self.tasks[agent_id] = asyncio.get_running_loop().create_task(self._run_agent(agent))
        return agent

    def _new_sandbox(
        self, run_id: str, agent_id: str, options: RunOptions, backend: str
    ) -> Sandbox:
        """A sandbox object (not started) for an agent of a run, from the settings."""
        return self._make_sandbox(
            run_id,
            agent_id,
            backend,
            workspace=options.workspace,
            network=options.network,
            host=options.host,
        )

    def step_sandbox(
        self,
        run_id: str,
        name: str,
        *,
        workspace: Path | None = None,
        network: bool = False,
        gpus: list[str] | None = None,
        labels: dict[str, str] | None = None,
        backend: str = "",
        image: str = "",
    ) -> Sandbox:
        """A sandbox (not started) for a recipe step, from the person's settings."""
        backend = backend or self.settings["sandbox.backend"]
        if backend not in self.backends:
            from supervisor.errors import InputError

            raise InputError(
                f"unknown sandbox backend {backend!r} (have: {', '.join(sorted(self.backends))})"
            )
        return self._make_sandbox(
            run_id,
            f"{_slug(name)}-{secrets.token_hex(2)}",
            backend,
            workspace=workspace,
            network=network,
            gpus=gpus,
            labels=labels,
            image=image,
        )

    def _make_sandbox(
        self,
        run_id: str,
        agent_id: str,
        backend: str,
        *,
        workspace: Path | None,
        network: bool,
        gpus: list[str] | None = None,
        labels: dict[str, str] | None = None,
        image: str = "",
        host: str = "",
    ) -> Sandbox:
        """The one place a sandbox is made from the person's settings: limits, image,
        environment allow-list, network grants; refused early if its backend cannot give
        what the spec asks."""
        from supervisor.sandbox.manager import check_spec

        spec = SandboxSpec(
            run_id=run_id,
            agent_id=agent_id,
            workspace=workspace,
            network=network,
            network_host=self.settings.get("sandbox.network_host", False),
            gpus=list(gpus or []),
            memory=self.settings["sandbox.memory"],
            cpus=self.settings["sandbox.cpus"],
            pids=self.settings["sandbox.pids"],
            image=image or self.settings["sandbox.image"],
            env=self._sandbox_env(),
            labels={**(labels or {}), **({"supervisor.host": host} if host else {})},
            host=host,
        )
        check_spec(self.backends[backend], spec)
        sandbox: Sandbox = self.backends[backend].factory(
            spec, **self.sandbox_kwargs.get(backend, {})
        )
        return sandbox

    def _limits(self, max_steps: int = 0) -> Limits:
        return Limits(
            max_steps=max_steps or self.settings["agent.max_steps"],
            max_tokens=self.settings["agent.max_tokens"],
            max_cost_usd=self.settings["budget.agent_usd"],
            max_wall_s=self.settings["agent.max_wall_s"],
        )

    def _register(self, agent: Agent, backend: str, sandbox_id: str = "") -> None:
        """Make an agent known: in memory, as a row, and as an event."""
        self.agents[agent.id] = agent
        now = time.time()
        row = {
            "id": agent.id,
            "run_id": agent.run_id,
            "parent_id": agent.parent_id,
            "name": agent.name,
            "role": agent.role,
            "task": agent.task,
            "model": agent.model.alias,
            "sandbox": backend,
            "sandbox_id": sandbox_id or None,
            "status": "starting",
            "created_at": now,
            "updated_at": now,
        }
        self.store.write(lambda db: db.table("agents").insert(self.redactor.value(row)))
        data = {
            "name": agent.name,
            "parent_id": agent.parent_id,
            "model": agent.model.alias,
            "sandbox": backend,
        }
        self.emit(EventType.AGENT_CREATED, agent, data, agent.task)

    async def _run_agent(self, agent: Agent) -> str:
        try:
            agent.set_status("starting", "starting its sandbox")
            await self._start_sandbox(agent)
            sandbox_id = agent.sandbox.id
            self.store.write(
                lambda db: db.table("agents").update(agent.id, {"sandbox_id": sandbox_id})
            )
        except Exception as exc:
            agent.summary = f"sandbox failed to start: {exc}"
            agent.status = "failed"
            self.agent_finished(agent, "failed")
            return "failed"
        note = agent.sandbox.describe().get("note")
        if note:  # where the agent works and how isolated, said plainly (remote hosts)
            agent.set_status("starting", f"working {note}")
        return await agent.run()

    async def _start_sandbox(self, agent: Agent) -> None:
        """Start the agent's sandbox; a failed start is tried once more, and said so."""
        from supervisor.sandbox.manager import start_sandbox

        def retrying(why: str) -> None:
            self.emit(
                EventType.LOG,
                agent,
                {"sandbox_retry": why},
                f"sandbox start failed, trying once more: {why}",
            )

        if self._pool is None:
            from supervisor.sandbox.manager import warm_pool

            self._pool = warm_pool(self.settings, self.sandbox_kwargs)
        if self._pool is not None and agent.sandbox.backend == self._pool.backend:
            warm = await self._pool.take(agent.sandbox.spec)  # refills in the background
            if warm is not None:
                agent.sandbox = warm
                self.emit(EventType.LOG, agent, {"warm_sandbox": warm.name}, "warm sandbox")
                return
        await start_sandbox(agent.sandbox, on_retry=retrying)

    def _sandbox_env(self) -> dict[str, str]:

        return {k: os.environ[k] for k in self.settings["sandbox.env_allow"] if k in os.environ}

    def agent_status(self, agent: Agent, status: str, doing: str) -> None:
        values = {
            "status": status,
            "doing": self.redactor.text(doing)[:200],
            "steps": agent.steps,
            "updated_at": time.time(),
        }
        self.store.write(lambda db: db.table("agents").update(agent.id, values))
        self.emit(EventType.AGENT_STATUS, agent, {"status": status, "doing": doing})

    def agent_finished(self, agent: Agent, status: str) -> None:
        if self.closing and status == "stopped":
            # The process is going away under the agent, not a person stopping it: it
            # continues when its run is resumed.
            status = agent.status = "interrupted"
        now = time.time()
        values = {
            "status": status,
            "summary": self.redactor.text(agent.summary),
            "steps": agent.steps,
            "finished_at": now,
            "updated_at": now,
            "doing": "",
        }
        self.store.write(lambda db: db.table("agents").update(agent.id, values))
        self.emit(
            EventType.AGENT_STATUS,
            agent,
            {"status": status, "summary": agent.summary},
            agent.summary,
        )
        options = self.runs.get(agent.run_id)
        if agent.owns_sandbox and options is not None and not self.closing:
            self._wrap_up_later(agent, keep=agent.id in self.kept or options.keep_sandboxes)
        self._check_run_done(agent.run_id)

    async def _release(self, agent: Agent) -> None:
        with contextlib.suppress(Exception):
            await agent.sandbox.destroy()

    def _check_run_done(self, run_id: str) -> None:
        if run_id in self._managed or self.closing:
            return
        members = [a for a in self.agents.values() if a.run_id == run_id]
        if any(a.status not in ("done", "failed", "stopped") for a in members):
            return
        status = (
            "done"
            if all(a.status == "done" for a in members)
            else "failed"
            if any(a.status == "failed" for a in members)
            else "stopped"
        )
        now = time.time()
        self.store.write(
            lambda db: db.table("runs").update(
                run_id, {"status": status, "finished_at": now, "updated_at": now}
            )
        )
        self.emit(EventType.RUN_STATUS, None, {"status": status}, run_id=run_id)
        self._done.setdefault(run_id, asyncio.Event()).set()  # also a run taken up again

    async def wait_run(self, run_id: str) -> str:
        await self._done[run_id].wait()
        # Sandboxes are released in the background; let them go before the caller exits.
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        row = self.store.db.table("runs").get(run_id) if self.store.flush(10) else {}
        return str(row.get("status", "done"))

    async def stop_run(self, run_id: str) -> None:
        """Stop every agent of the run, those started while it stops included."""
        self._stopping.add(run_id)
        try:
            while live := [
                t for a, t in self.tasks.items() if self.agents[a].run_id == run_id and not t.done()
            ]:
                for task in live:
                    task.cancel()
                await asyncio.gather(*live, return_exceptions=True)
        finally:
            self._stopping.discard(run_id)
        # An agent whose task ended before it could say so (cancelled while starting) is
        # stopped too: nothing of a stopped run stays "starting" or "running".
        for agent in [a for a in self.agents.values() if a.run_id == run_id]:
            if agent.status not in ("done", "failed", "stopped", "interrupted"):
                agent.status = "stopped"
                self.agent_finished(agent, "stopped")

    def children(self, lead: Agent) -> list[Agent]:
        return [a for a in self.agents.values() if a.parent_id == lead.id]

    def find_agent(self, key: str) -> Agent | None:
        """A live agent by id, or by a name no other live agent has (else bad input)."""
        if key in self.agents:
            return self.agents[key]
        named = [a for a in self.agents.values() if a.name == key]
        if len(named) > 1:
            from supervisor.errors import InputError

            ids = ", ".join(f"{a.id} (run {a.run_id})" for a in named[:8])
            raise InputError(f"{len(named)} agents are named {key!r}; name one by its id: {ids}")
        return named[0] if named else None

    async def wait_agents(self, waiter: Agent, team: list[Agent], timeout: float) -> list[Agent]:
        waiter.set_status("running", f"waiting for {len(team)} agents")
        tasks = [self.tasks[a.id] for a in team]
        await asyncio.wait(tasks, timeout=timeout)
        return team

    # -- people: questions and approvals

    async def ask_human(self, agent: Agent, question: str) -> str:
        agent.set_status("waiting", f"question: {question[:150]}")
        self.emit(EventType.HUMAN_ASKED, agent, {"question": question}, question)
        answer = await self._park(agent)
        agent.set_status("running", "read the answer")
        return answer

    async def ask_approval(self, agent: Agent, call: ToolCall, pattern: str) -> str:
        agent.set_status("waiting", f"approval: {call.name} {json.dumps(call.arguments)[:120]}")
        self.emit(
            EventType.APPROVAL_ASKED,
            agent,
            {
                "call_id": call.id,
                "tool": call.name,
                "arguments": call.arguments,
                "pattern": pattern,
            },
            f"{call.name} {json.dumps(call.arguments)}",
        )
        verdict = await self._park(agent)
        if verdict == "always":
            agent.policy.always.append(pattern)
        shown = verdict if verdict in ("always", "deny") else "approve"
        self.emit(
            EventType.APPROVAL_RESOLVED,
            agent,
            {"verdict": shown, "call_id": call.id},
            f"{shown}: {call.name}",
        )
        agent.set_status("running", "approval received")
        return "deny" if verdict == "deny" else "approve"

    async def _park(self, agent: Agent) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[agent.id] = future
        try:
            return await future
        finally:
            self._pending.pop(agent.id, None)

    def answer(self, agent_id: str, text: str) -> bool:
        """Answer an agent's question (or give an approval verdict); False if none waits."""
        future = self._pending.get(agent_id)
        if future is None or future.done():
            return False
        agent = self.agents[agent_id]
        kind = EventType.HUMAN_ANSWERED
        self.emit(kind, agent, {"answer": text, "handled": True}, text)
        future.set_result(text)
        return True

    def waiting(self) -> list[Agent]:
        return [self.agents[a] for a in self._pending]

    # -- steering: a person's hand on a running fleet

    def agent(self, key: str) -> Agent:
        """A live agent by id or name; bad input if there is none."""
        agent = self.find_agent(key)
        if agent is None:
            from supervisor.errors import InputError

            raise InputError(f"no agent {key!r} in this supervisor (see `supervisor agents ls`)")
        return agent

    def running(self, agent: Agent) -> bool:
        task = self.tasks.get(agent.id)
        return task is not None and not task.done()

    def message(self, key: str, text: str) -> str:
        """Tell an agent something. A waiting question takes it as the answer; a running
        agent reads it before its next step; a finished one is restarted with it. Returns
        what happened, in words."""
        agent = self.agent(key)
        pending = self._pending.get(agent.id)
        waiting = pending is not None and not pending.done() and agent.status == "waiting"
        if waiting and self.answer(agent.id, text):
            return "answered"
        self.emit(EventType.HUMAN_MESSAGE, agent, {"from": "person"}, text)
        if self.running(agent):
            agent.inbox.put_nowait(text)
            return "sent"
        self.restart(agent.id)
        return "restarted"

    async def wait_while_paused(self, agent: Agent) -> None:
        gate = self._paused.get(agent.id)
        if gate is None:
            return
        agent.set_status("paused", "paused by a person; resume to continue")
        await gate.wait()
        agent.set_status("running", "resumed")

    def pause(self, key: str) -> None:
        """Hold the agent before its next model call (the current step finishes)."""
        agent = self.agent(key)
        if not self.running(agent):
            from supervisor.errors import InputError

            raise InputError(f"agent {agent.name} is not running (it is {agent.status})")
        if agent.id not in self._paused:
            self._paused[agent.id] = asyncio.Event()
            self.emit(EventType.LOG, agent, {"paused": True}, "paused by a person")

    def resume(self, key: str) -> None:
        agent = self.agent(key)
        gate = self._paused.pop(agent.id, None)
        if gate is not None:
            gate.set()
            self.emit(EventType.LOG, agent, {"paused": False}, "resumed by a person")

    async def stop(self, key: str) -> None:
        """Stop an agent now; its status becomes ``stopped``."""
        agent = self.agent(key)
        self._paused.pop(agent.id, None)
        task = self.tasks.get(agent.id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._settled(agent)  # its changes are kept before the person hears "stopped"

    def keep_sandbox(self, key: str) -> None:
        """Keep the agent's sandbox when it ends (for a look inside, or a restart)."""
        agent = self.agent(key)
        self.kept.add(agent.id)
        self.emit(EventType.LOG, agent, {"keep_sandbox": True}, "sandbox will be kept")

    def restart(self, key: str) -> Agent:
        """Start an ended agent again from its transcript, in its sandbox if that still
        exists (else a fresh one). A running agent is stopped first."""
        agent = self.agent(key)
        task = self.tasks.get(agent.id)

        async def go() -> str:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return await self._resume_agent(agent)

        self.tasks[agent.id] = asyncio.get_running_loop().create_task(go())
        return agent

    async def _resume_agent(self, agent: Agent) -> str:
        """Run ``agent`` on from its recorded events (see ``messages_from_events``)."""
        from supervisor.agent import messages_from_events

        await self._settled(agent)  # a sandbox being saved and stopped is not re-adopted midway
        self.store.flush()
        events = list(self.store.events(agent_id=agent.id))
        agent.messages = messages_from_events(events)
        agent.summary = ""
        agent.started = time.monotonic()
        self._reopen_run(agent.run_id)
        try:
            agent.set_status("starting", "re-adopting its sandbox")
            if not await self._reattach(agent):
                await self._start_sandbox(agent)
                sandbox_id = agent.sandbox.id
                self.store.write(
                    lambda db: db.table("agents").update(agent.id, {"sandbox_id": sandbox_id})
                )
                await self._recreated(agent)
        except Exception as exc:
            agent.summary = f"sandbox failed to start: {exc}"
            agent.status = "failed"
            self.agent_finished(agent, "failed")
            return "failed"
        return await agent.run()

    async def _reattach(self, agent: Agent) -> bool:
        """Point the agent at its existing sandbox (by the id recorded for it)."""
        row = self._row("agents", agent.id)
        sandbox_id = row.get("sandbox_id")
        if not sandbox_id:
            return False
        if agent.sandbox.id == sandbox_id and await sandbox_alive(agent.sandbox):
            return True
        from supervisor.sandbox.manager import attach, wake

        try:
            found = await asyncio.to_thread(attach, agent.sandbox.backend, sandbox_id)
            found.spec = agent.sandbox.spec
            await asyncio.to_thread(wake, found)  # a stopped agent's sandbox was stopped too
            if not await sandbox_alive(found):
                return False
        except Exception:
            return False
        agent.sandbox = found
        return True

    def _reopen_run(self, run_id: str) -> None:
        """Mark a run running again, driven by this process (once, however many of its
        agents come back)."""
        done = self._done.get(run_id)
        if done is not None and not done.is_set():
            return
        self._done[run_id] = asyncio.Event()
        now = time.time()
        self.store.write(
            lambda db: db.table("runs").update(
                run_id,
                {"status": "running", "updated_at": now, "finished_at": None, "owner": OWNER},
            )
        )
        self.emit(EventType.RUN_STATUS, None, {"status": "running"}, run_id=run_id)

    async def resume_task_run(self, run_id: str) -> list[Agent]:
        """Take up a task run from the store (after the supervisor process died): every
        agent that had not ended continues from its transcript."""
        from supervisor.errors import InputError

        row = self._row("runs", run_id)
        if not row:
            raise InputError(f"no run {run_id!r}")
        params = json.loads(row.get("params") or "{}")
        options = RunOptions(
            task=row.get("title") or "",
            model=params.get("model", ""),
            workspace=Path(row["workspace"]) if row.get("workspace") else None,
            sandbox=params.get("sandbox", ""),
            agents=int(params.get("agents", 1)),
            network=bool(params.get("network")),
            host=params.get("host", ""),
        )
        self.runs[run_id] = options
        self.adopt_policy(run_id)
        resumed = []
        for a in self.store.db.query(
            "SELECT * FROM agents WHERE run_id = ? ORDER BY created_at", [run_id]
        ):
            agent = self._revive(a, options)
            if a["status"] not in ("done", "failed", "stopped"):
                resumed.append(agent)
        for agent in resumed:
            self.tasks[agent.id] = asyncio.get_running_loop().create_task(self._resume_agent(agent))
        if not resumed:
            self._check_run_done(run_id)
        return resumed

    def _revive(self, row: dict[str, Any], options: RunOptions) -> Agent:
        """An Agent object for a recorded agent (not started)."""
        if row["id"] in self.agents:
            return self.agents[row["id"]]
        model = self.models.registry.resolve(row["model"] or self.settings["model"])
        backend = row["sandbox"] or self.settings["sandbox.backend"]
        agent = Agent(
            self,
            id=row["id"],
            run_id=row["run_id"],
            name=row["name"],
            task=row["task"] or "",
            model=model,
            sandbox=self._new_sandbox(row["run_id"], row["id"], options, backend),
            tools=dict(self.tools),
            limits=self._limits(options.max_steps),
            policy=self._policies[row["run_id"]],
            role=row["role"] or "worker",
            parent_id=row["parent_id"],
            scope_key=options.workspace.name if options.workspace else "",
        )
        agent.status = row["status"]
        agent.steps = row.get("steps") or 0
        agent.input_tokens = row.get("input_tokens") or 0
        agent.output_tokens = row.get("output_tokens") or 0
        agent.cost_usd = row.get("cost_usd") or 0.0
        self.agents[agent.id] = agent
        return agent

    def interrupt_orphans(self) -> list[dict[str, Any]]:
        """Runs left ``running`` by a process that died: mark them and their unfinished
        agents ``interrupted``; returns the runs' rows. Runs of live processes (another
        ``--foreground`` run) are left alone."""
        self.store.flush()
        rows = [
            dict(r)
            for r in self.store.db.query("SELECT * FROM runs WHERE status = 'running'")
            if not owner_alive(r.get("owner"))
        ]
        now = time.time()
        for row in rows:
            run_id = row["id"]

            def mark(db: Any, run_id: str = run_id) -> None:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', updated_at = ? WHERE id = ?",
                    [now, run_id],
                )
                db.execute(
                    "UPDATE agents SET status = 'interrupted', doing = '', updated_at = ? "
                    "WHERE run_id = ? AND status NOT IN ('done', 'failed', 'stopped')",
                    [now, run_id],
                )

            self.store.write(mark)
            self.emit(EventType.RUN_STATUS, None, {"status": "interrupted"}, run_id=run_id)
        self.store.flush()
        return rows

    # -- money

    def record_cost(self, agent: Agent, completion: Completion) -> None:
        self._spent_today += completion.cost_usd
        row = {
            "ts": time.time(),
            "run_id": agent.run_id,
            "agent_id": agent.id,
            "model": completion.model,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cost_usd": completion.cost_usd,
        }
        values = {
            "input_tokens": agent.input_tokens,
            "output_tokens": agent.output_tokens,
            "cost_usd": agent.cost_usd,
            "steps": agent.steps,
        }
        cost = completion.cost_usd

        def write(db: Any) -> None:
            db.table("costs").insert(row)
            db.table("agents").update(agent.id, values)
            db.execute(
                "UPDATE runs SET cost_usd = coalesce(cost_usd, 0) + ? WHERE id = ?",
                [cost, agent.run_id],
            )

        self.store.write(write)
        self.emit(
            EventType.COST,
            agent,
            {
                "model": completion.model,
                "cost_usd": cost,
                "input_tokens": completion.input_tokens,
                "output_tokens": completion.output_tokens,
                "agent_cost_usd": agent.cost_usd,
            },
        )

    def _spent_since(self, since: float) -> float:
        self.store.flush()
        row = self.store.db.execute(
            "SELECT coalesce(sum(cost_usd), 0) FROM costs WHERE ts >= ?", [since]
        ).fetchone()
        return float(row[0])

    def over_budget(self, agent: Agent) -> str:
        """Why the agent may not spend more now ('' if it may), with the way to raise it.

        Called before every model call, so it never waits for the store: limits are read
        once per run or agent and then changed only through :meth:`set_budget` (``supervisor
        budget`` reaches it through the supervisor process), and spend is counted in memory.
        """
        agent_limit = self._limit_usd("agents", agent.id) or agent.limits.max_cost_usd
        if agent_limit and agent.cost_usd >= agent_limit:
            return (
                f"agent budget ${agent_limit:g} reached; raise it with "
                f"`supervisor budget agent {agent.id} USD`"
            )
        run_limit = self._limit_usd("runs", agent.run_id)
        spent = sum(a.cost_usd for a in self.agents.values() if a.run_id == agent.run_id)
        if run_limit and spent >= run_limit:
            return (
                f"run budget ${run_limit:g} reached; raise it with "
                f"`supervisor budget run {agent.run_id} USD`"
            )
        daily = float(self.settings["budget.daily_usd"])
        if daily and self._spent_today >= daily and self._settings_from_config:
            # The person may have raised the limit since the engine started: look again.
            with contextlib.suppress(Exception):
                daily = float(config.load()["budget.daily_usd"])
                self.settings["budget.daily_usd"] = daily
        if daily and self._spent_today >= daily:
            return (
                f"daily fleet budget ${daily:g} reached; raise it with "
                "`supervisor config set budget.daily_usd USD`"
            )
        return ""

    def _limit_usd(self, table: str, key: str) -> float:
        if key not in self._limits_usd:
            self._limits_usd[key] = float(self._row(table, key).get("budget_usd") or 0.0)
        return self._limits_usd[key]

    async def set_budget(self, scope: str, key: str, usd: float) -> str:
        """A person sets a run's or an agent's spending limit (0: none); returns the id.

        Paused agents go on at their next look (within a second)."""
        from supervisor.errors import InputError

        if scope not in ("run", "agent"):
            raise InputError(f"budget scope must be run or agent, not {scope!r}")
        if usd < 0:
            raise InputError(f"a budget must be 0 (none) or more, not {usd:g}")
        table = "runs" if scope == "run" else "agents"
        await self.store.aflush()
        if scope == "agent":
            found = self.find_agent(key)
            row = self._row("agents", found.id if found else key) or self._agent_row_by_name(key)
        else:
            row = self._row("runs", key)
        if not row:
            raise InputError(f"no {scope} {key!r} (see `supervisor agents ls`)")
        target = str(row["id"])
        await asyncio.wrap_future(
            self.store.write(lambda db: db.table(table).update(target, {"budget_usd": usd or None}))
        )
        self._limits_usd[target] = usd
        self.emit(
            EventType.BUDGET_SET,
            None,
            {"scope": scope, "target": target, "usd": usd},
            f"{scope} {target} budget set to ${usd:g}" if usd else f"{scope} {target}: no budget",
            run_id=str(row.get("run_id") or target),
        )
        return target

    def _agent_row_by_name(self, name: str) -> dict[str, Any]:
        rows = list(
            self.store.db.query(
                "SELECT * FROM agents WHERE name = ? ORDER BY created_at DESC LIMIT 1", [name]
            )
        )
        return dict(rows[0]) if rows else {}

    async def add_note(self, body: str, scope: str, key: str) -> int:
        """A person adds a memory note (redacted like everything else)."""
        from supervisor.errors import InputError

        if not body.strip():
            raise InputError("the note is empty")
        if scope not in ("global", "project", "host", "recipe"):
            raise InputError(f"scope must be global, project, host or recipe, not {scope!r}")
        return await self.remember(None, body, scope, scope_key=key)

    async def wait_within_budget(self, agent: Agent) -> None:
        """Pause (status ``paused``, no model calls) while a budget is exhausted."""
        reason = self.over_budget(agent)
        if not reason:
            return
        agent.set_status("paused", reason)
        while reason:
            await asyncio.sleep(1.0)
            if start_of_day() > time.time() - 1.5:
                self._spent_today = self._spent_since(start_of_day())
            reason = self.over_budget(agent)
        agent.set_status("running", "budget raised")

    # -- memory, artifacts

    async def remember(
        self,
        agent: Agent | None,
        body: str,
        scope: str,
        *,
        scope_key: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Save a memory note (redacted) for an agent, or for a run's step (no agent)."""
        own_key = agent.scope_key if agent is not None else (scope_key or "")
        key = {"project": own_key, "global": ""}.get(scope, own_key)
        row = {
            "scope": scope,
            "scope_key": key,
            "body": self.redactor.text(body),
            "run_id": agent.run_id if agent is not None else run_id,
            "agent_id": agent.id if agent is not None else None,
            "created_at": time.time(),
        }
        note_id = await asyncio.wrap_future(
            self.store.write(lambda db: db.table("notes").insert(row).last_pk)
        )
        self.emit(
            EventType.NOTE_WRITTEN, agent, {"note_id": note_id, "scope": scope}, body, run_id=run_id
        )
        return int(note_id)

    async def forget(self, agent: Agent | None, note_id: int, *, by: str = "agent") -> bool:
        def delete(db: Any) -> bool:
            cursor = db.execute("DELETE FROM notes WHERE id = ?", [note_id])
            return bool(cursor.rowcount)

        removed = bool(await asyncio.wrap_future(self.store.write(delete)))
        if removed:
            self.emit(
                EventType.NOTE_REMOVED, agent, {"note_id": note_id, "by": by}, f"note {note_id}"
            )
        return removed

    def recall(self, query: str, scope_key: str, limit: int = 5) -> list[dict[str, Any]]:
        """Notes most relevant to ``query``: global ones and this project's."""
        words = [w for w in re.findall(r"[A-Za-z0-9_]{3,}", query.lower())][:40]
        if not words:
            return []
        # No flush: notes are committed before `remember` returns, so reading here never
        # waits on the writer (this runs at every agent's start).
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        sql = (
            "SELECT notes.id, notes.scope, notes.body FROM notes JOIN notes_fts "
            "ON notes.id = notes_fts.rowid WHERE notes_fts MATCH ? AND "
            "(notes.scope = 'global' OR notes.scope_key = ?) ORDER BY rank LIMIT ?"
        )
        return [dict(r) for r in self.store.db.query(sql, [match, scope_key, limit])]

    def save_artifact(self, agent: Agent, kind: str, name: str, text: str) -> Path:
        folder = self.data_dir / "runs" / agent.run_id / f"{kind}s"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{agent.name}-{_slug(name)}"
        clean = self.redactor.text(text)
        path.write_text(clean)
        row = {
            "run_id": agent.run_id,
            "agent_id": agent.id,
            "kind": kind,
            "name": name,
            "path": str(path),
            "mime": "text/markdown" if kind == "report" else "text/plain",
            "size": len(clean.encode()),
            "content": clean if len(clean) < 100_000 else None,
            "created_at": time.time(),
        }
        self.store.write(lambda db: db.table("artifacts").insert(row))
        self.emit(
            EventType.ARTIFACT,
            agent,
            {"kind": kind, "name": name, "path": str(path)},
            clean[:2000] if kind == "report" else "",
        )
        return path

    def _row(self, table: str, key: str) -> dict[str, Any]:
        rows = list(self.store.db.query(f"SELECT * FROM {table} WHERE id = ?", [key]))
        return dict(rows[0]) if rows else {}

    def context_window(self, spec: ModelSpec) -> int:
        if spec.context_window:
            return spec.context_window
        if spec.model not in self._windows:  # litellm's lookup is slow: once per model
            from supervisor.models import litellm

            try:
                info = litellm().get_model_info(spec.model)
                self._windows[spec.model] = int(info.get("max_input_tokens") or DEFAULT_CONTEXT)
            except Exception:
                self._windows[spec.model] = DEFAULT_CONTEXT
        return self._windows[spec.model]

    async def close(self, *, interrupt: bool = False) -> None:
        """Stop every agent. With ``interrupt`` (the supervisor process shutting down) the
        runs are recorded ``interrupted`` and the sandboxes kept, so a resume continues them
        where they were; otherwise sandboxes are released."""
        self.closing = interrupt
        active = {a.run_id for a in self.agents.values() if self.running(a)}
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if interrupt:
            now = time.time()
            for run_id in active - self._managed:  # recipe runs record it themselves

                def mark(db: Any, run_id: str = run_id) -> None:
                    db.table("runs").update(run_id, {"status": "interrupted", "updated_at": now})

                self.store.write(mark)
                self.emit(EventType.RUN_STATUS, None, {"status": "interrupted"}, run_id=run_id)
        else:
            await asyncio.gather(*list(self._releasing), return_exceptions=True)
            await asyncio.gather(
                *(self._release(a) for a in self.agents.values()), return_exceptions=True
            )
        if self._pool is not None:
            await self._pool.close()
        self.store.flush()
        # on_event observers run on this loop after each commit: let the last ones run.
        for _ in range(3):
            await asyncio.sleep(0)

    # -- an ended agent's work: kept in the data directory, its sandbox released or kept

    def _wrap_up_later(self, agent: Agent, *, keep: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._wrap_up(agent, keep=keep))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        self._wrapups[agent.id] = task

    async def _settled(self, agent: Agent) -> None:
        """Wait until the agent's last ending is wrapped up (changes saved, sandbox handled)."""
        task = self._wrapups.get(agent.id)
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)

    async def _wrap_up(self, agent: Agent, *, keep: bool) -> None:
        """Keep a copy of the agent's changes, then remove its sandbox — or, for a stopped
        agent, stop it with its files, so a restart picks it up again. A sandbox whose
        changes could not be copied is kept for review."""
        if not await self.save_changes(agent) or keep:
            return
        if agent.status == "stopped":
            with contextlib.suppress(Exception):
                await agent.sandbox.stop()
            return
        await self._release(agent)

    async def save_changes(self, agent: Agent) -> bool:
        """Copy what the agent changed into the data directory (an ``artifacts`` row of
        kind ``diff``), so it can be reviewed and applied after its sandbox is gone.
        False, with an event saying why, when the sandbox could not be read."""
        from supervisor.sandbox import workspace

        if not await sandbox_alive(agent.sandbox):
            if agent.steps:
                self.emit(
                    EventType.LOG,
                    agent,
                    {"changes_saved": False, "error": "the sandbox does not answer"},
                    "no copy of the agent's changes could be kept: its sandbox does not "
                    "answer; the sandbox is kept (`supervisor sandbox prune` saves or removes it)",
                )
            return False
        folder = workspace.changes_folder(self.data_dir, agent.run_id)
        try:
            changes = await workspace.save_changes(agent.sandbox, folder, agent.id)
        except Exception as exc:
            self.emit(
                EventType.LOG,
                agent,
                {"changes_saved": False, "error": str(exc)},
                f"no copy of the agent's changes could be kept ({exc}); its sandbox is kept",
            )
            return False
        row = workspace.changes_row(agent.run_id, agent.id, changes)

        def write(db: Any) -> None:
            db.execute(
                "DELETE FROM artifacts WHERE agent_id = ? AND kind = 'diff' AND name = 'changes'",
                [agent.id],
            )
            db.table("artifacts").insert(row)

        self.store.write(write)
        self.emit(
            EventType.ARTIFACT,
            agent,
            {"kind": "diff", "name": "changes", "path": str(changes.diff), "empty": changes.empty},
            "no changes" if changes.empty else f"changes kept for review: {changes.diff}",
        )
        return True

    async def _recreated(self, agent: Agent) -> None:
        """A fresh sandbox replaced one that was lost: put back the changes kept when the
        agent last ended, and tell the agent and the person what happened."""
        from supervisor.sandbox import workspace

        saved = workspace.saved_changes(self.store.db, agent.id)
        restored, why = False, ""
        if saved is not None and not saved.empty:
            try:
                await workspace.restore(agent.sandbox, saved)
                restored = True
            except Exception as exc:
                why = f" (putting back the kept copy failed: {exc})"
        if restored:
            note = (
                "Note: your sandbox was lost and has been recreated from the workspace. The "
                "changes you had made were put back from the copy kept when you last stopped "
                "(as uncommitted changes); processes and files outside the workspace are gone."
            )
        else:
            note = (
                "Note: your sandbox was lost and has been recreated from the workspace; "
                f"files you made before are gone{why}."
            )
        self.emit(EventType.LOG, agent, {"sandbox": "recreated", "restored": restored}, note)
        agent.messages.append({"role": "user", "content": note})


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
