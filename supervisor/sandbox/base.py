"""The Sandbox interface every backend implements, and what an exec returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError


class SandboxError(SupervisorError):
    """A sandbox failed (died, could not start, refused a file operation).

    The message names the sandbox and what went wrong; the engine reports it and the
    other sandboxes keep going.
    """


SAVED_LIMIT = 100 * 1024 * 1024  # most bytes of a stream's full output saved on the host


def outputs_dir() -> Path:
    """Where long command outputs are saved when a backend is given no other folder."""
    from supervisor import config

    return config.data_dir() / "outputs"


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command in a sandbox.

    ``stdout``/``stderr`` are decoded (invalid UTF-8 replaced) and capped: when a stream
    was longer than the cap, its head and tail are kept, ``*_truncated`` is set, and
    ``output_path`` names where the full output was saved on the host
    (``PATH.stdout``/``PATH.stderr``, the first :data:`SAVED_LIMIT` bytes of each stream;
    ``*_bytes`` say how long each stream was). ``sandbox_restarted`` says the sandbox had
    to be restarted (its processes all ended; the workspace stayed), and ``stderr`` says so.
    """

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output_path: Path | None = None
    stdout_bytes: int = 0  # the stream's whole size, however much of it was kept
    stderr_bytes: int = 0
    sandbox_restarted: bool = False  # the sandbox died under the command and was restarted

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def saved(self) -> list[str]:
        """One line per stream that was cut, saying exactly what of it is kept where."""
        lines = []
        for name, size, cut in (
            ("stdout", self.stdout_bytes, self.stdout_truncated),
            ("stderr", self.stderr_bytes, self.stderr_truncated),
        ):
            if not cut:
                continue
            if self.output_path is None:
                lines.append(f"[{name} was {size} bytes; only the head and tail above are kept]")
                continue
            kept = min(size, SAVED_LIMIT)
            what = "all of it" if kept == size else f"its first {kept} bytes"
            lines.append(f"[{name} was {size} bytes; {what} saved at {self.output_path}.{name}]")
        return lines


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: str  # file | dir | link | other
    size: int
    mode: int


@dataclass
class SandboxSpec:
    """What an agent asks of its sandbox. Defaults are the safe ones."""

    run_id: str
    agent_id: str
    workspace: Path | None = None  # a host folder or git repo copied in at start
    network: bool = False  # the internet; never this machine unless network_host
    network_host: bool = False  # also services on this machine (an explicit grant)
    gpus: list[str] = field(default_factory=list)  # device ids, from the engine's GpuSlots
    host: str = ""  # where it runs: "" is this machine; a host name for remote backends
    memory: str = "2g"
    cpus: float = 2.0
    pids: int = 512
    image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


class Sandbox(ABC):
    """Where one agent's commands run. All methods are coroutines; one sandbox may be
    used from many tasks at once (execs are serialized, never interleaved)."""

    backend: str = ""
    isolated: bool = True
    workdir: str = "/workspace"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    @property
    @abstractmethod
    def id(self) -> str:
        """A stable identifier (container id, or a folder for the local backend)."""

    @abstractmethod
    async def start(self) -> None:
        """Create and start the sandbox; returns once a command would be answered."""

    @abstractmethod
    async def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run ``command`` in the sandbox's persistent shell.

        The working directory and exported variables persist between calls, as in a
        terminal, unless ``cwd`` or ``env`` is given: then the command runs in a subshell
        with them. On ``timeout`` the command's processes are killed and the shell stays
        usable.
        """

    @abstractmethod
    async def read_file(self, path: str) -> bytes: ...

    @abstractmethod
    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    @abstractmethod
    async def list_files(self, path: str) -> list[FileInfo]: ...

    @abstractmethod
    async def copy_in(self, source: Path, dest: str) -> None:
        """Copy a host file or folder tree into the sandbox at ``dest``."""

    @abstractmethod
    async def copy_out(self, source: str, dest: Path) -> None:
        """Copy a sandbox file or folder tree out to the host folder ``dest``."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the sandbox; its files stay until :meth:`destroy`."""

    @abstractmethod
    async def destroy(self) -> None:
        """Remove the sandbox and everything in it."""

    def shell_command(self, tty: bool) -> list[str]:
        """The command line that opens an interactive shell in the sandbox, as its agent
        would run (``supervisor sandbox shell``); ``tty`` when the person is at a terminal.
        A backend without one raises NotImplementedError."""
        raise NotImplementedError(f"the {self.backend} backend has no interactive shell")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "id": self.id, "isolated": self.isolated}
