"""The engine's room for events and plugins: every event goes one way (redacted, stored,
shown, observed), and what the agent loop asks of its runtime.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from supervisor.agent import Agent, Verdict
from supervisor.events import Event, EventType
from supervisor.models import Completion, RetryInfo
from supervisor.types import ModelSpec, ToolCall

if TYPE_CHECKING:
    from supervisor.api import ToolContext
from supervisor.engine.common import DEFAULT_CONTEXT, Listener, _DeltaStream

if TYPE_CHECKING:
    from supervisor.engine import Engine


def listen(engine: Engine, fn: Listener) -> Callable[[], None]:
    engine._listeners.append(fn)
    return lambda: engine._listeners.remove(fn)


def emit(
    engine: Engine,
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
        data=engine.redactor.value(data),
        text=engine.redactor.text(text),
    )
    if engine._loop is None:
        with contextlib.suppress(RuntimeError):
            engine._loop = asyncio.get_running_loop()
    engine.store.append(event)
    for listener in list(engine._listeners):
        listener(event)
    return event


def _migrate_plugins(engine: Engine) -> None:
    """Create and update plugins' own tables before anything runs."""
    sets = engine.plugins.collect("register_migrations")
    if not sets:
        return
    for plugin, error in engine.store.migrate_plugins(sets):
        info = engine.plugins.info.get(plugin)
        if info is not None and info.error is None:
            info.error = f"raised in register_migrations: {error}"
        engine._plugin_failed(plugin, "register_migrations", error, "its tables are missing")


def _committed(engine: Engine, events: list[Event]) -> None:
    """In the store's writer thread, after a commit: hand the events to ``on_event``
    plugins on the engine's loop."""
    loop = engine._loop
    if loop is None or loop.is_closed() or not engine.plugins.pm.hook.on_event.get_hookimpls():
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(engine._observe, events)


def _observe(engine: Engine, events: list[Event]) -> None:
    for event in events:
        engine._hook_run = event.run_id
        try:
            engine.plugins.call("on_event", event=event)
        finally:
            engine._hook_run = None


def _plugin_failed(engine: Engine, plugin: str, hook: str, error: str, effect: str) -> None:
    """A plugin raised inside a hook: say so once per run, in the transcript and the
    log (``supervisor plugins list`` and ``doctor`` read it from there)."""
    key = (engine._hook_run, plugin, hook, error)
    if key in engine._plugin_errors:
        return
    engine._plugin_errors.add(key)
    import sys

    print(f"plugin {plugin} raised in {hook}: {error}", file=sys.stderr)
    row = {
        "ts": time.time(),
        "plugin": plugin,
        "hook": hook,
        "error": engine.redactor.text(error),
        "run_id": engine._hook_run,
    }
    engine.store.write(lambda db: db.table("plugin_errors").insert(row))
    engine.emit(
        EventType.PLUGIN_ERROR,
        None,
        {"plugin": plugin, "hook": hook, "error": error, "effect": effect},
        f"plugin {plugin} failed in {hook}: {error}" + (f"; {effect}" if effect else ""),
        run_id=engine._hook_run,
    )


async def complete(
    engine: Engine,
    agent: Agent,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    on_delta: Callable[[str], None] | None = None,
    on_retry: Callable[[RetryInfo], Awaitable[None]] | None = None,
) -> Completion:
    return await engine.models.complete(
        agent.model, messages, tools, on_delta=on_delta, on_retry=on_retry
    )


def before_tool_call(engine: Engine, agent: Agent, call: ToolCall) -> Verdict:
    """Ask the ``before_tool_call`` plugins. A plugin that raises refuses the call: a
    guard that cannot decide must not let everything through."""
    engine._hook_run = agent.run_id
    try:
        answers = engine.plugins.each(
            "before_tool_call",
            firstresult=True,
            effect="the call was refused (a failing guard fails closed)",
            call=call,
            agent=agent.info(),
        )
    finally:
        engine._hook_run = None
    for plugin, result, error in answers:
        if error is not None:
            return Verdict(plugin, refused=f"{plugin} failed while checking it ({error})")
        if result is None:
            continue
        if isinstance(result, str):
            return Verdict(plugin, refused=result)
        if isinstance(result, ToolCall):
            return Verdict(plugin, rewritten=result)
        return Verdict(plugin, refused=f"{plugin} returned {type(result).__name__}, not a verdict")
    return Verdict()


def tool_context(engine: Engine, agent: Agent) -> ToolContext:
    from supervisor.context import AgentContext

    return AgentContext(engine, agent)


def delta_stream(engine: Engine, agent: Agent) -> _DeltaStream:
    return _DeltaStream(engine, agent)


def context_window(engine: Engine, spec: ModelSpec) -> int:
    if spec.context_window:
        return spec.context_window
    if spec.model not in engine._windows:  # litellm's lookup is slow: once per model
        from supervisor.models import litellm

        try:
            info = litellm().get_model_info(spec.model)
            engine._windows[spec.model] = int(info.get("max_input_tokens") or DEFAULT_CONTEXT)
        except Exception:
            engine._windows[spec.model] = DEFAULT_CONTEXT
    return engine._windows[spec.model]
