"""The ``supervisor`` command line: parse, call, print.

Kept thin and quick to start: heavy libraries (docker, sqlite-utils, litellm) are
imported inside the commands that need them, never at module level.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from supervisor import __version__
from supervisor.errors import InputError


class Group(click.Group):
    """A click group that turns expected errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="supervisor")
def cli() -> None:
    """Run fleets of LLM agents in hardened sandboxes, from a terminal."""


def _mark(ok: bool, required: bool = True) -> str:
    if ok:
        return click.style("✓", fg="green")
    return click.style("✗", fg="red" if required else "yellow")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
def doctor(as_json: bool) -> None:
    """Check that everything supervisor needs is in place.

    Exits 0 when every required check passes, 1 otherwise.
    """
    from supervisor.plugins import get_plugins
    from supervisor.types import Check, CheckResult

    plugins = get_plugins()
    checks: list[Check] = [item for _, item in plugins.collect("register_checks")]
    results = []
    for check in checks:
        try:
            result = check.run()
        except Exception as exc:  # a check's own failure is a failed check, not a crash
            result = CheckResult(False, f"check raised {type(exc).__name__}: {exc}")
        results.append((check, result))
    # Plugin failures found while running checks must show up in the plugins line.
    for i, (check, _) in enumerate(results):
        if check.name == "plugins":
            results[i] = (check, check.run())
    ok = all(r.ok for c, r in results if c.required)
    if as_json:
        payload = {
            "ok": ok,
            "checks": [
                {
                    "name": c.name,
                    "ok": r.ok,
                    "required": c.required,
                    "detail": r.detail,
                    "fix": r.fix,
                }
                for c, r in results
            ],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        for check, result in results:
            optional = "" if check.required else " (optional)"
            line = f"{_mark(result.ok, check.required)} {check.name}{optional}: {result.detail}"
            if not result.ok and result.fix:
                line += f"\n    fix: {result.fix}"
            click.echo(line)
    sys.exit(0 if ok else 1)


@cli.group()
def plugins() -> None:
    """Inspect plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def plugins_list(as_json: bool) -> None:
    """List every plugin: name, version, source, hooks, and errors of failed ones."""
    from dataclasses import asdict

    from supervisor.plugins import get_plugins

    infos = list(get_plugins().info.values())
    if as_json:
        click.echo(json.dumps([asdict(i) | {"ok": i.ok} for i in infos], indent=2))
        return
    for info in infos:
        head = f"{_mark(info.ok)} {info.name} {info.version} ({info.source})"
        click.echo(head)
        if info.ok:
            click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
        else:
            click.echo(f"    error: {info.error}")


@cli.group()
def config() -> None:
    """Show and change settings (TOML file; SUPERVISOR_* variables override it)."""


@config.command("path")
def config_path() -> None:
    """Print where the settings file lives."""
    from supervisor import config as cfg

    click.echo(str(cfg.config_path()))


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def config_show(as_json: bool) -> None:
    """Print every setting with its value and where the value came from."""
    from supervisor import config as cfg

    loaded = cfg.load()
    if as_json:
        click.echo(json.dumps(loaded.values, indent=2))
        return
    for key, setting in cfg.SETTINGS.items():
        value = loaded.values[key]
        source = loaded.sources[key]
        click.echo(f"{key} = {json.dumps(value)}  # {source}; {setting.help}")


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Store KEY = VALUE in the settings file."""
    from supervisor import config as cfg

    stored = cfg.set_value(key, value)
    click.echo(f"{key} = {json.dumps(stored)}")


@config.command("unset")
@click.argument("key")
def config_unset(key: str) -> None:
    """Remove KEY from the settings file (its default applies again)."""
    from supervisor import config as cfg

    if cfg.unset_value(key):
        click.echo(f"{key} unset")
    else:
        click.echo(f"{key} was not set")


def main() -> None:
    """Console-script entry point: add plugin commands, then run."""
    from supervisor.plugins import get_plugins

    get_plugins().call("register_commands", cli=cli)
    cli.main(prog_name="supervisor")


if __name__ == "__main__":
    main()
