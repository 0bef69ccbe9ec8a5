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
from supervisor.status import ENDED, FINAL


def _usage_error(exc: click.UsageError) -> None:
    """Bad arguments, said in one line (click's usage block buries the reason)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # a bare group: its help
        exc.show()
        return
    message = " ".join(exc.format_message().split())
    where = exc.ctx.command_path if exc.ctx is not None else "supervisor"
    click.echo(f"error: {message} (see `{where} --help`)", err=True)


class Group(click.Group):
    """A click group that turns expected errors into one line and exit code 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc)
            ctx.exit(2)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's arguments, or an unknown command
            _usage_error(exc)
            ctx.exit(2)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except SupervisorError as exc:
            # Expected failures of the work itself (a sandbox died, a build failed).
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(
    cls=Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="supervisor")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run fleets of LLM agents in hardened sandboxes, from a terminal.

    With no command, opens the TUI (starting the supervisor process if none runs).
    """
    if ctx.invoked_subcommand is None:
        import os

        # No terminal to draw on (a pipe, a script): the help is what can be shown. The
        # web driver (`supervisor web`) has no tty either, but says so.
        if not sys.stdout.isatty() and not os.environ.get("TEXTUAL_DRIVER"):
            click.echo(ctx.get_help())
            return
        from supervisor.tui import main as tui_main

        sys.exit(tui_main())


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

    from supervisor import config as cfg
    from supervisor.plugins import get_plugins, mark_run_failures

    plugins = get_plugins()
    mark_run_failures(plugins, cfg.data_dir() / "supervisor.db")
    infos = list(plugins.info.values())
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


# A negative number is a value to check (and refuse in words), not an unknown option.
@config.command("set", context_settings={"ignore_unknown_options": True})
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

    from supervisor.sandbox.manager import list_all

    errors: list[str] = []
    rows = list_all(errors)  # every backend's, through the registry
    for line in errors:
        click.echo(f"warning: cannot list {line}", err=True)
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

    from supervisor.sandbox.manager import find_agent_sandbox

    box = find_agent_sandbox(_agent_key(agent))
    try:
        argv = box.shell_command(tty=sys.stdin.isatty())
    except NotImplementedError as exc:
        raise InputError(f"{exc} (agent {agent})") from None
    os.execvp(argv[0], argv)


@sandbox.command("prune")
@click.option(
    "--force",
    is_flag=True,
    help="Also remove sandboxes whose agent's changes could not be copied out.",
)
def sandbox_prune(force: bool) -> None:
    """Remove sandboxes, volumes and networks that no live run owns.

    An agent's changes are copied into the data directory before its sandbox goes (see
    `agent diff`); a sandbox whose changes cannot be read is kept unless --force.
    """
    from supervisor.sandbox.leftovers import keep_unsaved_rows
    from supervisor.sandbox.manager import prune_all

    errors: list[str] = []
    store = _open_store()
    try:
        keep = keep_unsaved_rows(store, force=force, report=click.echo)
        # Every backend that can, through the registry.
        removed = prune_all(db_path=store.path, errors=errors, also_keep=keep)
    finally:
        store.close()
    for line in errors:
        click.echo(f"warning: cannot prune {line}", err=True)
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"{len(removed)} removed")


@cli.group()
def agent() -> None:
    """Review an agent's work."""


@agent.command("diff")
@click.argument("name")
def agent_diff(name: str) -> None:
    """Show what agent NAME changed in its workspace (also after it finished)."""
    click.echo(_agent_changes(name, lambda agent_id, changes: changes.text()), nl=False)


def _agent_changes(name: str, use: Any) -> str:
    """``use(agent_id, changes)`` on agent NAME's changes: the copy kept when it ended,
    else read from its sandbox now."""
    import asyncio
    import tempfile

    from supervisor.sandbox.workspace import agent_changes

    with tempfile.TemporaryDirectory(prefix="supervisor-review-") as tmp:
        agent_id, changes = asyncio.run(agent_changes(_agent_key(name), Path(tmp)))
        return str(use(agent_id, changes))


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
@click.option(
    "--branch",
    help="The new branch to create in the repo (default: supervisor/AGENT-ID).",
)
def agent_apply(name: str, repo: Path | None, as_patch: bool, branch: str | None) -> None:
    """Bring agent NAME's work back: as a new branch supervisor/AGENT-ID, or as a patch.

    Works after the agent finished, from the copy kept then. Never moves an existing
    branch, whichever branch the agent worked on, and never overwrites uncommitted work:
    a patch that does not apply cleanly is saved instead, and its path printed.
    """
    from supervisor.sandbox.manager import run_workspace
    from supervisor.sandbox.workspace import apply_changes, check

    target = check(repo or run_workspace(_agent_key(name)))
    click.echo(
        _agent_changes(
            name,
            lambda agent_id, changes: apply_changes(
                changes, target, agent=agent_id, branch=branch, as_patch=as_patch
            ),
        )
    )


# -- agents at work


def _bounded(param: click.Parameter, value: Any, low: float) -> Any:
    """A limit given on the command line that would switch itself off is refused."""
    from supervisor.config import between

    problem = between(low)(value)
    if problem:
        raise click.BadParameter(f"must be {problem}, got {value!r}", param=param)
    return value


def _open_store() -> Any:
    from supervisor.store import open_default

    return open_default()


