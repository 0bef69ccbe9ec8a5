"""Helpers for agent tests: a scripted model reachable as alias `scripted`, and an engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from supervisor import config
from supervisor.engine import Engine
from supervisor.plugins import get_plugins
from supervisor.store import open_default
from supervisor.testing import ScriptedModelServer


def use_scripted_model(
    base_url: str, *, price_in: float = 1.0, price_out: float = 2.0, **extra: str
) -> None:
    """Point the alias `scripted` (and the default model) at a scripted server."""
    config.set_value("models.scripted.model", "openai/scripted")
    config.set_value("models.scripted.api_base", base_url)
    config.set_value("models.scripted.input_per_mtok", str(price_in))
    config.set_value("models.scripted.output_per_mtok", str(price_out))
    config.set_value("model", "scripted")
    for key, value in extra.items():
        config.set_value(key.replace("__", "."), value)


@contextlib.contextmanager
def scripted(script: Any, **kw: Any) -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(script) as server:
        use_scripted_model(server.base_url, **kw)
        yield server


@contextlib.asynccontextmanager
async def engine(**overrides: Any) -> AsyncIterator[Engine]:
    """An engine on the test's SUPERVISOR_HOME, with quick retries for fault tests."""
    settings = dict(config.load().values)
    settings.update({"model.stall_timeout_s": 2.0, "model.retries": 6})
    settings.update(overrides)
    store = open_default()
    eng = Engine(store, get_plugins(), settings=settings)
    eng.models.backoff_base_s = 0.05
    eng.models.backoff_max_s = 0.5
    try:
        yield eng
    finally:
        await eng.close()
        store.close()


def tool_results(request: dict[str, Any]) -> list[str]:
    """The tool results the agent sent back in a model request."""
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def last_results(request: dict[str, Any]) -> list[str]:
    """The tool results of the agent's latest turn only."""
    out: list[str] = []
    for m in reversed(request["messages"]):
        if m["role"] != "tool":
            break
        out.insert(0, m["content"])
    return out
