"""The engine's room for questions and approvals: an agent parked until a person answers.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from supervisor.agent import Agent
from supervisor.events import EventType
from supervisor.types import ToolCall

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from supervisor.engine import Engine


async def ask_human(engine: Engine, agent: Agent, question: str) -> str:
    agent.set_status("waiting", f"question: {question[:150]}")
    engine.emit(EventType.HUMAN_ASKED, agent, {"question": question}, question)
    answer = await engine._park(agent)
    agent.set_status("running", "read the answer")
    return answer


async def ask_approval(engine: Engine, agent: Agent, call: ToolCall, pattern: str) -> str:
    agent.set_status("waiting", f"approval: {call.name} {json.dumps(call.arguments)[:120]}")
    engine.emit(
        EventType.APPROVAL_ASKED,
        agent,
        {
            "call_id": call.id,
            "tool": call.name,
            "arguments": call.arguments,
            "pattern": pattern,
        },
        f"{call.name} {json.dumps(call.arguments)}",
    )
    verdict = await engine._park(agent)
    if verdict == "always":
        agent.policy.always.append(pattern)
    shown = verdict if verdict in ("always", "deny") else "approve"
    engine.emit(
        EventType.APPROVAL_RESOLVED,
        agent,
        {"verdict": shown, "call_id": call.id},
        f"{shown}: {call.name}",
    )
    agent.set_status("running", "approval received")
    return "deny" if verdict == "deny" else "approve"


async def _park(engine: Engine, agent: Agent) -> str:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    engine._pending[agent.id] = future
    try:
        return await future
    finally:
        engine._pending.pop(agent.id, None)


def answer(engine: Engine, agent_id: str, text: str) -> bool:
    """Answer an agent's question (or give an approval verdict); False if none waits."""
    future = engine._pending.get(agent_id)
    if future is None or future.done():
        return False
    agent = engine.agents[agent_id]
    kind = EventType.HUMAN_ANSWERED
    engine.emit(kind, agent, {"answer": text, "handled": True}, text)
    future.set_result(text)
    return True


def waiting(engine: Engine) -> list[Agent]:
    return [engine.agents[a] for a in engine._pending]