@cli.command()
@click.argument("task")
@click.option("-m", "--model", default="", help="Model: a litellm model string or an alias.")
@click.option(
    "-w",
    "--workspace",
    type=click.Path(path_type=Path),
    help="Folder or git repo the agents start from (copied; a repo is cloned).",
)
@click.option("--sandbox", default="", help="Sandbox backend: docker (default) or local.")
@click.option("--host", default="", help="Run on this registered host (see `supervisor hosts`).")
@click.option(
    "--hosts",
    default=None,
    metavar="A,B,C|all|POOL",
    help="Place each agent on one of these hosts (or all, or pools.POOL.hosts).",
)
@click.option(
    "-n",
    "--agents",
    type=click.IntRange(1, 1000),
    default=1,
    help="How many agents work the task in parallel.",
)
@click.option(
    "--gpus",
    type=click.IntRange(0, 64),
    default=0,
    help="With --hosts: GPUs of its host for each agent, never shared (CUDA_VISIBLE_DEVICES).",
)
@click.option("--network", is_flag=True, help="Give the sandboxes network access.")
@click.option(
    "--max-cost",
    type=float,
    default=0.0,
    callback=lambda ctx, param, value: _bounded(param, value, 0),
    help="Spend limit for this run, USD (0: the budget.run_usd setting).",
)
@click.option(
    "--max-steps",
    type=int,
    default=0,
    callback=lambda ctx, param, value: _bounded(param, value, 0),
    help="Step limit per agent (0: the agent.max_steps setting).",
)
@click.option("--keep-sandboxes", is_flag=True, help="Keep sandboxes after the run ends.")
@click.option(
    "--foreground",
    is_flag=True,
    help="Run in this process, without the supervisor process (agents stop when it exits).",
)
@click.option("-d", "--detach", is_flag=True, help="Start the run, print its id, return.")
def run(
    task: str,
    model: str,
    workspace: Path | None,
    sandbox: str,
    agents: int,
    network: bool,
    max_cost: float,
    max_steps: int,
    keep_sandboxes: bool,
    foreground: bool,
    detach: bool,
    host: str,
    hosts: str | None,
    gpus: int,
) -> None:
    """Start agents on TASK in the supervisor process and stream their work here.

    Ctrl-C detaches (the agents keep working; `supervisor` shows them). Exit code: 0 when
    every agent finished the task, 1 when one failed, 3 when a limit stopped them, 130
    when detached or, with --foreground, interrupted (Ctrl-C stops a foreground run).
    """
    import asyncio

    from supervisor.engine import RunOptions

    if hosts is not None and not hosts.strip(" ,"):
        # Given but empty (an unset variable in a script): running locally instead would
        # ignore what the person asked for.
        raise InputError("--hosts is empty: name hosts (a,b,c), all, or a pool")
    options = RunOptions(
        task=task,
        model=model,
        workspace=workspace,
        sandbox=sandbox,
        agents=agents,
        network=network,
        max_cost_usd=max_cost,
        max_steps=max_steps,
        keep_sandboxes=keep_sandboxes,
        host=host,
        hosts=hosts or "",
        gpus=gpus,
    )
    if not foreground:
        if workspace is not None:
            options.workspace = workspace.resolve()
        args = {k: v for k, v in vars(options).items()}
        args["workspace"] = str(options.workspace) if options.workspace else ""
        sys.exit(_via_server("run.start", args, detach=detach, show_names=agents > 1))
    try:
        code = asyncio.run(_run_foreground(options))
    except KeyboardInterrupt:  # Ctrl-C before the run had started: nothing to stop
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code)


def _via_server(
    cmd: str,
    args: dict[str, Any],
    *,
    detach: bool,
    show_names: bool,
    resume_hint: str = "supervisor resume",
    header: str = "",
) -> int:
    """Start a run in the supervisor process and follow it here until it ends.

    Ctrl-C detaches: the run goes on. Exit code as for a foreground run.
    """
    import asyncio

    async def go() -> int:
        from supervisor.client import Client, ServerGone
        from supervisor.events import EventType
        from supervisor.render import Printer

        client = await Client.connect(name="cli")
        try:
            after = client.last_event_id()
            result = await client.call(cmd, **args)
            run_id = result["run_id"]
            after = int(result.get("since") or after)
            if sys.stderr.isatty():  # a hint for people; scripts get stderr for errors only
                click.echo(
                    click.style(f"run {run_id} is in the supervisor process", dim=True), err=True
                )
            if detach:
                click.echo(run_id)
                return 0
            if header:
                click.echo(click.style(header.format(run_id=run_id), bold=True))
            printer = Printer(show_names=show_names)
            ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            questions: asyncio.Queue[Any] = asyncio.Queue()
            errors: list[str] = []

            def on_events(events: list[Any]) -> None:
                for event in events:
                    if event.run_id != run_id:
                        continue
                    if event.type == EventType.LOG and event.data.get("error"):
                        errors.append(str(event.data["error"]))
                        continue
                    printer(event)
                    if event.type in (EventType.HUMAN_ASKED, EventType.APPROVAL_ASKED):
                        questions.put_nowait(event)
                    status = event.data.get("status")
                    final = event.type == EventType.RUN_STATUS and status in RUN_ENDED
                    if final and not ended.done():
                        ended.set_result(status)

            client.on_events(on_events)

            def gone() -> None:
                if not ended.done():
                    ended.set_exception(ServerGone("the supervisor server went away"))

            client.on_disconnect(gone)
            await client.subscribe(after=after, watch=["*"])
            answering = asyncio.get_running_loop().create_task(
                _answer_loop(client, printer.names, questions, sys.stdin.isatty())
            )
            try:
                status = await ended
            finally:
                answering.cancel()
                printer.finish()
            if errors:
                raise InputError(errors[-1])
            row = client.query("SELECT cost_usd FROM runs WHERE id = ?", [run_id])
            cost = (row[0]["cost_usd"] if row else 0) or 0
            click.echo(f"run {run_id}: {status}, cost ${cost:.4f}", err=True)
            if status != "done" and resume_hint:
                click.echo(f"continue it with: {resume_hint} {run_id}", err=True)
            return {"done": 0, "failed": 1}.get(status, 3)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        click.echo(
            "detached; the run goes on in the supervisor process "
            "(`supervisor` to watch it, `supervisor agents ls` to list)",
            err=True,
        )
        return 130


