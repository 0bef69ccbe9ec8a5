"""A model's limits (``models.NAME.max_concurrent``, ``rpm``) changed while the supervisor
runs apply from the next call, over real HTTP to an OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from supervisor.models import ModelClient, ModelRegistry
from supervisor.testing import Reply, ScriptedModelServer
from supervisor.types import ModelSpec

THINK_S = 1.0


async def _arrival_gap(client: ModelClient) -> float:
    """Seconds between the arrivals of two calls made at once."""
    arrived: list[float] = []

    def script(messages: list[dict[str, Any]]) -> Reply:
        arrived.append(time.monotonic())
        return Reply(text="ok", delay_s=THINK_S)

    with ScriptedModelServer(script) as server:
        spec = ModelSpec(alias="m", model="openai/scripted", api_base=server.base_url)
        client.registry.specs["m"] = spec
        messages = [{"role": "user", "content": "hi"}]
        await asyncio.wait_for(
            asyncio.gather(client.complete(spec, messages), client.complete(spec, messages)), 60
        )
    return arrived[1] - arrived[0]


async def test_a_changed_concurrency_limit_applies_to_the_next_calls() -> None:
    client = ModelClient(ModelRegistry(limits={"m": (1, 0)}), retries=0)
    assert await _arrival_gap(client) >= THINK_S * 0.9  # one at a time
    # The settings reload puts a fresh registry in place, as the engine does.
    client.registry = ModelRegistry(limits={"m": (2, 0)})
    assert await _arrival_gap(client) < THINK_S * 0.6  # both at once now
