"""The ``supervisor`` command line: parse, call, print.

Kept thin and quick to start: heavy libraries (docker, sqlite-utils, litellm) are
imported inside the commands that need them, never at module level.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from supervisor import __version__
from supervisor.errors import InputError, SupervisorError


class Group(click.Group):
    """A click group that turns expected errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except SupervisorError as exc:
            # Expected failures of the work itself (a sandbox died, a build failed).
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


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
    for key in sorted(set(loaded.values) - set(cfg.SETTINGS)):
        click.echo(f"{key} = {json.dumps(loaded.values[key])}  # {loaded.sources[key]}")


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


@cli.group()
def sandbox() -> None:
    """Build, list, enter and prune sandboxes."""


def _progress(line: str) -> None:
    click.echo(line, err=True)


@sandbox.command("build")
@click.option(
    "--offline",
    "mode",
    flag_value="offline",
    help="Build from a Debian root filesystem (debootstrap), without pulling a base image.",
)
@click.option("--online", "mode", flag_value="online", help="Only build from the base image.")
@click.option("--force", is_flag=True, help="Rebuild even if an image with this hash exists.")
def sandbox_build(mode: str | None, force: bool) -> None:
    """Build the default sandbox image (skipped when its sources are unchanged)."""
    from supervisor import config as cfg
    from supervisor.sandbox import image
    from supervisor.sandbox.docker import docker_client

    mode = mode or cfg.load()["sandbox.build"]
    click.echo(image.build(docker_client(), mode=mode, progress=_progress, force=force))


@sandbox.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def sandbox_ls(as_json: bool) -> None:
    """List supervisor's sandboxes: run, agent, age, state, memory."""
    from dataclasses import asdict

    from supervisor.sandbox.manager import list_sandboxes

    rows = list_sandboxes()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no sandboxes")
        return
    click.echo(f"{'NAME':34} {'RUN':10} {'AGENT':16} {'AGE':>7} {'STATE':9} {'MEM':>8}")
    for r in rows:
        mem = f"{r.memory_mb:.0f}MiB" if r.memory_mb is not None else "-"
        agent = r.agent or ("(pool)" if r.pool else "")
        click.echo(
            f"{r.name:34} {r.run[:10]:10} {agent[:16]:16} {_age(r.age_s):>7} {r.state:9} {mem:>8}"
        )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@sandbox.command("shell")
@click.argument("agent")
def sandbox_shell(agent: str) -> None:
    """Open an interactive shell inside AGENT's sandbox, as the agent's user."""
    import os

    from supervisor.sandbox.docker import DockerSandbox
    from supervisor.sandbox.manager import find_agent_sandbox

    box = find_agent_sandbox(agent)
    if isinstance(box, DockerSandbox):
        flags = ["-it"] if sys.stdin.isatty() else ["-i"]
        os.execvp(
            "docker",
            ["docker", "exec", *flags, "-u", "1000:1000", "-w", "/workspace", box.id, "bash", "-l"],
        )
    os.chdir(box.workdir)
    os.execvp("bash", ["bash"])


@sandbox.command("prune")
def sandbox_prune() -> None:
    """Remove sandboxes, volumes and networks that no live run owns."""
    from supervisor.sandbox.manager import prune

    removed = prune()
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"{len(removed)} removed")


@cli.group()
def agent() -> None:
    """Review an agent's work."""


@agent.command("diff")
@click.argument("name")
def agent_diff(name: str) -> None:
    """Show what agent NAME changed in its workspace."""
    import asyncio

    from supervisor.sandbox.manager import find_agent_sandbox
    from supervisor.sandbox.workspace import diff

    click.echo(asyncio.run(diff(find_agent_sandbox(name))), nl=False)


@agent.command("apply")
@click.argument("name")
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to bring the work (default: the folder the run started from).",
)
@click.option(
    "--patch",
    "as_patch",
    is_flag=True,
    help="Apply as a patch to the working tree instead of fetching a branch.",
)
def agent_apply(name: str, repo: Path | None, as_patch: bool) -> None:
    """Bring agent NAME's work back: as branch supervisor/NAME, or as a patch.

    Never overwrites uncommitted work: a patch that does not apply cleanly is saved
    instead, and its path printed.
    """
    import asyncio

    from supervisor.sandbox.manager import find_agent_sandbox, run_workspace
    from supervisor.sandbox.workspace import apply

    target = repo or run_workspace(name)
    message = asyncio.run(apply(find_agent_sandbox(name), target, as_patch=as_patch))
    click.echo(message)


def main() -> None:
    """Console-script entry point: add plugin commands, then run."""
    from supervisor.plugins import get_plugins

    get_plugins().call("register_commands", cli=cli)
    cli.main(prog_name="supervisor")


if __name__ == "__main__":
    main()