RUN_ENDED = ENDED


async def _run_foreground(options: Any) -> int:
    import asyncio
    import signal

    from supervisor.engine import Engine
    from supervisor.events import EventType
    from supervisor.plugins import get_plugins
    from supervisor.render import Printer

    store = _open_store()
    engine = Engine(store, get_plugins())
    printer = Printer(show_names=options.agents > 1)
    interactive = sys.stdin.isatty()
    questions: asyncio.Queue[Any] = asyncio.Queue()

    def on_event(event: Any) -> None:
        printer(event)
        if event.type in (EventType.HUMAN_ASKED, EventType.APPROVAL_ASKED):
            questions.put_nowait(event)

    engine.listen(on_event)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        run_id = await engine.start_run(options)
        click.echo(
            click.style(
                f"run {run_id} started; follow it elsewhere with "
                f"`supervisor agents ls --run {run_id}`",
                dim=True,
            ),
            err=True,
        )
        answering = loop.create_task(
            _answer_loop(_EngineReplies(engine), printer.names, questions, interactive)
        )
        done = loop.create_task(engine.wait_run(run_id))
        stop = loop.create_task(interrupted.wait())
        await asyncio.wait([done, stop], return_when=asyncio.FIRST_COMPLETED)
        answering.cancel()
        if stop.done() and not done.done():
            printer.finish()
            click.echo(click.style("interrupted: stopping the run", fg="yellow"), err=True)
            await engine.stop_run(run_id)
            status = await engine.wait_run(run_id)
            code = 130
        else:
            stop.cancel()
            status = done.result()
            code = {"done": 0, "failed": 1}.get(status, 3)
        printer.finish()
        row = store.db.table("runs").get(run_id)
        click.echo(f"run {run_id}: {status}, cost ${row.get('cost_usd') or 0:.4f}", err=True)
        return code
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await engine.close()
        store.close()


class _EngineReplies:
    """Answers delivered straight to an in-process engine (``--foreground``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def call(self, cmd: str, *, agent: str, text: str) -> Any:
        return self.engine.answer(agent, text)


async def _answer_loop(
    replies: Any, names: dict[str, str], questions: Any, interactive: bool
) -> None:
    """Answer questions and approvals at this terminal (or say how from another)."""
    import asyncio

    from supervisor.events import EventType

    while True:
        event = await questions.get()
        name = names.get(event.agent_id, event.agent_id)
        if not interactive:
            verb = "answer" if event.type == EventType.HUMAN_ASKED else "approve"
            click.echo(f"  reply with: supervisor {verb} {event.agent_id} ...", err=True)
            continue
        if event.type == EventType.HUMAN_ASKED:
            prompt = f"answer for {name}> "
        else:
            prompt = f"allow this call for {name}? [y]es / [n]o / [a]lways> "
        text = (await asyncio.to_thread(input, prompt)).strip()
        if event.type == EventType.APPROVAL_ASKED:
            text = {"y": "approve", "yes": "approve", "a": "always", "always": "always"}.get(
                text.lower(), "deny"
            )
        try:
            await replies.call("agent.answer", agent=event.agent_id, text=text)
        except SupervisorError as exc:  # answered elsewhere meanwhile, or empty
            click.echo(f"  not sent: {exc}", err=True)


@cli.command()
@click.argument("agent")
@click.argument("text")
def answer(agent: str, text: str) -> None:
    """Answer AGENT's question (it waits in state `waiting`)."""
    _send_answer(agent, text)


@cli.command()
@click.argument("agent")
@click.option("--deny", "verdict", flag_value="deny", help="Refuse the call.")
@click.option(
    "--always",
    "verdict",
    flag_value="always",
    help="Allow it, and calls matching the same pattern from now on.",
)
def approve(agent: str, verdict: str | None) -> None:
    """Approve (or --deny) the tool call AGENT waits on."""
    _send_answer(agent, verdict or "approve")


def _send_answer(agent: str, text: str) -> None:
    key = _agent_key(agent)  # a name several agents share is refused here, with their ids
    _server_call("agent.answer", start=False, agent=key, text=text)
    click.echo(f"sent to {agent}")


def _server_call(cmd: str, *, start: bool = True, **args: Any) -> Any:
    """One command to the supervisor process: every write a person makes goes this way,
    so the engine that drives the agents applies it and records it as an event."""
    import asyncio

    from supervisor.client import Client, ServerGone

    async def go() -> Any:
        try:
            client = await Client.connect(name="cli", start=start)
        except ServerGone:
            raise InputError(
                "no supervisor process runs, so no agent is waiting here (a --foreground "
                "run is answered in its own terminal)"
            ) from None
        try:
            return await client.call(cmd, **args)
        finally:
            await client.close()

    return asyncio.run(go())


def _find_agent_row(store: Any, key: str) -> dict[str, Any]:
    """The agent with id ``key``, or the one agent named ``key``; a name several agents
    share is refused with their ids (picking one silently shows the wrong agent's work)."""
    rows = [dict(r) for r in store.db.query("SELECT * FROM agents WHERE id = ?", [key])]
    if not rows:
        rows = [
            dict(r)
            for r in store.db.query(
                "SELECT * FROM agents WHERE name = ? ORDER BY created_at DESC", [key]
            )
        ]
    if not rows:
        raise InputError(f"no agent {key!r} (see `supervisor agents ls`)")
    if len(rows) > 1:
        shown = ", ".join(f"{r['id']} (run {r['run_id']}, {r['status']})" for r in rows[:8])
        more = f" and {len(rows) - 8} more" if len(rows) > 8 else ""
        raise InputError(f"{len(rows)} agents are named {key!r}; name one by its id: {shown}{more}")
    return rows[0]


