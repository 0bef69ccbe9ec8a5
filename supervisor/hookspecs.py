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
        ``supervisor.recipes.StepContext``, and may return a JSON-able value that later
        steps see as ``ctx.outputs[step_id]``.

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


# -- Agent work: called while agents run.


@hookspec(firstresult=True)
def before_tool_call(call: ToolCall, agent: Any) -> ToolCall | str | None:
    """Inspect a tool call before it runs; veto it or rewrite it.

    Called for every tool call an agent makes, after the approval policy allowed it.

    :param call: the tool name and its parsed arguments.
    :param agent: the agent making the call (its id, run id, model and policy).

    Return ``None`` to let the call run unchanged, a ``str`` to veto it (the string is
    given to the model as the reason), or a new ``ToolCall`` to run instead. The first
    non-``None`` result wins.
    """


@hookspec
def on_event(event: Event) -> None:
    """Observe every event (message text, tool calls, status changes, costs, notes).

    Called after the event is handed to the store, in the engine's event loop: return
    quickly, and hand slow work to a task or thread of your own.

    :param event: the event; treat it as read-only.

    The return value is ignored.
    """
