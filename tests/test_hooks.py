"""One test per hook (named test_hook_<name>, as datasette does), each through the path a
plugin author's code takes in the product: the engine, the CLI, the recipe runner.
`before_tool_call` and `on_event` are tested in test_nothing_silent.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from agent_kit import engine, last_results, scripted
from click.testing import CliRunner
from sqlite_utils import Database, Migrations

from supervisor import (
    Check,
    CheckResult,
    ModelSpec,
    SandboxBackend,
    SandboxSpec,
    Tool,
    ToolContext,
    hookimpl,
)
from supervisor.engine import RunOptions
from supervisor.plugins import get_plugins
from supervisor.testing import Reply


def finish() -> Reply:
    return Reply(tool_calls=[("finish", {"summary": "done"})])


def test_hook_register_commands() -> None:
    from supervisor.cli import cli

    class Commands:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            @cli.command("hello-plugin")
            @click.argument("who")
            def hello(who: str) -> None:
                """Say hello."""
                click.echo(f"hello {who}")

    get_plugins().pm.register(Commands(), name="commands")
    try:
        get_plugins().call("register_commands", cli=cli)
        result = CliRunner().invoke(cli, ["hello-plugin", "world"])
        assert result.output == "hello world\n"
        assert "hello-plugin" in CliRunner().invoke(cli, ["--help"]).output
    finally:
        cli.commands.pop("hello-plugin", None)


async def test_hook_register_tools(home: Path) -> None:
    async def measure(ctx: ToolContext, text: str) -> str:
        note = await ctx.memory.remember(f"measured {text}")
        ctx.events.metric("length", len(text))
        path = ctx.artifacts.save("output", "measure.txt", text.upper())
        return f"{ctx.agent.name}: {len(text)} chars, note {note}, saved {path.name}"

    class Tools:
        @hookimpl
        def register_tools(self, register: Callable[[Tool], None]) -> None:
            schema = {"type": "object", "properties": {"text": {"type": "string"}}}
            register(Tool("measure", "Measure a text.", schema, measure))

    get_plugins().pm.register(Tools(), name="tools-plugin")
    script = [Reply(tool_calls=[("measure", {"text": "hello"})]), finish()]
    with scripted(script) as server:
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="measure", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
            eng.store.flush()
            metrics = [e.data for e in eng.store.events(run_id=run_id) if e.type == "metric"]
    told = last_results(server.requests[1])[0]
    assert told.startswith("agent: 5 chars, note 1, saved agent-measure.txt")
    assert metrics == [{"name": "length", "value": 5, "labels": {}}]
    # The tool's schema reached the model.
    names = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert "measure" in names


async def test_hook_register_sandboxes(home: Path, tmp_path: Path) -> None:
    from supervisor.sandbox.local import LocalSandbox

    made: list[SandboxSpec] = []

    def factory(spec: SandboxSpec, **kw: Any) -> LocalSandbox:
        made.append(spec)
        return LocalSandbox(spec, root=tmp_path / "boxes")

    class Backends:
        @hookimpl
        def register_sandboxes(self, register: Callable[[SandboxBackend], None]) -> None:
            register(SandboxBackend("folders", factory=factory, isolated=False))

    get_plugins().pm.register(Backends(), name="backends")
    script = [Reply(tool_calls=[("shell", {"command": "echo hi > here.txt"})]), finish()]
    with scripted(script):
        async with engine() as eng:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="folders"))
            assert await eng.wait_run(run_id) == "done"
    assert len(made) == 1 and made[0].run_id == run_id
    row = Database(home / "supervisor.db").execute("SELECT sandbox FROM agents").fetchone()
    assert row == ("folders",)


def test_hook_register_recipes(tmp_path: Path) -> None:
    from supervisor import recipes

    path = tmp_path / "plugged.md"
    path.write_text(
        "---\nname: plugged\ndescription: from a plugin\nsteps:\n"
        "  - id: one\n    kind: shell\n    run: 'true'\n---\nBody.\n"
    )

    class Recipes:
        @hookimpl
        def register_recipes(self, register: Callable[[Path], None]) -> None:
            register(path)

    get_plugins().pm.register(Recipes(), name="recipes-plugin")
    assert recipes.discover()["plugged"] == path
    assert recipes.load("plugged").description == "from a plugin"


async def test_hook_register_steps(home: Path, tmp_path: Path) -> None:
    """A python step keeps rows in the plugin's own table, created by its migrations."""
    from supervisor.recipes import RecipeRunner, parse

    own = Migrations("counter")

    @own()
    def m001_counts(db: Database) -> None:
        db.table("counter_counts").create({"id": int, "run_id": str, "n": int}, pk="id")

    async def count(ctx: Any) -> dict[str, int]:
        n = int(ctx.params["n"])
        for i in range(1, n + 1):
            ctx.events.progress("counting", i, n)
        ctx.store.write(
            lambda db: db.table("counter_counts").insert({"run_id": ctx.run_id, "n": n})
        ).result()
        ctx.emit(f"counted to {n}")
        ctx.emit(f"playbook: {ctx.playbook}")
        return {"n": n}

    class Counter:
        @hookimpl
        def register_steps(self, register: Callable[[str, Any], None]) -> None:
            register("counter.count", count)

        @hookimpl
        def register_migrations(self, register: Callable[[Migrations], None]) -> None:
            register(own)

    get_plugins().pm.register(Counter(), name="counter")
    path = tmp_path / "count.md"
    path.write_text(
        "---\nname: count\ndescription: count\nparameters:\n"
        "  n: {type: int, required: true}\nsteps:\n"
        "  - id: count\n    kind: python\n    run: counter.count\n---\nCount to {n}.\n"
    )
    recipe = parse(path)
    lines: list[str] = []
    async with engine() as eng:
        runner = RecipeRunner(eng, recipe, progress=lines.append)
        params = recipe.params({"n": "3"})
        run_id = await runner.start(params)
        assert await runner.run(run_id, params) == "done"
        eng.store.flush()
        progress = [e.data["done"] for e in eng.store.events(run_id=run_id) if e.type == "progress"]
    assert "counted to 3" in lines
    assert "playbook: Count to 3." in lines  # the body, its parameters filled in
    assert progress == [1, 2, 3]
    db = Database(home / "supervisor.db")
    assert [r["n"] for r in db.query("SELECT n FROM counter_counts")] == [3]
    applied = [
        r["name"]
        for r in db.query("SELECT name FROM _sqlite_migrations WHERE migration_set = 'counter'")
    ]
    assert applied == ["m001_counts"]