def _agent_key(key: str) -> str:
    """An agent's id for ``key`` (an id or an unambiguous name); other keys (a container
    name) pass through unchanged."""
    store = _open_store()
    try:
        return str(_find_agent_row(store, key)["id"])
    except InputError as exc:
        if str(exc).startswith("no agent"):
            return key
        raise
    finally:
        store.close()


@cli.group()
def agents() -> None:
    """List agents."""


@agents.command("ls")
@click.option("--run", "run_id", default=None, help="Only this run's agents.")
@click.option(
    "--host", "on_host", default=None, help="Only agents on this host (`local`: this machine)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def agents_ls(run_id: str | None, on_host: str | None, as_json: bool) -> None:
    """Every agent: run, host, status, what it does now, steps, tokens, cost; workers
    under leads."""
    import time

    from supervisor.fleet import LOCAL, agent_hosts
    from supervisor.store import queries
    from supervisor.system import owner_alive

    store = _open_store()
    try:
        if on_host is not None:
            known = [LOCAL, *(r["name"] for r in store.db.query("SELECT name FROM hosts"))]
            if on_host not in known:
                raise InputError(
                    f"--host: no host named {on_host!r} (known: {', '.join(sorted(known))})"
                )
        rows = queries.agents(store.db.conn, [run_id] if run_id else None)
        hosts = agent_hosts(lambda sql, args: store.db.query(sql, args), rows)
        owners = {
            r["id"]: r["owner"]
            for r in store.db.query("SELECT id, owner FROM runs WHERE status = 'running'")
        }
    finally:
        store.close()
    for r in rows:
        r["host"] = hosts[r["id"]]
    if on_host is not None:
        rows = [r for r in rows if r["host"] == on_host]
    # An agent still marked active whose run's process has died is not running: say so.
    for r in rows:
        r["orphaned"] = (
            r["status"] not in ENDED
            and r["run_id"] in owners
            and not owner_alive(owners[r["run_id"]])
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no agents")
        return
    children: dict[str | None, list[dict[str, Any]]] = {}
    listed = {r["id"] for r in rows}
    for r in rows:  # a worker whose lead is not listed (another host's) stands on its own
        children.setdefault(r["parent_id"] if r["parent_id"] in listed else None, []).append(r)
    resumes = "resumes when it starts again"
    if any(r["orphaned"] for r in rows):
        from supervisor import config

        if not config.load()["server.auto_resume"]:
            resumes = "`supervisor resume {run}`"
    idw = max(len(r["id"]) for r in rows)
    hw = min(16, max(4, *(len(r["host"]) for r in rows)))
    click.echo(
        f"{'AGENT':24} {'ID':{idw}} {'RUN':12} {'HOST':{hw}} {'STATUS':9} {'STEPS':>5} "
        f"{'TOKENS':>8} {'COST':>9} {'AGE':>6}  DOING"
    )

    def show(r: dict[str, Any], depth: int) -> None:
        tokens = (r["input_tokens"] or 0) + (r["output_tokens"] or 0)
        age = _age((r["finished_at"] or time.time()) - r["created_at"])
        name = ("  " * depth + ("└ " if depth else "") + r["name"])[:24]
        doing = r["summary"] if r["status"] in FINAL else r["doing"]
        status = r["status"]
        if r["orphaned"]:
            status = "orphaned"
            doing = "supervisor process died; " + resumes.format(run=r["run_id"])
        click.echo(
            f"{name:24} {r['id']:{idw}} {r['run_id'][:12]:12} {r['host'][:hw]:{hw}} {status:9} "
            f"{r['steps'] or 0:>5} {tokens:>8} ${r['cost_usd'] or 0:>8.4f} {age:>6}  "
            f"{(doing or '')[:60]}"
        )
        for child in children.get(r["id"], []):
            show(child, depth + 1)

    for r in children.get(None, []):
        show(r, 0)


@cli.command()
@click.argument("agent")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until it ends.")
def logs(agent: str, follow: bool) -> None:
    """Print AGENT's work: its text, tool calls and results, status changes."""
    import time

    from supervisor.render import Printer

    store = _open_store()
    try:
        row = _find_agent_row(store, agent)
        printer = Printer(names={row["id"]: row["name"]}, show_names=False)
        last = 0
        while True:
            for event in store.events(agent_id=row["id"], after=last):
                printer(event)
                last = event.id or last
            if not follow:
                break
            status = store.db.table("agents").get(row["id"])["status"]
            if status in FINAL:
                for event in store.events(agent_id=row["id"], after=last):
                    printer(event)
                break
            time.sleep(0.3)
        printer.finish()
    finally:
        store.close()


@cli.command()
@click.argument("agent")
@click.option("--format", "fmt", type=click.Choice(["md", "jsonl"]), default="md")
def transcript(agent: str, fmt: str) -> None:
    """AGENT's whole transcript, as Markdown or JSON lines (one event a line)."""
    from supervisor.events import EventType, tool_failed

    store = _open_store()
    try:
        row = _find_agent_row(store, agent)
        events = list(store.events(agent_id=row["id"]))
    finally:
        store.close()
    if fmt == "jsonl":
        for e in events:
            click.echo(
                json.dumps({"id": e.id, "ts": e.ts, "type": e.type, "data": e.data, "text": e.text})
            )
        return
    click.echo(
        f"# {row['name']} ({row['id']})\n\n**Task:** {row['task']}\n\n"
        f"**Model:** {row['model']} · **Status:** {row['status']} · "
        f"**Cost:** ${row['cost_usd'] or 0:.4f}\n"
    )
    for e in events:
        if e.type == EventType.MESSAGE:
            click.echo(f"{e.text}\n")
        elif e.type == EventType.TOOL_STARTED:
            args = json.dumps(e.data.get("arguments", {}), indent=2)
            click.echo(f"**→ {e.data.get('tool')}**\n\n```json\n{args}\n```\n")
        elif e.type == EventType.TOOL_FINISHED and e.text:
            if tool_failed(e):
                code = e.data.get("exit_code")
                click.echo("**✗ failed" + (f" (exit code {code})" if code else "") + "**\n")
            click.echo(f"```\n{e.text}\n```\n")
        elif e.type in (EventType.HUMAN_ASKED, EventType.HUMAN_ANSWERED):
            who = "Question" if e.type == EventType.HUMAN_ASKED else "Answer"
            click.echo(f"> **{who}:** {e.text}\n")
    if row["summary"]:
        click.echo(f"**Result:** {row['summary']}")


@cli.group()
def notes() -> None:
    """Memory notes agents write and recall (full-text searched)."""


def _print_notes(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no notes")
    for r in rows:
        key = f":{r['scope_key']}" if r.get("scope_key") else ""
        click.echo(f"[{r['id']}] ({r['scope']}{key}) {r['body']}")


@notes.command("ls")
@click.option("--scope", default=None, help="global, project, host or recipe")
def notes_ls(scope: str | None) -> None:
    """List notes, newest first."""
    store = _open_store()
    try:
        where, args = ("scope = ?", [scope]) if scope else (None, None)
        _print_notes(list(store.db.table("notes").rows_where(where, args, order_by="id desc")))
    finally:
        store.close()


@notes.command("search")
@click.argument("query")
def notes_search(query: str) -> None:
    """Full-text search over notes, most relevant first."""
    store = _open_store()
    try:
        _print_notes(store.search_notes(query))
    finally:
        store.close()


@notes.command("add")
@click.argument("text")
@click.option(
    "--scope", type=click.Choice(["global", "project", "host", "recipe"]), default="global"
)
@click.option("--key", default="", help="Which project, host or recipe (scope other than global).")
def notes_add(text: str, scope: str, key: str) -> None:
    """Add a note agents will recall."""
    note_id = _server_call("note.add", text=text, scope=scope, key=key)
    click.echo(f"added note {note_id}")


@notes.command("rm")
@click.argument("note_id", type=int)
def notes_rm(note_id: int) -> None:
    """Delete a note."""
    _server_call("note.rm", id=note_id)
    click.echo(f"removed note {note_id}")


@notes.command("export")
@click.option("--format", "fmt", type=click.Choice(["md", "jsonl"]), default="md")
def notes_export(fmt: str) -> None:
    """Print every note (Markdown or JSON lines)."""
    store = _open_store()
    try:
        rows = list(store.db.table("notes").rows_where(order_by="scope, scope_key, id"))
    finally:
        store.close()
    for r in rows:
        if fmt == "jsonl":
            click.echo(json.dumps(r))
        else:
            key = f" ({r['scope_key']})" if r["scope_key"] else ""
            click.echo(f"- **{r['scope']}{key}** [{r['id']}]: {r['body']}")


@cli.command()
@click.option("--by", type=click.Choice(["agent", "run", "model", "day"]), default="run")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def costs(by: str, as_json: bool) -> None:
    """Spend per agent, run, model or day, and the fleet total against budgets."""

    from supervisor import config as cfg
    from supervisor.store import queries
    from supervisor.system import start_of_day

    group = {
        "agent": "agent_id",
        "run": "run_id",
        "model": "model",
        "day": "date(ts, 'unixepoch', 'localtime')",
    }[by]
    store = _open_store()
    try:
        rows = [
            dict(r)
            for r in store.db.query(
                f"SELECT {group} AS key, count(*) AS calls, sum(input_tokens) AS input_tokens, "
                f"sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd FROM costs "
                f"GROUP BY {group} ORDER BY cost_usd DESC"
            )
        ]
        # The same numbers as the TUI's cost bar (supervisor.store.queries).
        today = queries.spent_since(store.db.conn, start_of_day())
        total = queries.spent_since(store.db.conn, 0.0)
    finally:
        store.close()
    daily = cfg.load()["budget.daily_usd"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "by": by,
                    "rows": rows,
                    "today_usd": today,
                    "total_usd": total,
                    "daily_budget_usd": daily,
                },
                indent=2,
            )
        )
        return
    click.echo(f"{by.upper():24} {'CALLS':>6} {'IN':>10} {'OUT':>10} {'COST':>10}")
    for r in rows:
        click.echo(
            f"{str(r['key'])[:24]:24} {r['calls']:>6} {r['input_tokens'] or 0:>10} "
            f"{r['output_tokens'] or 0:>10} ${r['cost_usd'] or 0:>9.4f}"
        )
    budget = f" of ${daily:g} daily budget" if daily else " (no daily budget)"
    click.echo(f"today ${today:.4f}{budget}; all time ${total:.4f}")


@cli.command()
@click.argument(
    "scope", required=False, type=click.Choice(["run", "agent", "pool", "fleet", "daily"])
)
@click.argument("args", nargs=-1)
@click.option("--tokens", type=int, default=None, help="A token limit (runs, fleet), 0: none.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON for scripts.")
def budget(scope: str | None, args: tuple[str, ...], tokens: int | None, as_json: bool) -> None:
    """Show where budgets stand (no arguments), or raise or set a limit: `budget run RUN
    USD`, `budget run RUN --tokens N`, `budget agent AGENT USD`, `budget fleet USD`,
    `budget fleet --tokens N`, `budget daily USD`. Paused and held agents continue once
    their limit allows."""
    import math

    from supervisor import config as cfg

    if scope is None:
        _show_budgets(as_json)
        return
    if tokens is not None and scope not in ("run", "pool", "fleet"):
        raise InputError(f"--tokens limits a run, a pool or the fleet, not {scope}")
    usd: float | None = None
    if tokens is None or len(args) == (2 if scope in ("run", "agent", "pool") else 1):
        try:
            usd = float(args[-1])
        except (IndexError, ValueError):
            raise InputError("give the limit in USD as the last argument, or --tokens N") from None
        if not math.isfinite(usd) or usd < 0:
            raise InputError(f"a budget must be 0 (none) or more, not {args[-1]}")
    if tokens is not None and tokens < 0:
        raise InputError(f"a token budget must be 0 (none) or more, not {tokens}")
    if scope in ("fleet", "daily"):
        if len(args) != (1 if usd is not None else 0):
            raise InputError(f"usage: supervisor budget {scope} USD")
        if usd is not None:
            key = "budget.fleet_usd" if scope == "fleet" else "budget.daily_usd"
            cfg.set_value(key, str(usd))
            click.echo(f"{scope} budget ${usd:g}")
        if tokens is not None:
            cfg.set_value("budget.fleet_tokens", str(tokens))
            click.echo(f"fleet token budget {tokens:,}")
        return
    if scope == "pool":
        # A setting like the fleet's (pools.NAME.budget_usd): the supervisor process reads
        # it again at its next look, and it holds for every later run on the pool.
        if len(args) != (2 if usd is not None else 1):
            raise InputError("usage: supervisor budget pool NAME USD (or --tokens N)")
        name = args[0]
        if f"pools.{name}.hosts" not in cfg.load().values:
            raise InputError(f"no pool {name!r} (set pools.{name}.hosts first)")
        if usd is not None:
            cfg.set_value(f"pools.{name}.budget_usd", str(usd))
        if tokens is not None:
            cfg.set_value(f"pools.{name}.budget_tokens", str(tokens))
        said = [f"${usd:g}"] if usd is not None else []
        said += [f"{tokens:,} tokens"] if tokens is not None else []
        click.echo(f"pool {name} budget {', '.join(said)}")
        return
    if len(args) != (2 if usd is not None else 1):
        raise InputError(f"usage: supervisor budget {scope} ID USD")
    key = _server_call("budget.set", scope=scope, target=args[0], usd=usd, tokens=tokens)
    said = [f"${usd:g}"] if usd is not None else []
    said += [f"{tokens:,} tokens"] if tokens is not None else []
    click.echo(f"{scope} {key} budget {', '.join(said)}")


def _show_budgets(as_json: bool) -> None:
    """Where the fleet, the day and each live run stand against their budgets."""
    from supervisor import config as cfg
    from supervisor.engine.money import report

    store = _open_store()
    try:
        state = report(store.db.conn, cfg.load().values)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return

    def line(
        usd: float, limit: float, st: str, tok: int = 0, tok_limit: int = 0, ts: str = ""
    ) -> str:
        out = f"${usd:.4f}" + (f" of ${limit:g} ({st})" if limit else "")
        if tok_limit:
            out += f", {tok:,} of {tok_limit:,} tokens ({ts})"
        elif tok:
            out += f", {tok:,} tokens"
        return out

    fleet, daily = state["fleet"], state["daily"]
    click.echo(
        f"fleet ({fleet['live_runs']} live runs): "
        + line(
            fleet["usd"],
            fleet["budget_usd"],
            fleet["usd_state"],
            fleet["tokens"],
            fleet["budget_tokens"],
            fleet["tokens_state"],
        )
    )
    click.echo(f"today: {line(daily['usd'], daily['budget_usd'], daily['usd_state'])}")
    for pool in state["pools"]:
        click.echo(
            f"pool {pool['name']} ({pool['live_runs']} live runs): "
            + line(
                pool["usd"],
                pool["budget_usd"],
                pool["usd_state"],
                pool["tokens"],
                pool["budget_tokens"],
                pool["tokens_state"],
            )
        )
    for run in state["runs"]:
        extra = f"; {run['allowed']} agents may step at once" if run["allowed"] else ""
        extra += f"; {run['held']} agents paused or held by budget" if run["held"] else ""
        click.echo(
            f"run {run['id']} {str(run['title'])[:30]!r}: "
            + line(
                run["usd"],
                run["budget_usd"],
                run["usd_state"],
                run["tokens"],
                run["budget_tokens"],
                run["tokens_state"],
            )
            + extra
        )
    click.echo(
        f"at a spent budget agents {state['at_limit']} after their step (budget.at_limit); "
        f"warning at {state['warn_at']:.0%} (budget.warn_at)"
    )


@cli.group()
def models() -> None:
    """Models you can use."""


@models.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def models_ls(as_json: bool) -> None:
    """Configured aliases and plugin models, and whether each is usable now."""
    from supervisor import config as cfg
    from supervisor.checks import providers_with_credentials
    from supervisor.models import ModelError, ModelRegistry, check_usable

    registry = ModelRegistry.load()
    default = cfg.load()["model"]
    entries = []
    for alias, spec in sorted(registry.specs.items()):
        try:
            check_usable(spec)
            problem = ""
        except ModelError as exc:
            problem = str(exc)
        entries.append(
            {
                "alias": alias,
                "model": spec.model,
                "api_base": spec.api_base,
                "usable": not problem,
                "problem": problem,
                "default": alias == default,
            }
        )
    providers = providers_with_credentials()
    if as_json:
        click.echo(
            json.dumps(
                {"models": entries, "providers_with_credentials": providers, "default": default},
                indent=2,
            )
        )
        return
    for e in entries:
        star = "*" if e["default"] else " "
        where = f" at {e['api_base']}" if e["api_base"] else ""
        state = "" if e["usable"] else f"  ✗ {e['problem']}"
        click.echo(f"{star} {_mark(e['usable'])} {e['alias']}: {e['model']}{where}{state}")
    click.echo(
        "providers with credentials: "
        + (", ".join(providers) or "none")
        + (f"; default model: {default}" if default else "; no default model set")
    )


@cli.group()
def recipe() -> None:
    """Multi-step playbooks: list, show, run, resume, scaffold."""


@recipe.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def recipe_list(as_json: bool) -> None:
    """Every recipe found (built-in, plugins, your config folder, ./recipes)."""
    from supervisor import recipes

    rows = []
    for name, path in sorted(recipes.discover().items()):
        try:
            description, error = recipes.parse(path).description, ""
        except recipes.RecipeError as exc:
            description, error = "", str(exc)
        rows.append({"name": name, "path": str(path), "description": description, "error": error})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if r["error"]:
            click.echo(f"{_mark(False)} {r['name']}: {r['error']}")
        else:
            click.echo(f"{r['name']:20} {r['description']}")


@recipe.command("show")
@click.argument("name")
def recipe_show(name: str) -> None:
    """A recipe's parameters, steps and playbook."""
    from supervisor import recipes

    r = recipes.load(name)
    click.echo(f"{r.name}: {r.description}\n({r.path})\n\nparameters:")
    for p in r.parameters.values():
        click.echo(f"  {p.name} ({p.type}, default {p.default!r}): {p.help}")
    click.echo("\nsteps:")
    for s in r.order():
        after = f" after {', '.join(s.depends)}" if s.depends else ""
        what = s.run or s.prompt[:60]
        click.echo(
            f"  {s.id} [{s.kind}]{after}: {what}" + (f"  (check: {s.check})" if s.check else "")
        )
    click.echo(f"\n{r.body}")


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"-p {item!r}: write parameters as key=value")
        params[key.strip()] = value
    return params


