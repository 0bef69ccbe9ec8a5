"""The autoresearch plugin: the code behind ``recipes/autoresearch.md``.

Registers the recipe's deterministic steps. The loop itself (``loop.py``) runs experiments
in sandboxes; proposals come from an LLM agent, or, with no model configured, from the
built-in hyperparameter search (``proposers.py``); ``judge.py`` decides keep or discard
against the metric's measured noise. ``supervisor autoresearch log|show`` (``commands.py``)
lists every experiment with its diff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor import hookimpl

if TYPE_CHECKING:
    import click
    from sqlite_utils import Migrations


@hookimpl
def register_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from supervisor_autoresearch import loop, report

    register("autoresearch.prepare", loop.prepare)
    register("autoresearch.baseline", loop.baseline)
    register("autoresearch.loop", loop.run_loops)
    register("autoresearch.report", report.report)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from supervisor_autoresearch.commands import autoresearch

    cli.add_command(autoresearch)


@hookimpl
def register_migrations(register: Callable[[Migrations], None]) -> None:
    from supervisor_autoresearch.tables import migrations

    register(migrations)
