"""The local backend — a plain bash on this machine, in a temp workspace (registered by
``supervisor.sandbox.plugins``).

Not isolated: commands run as you, with your files and network in reach. It exists for
machines without Docker and for quick experiments, only when asked for (``--sandbox
local``), and is always shown as unisolated. The environment is still limited to what the
agent is given (plus PATH, LANG and a private HOME).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.sandbox.base import (
    ExecResult,
    FileInfo,
    Sandbox,
    SandboxError,
    SandboxSpec,
    outputs_dir,
)
from supervisor.sandbox.shell import STDERR, STDOUT, PersistentShell
from supervisor.types import SandboxRow


class _PipeShell:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._open = 2
        assert proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump(proc.stdout, STDOUT)),
            loop.create_task(self._pump(proc.stderr, STDERR)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, stream: int) -> None:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            self._queue.put_nowait((stream, data))
        self._open -= 1
        if self._open == 0:
            self._queue.put_nowait(None)

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def recv(self) -> tuple[int, bytes] | None:
        frame = await self._queue.get()
        if frame is None:
            self._queue.put_nowait(None)
        return frame

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()


ABOUT = "sandbox.json"


def _about(root: Path) -> dict[str, object]:
    try:
        about = json.loads((root / ABOUT).read_text())
    except (OSError, ValueError):
        return {}
    return about if isinstance(about, dict) else {}


def local_root() -> Path:
    """Where local sandboxes live unless a backend is given another folder."""
    from supervisor import config

    return config.data_dir() / "local"


def list_local() -> list[SandboxRow]:
    """The local backend's sandboxes (folders) of this data directory."""
    rows = []
    parent = local_root()
    for root in sorted(parent.iterdir()) if parent.is_dir() else []:
        if not (root / "workspace").is_dir():
            continue
        about = _about(root)
        created = about.get("created")
        age = time.time() - (created if isinstance(created, float) else root.stat().st_mtime)
        rows.append(
            SandboxRow(
                name=root.name,
                id=str(root),
                run=str(about.get("run", "")),
                agent=str(about.get("agent", "")),
                pool=False,
                state="present",
                age_s=round(max(age, 0.0), 1),
                memory_mb=None,
                network=True,
                backend="local",
            )
        )
    return rows


def prune_local(keep: Callable[[SandboxRow], bool]) -> list[str]:
    """Remove the local sandboxes ``keep`` refuses; what was removed."""
    removed = []
    for row in list_local():
        if not keep(row):
            shutil.rmtree(row.id, ignore_errors=True)
            removed.append(f"folder {row.id}")
    return removed


