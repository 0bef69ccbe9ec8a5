"""Built-in plugin: team tools — an agent may lead others and collect their results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor import Tool, hookimpl
from supervisor.tools import integer, obj, string


async def spawn_agent(
    ctx: Any, task: str, name: str = "", model: str = "", sandbox: str = ""
) -> str:
    child = await ctx.engine.spawn(
        ctx.agent, task, name=name or None, model=model or None, sandbox=sandbox or None
    )
    return f"started agent {child.name} (id {child.id})"


async def list_agents(ctx: Any) -> str:
    team = ctx.engine.children(ctx.agent)
    if not team:
        return "you lead no agents"
    return "\n".join(
        f"{a.name} ({a.id}): {a.status}, {a.steps} steps" + (f" — {a.summary}" if a.summary else "")
        for a in team
    )


async def send_message(ctx: Any, agent: str, message: str) -> str:
    # Only agents of the sender's own run, and a shared name is not guessed at.
    found = [
        a
        for a in ctx.engine.agents.values()
        if a.run_id == ctx.agent.run_id and agent in (a.id, a.name)
    ]
    if not found:
        return f"error: no agent {agent!r} in this run"
    if len(found) > 1:
        ids = ", ".join(a.id for a in found)
        return f"error: {len(found)} agents are named {agent!r}; use an id: {ids}"
    target = found[0]
    target.inbox.put_nowait(f"Message from {ctx.agent.name}: {message}")
    return f"sent to {target.name}"


async def wait_for(ctx: Any, agents: list[str] | None = None, timeout: int = 3600) -> str:
    team = ctx.engine.children(ctx.agent)
    if agents:
        team = [a for a in team if a.name in agents or a.id in agents]
    if not team:
        return "error: no such agents to wait for"
    done = await ctx.engine.wait_agents(ctx.agent, team, float(timeout))
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