@recipe.command("run")
@click.argument("name")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a parameter (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Validate and show the plan; run nothing.")
@click.option(
    "--foreground", is_flag=True, help="Run in this process, without the supervisor process."
)
@click.option("-d", "--detach", is_flag=True, help="Start the run, print its id, return.")
def recipe_run(
    name: str, params: tuple[str, ...], dry_run: bool, foreground: bool, detach: bool
) -> None:
    """Run recipe NAME in the supervisor process and follow it here (Ctrl-C detaches).

    Exit code 0 when every step finished, 1 when one failed, 130 when detached.
    """
    from supervisor import recipes

    r = recipes.load(name)
    values = r.params(_parse_params(params))
    recipes.validate(r)
    if dry_run:
        click.echo(f"recipe {r.name} is valid ({r.path})")
        for key, value in values.items():
            click.echo(f"  {key} = {value!r}")
        for i, s in enumerate(r.order(), 1):
            click.echo(f"  {i}. {s.id} [{s.kind}] {s.run or s.prompt[:60]}")
        for line in recipes.plan(r, values):
            click.echo(f"  {line}")
        return
    if not foreground:
        args = {"path": str(Path(r.path).resolve()), "params": r.texts(values)}
        code = _via_server(
            "recipe.start",
            args,
            detach=detach,
            show_names=True,
            resume_hint="supervisor recipe resume",
            header=f"run {{run_id}}: recipe {r.name}",
        )
        sys.exit(1 if code == 3 else code)
    sys.exit(_run_recipe(r, values, run_id=None))


@cli.command("resume")
@click.argument("run_id")
@click.option("-d", "--detach", is_flag=True, help="Resume it, print its id, return.")
def resume(run_id: str, detach: bool) -> None:
    """Resume an interrupted run in the supervisor process (a recipe from its last
    finished step, agents from their transcripts) and follow it."""
    sys.exit(_via_server("run.resume", {"run": run_id}, detach=detach, show_names=True))


@recipe.command("resume")
@click.argument("run_id")
@click.option(
    "--foreground", is_flag=True, help="Run in this process, without the supervisor process."
)
def recipe_resume(run_id: str, foreground: bool) -> None:
    """Continue a recipe run after its last finished step (also after a crash)."""
    from supervisor import recipes

    if not foreground:
        code = _via_server(
            "run.resume",
            {"run": run_id},
            detach=False,
            show_names=True,
            resume_hint="supervisor recipe resume",
            header="run {run_id}: resuming",
        )
        sys.exit(1 if code == 3 else code)

    store = _open_store()
    try:
        row = (
            store.db.table("runs").get(run_id)
            if store.db.table("runs").count_where("id = ?", [run_id])
            else None
        )
    finally:
        store.close()
    if row is None or row["kind"] != "recipe":
        raise InputError(f"no recipe run {run_id!r} (see `supervisor agents ls` or the runs table)")
    if row["status"] == "done":
        raise InputError(f"run {run_id} already finished every step")
    saved = json.loads(row["params"] or "{}")
    path = Path(saved.get("recipe_path", ""))
    r = recipes.parse(path) if path.exists() else recipes.load(row["recipe"])
    sys.exit(_run_recipe(r, saved.get("params", {}), run_id=run_id))


def _run_recipe(r: Any, values: dict[str, Any], run_id: str | None) -> int:
    import asyncio

    async def go() -> int:
        from supervisor.engine import Engine
        from supervisor.plugins import get_plugins
        from supervisor.recipes import RecipeRunner

        store = _open_store()
        engine = Engine(store, get_plugins())
        runner = RecipeRunner(engine, r, progress=click.echo)
        try:
            nonlocal run_id
            if run_id is None:
                run_id = await runner.start(values)
                click.echo(click.style(f"run {run_id}: recipe {r.name}", bold=True))
            else:
                await engine.adopt_run(run_id)
                click.echo(click.style(f"run {run_id}: resuming recipe {r.name}", bold=True))
            status = await runner.run(run_id, values)
            click.echo(click.style(f"run {run_id}: {status}", bold=True))
            if status != "done":
                click.echo(f"continue it with: supervisor recipe resume {run_id}", err=True)
            return 0 if status == "done" else 1
        finally:
            await engine.close()
            store.close()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        click.echo(f"interrupted; continue with: supervisor recipe resume {run_id}", err=True)
        return 130


@recipe.command("new")
@click.argument("name")
@click.option("--plugin", is_flag=True, help="Also scaffold a plugin package for its code.")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("recipes"),
    show_default=True,
    help="Where to write the recipe.",
)
def recipe_new(name: str, plugin: bool, folder: Path) -> None:
    """Scaffold recipe NAME (and, with --plugin, a plugin package for its steps)."""
    from supervisor import recipes

    for path in recipes.scaffold(name, folder, plugin=plugin):
        click.echo(f"wrote {path}")
    click.echo(f"try it: supervisor recipe run {name} --dry-run")


