"""Built-in plugins ``docker``, ``local`` and ``ssh``: the sandbox backends and the Docker checks.

Kept apart from the backends themselves so that loading plugins (on every command, even
``--help``) does not import asyncio, the Docker SDK or the shell protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor import Check, CheckResult, SandboxBackend, hookimpl

if TYPE_CHECKING:
    from supervisor.sandbox.base import Sandbox, SandboxSpec


def docker_sandbox(spec: SandboxSpec, **kwargs: Any) -> Sandbox:
    from supervisor.sandbox.docker import DockerSandbox

    return DockerSandbox(spec, **kwargs)


def local_sandbox(spec: SandboxSpec, **kwargs: Any) -> Sandbox:
    from supervisor.sandbox.local import LocalSandbox

    return LocalSandbox(spec, **kwargs)


def ssh_sandbox(spec: SandboxSpec, **kwargs: Any) -> Sandbox:
    from supervisor.sandbox.ssh import SSHSandbox

    return SSHSandbox(spec, **kwargs)


def check_engine() -> CheckResult:
    from supervisor.sandbox.docker import check_engine

    return check_engine()


def check_image() -> CheckResult:
    from supervisor.sandbox.docker import check_image

    return check_image()


class Docker:
    """The ``docker`` plugin."""

    @hookimpl
    def register_sandboxes(self, register: Callable[[SandboxBackend], None]) -> None:
        register(
            SandboxBackend(
                "docker",
                docker_sandbox,
                isolated=True,
                description="a hardened Docker container per agent (default)",
            )
        )

    @hookimpl
    def register_checks(self, register: Callable[[Check], None]) -> None:
        register(Check("docker engine", check_engine))
        register(Check("sandbox image", check_image, required=False))


class Local:
    """The ``local`` plugin."""

    @hookimpl
    def register_sandboxes(self, register: Callable[[SandboxBackend], None]) -> None:
        register(
            SandboxBackend(
                "local",
                local_sandbox,
                isolated=False,
                description="a plain shell on this machine (NOT isolated)",
            )
        )


class SSH:
    """The ``ssh`` plugin: sandboxes on registered remote hosts (``run --host NAME``)."""

    @hookimpl
    def register_sandboxes(self, register: Callable[[SandboxBackend], None]) -> None:
        register(
            SandboxBackend(
                "ssh",
                ssh_sandbox,
                isolated=True,
                description="a container on a remote host's Docker (else a folder there)",
            )
        )


docker = Docker()
local = Local()
ssh = SSH()
