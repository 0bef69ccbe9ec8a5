"""Every hook supervisor calls, grouped by phase.

A plugin implements a hook by defining a function with the hook's name, decorated with
``supervisor.hookimpl``. It may accept fewer arguments than the spec lists (pluggy passes
arguments by name). Hooks are called one implementation at a time, most recently registered
first, so a plugin that raises is reported (``supervisor doctor``, ``supervisor plugins
list``) and the others still run. ``wrapper=True`` implementations are not supported for
that reason and are refused at load time.

``docs/hooks.md`` documents each hook with this exact signature; a test keeps them in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import click
    from sqlite_utils import Migrations

    from supervisor.api import AgentInfo
    from supervisor.events import Event
    from supervisor.types import Check, ModelSpec, SandboxBackend, Tool, ToolCall

hookspec = pluggy.HookspecMarker("supervisor")


# -- Start-up: registration hooks, called once per process when the registry is built.


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``supervisor`` command line.

    Called when the CLI starts, before arguments are parsed.

    :param cli: the top-level click group; call ``@cli.command()`` or ``cli.add_command``.

    The return value is ignored.
    """


@hookspec
def register_tools(register: Callable[[Tool], None]) -> None:
    """Offer tools that agents may call.

    Called once when the tool registry is first needed.

    :param register: call ``register(Tool(...))`` once per tool. A later registration of
        the same name replaces an earlier one, so a plugin can override a built-in tool.

    The return value is ignored.
    """


@hookspec
def register_sandboxes(register: Callable[[SandboxBackend], None]) -> None:
    """Offer sandbox backends (where an agent's commands run).

    Called once when the sandbox registry is first needed.

    :param register: call ``register(SandboxBackend(name=..., factory=..., isolated=...))``
        once per backend. ``docker`` and ``local`` are registered this way by built-ins.

    The return value is ignored.
    """


@hookspec
def register_recipes(register: Callable[[Path], None]) -> None:
    """Offer recipe playbooks (``NAME.md`` files with a frontmatter).

    Called once when recipes are listed or looked up.

    :param register: call ``register(path)`` for each recipe file (a ``pathlib.Path``).

    The return value is ignored.
    """


@hookspec
def register_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer deterministic recipe steps (``kind: python``) by name.

    Called once when a recipe runs or is validated.

    :param register: call ``register("plugin.step_name", function)``. The function is
        called (or awaited, if a coroutine function) with one argument, a
        ``supervisor.StepContext``, and may return a JSON-able value that later steps see
        as ``ctx.outputs[step_id]``. An exception it raises fails the step (and the run,
        which stays resumable); ``supervisor.InputError`` is shown as one line.

    The return value is ignored.
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Offer model aliases, endpoints and prices (self-hosted models have no price list).

    Called once when the model registry is first needed; entries from the config file win
    over entries registered here.

    :param register: call ``register(ModelSpec(alias=..., model=..., ...))``.

    The return value is ignored.
    """


@hookspec
def register_checks(register: Callable[[Check], None]) -> None:
    """Add checks to ``supervisor doctor``.

    Called when ``supervisor doctor`` runs.

    :param register: call ``register(Check(name=..., run=..., required=...))``. ``run``
        takes no arguments and returns a ``CheckResult``; an exception it raises is shown
        as a failed check.

    The return value is ignored.
    """


@hookspec
def register_migrations(register: Callable[[Migrations], None]) -> None:
    """Offer a plugin's own tables, as a named set of schema migrations.

    Called when an engine opens the database (the supervisor process, a ``--foreground``
    run), before any agent starts. Each set is applied once per database, in order, and
    recorded under its name in ``_sqlite_migrations``; like supervisor's own, a migration
    that was applied is never edited: append a new one.

    :param register: call ``register(migrations)`` with a ``sqlite_utils.Migrations``
        named after the plugin (``Migrations("myplugin")``), whose functions create and
        alter the plugin's tables. Name tables after the plugin too (``myplugin_runs``)
        or pick names no core table has (see docs/plugins.md).

    A set that raises is recorded as the plugin's failure; the others still apply. The
    return value is ignored.
    """


# -- Agent work: called while agents run.


@hookspec(firstresult=True)
def before_tool_call(call: ToolCall, agent: AgentInfo) -> ToolCall | str | None:
    """Inspect a tool call before it runs; veto it or rewrite it.

    Called for every tool call an agent makes, after the approval policy allowed it (and a
    person approved it, when the policy asks), in the engine's event loop.

    :param call: the tool name, its parsed arguments and the call's id.
    :param agent: a snapshot of the agent making the call (``supervisor.AgentInfo``: id,
        name, run id, role, task, model alias, sandbox backend, parent, status, steps,
        cost so far).

    Return ``None`` to let the call run unchanged, a ``str`` to veto it (the model is told
    ``error: refused by a plugin: <str>``), or a new ``ToolCall`` to run instead. The
    first non-``None`` result wins, newest plugin first. A rewritten call faces the
    approval policy again, and both the model's call and what ran are recorded
    (``tool.rewritten``). A veto is recorded as a refused ``tool.finished``. An
    implementation that raises refuses the call (a guard fails closed) and is recorded as
    a ``plugin.error``.
    """


@hookspec
def on_event(event: Event) -> None:
    """Observe every event (message text, tool calls, status changes, costs, notes).

    Called once the store has committed the event (``event.id`` is set), in the engine's
    event loop, in order: return quickly, and hand slow work to a task or thread of your
    own. The event types and their ``data`` keys are listed in docs/plugins.md
    (``supervisor.CATALOGUE``).

    :param event: the event; treat it as read-only.

    An implementation that raises is recorded once per run as a ``plugin.error`` event (in
    the transcript, ``server.log``, ``supervisor plugins list`` and ``doctor``); the
    others still see the event. The return value is ignored.
    """