@cli.group()
def server() -> None:
    """The supervisor process that owns the runs (started on demand by other commands)."""


@server.command("start")
@click.option("--foreground", is_flag=True, help="Serve in this process until stopped.")
def server_start(foreground: bool) -> None:
    """Start the supervisor process for this data directory."""
    from supervisor import config
    from supervisor.client import start_server
    from supervisor.server import running_pid, serve, socket_path

    data_dir = config.ensure_data_dir()
    if foreground:
        sys.exit(serve(data_dir))
    pid = running_pid(data_dir)
    if pid:
        raise InputError(f"a supervisor server already runs for {data_dir} (pid {pid})")
    pid = start_server(data_dir)
    click.echo(f"supervisor server started (pid {pid}, socket {socket_path(data_dir)})")


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_status(as_json: bool) -> None:
    """Is the supervisor process running, and what is it doing? Exit code 1 if not."""
    import asyncio

    from supervisor import config
    from supervisor.client import Client, ServerGone

    data_dir = config.ensure_data_dir()

    async def go() -> dict[str, Any] | None:
        try:
            client = await Client.connect(data_dir, start=False, name="cli")
        except (ServerGone, OSError):
            return None
        try:
            return dict(await client.call("status"))
        finally:
            await client.close()

    status = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(status or {"running": False}))
    elif status is None:
        click.echo(f"no supervisor server runs for {data_dir}")
    else:
        click.echo(
            f"supervisor server {status['version']} (pid {status['pid']}), up "
            f"{_age(status['uptime_s'])}: {status['active_agents']} agent(s) running in "
            f"{len(status['active_runs'])} run(s), {len(status['waiting'])} waiting for you, "
            f"{status['clients'] - 1} other client(s)"
        )
        click.echo(f"socket {status['socket']}")
    sys.exit(0 if status else 1)