class HostReaper:
    """The local backend's :class:`~supervisor.sandbox.shell.Reaper`: this process, in
    the same pid namespace as the agent's shell. Only the shell's descendants are looked
    at (orphans on the host are not the agent's to judge: the backend is not isolated)."""

    async def mark(self) -> str:
        # Two tiny reads of /proc: cheaper inline than a hop to the default thread pool,
        # where a fleet's commands would queue behind the model calls' own work.
        return _mark()

    async def kill(self, mark: str, shell_pid: int) -> int:
        return await asyncio.to_thread(_kill_descendants, mark, shell_pid)

    async def kill_shell(self, shell_pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(shell_pid, signal.SIGKILL)


def _mark() -> str:
    up = Path("/proc/uptime").read_text().split()[0].replace(".", "")
    return f"{int(up)} {int(Path('/proc/sys/kernel/ns_last_pid').read_text())}"


def _processes() -> dict[int, tuple[int, int, bool]]:
    """Every process: pid -> (parent pid, start tick, whether it is still alive)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry.name)] = (int(fields[1]), int(fields[19]), fields[0] not in ("Z", "X"))
    return found


def _kill_descendants(mark: str, shell_pid: int) -> int:
    """Stop the shell's descendants started after ``mark`` until no new one appears (a
    fork bomb cannot outrun that), then kill them all."""
    since, lastpid = (int(x) for x in mark.split())
    stopped: set[int] = set()
    for _ in range(500):
        procs = _processes()
        new = False
        for pid, (_, tick, alive) in procs.items():
            after = tick > since or (tick == since and pid > lastpid)
            if not alive or pid in stopped or not after:
                continue
            parent = procs[pid][0]
            while parent not in (shell_pid, 0, 1) and parent in procs:
                parent = procs[parent][0]
            if parent == shell_pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
                new = True
        if not new:
            break
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(stopped)


class LocalSandbox(Sandbox):
    backend = "local"
    isolated = False

    def __init__(
        self, spec: SandboxSpec, *, root: Path | None = None, spool_dir: Path | None = None
    ) -> None:
        super().__init__(spec)
        self._root_parent = root
        self.root: Path | None = None
        self._spool_dir = spool_dir
        self._shell: PersistentShell | None = None

    @classmethod
    def attach(cls, root: Path) -> LocalSandbox:
        """A sandbox object for an existing local sandbox folder."""
        if not (root / "workspace").is_dir():
            raise SandboxError(f"local sandbox {root} no longer exists")
        about = _about(root)
        sandbox = cls(
            SandboxSpec(
                run_id=str(about.get("run", "")), agent_id=str(about.get("agent", root.name))
            )
        )
        sandbox.root = root
        return sandbox

    def shell_command(self, tty: bool) -> list[str]:
        return ["bash", "-c", 'cd -- "$1" && exec bash', "bash", self.workdir]

    @property
    def id(self) -> str:
        return str(self.root or "")

    @property
    def workdir(self) -> str:  # type: ignore[override]
        return str(self.root / "workspace") if self.root else ""

    async def start(self) -> None:
        from supervisor.sandbox import workspace

        parent = self._root_parent
        if parent is None:
            from supervisor import config

            parent = config.ensure_data_dir() / "local"
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.spec.agent_id or 'sandbox'}-", dir=parent))
        (self.root / "home").mkdir()
        # What `sandbox ls|prune` and re-adoption need to know of it.
        about = {"run": self.spec.run_id, "agent": self.spec.agent_id, "created": time.time()}
        (self.root / ABOUT).write_text(json.dumps(about))
        ws = self.root / "workspace"
        if self.spec.workspace is not None:
            tmp, staged = workspace.stage(self.spec.workspace, self.spec.agent_id)
            with tmp:
                shutil.copytree(staged, ws, symlinks=True)
        else:
            ws.mkdir()
        await self._open_shell()
        result = await self.exec(
            workspace.init_script(self.spec.agent_id).replace("cd /workspace", f"cd {ws}")
        )
        if not result.ok:
            raise SandboxError(f"local sandbox: workspace setup failed: {result.stderr[-500:]}")

    async def _open_shell(self) -> None:
        assert self.root is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.root / "home"),
            **self.spec.env,
        }
        root = self.root

        async def open_transport() -> _PipeShell:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "--noprofile",
                "--norc",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=root / "workspace",
                env=env,
                start_new_session=True,
            )
            return _PipeShell(proc)

        self._shell = PersistentShell(
            f"local-{root.name}",
            open_transport,
            HostReaper(),
            spool_dir=self._spool_dir or outputs_dir(),
        )
        await self._shell.start()

    async def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        if self._shell is None:
            if self.root is None:
                raise SandboxError("sandbox is not started")
            await self._open_shell()
        assert self._shell is not None
        return await self._shell.run(command, timeout=timeout, env=env, cwd=cwd)

    def _path(self, path: str) -> Path:
        assert self.root is not None
        p = Path(path)
        return p if p.is_absolute() else self.root / "workspace" / p

    async def read_file(self, path: str) -> bytes:
        try:
            return self._path(path).read_bytes()
        except OSError as exc:
            raise SandboxError(f"cannot read {path}: {exc.strerror}") from None

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = self._path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        except OSError as exc:
            raise SandboxError(f"cannot write {path}: {exc.strerror}") from None

    async def list_files(self, path: str) -> list[FileInfo]:
        entries = []
        try:
            for child in sorted(self._path(path).iterdir()):
                st = child.lstat()
                kind = (
                    "link"
                    if stat.S_ISLNK(st.st_mode)
                    else "dir"
                    if stat.S_ISDIR(st.st_mode)
                    else "file"
                    if stat.S_ISREG(st.st_mode)
                    else "other"
                )
                entries.append(FileInfo(str(child), kind, st.st_size, stat.S_IMODE(st.st_mode)))
        except OSError as exc:
            raise SandboxError(f"cannot list {path}: {exc.strerror}") from None
        return entries

    async def copy_in(self, source: Path, dest: str) -> None:
        target = self._path(dest)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.name)

    async def copy_out(self, source: str, dest: Path) -> None:
        shutil.copytree(self._path(source), dest, symlinks=True, dirs_exist_ok=True)

    async def stop(self) -> None:
        if self._shell is not None:
            await self._shell.close()
            self._shell = None

    async def destroy(self) -> None:
        await self.stop()
        if self.root is not None:
            # Deleting a large workspace takes a while: never on the event loop.
            await asyncio.to_thread(shutil.rmtree, self.root, True)
