"""What an agent gone wrong (or an unlucky start) does to its sandbox, on a real engine:
starts that hang, timeouts an agent tries to defeat, a sandbox whose every process is
killed, network reach to the host, and outputs too large to keep in memory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from agent_kit import scripted

from supervisor import config
from supervisor.engine import Engine, RunOptions
from supervisor.plugins import get_plugins
from supervisor.sandbox.base import SandboxError, SandboxSpec
from supervisor.sandbox.docker import DockerSandbox, home_label
from supervisor.sandbox.manager import start_sandbox
from supervisor.store import open_default
from supervisor.testing import Reply

pytestmark = pytest.mark.docker

# bash expands BASH_ENV before it reads a command: this shell never gets to the handshake.
HANGING_SHELL = {"BASH_ENV": "$(sleep 3600)"}


def ours(client):  # type: ignore[no-untyped-def]
    return client.containers.list(all=True, filters={"label": f"supervisor.home={home_label()}"})


# -- finding 7: a start that hangs


async def test_a_shell_that_never_answers_fails_the_start_in_time(
    sandbox_image: str, docker_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    box = DockerSandbox(
        SandboxSpec(run_id="r", agent_id="stuck", env=HANGING_SHELL), start_timeout=2
    )
    retries: list[str] = []
    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"did not answer within 2 s \(tried 2 times\)"):
        await asyncio.wait_for(start_sandbox(box, on_retry=retries.append), 60)
    took = time.monotonic() - start
    assert len(retries) == 1 and "did not answer" in retries[0]
    assert 4 <= took < 30, took
    assert ours(docker_client) == []  # both attempts cleaned up


async def test_an_agent_whose_sandbox_hangs_fails_and_the_engine_goes_on(
    sandbox_image: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASH_ENV", HANGING_SHELL["BASH_ENV"])
    script = [Reply(tool_calls=[("finish", {"summary": "ok"})])]
    with scripted(script):
        settings = dict(config.load().values)
        settings["sandbox.env_allow"] = ["BASH_ENV"]
        store = open_default()
        eng = Engine(
            store,
            get_plugins(),
            settings=settings,
            sandbox_kwargs={"docker": {"start_timeout": 2}},
        )
        try:
            run_id = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 60) == "failed"
            (agent,) = [a for a in eng.agents.values() if a.run_id == run_id]
            assert agent.status == "failed"
            assert "did not answer within 2 s (tried 2 times)" in agent.summary
            eng.store.flush()
            logs = [e.text for e in eng.store.events(agent_id=agent.id)]
            assert any("trying once more" in (t or "") for t in logs)
            # The engine still runs agents whose sandboxes do start.
            eng.settings["sandbox.env_allow"] = []
            run2 = await eng.start_run(RunOptions(task="t", sandbox="docker"))
            assert await asyncio.wait_for(eng.wait_run(run2), 60) == "done"
        finally:
            await eng.close()
            store.close()