@server.command("stop")
@click.option("--force", is_flag=True, help="Stop even if agents are running (they resume later).")
def server_stop(force: bool) -> None:
    """Stop the supervisor process. Running agents are interrupted; their runs resume when
    it starts again. Asks first when agents are running (or pass --force)."""
    import asyncio
    import os
    import time

    from supervisor import config
    from supervisor.client import Busy, Client, ServerGone
    from supervisor.server import running_pid

    data_dir = config.ensure_data_dir()

    async def ask(force: bool) -> str:
        try:
            client = await Client.connect(data_dir, start=False, name="cli")
        except (ServerGone, OSError):
            return "none"
        try:
            await client.call("shutdown", force=force)
            return "stopping"
        except Busy as exc:
            return str(exc)
        finally:
            await client.close()

    pid = running_pid(data_dir)
    outcome = asyncio.run(ask(force))
    if outcome not in ("none", "stopping"):
        if not sys.stdin.isatty():
            raise InputError(f"{outcome}; pass --force to stop anyway")
        if not click.confirm(f"{outcome}. Stop it?", default=False):
            click.echo("left running")
            sys.exit(1)
        outcome = asyncio.run(ask(True))
    if outcome == "none" and not pid:
        click.echo(f"no supervisor server runs for {data_dir}")
        return
    deadline = time.monotonic() + 60
    while running_pid(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running_pid(data_dir) and pid and pid > 0:
        os.kill(pid, 15)
    click.echo("supervisor server stopped")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def web(host: str, port: int) -> None:
    """Serve the TUI in a browser (each tab is a client of the one supervisor process)."""
    import shlex
    import socket

    from textual_serve.server import Server

    from supervisor import config
    from supervisor.client import start_server
    from supervisor.server import running_pid

    try:  # a taken port or a foreign address is the person's to fix: say so, not a traceback
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    data_dir = config.ensure_data_dir()
    if not running_pid(data_dir):
        start_server(data_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            click.style(
                f"warning: serving on {host}: anyone who reaches it steers your agents", fg="yellow"
            ),
            err=True,
        )
    command = f"{shlex.quote(sys.executable)} -m supervisor.cli"
    Server(command, host=host, port=port, title="supervisor").serve()


def _add_hosts() -> None:
    from supervisor.cli_hosts import hosts

    cli.add_command(hosts)


_add_hosts()


def main() -> None:
    """Console-script entry point: add plugin commands, then run."""
    from supervisor.plugins import get_plugins

    get_plugins().call("register_commands", cli=cli)
    cli.main(prog_name="supervisor")


if __name__ == "__main__":
    main()
