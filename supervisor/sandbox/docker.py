"""Built-in plugin: the Docker sandbox backend and its doctor checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor import Check, CheckResult, hookimpl

ENGINE_FIX = (
    "start a Docker engine (e.g. `sudo systemctl start docker`, or `sudo dockerd &`), "
    "or run agents with --sandbox local (unisolated)"
)


def docker_client(timeout: int = 5) -> Any:
    """A Docker SDK client from the environment (DOCKER_HOST etc.); raises if none answers."""
    import docker

    client = docker.from_env(timeout=timeout)
    client.ping()
    return client


def check_engine() -> CheckResult:
    try:
        client = docker_client()
        version = client.version().get("Version", "?")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckResult(False, f"not reachable ({reason[:160]})", ENGINE_FIX)
    return CheckResult(True, f"reachable, version {version}")


def check_image() -> CheckResult:
    from supervisor import config
    from supervisor.sandbox.image import default_image_tag

    tag = config.load()["sandbox.image"] or default_image_tag()
    try:
        client = docker_client()
    except Exception:
        return CheckResult(False, f"{tag}: cannot look (no Docker engine)", ENGINE_FIX)
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return CheckResult(
            False,
            f"{tag} not built yet",
            "run `supervisor sandbox build` (the first agent also builds it)",
        )
    return CheckResult(True, tag)


@hookimpl
def register_checks(register: Callable[[Check], None]) -> None:
    register(Check("docker engine", check_engine))
    register(Check("sandbox image", check_image, required=False))
