"""Built-in plugin: team tools — an agent may lead others and collect their results."""

from __future__ import annotations

from collections.abc import Callable

from supervisor import InputError, Tool, ToolContext, hookimpl
from supervisor.tools import integer, obj, string


async def spawn_agent(
    ctx: ToolContext, task: str, name: str = "", model: str = "", sandbox: str = ""
) -> str:
    child = await ctx.team.spawn(
        task, name=name or None, model=model or None, sandbox=sandbox or None
    )
    return f"started agent {child.name} (id {child.id})"


async def list_agents(ctx: ToolContext) -> str:
    team = ctx.team.members()
    if not team:
        return "you lead no agents"
    return "\n".join(
        f"{a.name} ({a.id}): {a.status}, {a.steps} steps" + (f" — {a.summary}" if a.summary else "")
        for a in team
    )


async def send_message(ctx: ToolContext, agent: str, message: str) -> str:
    # Only agents of the sender's own run, and a shared name is not guessed at.
    try:
        target = ctx.team.send(agent, message)
    except InputError as exc:
        return f"error: {exc}"
    if target is None:
        return f"error: no agent {agent!r} in this run"
    return f"sent to {target.name}"


async def wait_for(ctx: ToolContext, agents: list[str] | None = None, timeout: int = 3600) -> str:
    done = await ctx.team.wait(agents or None, float(timeout))
    if not done:
        return "error: no such agents to wait for"
    return "\n".join(f"{a.name}: {a.status} — {a.summary}" for a in done)


TOOLS = [
    Tool(
        "spawn_agent",
        "Start a worker agent on a sub-task; it works in parallel in its own "
        "sandbox. Returns at once; use wait_for to collect results.",
        obj(
            ["task"],
            task=string("the sub-task, self-contained"),
            name=string("a short name"),
            model=string("model (default: yours)"),
            sandbox=string("sandbox backend (default: yours)"),
        ),
        spawn_agent,
    ),
    Tool("list_agents", "Show the agents you lead and their status.", obj([]), list_agents),
    Tool(
        "send_message",
        "Send a message to an agent (it reads it before its next step).",
        obj(agent=string("name or id"), message=string("the message")),
        send_message,
    ),
    Tool(
        "wait_for",
        "Wait until the agents you lead (or those named) finish; returns their summaries.",
        obj(
            [],
            agents={
                "type": "array",
                "items": {"type": "string"},
                "description": "names or ids (default: all you lead)",
            },
            timeout=integer("seconds to wait at most"),
        ),
        wait_for,
    ),
]


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    for tool in TOOLS:
        register(tool)
