"""Built-in plugin: the tools every agent has — shell, files, memory, human, report, finish."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from supervisor import Finished, Tool, ToolContext, hookimpl
from supervisor.tools import integer, obj, string

SCOPES = ("global", "project", "host", "recipe")


def _path(ctx: ToolContext, path: str) -> str:
    return path if path.startswith("/") else f"{ctx.sandbox.workdir}/{path}"


async def shell(ctx: ToolContext, command: str, timeout: int = 120) -> str:
    result = await ctx.sandbox.exec(command, timeout=float(timeout))
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.timed_out:
        parts.append(f"[timed out after {timeout}s; the command was killed]")
    parts.extend(result.saved())  # what of a long output was kept, and where
    parts.append(f"[exit code {result.exit_code}]")
    return "\n".join(parts)


async def read_file(ctx: ToolContext, path: str, offset: int = 1, limit: int = 2000) -> str:
    data = await ctx.sandbox.read_file(_path(ctx, path))
    lines = data.decode("utf-8", errors="replace").splitlines()
    start = max(offset, 1) - 1
    chosen = lines[start : start + limit]
    numbered = "\n".join(f"{start + i + 1:6}\t{line}" for i, line in enumerate(chosen))
    more = len(lines) - start - len(chosen)
    return numbered + (f"\n[{more} more lines; read on with offset]" if more > 0 else "")


async def write_file(ctx: ToolContext, path: str, content: str) -> str:
    await ctx.sandbox.write_file(_path(ctx, path), content.encode())
    return f"wrote {len(content.encode())} bytes to {path}"


async def edit_file(ctx: ToolContext, path: str, old_text: str, new_text: str) -> str:
    full = _path(ctx, path)
    text = (await ctx.sandbox.read_file(full)).decode("utf-8", errors="surrogateescape")
    count = text.count(old_text)
    if not old_text or count == 0:
        return f"error: old_text not found in {path}; read the file and copy the text exactly"
    if count > 1:
        return (
            f"error: old_text occurs {count} times in {path}; include more surrounding "
            "lines so it is unique"
        )
    updated = text.replace(old_text, new_text, 1)
    await ctx.sandbox.write_file(full, updated.encode("utf-8", errors="surrogateescape"))
    return f"edited {path}"


async def list_files(ctx: ToolContext, path: str = ".") -> str:
    entries = await ctx.sandbox.list_files(_path(ctx, path))
    if not entries:
        return f"{path} is empty"
    return "\n".join(
        f"{e.path.rsplit('/', 1)[-1]}{'/' if e.kind == 'dir' else ''}\t{e.size}" for e in entries
    )


async def search_files(ctx: ToolContext, pattern: str, path: str = ".") -> str:
    target = shlex.quote(_path(ctx, path))
    quoted = shlex.quote(pattern)
    command = (
        f"if command -v rg >/dev/null; then rg -n --no-heading -m 50 -e {quoted} {target}; "
        f"else grep -rnE -m 50 -e {quoted} {target}; fi"
    )
    result = await ctx.sandbox.exec(command, timeout=60)
    if result.exit_code == 1 and not result.stdout:
        return "no matches"
    return str(result.stdout or result.stderr)


async def remember(ctx: ToolContext, note: str, scope: str = "project") -> str:
    if scope not in SCOPES:
        return f"error: scope must be one of {', '.join(SCOPES)}"
    note_id = await ctx.memory.remember(note, scope)
    return f"remembered as note {note_id}"


async def recall(ctx: ToolContext, query: str) -> str:
    notes = ctx.memory.recall(query, limit=10)
    if not notes:
        return "no notes match"
    return "\n".join(f"[{n.id}] ({n.scope}) {n.body}" for n in notes)


async def forget(ctx: ToolContext, note_id: int) -> str:
    removed = await ctx.memory.forget(int(note_id))
    return f"forgot note {note_id}" if removed else f"error: no note {note_id}"


async def ask_human(ctx: ToolContext, question: str) -> str:
    answer = await ctx.human.ask(question)
    return f"The person answered: {answer}"


async def write_report(ctx: ToolContext, title: str, markdown: str) -> str:
    path = ctx.artifacts.save("report", f"{title}.md", markdown)
    return f"report saved at {path}"


async def finish(ctx: ToolContext, summary: str) -> str:
    raise Finished(summary)


TOOLS = [
    Tool(
        "shell",
        "Run a bash command in your sandbox. The working directory and exported "
        "variables persist between calls. Long output is cut (head and tail kept).",
        obj(
            ["command"],
            command=string("the command line"),
            timeout=integer("seconds before the command is killed (default 120)"),
        ),
        shell,
    ),
    Tool(
        "read_file",
        "Read a text file, with line numbers.",
        obj(
            ["path"],
            path=string("file path, relative to the workspace or absolute"),
            offset=integer("first line (1-based)"),
            limit=integer("number of lines"),
        ),
        read_file,
    ),
    Tool(
        "write_file",
        "Create or overwrite a file with the given content.",
        obj(path=string("file path"), content=string("the whole new content")),
        write_file,
    ),
    Tool(
        "edit_file",
        "Replace one exact, unique occurrence of old_text with new_text.",
        obj(
            path=string("file path"),
            old_text=string("text to replace, copied exactly"),
            new_text=string("replacement text"),
        ),
        edit_file,
    ),
    Tool(
        "list_files",
        "List a folder's entries with their sizes.",
        obj([], path=string("folder path (default: the workspace)")),
        list_files,
    ),
    Tool(
        "search_files",
        "Search file contents for a regular expression.",
        obj(
            ["pattern"],
            pattern=string("regular expression"),
            path=string("folder or file to search (default: the workspace)"),
        ),
        search_files,
    ),
    Tool(
        "remember",
        "Save a note for later agents and runs: what worked, what failed and "
        "why. Notes are searched and the most relevant are given to future agents.",
        obj(
            ["note"],
            note=string("the note, self-contained"),
            scope={
                "type": "string",
                "enum": list(SCOPES),
                "description": "who should see it (default: project)",
            },
        ),
        remember,
    ),
    Tool("recall", "Search memory notes.", obj(query=string("words to search for")), recall),
    Tool(
        "forget",
        "Delete a memory note that is wrong or outdated.",
        obj(note_id=integer("the note's id")),
        forget,
    ),
    Tool(
        "ask_human",
        "Ask the person supervising you a question and wait for the answer. "
        "Use only when you cannot proceed without them.",
        obj(question=string("the question")),
        ask_human,
    ),
    Tool(
        "write_report",
        "Save a Markdown report for the person.",
        obj(title=string("short title"), markdown=string("the report")),
        write_report,
    ),
    Tool(
        "finish",
        "Finish: the task is done (or cannot be done). Give a short summary.",
        obj(summary=string("what was done and the result")),
        finish,
    ),
]


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    for tool in TOOLS:
        register(tool)
