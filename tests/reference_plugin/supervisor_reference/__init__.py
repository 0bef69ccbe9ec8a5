"""A plugin written from docs/plugins.md alone, importing nothing but ``supervisor``.

- a tool, ``word_count``, that reads a file in the agent's sandbox and reports a metric;
- a policy that refuses ``curl`` and rewrites ``make deploy`` into ``make deploy-dry``;
- an observer that appends every event it sees to the file ``REFERENCE_EVENTS`` names;
- a recipe, ``reference-tally``, whose python step keeps rows in the plugin's own table
  and shows progress;
- a command, ``supervisor reference tallies``, that prints that table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlite_utils import Database, Migrations

from supervisor import (
    AgentInfo,
    Event,
    InputError,
    StepContext,
    Tool,
    ToolCall,
    ToolContext,
    data_dir,
    hookimpl,
)

migrations = Migrations("reference")


@migrations()
def m001_tallies(db: Database) -> None:
    db.table("reference_tallies").create(
        {"id": int, "run_id": str, "label": str, "file": str, "words": int}, pk="id"
    )


async def word_count(ctx: ToolContext, path: str) -> str:
    full = path if path.startswith("/") else f"{ctx.sandbox.workdir}/{path}"
    words = len((await ctx.sandbox.read_file(full)).split())
    ctx.events.metric("words", words, file=path)
    return f"{path}: {words} words"


async def tally(ctx: StepContext) -> dict[str, Any]:
    folder = Path(ctx.params["folder"])
    if not folder.is_dir():
        raise InputError(f"reference-tally: folder {folder} does not exist")
    files = sorted(folder.glob("*.txt"))
    rows = []
    for done, file in enumerate(files, 1):
        words = len(file.read_text().split())
        rows.append(
            {"run_id": ctx.run_id, "label": ctx.params["label"], "file": file.name, "words": words}
        )
        ctx.events.progress("files counted", done, len(files), "files")
        ctx.events.metric("words", words, file=file.name)
    ctx.store.write(lambda db: db.table("reference_tallies").insert_all(rows)).result()
    total = sum(r["words"] for r in rows)
    ctx.emit(f"counted {total} words in {len(files)} files")
    return {"files": len(files), "words": total}


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(
        Tool(
            "word_count",
            "Count the words of a text file in the workspace.",
            {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
            word_count,
        )
    )


@hookimpl
def before_tool_call(call: ToolCall, agent: AgentInfo) -> ToolCall | str | None:
    command = str(call.arguments.get("command", ""))
    if call.name == "shell" and "curl" in command:
        return f"{agent.name} may not reach the network with curl"
    if call.name == "shell" and command.strip() == "make deploy":
        return ToolCall("shell", {"command": "make deploy-dry"}, call.id)
    return None


@hookimpl
def on_event(event: Event) -> None:
    target = os.environ.get("REFERENCE_EVENTS")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps({"id": event.id, "type": event.type, "text": event.text}) + "\n")


@hookimpl
def register_migrations(register: Callable[[Migrations], None]) -> None:
    register(migrations)


@hookimpl
def register_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("reference.tally", tally)


@hookimpl
def register_recipes(register: Callable[[Path], None]) -> None:
    here = Path(__file__).parent
    for folder in (here / "recipes", here.parent / "recipes"):
        if folder.is_dir():
            for path in folder.glob("*.md"):
                register(path)
            return


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.group()
    def reference() -> None:
        """The reference plugin's own data."""

    @reference.command()
    def tallies() -> None:
        """Print every tally recorded by the reference-tally recipe."""
        path = data_dir() / "supervisor.db"
        db = Database(path)
        if "reference_tallies" not in db.table_names():
            click.echo("no tallies yet")
            return
        for row in db.query("SELECT label, file, words FROM reference_tallies ORDER BY id"):
            click.echo(f"{row['label']}\t{row['file']}\t{row['words']}")