async def test_hook_register_models(home: Path) -> None:
    script = [finish()]
    with scripted(script) as server:

        class Models:
            @hookimpl
            def register_models(self, register: Callable[[ModelSpec], None]) -> None:
                register(
                    ModelSpec(
                        "box",
                        "openai/box-model",
                        api_base=server.base_url,
                        input_per_mtok=0,
                        output_per_mtok=0,
                    )
                )

        get_plugins().pm.register(Models(), name="models-plugin")
        from supervisor.models import ModelRegistry

        async with engine() as eng:
            eng.models.registry = ModelRegistry.load()
            run_id = await eng.start_run(RunOptions(task="t", model="box", sandbox="local"))
            assert await eng.wait_run(run_id) == "done"
    assert server.requests[0]["model"] == "box-model"


def test_hook_register_checks() -> None:
    from supervisor.cli import cli

    class Checks:
        @hookimpl
        def register_checks(self, register: Callable[[Check], None]) -> None:
            register(Check("gpu box", lambda: CheckResult(False, "unreachable", "power it on")))

    get_plugins().pm.register(Checks(), name="checks-plugin")
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["gpu box"] == {
        "name": "gpu box",
        "ok": False,
        "required": True,
        "detail": "unreachable",
        "fix": "power it on",
    }
    assert result.exit_code == 1


async def test_hook_register_migrations(home: Path) -> None:
    """A plugin's broken migration is that plugin's failure; other sets still apply."""
    good, bad = Migrations("good"), Migrations("bad")

    @good()
    def m001(db: Database) -> None:
        db.table("good_things").create({"id": int}, pk="id")

    @bad()
    def m001_broken(db: Database) -> None:
        db.execute("CREATE TABLE oops (")

    class Good:
        @hookimpl
        def register_migrations(self, register: Callable[[Migrations], None]) -> None:
            register(good)

    class Bad:
        @hookimpl
        def register_migrations(self, register: Callable[[Migrations], None]) -> None:
            register(bad)

    plugins = get_plugins()
    plugins._add("good", "entry point", Good)
    plugins._add("bad", "entry point", Bad)
    async with engine() as eng:
        eng.store.flush()
        errors = [e.text for e in eng.store.events() if e.type == "plugin.error"]
    assert "good_things" in Database(home / "supervisor.db").table_names()
    assert plugins.info["good"].ok
    assert (plugins.info["bad"].error or "").startswith("raised in register_migrations:")
    assert len(errors) == 1 and errors[0].startswith("plugin bad failed in register_migrations")


async def test_plugin_tables_are_made_while_another_process_writes(home: Path) -> None:
    """Plugins' migrations apply while another process (the CLI beside a running server)
    keeps taking the database's write lock, also a migration that reads before it writes."""
    from supervisor.store import open_default

    open_default().close()  # the database exists already, as beside a running server
    made = Migrations("made")

    @made()
    def m001(db: Database) -> None:
        if "made_things" not in db.table_names():
            db.table("made_things").create({"id": int}, pk="id")

    class Made:
        @hookimpl
        def register_migrations(self, register: Callable[[Migrations], None]) -> None:
            register(made)

    stop = threading.Event()
    commits = 0

    def other_process() -> None:
        nonlocal commits
        conn = sqlite3.connect(home / "supervisor.db", isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(0.004)  # a short write, over and over
            conn.execute("COMMIT")
            commits += 1
            time.sleep(0.001)
        conn.close()

    plugins = get_plugins()
    plugins._add("made", "entry point", Made)
    writer = threading.Thread(target=other_process, daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while commits < 3:
            assert time.monotonic() < deadline, "the other writer never wrote"
            await asyncio.sleep(0.01)
        async with engine() as eng:
            eng.store.flush()
            errors = [e.text for e in eng.store.events() if e.type == "plugin.error"]
    finally:
        stop.set()
        writer.join(10)
    assert errors == []
    assert {"made_things", "experiments"} <= set(Database(home / "supervisor.db").table_names())
