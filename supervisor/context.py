"""The services a tool sees (:class:`supervisor.api.ToolContext`), over the engine.

Each service is a thin, typed window on one room of the engine, bound to one agent, so a
tool can remember, ask, lead a team or keep an artifact without holding the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.api import AgentInfo, Note
from supervisor.events import Event, EventType

if TYPE_CHECKING:
    from supervisor.agent import Agent
    from supervisor.engine import Engine
    from supervisor.sandbox.base import Sandbox


class AgentEvents:
    """:class:`supervisor.api.Events` for one agent (or, without one, one run)."""

    def __init__(self, engine: Engine, agent: Agent | None, run_id: str | None = None) -> None:
        self._engine, self._agent, self._run_id = engine, agent, run_id

    def emit(self, type: str, data: Mapping[str, Any], text: str = "") -> Event:
        return self._engine.emit(type, self._agent, dict(data), text, run_id=self._run_id)

    def progress(self, label: str, done: float, total: float | None = None, unit: str = "") -> None:
        shown = f"{done:g}/{total:g}" if total else f"{done:g}"
        self.emit(
            EventType.PROGRESS,
            {"label": label, "done": done, "total": total, "unit": unit},
            f"{label}: {shown} {unit}".rstrip(),
        )

    def metric(self, name: str, value: float | None, **labels: Any) -> None:
        shown = f"{value:g}" if value is not None else "—"
        tags = " ".join(f"{k}={v}" for k, v in labels.items() if k != "better")
        self.emit(
            EventType.METRIC,
            {"name": name, "value": value, "labels": labels},
            f"{name} = {shown}" + (f" ({tags})" if tags else ""),
        )


class AgentMemory:
    def __init__(self, engine: Engine, agent: Agent) -> None:
        self._engine, self._agent = engine, agent

    async def remember(self, body: str, scope: str = "project") -> int:
        return await self._engine.remember(self._agent, body, scope)

    def recall(self, query: str, limit: int = 5) -> list[Note]:
        rows = self._engine.recall(query, self._agent.scope_key, limit=limit)
        return [Note(int(r["id"]), str(r["scope"]), str(r["body"])) for r in rows]

    async def forget(self, note_id: int) -> bool:
        return await self._engine.forget(self._agent, note_id)


class AgentHuman:
    def __init__(self, engine: Engine, agent: Agent) -> None:
        self._engine, self._agent = engine, agent

    async def ask(self, question: str) -> str:
        return await self._engine.ask_human(self._agent, question)


class AgentTeam:
    def __init__(self, engine: Engine, agent: Agent) -> None:
        self._engine, self._agent = engine, agent

    async def spawn(
        self,
        task: str,
        *,
        name: str | None = None,
        model: str | None = None,
        sandbox: str | None = None,
    ) -> AgentInfo:
        child = await self._engine.spawn(self._agent, task, name=name, model=model, sandbox=sandbox)
        return child.info()

    def members(self) -> list[AgentInfo]:
        return [a.info() for a in self._engine.children(self._agent)]

    def send(self, agent: str, message: str) -> AgentInfo | None:
        # Only agents of the sender's own run, and a shared name is not guessed at.
        found = [
            a
            for a in self._engine.agents.values()
            if a.run_id == self._agent.run_id and agent in (a.id, a.name)
        ]
        if not found:
            return None
        if len(found) > 1:
            from supervisor.errors import InputError

            ids = ", ".join(a.id for a in found)
            raise InputError(f"{len(found)} agents are named {agent!r}; use an id: {ids}")
        target = found[0]
        target.inbox.put_nowait(f"Message from {self._agent.name}: {message}")
        return target.info()

    async def wait(self, agents: list[str] | None, timeout: float) -> list[AgentInfo]:
        team = self._engine.children(self._agent)
        if agents:
            team = [a for a in team if a.name in agents or a.id in agents]
        if not team:
            return []
        done = await self._engine.wait_agents(self._agent, team, timeout)
        return [a.info() for a in done]


class AgentArtifacts:
    def __init__(self, engine: Engine, agent: Agent) -> None:
        self._engine, self._agent = engine, agent

    def save(self, kind: str, name: str, text: str) -> Path:
        return self._engine.save_artifact(self._agent, kind, name, text)


class AgentContext:
    """:class:`supervisor.api.ToolContext` for one agent."""

    def __init__(self, engine: Engine, agent: Agent) -> None:
        self._agent = agent
        self._engine = engine
        self.memory = AgentMemory(engine, agent)
        self.human = AgentHuman(engine, agent)
        self.team = AgentTeam(engine, agent)
        self.artifacts = AgentArtifacts(engine, agent)
        self.events = AgentEvents(engine, agent)

    @property
    def agent(self) -> AgentInfo:
        return self._agent.info()

    @property
    def sandbox(self) -> Sandbox:
        return self._agent.sandbox

    @property
    def data_dir(self) -> Path:
        return self._engine.data_dir


class RunMemory:
    """:class:`supervisor.api.Memory` for a recipe step: notes of one project, no agent."""

    def __init__(self, engine: Engine, run_id: str, scope_key: str) -> None:
        self._engine, self._run_id, self._key = engine, run_id, scope_key

    async def remember(self, body: str, scope: str = "project") -> int:
        return await self._engine.remember(
            None, body, scope, scope_key=self._key, run_id=self._run_id
        )

    def recall(self, query: str, limit: int = 5) -> list[Note]:
        rows = self._engine.recall(query, self._key, limit=limit)
        return [Note(int(r["id"]), str(r["scope"]), str(r["body"])) for r in rows]

    async def forget(self, note_id: int) -> bool:
        return await self._engine.forget(None, note_id, by="step")
