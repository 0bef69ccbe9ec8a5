"""The engine: runs agents, routes their events, keeps budgets, answers and approvals.

Every event goes one way: redacted → the store (batched) → live listeners (the CLI
printing a run, the server streaming to clients) and, once committed, ``on_event``
plugins. Agents run as asyncio tasks; one slow model or sandbox never blocks the others.
Questions and approvals park an agent until a person answers; every write a person makes
(an answer, a budget, a note) reaches the engine through the supervisor process.

The engine is a package of small rooms, one module per concern (bus, people, steering,
money, memory, settings, changes, runs); ``Engine`` is the facade that holds the state
they share and binds their functions as its methods."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from supervisor import config
from supervisor.agent import Agent, Policy
from supervisor.models import ModelClient, ModelRegistry
from supervisor.plugins import Plugins
from supervisor.redact import Redactor
from supervisor.sandbox.gpus import GpuSlots
from supervisor.store import Store
from supervisor.system import start_of_day
from supervisor.types import Tool

if TYPE_CHECKING:
    from supervisor.fleet import Pool
    from supervisor.sandbox.manager import SandboxPool
from supervisor.engine import bus, changes, memory, money, people, runs, settings, steering
from supervisor.engine.common import (
    DEFAULT_CONTEXT,
    DELTA_FLUSH_CHARS,
    DELTA_FLUSH_S,
    OWNER,
    Listener,
    RunOptions,
    sandbox_alive,
)

__all__ = [
    "DEFAULT_CONTEXT",
    "DELTA_FLUSH_CHARS",
    "DELTA_FLUSH_S",
    "OWNER",
    "Engine",
    "Listener",
    "RunOptions",
    "sandbox_alive",
]


class Engine:
    RESTART_SETTINGS = ("model.max_concurrent", "plugins.disabled", "sandbox.pool_size")

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
        self.pools: dict[str, Pool] = {}  # run id -> its hosts and what is placed on them
        self.run_pools: dict[str, str] = {}  # run id -> the named pool it runs on (budgets)
        self._pending: dict[str, asyncio.Future[str]] = {}  # agent id -> answer or verdict
        self._listeners: list[Listener] = []
        self._done: dict[str, asyncio.Event] = {}
        self._policies: dict[str, Policy] = {}
        self._spent_today = self._spent_since(start_of_day())
        self._limits_usd: dict[str, float] = {}  # agent or run id -> budget, once read
        self._brakes = money.Brakes()  # budget warnings, brakes and who may step
        self._releasing: set[asyncio.Task[None]] = set()
        self._wrapups: dict[str, asyncio.Task[None]] = {}  # agent id -> saving its work
        self._managed: set[str] = set()
        self._stopping: set[str] = set()  # runs being stopped: no new agents in them
        self._settings_stamp: tuple[int, int] = self._config_stamp()
        self._windows: dict[str, int] = {}
        self._paused: dict[str, asyncio.Event] = {}  # agent id -> set when resumed
        self.kept: set[str] = set()  # agents whose sandbox outlives them
        self.gpu_slots = GpuSlots()  # who holds which GPU of this machine
        self.host_gpus: dict[str, GpuSlots] = {}  # host name -> who holds its GPUs
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

    # -- bus: events and plugins
    listen = bus.listen
    emit = bus.emit
    _migrate_plugins = bus._migrate_plugins
    _committed = bus._committed
    _observe = bus._observe
    _plugin_failed = bus._plugin_failed
    complete = bus.complete
    before_tool_call = bus.before_tool_call
    tool_context = bus.tool_context
    delta_stream = bus.delta_stream
    context_window = bus.context_window

    # -- people: questions and approvals
    ask_human = people.ask_human
    ask_approval = people.ask_approval
    _park = people._park
    answer = people.answer
    waiting = people.waiting

    # -- steering: a person's hand on a running fleet, and recovery after a crash
    agent = steering.agent
    running = steering.running
    message = steering.message
    wait_while_paused = steering.wait_while_paused
    pause = steering.pause
    resume = steering.resume
    stop = steering.stop
    keep_sandbox = steering.keep_sandbox
    restart = steering.restart
    _resume_agent = steering._resume_agent
    _reattach = steering._reattach
    _reopen_run = steering._reopen_run
    resume_task_run = steering.resume_task_run
    _revive = steering._revive
    interrupt_orphans = steering.interrupt_orphans
    close = steering.close

    # -- money: costs and budgets
    record_cost = money.record_cost
    _spent_since = money._spent_since
    over_budget = money.over_budget
    _limit_usd = money._limit_usd
    set_budget = money.set_budget
    _agent_row_by_name = money._agent_row_by_name
    wait_within_budget = money.wait_within_budget
    admit = money.admit

    # -- memory: memory notes and artifacts.
    add_note = memory.add_note
    remember = memory.remember
    forget = memory.forget
    recall = memory.recall
    save_artifact = memory.save_artifact

    # -- settings: settings read again when the person changes them.
    refresh_settings = settings.refresh_settings
    _config_stamp = staticmethod(settings._config_stamp)

    # -- changes: an agent's work kept when it ends, and put back when its sandbox is lost.
    _wrap_up_later = changes._wrap_up_later
    _settled = changes._settled
    _wrap_up = changes._wrap_up
    save_changes = changes.save_changes
    _recreated = changes._recreated

    # -- runs: runs and agents
    start_run = runs.start_run
    _check_options = runs._check_options
    _check_host = runs._check_host
    create_run = runs.create_run
    adopt_policy = runs.adopt_policy
    adopt_run = runs.adopt_run
    _start_agents = runs._start_agents
    run_agents = runs.run_agents
    finish_run = runs.finish_run
    run_in_sandbox = runs.run_in_sandbox
    spawn = runs.spawn
    _check_team = runs._check_team
    _start_agent = runs._start_agent
    _new_sandbox = runs._new_sandbox
    step_sandbox = runs.step_sandbox
    named_hosts = runs.named_hosts
    pool_name = runs.pool_name
    host_gpu_slots = runs.host_gpu_slots
    _make_sandbox = runs._make_sandbox
    _limits = runs._limits
    _register = runs._register
    _run_agent = runs._run_agent
    _start_sandbox = runs._start_sandbox
    _sandbox_env = runs._sandbox_env
    agent_status = runs.agent_status
    agent_finished = runs.agent_finished
    _release = runs._release
    sync_step = runs.sync_step
    _check_run_done = runs._check_run_done
    wait_run = runs.wait_run
    stop_run = runs.stop_run
    children = runs.children
    find_agent = runs.find_agent
    wait_agents = runs.wait_agents
    _row = runs._row
