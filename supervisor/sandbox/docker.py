"""The Docker sandbox backend (registered by ``supervisor.sandbox.plugins``).

Each sandbox is one long-lived container (``sandbox-idle infinity`` — sleep under a name
an agent's ``pkill sleep`` does not hit — under ``init``), hardened by
default: a non-root user, every capability dropped, no-new-privileges, pids/memory/CPU
limits, a read-only root filesystem with tmpfs /tmp and home, no network unless granted,
never the Docker socket, and only the environment it is given. The workspace is a named
volume, so it survives the container being recreated. Commands run in one persistent bash
reached through an exec socket (~0.2 ms a round trip instead of ~60 ms for ``docker exec``).

Containers, volumes and pool members carry labels (``supervisor.*``) naming the data
directory, run and agent, so a crashed supervisor's leftovers are found and removed, or
re-adopted when their run resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from supervisor import CheckResult
from supervisor.errors import InputError
from supervisor.sandbox.base import (
    ExecResult,
    FileInfo,
    Sandbox,
    SandboxError,
    SandboxSpec,
    outputs_dir,
)
from supervisor.sandbox.shell import (
    START_TIMEOUT_S,
    STDERR,
    STDOUT,
    PersistentShell,
    ShellReaper,
    Unstoppable,
)

ENGINE_FIX = (
    "start a Docker engine (e.g. `sudo systemctl start docker`, or `sudo dockerd &`), "
    "or run agents with --sandbox local (unisolated)"
)
LABEL = "supervisor"
USER = "1000:1000"
# Every stage of a start has a deadline: Docker API calls that of the client (60 s each),
# the shell's handshake ``start_timeout``, filling the workspace this one (a large repo
# is copied in a stream; a copy that stalls this long never finishes).
PREPARE_TIMEOUT_S = 600.0


class EngineUnavailable(SandboxError, InputError):
    """No Docker engine answers (reported like bad input: one line, exit code 2)."""


def docker_client(timeout: int = 60) -> Any:
    """A Docker SDK client from the environment (DOCKER_HOST etc.); raises if none answers."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineUnavailable(
            f"no Docker engine answers ({reason[:160]}); {ENGINE_FIX}"
        ) from None
    return client


def home_label() -> str:
    """Identifies the data directory, so two SUPERVISOR_HOMEs never touch each other's
    containers."""
    from supervisor import config

    return hashlib.sha256(str(config.data_dir().resolve()).encode()).hexdigest()[:12]


# -- the exec socket


class _ExecSocket:
    """A bash started by ``docker exec`` with stdin attached; frames demultiplexed."""

    def __init__(self, raw: socket.socket) -> None:
        self._raw = raw
        # Bounded: a command printing faster than we consume waits, instead of piling its
        # output up in this process's memory.
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=64)
        self.eof = False  # the shell has exited (seen before a command is sent to it)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        frames = _Frames()
        try:
            while data := await loop.sock_recv(self._raw, 256 * 1024):
                for frame in frames.feed(data):
                    await self._queue.put(frame)
        except OSError:
            pass
        self.eof = True
        await self._queue.put(None)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self._raw, data)

    async def recv(self) -> tuple[int, bytes] | None:
        frame = await self._queue.get()
        if frame is None:
            self._queue.put_nowait(None)  # every later recv sees the end too
        return frame

    async def close(self) -> None:
        self._reader.cancel()
        self._raw.close()


def _raw_socket(api: Any, exec_id: str) -> socket.socket:
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(sock, "_sock", sock)
    return raw


class _Frames:
    """Splits Docker's multiplexed exec stream (an 8-byte header per frame: stream id,
    then payload size) into ``(stream, payload)`` frames, across reads."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= 8:
            size = struct.unpack(">I", self._buf[4:8])[0]
            if len(self._buf) < 8 + size:
                break
            frames.append((self._buf[0], self._buf[8 : 8 + size]))
            self._buf = self._buf[8 + size :]
        return frames


def _read_frames(raw: socket.socket, sinks: dict[int, Any]) -> None:
    """Blocking: read demultiplexed frames into ``sinks[stream].write`` until EOF."""
    frames = _Frames()
    while data := raw.recv(256 * 1024):
        for stream, payload in frames.feed(data):
            sink = sinks.get(stream)
            if sink is not None:
                sink.write(payload)


# -- the sandbox


class DockerSandbox(Sandbox):
    backend = "docker"
    isolated = True

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        client: Any = None,
        container: Any = None,
        spool_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        prepare_timeout: float = PREPARE_TIMEOUT_S,
    ) -> None:
        super().__init__(spec)
        self.start_timeout = start_timeout
        self.prepare_timeout = prepare_timeout
        self._client = client
        self.container = container
        self._spool_dir = spool_dir
        self._progress = progress or _stderr
        self._shell: PersistentShell | None = None
        self._reaper: ShellReaper | None = None
        self.restarts = 0  # times the container was restarted under the agent
        # Variables every agent shell starts with (a pool member's, set when handed out:
        # its container was made before the agent's environment was known).
        self.shell_env: dict[str, str] = {}
        self._untold = ""  # a restart a file operation did, for the next command's result

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def id(self) -> str:
        return str(self.container.id) if self.container is not None else ""

    @property
    def name(self) -> str:
        return str(self.container.name) if self.container is not None else ""

    # -- lifecycle

    @classmethod
    def attach(cls, container_id: str, *, client: Any = None) -> DockerSandbox:
        """A sandbox object for an existing container (re-adoption, CLI commands)."""
        import docker.errors

        client = client or docker_client()
        try:
            container = client.containers.get(container_id)
        except docker.errors.NotFound:
            raise SandboxError(f"sandbox container {container_id[:12]} no longer exists") from None
        labels = container.labels
        spec = SandboxSpec(
            run_id=labels.get(f"{LABEL}.run", ""),
            agent_id=labels.get(f"{LABEL}.agent", ""),
            network=labels.get(f"{LABEL}.network") == "1",
            network_host=labels.get(f"{LABEL}.network_host") == "1",
        )
        return cls(spec, client=client, container=container)

    def shell_command(self, tty: bool) -> list[str]:
        flags = ["-it"] if tty else ["-i"]
        return ["docker", "exec", *flags, "-u", USER, "-w", "/workspace", self.id, "bash", "-l"]

    async def start(self, *, pool_owner: str = "", prepare: bool = True) -> None:
        """Create the container, open its shell, and (unless a pool member, which is
        prepared when handed out) fill the workspace."""
        from supervisor.sandbox import workspace

        if self.spec.workspace is not None:
            workspace.check(self.spec.workspace)  # fail before creating anything
        try:
            await asyncio.to_thread(self._create, pool_owner)
            await self._open_shell()
            if prepare:
                try:
                    await asyncio.wait_for(self.prepare(), self.prepare_timeout)
                except TimeoutError:
                    raise SandboxError(
                        f"sandbox {self.name}: filling the workspace took longer than "
                        f"{self.prepare_timeout:g} s"
                    ) from None
        except BaseException:
            await self.destroy()
            raise

    async def prepare(self) -> None:
        """Fill /workspace from the spec's folder or repo, and make it a git repo."""
        from supervisor.sandbox import workspace

        staged = None
        if self.spec.workspace is not None:
            staged = workspace.stage(self.spec.workspace, self.spec.agent_id)
        try:
            if staged is not None:
                await self.copy_in(staged[1], "/workspace")
            result = await self.exec(workspace.init_script(self.spec.agent_id or "pool"))
            if not result.ok:
                raise SandboxError(
                    f"sandbox {self.name}: workspace setup failed: {result.stderr.strip()[-500:]}"
                )
        finally:
            if staged is not None:
                staged[0].cleanup()

    def _labels(self, pool_owner: str = "") -> dict[str, str]:
        labels = {
            f"{LABEL}.managed": "1",
            f"{LABEL}.home": home_label(),
            f"{LABEL}.run": self.spec.run_id,
            f"{LABEL}.agent": self.spec.agent_id,
            f"{LABEL}.network": "1" if self.spec.network else "0",
        }
        if self.spec.network and self.spec.network_host:
            labels[f"{LABEL}.network_host"] = "1"
        if pool_owner:
            labels[f"{LABEL}.pool"] = pool_owner
        labels.update(self.spec.labels)
        return labels

    def _create(self, pool_owner: str = "") -> None:
        import docker.errors
        import docker.types

        from supervisor.sandbox.image import default_image_tag

        client = self.client
        image = self.spec.image or default_image_tag()
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            if self.spec.image:
                raise SandboxError(
                    f"sandbox image {image} is missing; build it, or unset sandbox.image to "
                    "use the default (`supervisor sandbox build`)"
                ) from None
            # The first agent that needs the default image builds it, showing progress.
            from supervisor import config
            from supervisor.sandbox.image import build

            build(client, mode=config.load()["sandbox.build"], progress=self._progress)
        labels = self._labels(pool_owner)
        volume = client.volumes.create(
            name=f"sv-ws-{_slug(self.spec.agent_id) or os.urandom(4).hex()}-{os.urandom(3).hex()}",
            labels=labels,
        )
        device_requests = None
        if self.spec.gpus:
            if "nvidia" not in (client.info().get("Runtimes") or {}):
                raise SandboxError(
                    "GPUs were asked for, but this Docker engine has no "
                    "NVIDIA runtime (install the NVIDIA Container Toolkit)"
                )
            device_requests = [
                docker.types.DeviceRequest(
                    device_ids=[str(d) for d in self.spec.gpus], capabilities=[["gpu"]]
                )
            ]
        network_mode = "none"
        if self.spec.network:
            network_mode = sandbox_network(client, host=self.spec.network_host)
        try:
            self.container = client.containers.run(
                image,
                ["sandbox-idle", "infinity"],
                name=self._container_name(),
                detach=True,
                init=True,
                labels=labels,
                user=USER,
                working_dir="/workspace",
                # HOME lives in /tmp: only /workspace and /tmp are writable.
                environment={"HOME": "/tmp/home", **self.spec.env},
                hostname="sandbox",
                read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"},
                volumes={volume.name: {"bind": "/workspace", "mode": "rw"}},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode=network_mode,
                mem_limit=self.spec.memory,
                memswap_limit=self.spec.memory,  # no swap: a memory hog is killed, not slowed
                nano_cpus=int(self.spec.cpus * 1e9),
                pids_limit=self.spec.pids,
                device_requests=device_requests,
            )
        except BaseException:
            volume.remove(force=True)
            raise

    def _container_name(self) -> str:
        run = _slug(self.spec.run_id)[:8] or "pool"
        agent = _slug(self.spec.agent_id)[:24] or os.urandom(3).hex()
        return f"sv-{run}-{agent}-{os.urandom(2).hex()}"

    async def _open_shell(self) -> None:
        api = self.client.api
        cid = self.container.id

        def opener(environment: list[str] | None) -> Callable[[], Awaitable[_ExecSocket]]:
            async def open_transport() -> _ExecSocket:
                def create() -> socket.socket:
                    exec_id = api.exec_create(
                        cid,
                        ["bash", "--noprofile", "--norc"],
                        stdin=True,
                        stdout=True,
                        stderr=True,
                        tty=False,
                        user=USER,
                        workdir="/workspace",
                        environment=environment,
                    )["Id"]
                    raw = _raw_socket(api, exec_id)
                    raw.setblocking(False)
                    return raw

                try:
                    raw = await asyncio.to_thread(create)
                except Exception as exc:
                    raise SandboxError(
                        f"sandbox {self.name}: cannot start a shell: {exc}"
                    ) from None
                return _ExecSocket(raw)

            return open_transport

        # The reaper starts first, so that it holds its process slot before any command
        # could fill the pids limit; it reads no startup file the agent could have set.
        self._reaper = ShellReaper(
            self.name, opener(["BASH_ENV=", "ENV="]), start_timeout=self.start_timeout
        )
        await self._reaper.start()
        self._shell = PersistentShell(
            self.name,
            opener([f"{k}={v}" for k, v in self.shell_env.items()] or None),
            self._reaper,
            spool_dir=self._spool_dir or outputs_dir(),
            start_timeout=self.start_timeout,
        )
        await self._shell.start()

    async def _close_shells(self) -> None:
        if self._shell is not None:
            await self._shell.close()
            self._shell = None
        if self._reaper is not None:
            await self._reaper.close()
            self._reaper = None

    async def _revive(self, why: str) -> str:
        """Restart the container (every process in it ends; the workspace volume stays)
        and open fresh shells; the note that tells the agent. Raises if it is gone."""
        import docker.errors

        await self._close_shells()

        def restart() -> None:
            try:
                self.container.restart(timeout=0)
                self.container.reload()
            except docker.errors.NotFound:
                raise SandboxError(f"sandbox {self.name} died and no longer exists") from None

        await asyncio.to_thread(restart)
        self.restarts += 1
        await self._open_shell()
        return (
            f"[the sandbox was restarted because {why}: every process in it was ended; "
            "/workspace is as it was, but /tmp, background jobs, the working directory and "
            "variables were reset]"
        )

    async def stop(self) -> None:
        await self._close_shells()
        if self.container is not None:
            await asyncio.to_thread(self.container.stop, timeout=5)

    async def destroy(self) -> None:
        await self._close_shells()
        if self.container is not None:
            await asyncio.to_thread(remove_container, self.client, self.container)

    # -- commands

    async def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        if self.container is None:
            raise SandboxError("sandbox is not started")
        started = time.perf_counter()
        try:
            if self._shell is None:
                await self._open_shell()
            assert self._shell is not None
            result = await self._shell.run(command, timeout=timeout, env=env, cwd=cwd)
        except Unstoppable as exc:
            note = await self._revive(f"a timed-out command could not be stopped otherwise ({exc})")
            return ExecResult(
                exit_code=-1,
                stdout="",
                stderr=note + "\n",
                duration_s=time.perf_counter() - started,
                timed_out=True,
                sandbox_restarted=True,
            )
        except SandboxError:
            if await asyncio.to_thread(self._running):
                raise
            # It died between commands (every process killed): the command never ran.
            note = await self._revive("every process in it was killed")
            assert self._shell is not None
            result = await self._shell.run(command, timeout=timeout, env=env, cwd=cwd)
            return dataclasses.replace(
                result, stderr=f"{note}\n{result.stderr}", sandbox_restarted=True
            )
        if result.exit_code == -1 and not await asyncio.to_thread(self._running):
            note = await self._revive("every process in it was killed")
            return dataclasses.replace(
                result, stderr=f"{result.stderr}{note}\n", sandbox_restarted=True
            )
        if self._untold:
            note, self._untold = self._untold, ""
            return dataclasses.replace(
                result, stderr=f"{note}\n{result.stderr}", sandbox_restarted=True
            )
        return result

    def _running(self) -> bool:
        # The exec socket can close a moment before the engine marks a killed container
        # as exited, so look a few times before believing it still runs.
        for _ in range(5):
            try:
                self.container.reload()
            except Exception:
                return False
            if self.container.status != "running":
                return False
            time.sleep(0.1)
        return True

    async def _io(
        self,
        cmd: list[str],
        stdin: Callable[[socket.socket], None] | bytes | None = None,
        stdout: Any = None,
    ) -> tuple[int, bytes]:
        """:meth:`_exec_io` off the event loop; a sandbox found dead (every process killed)
        is restarted first, and the next command's result tells the agent."""
        import docker.errors

        try:
            return await asyncio.to_thread(self._exec_io, cmd, stdin, stdout)
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or await asyncio.to_thread(self._running):
                raise SandboxError(f"sandbox {self.name}: {exc}") from None
        self._untold = await self._revive("every process in it was killed")
        return await asyncio.to_thread(self._exec_io, cmd, stdin, stdout)

    def _exec_io(
        self,
        cmd: list[str],
        stdin: Callable[[socket.socket], None] | bytes | None = None,
        stdout: Any = None,
    ) -> tuple[int, bytes]:
        """Run ``cmd`` as the agent's user with optional stdin; (exit code, stderr).

        stdout goes to ``stdout.write`` when given (tar streams, file reads).
        """
        api = self.client.api
        exec_id = api.exec_create(
            self.container.id,
            cmd,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            user=USER,
            workdir="/workspace",
        )["Id"]
        raw = _raw_socket(api, exec_id)
        err = io.BytesIO()
        try:
            if isinstance(stdin, bytes):
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)
            elif stdin is not None:
                stdin(raw)
                raw.shutdown(socket.SHUT_WR)
            _read_frames(raw, {STDOUT: stdout or io.BytesIO(), STDERR: err})
        finally:
            raw.close()
        code = api.exec_inspect(exec_id)["ExitCode"]
        return int(code if code is not None else -1), err.getvalue()

    # -- files

    async def read_file(self, path: str) -> bytes:
        out = io.BytesIO()
        code, err = await self._io(["cat", "--", path], None, out)
        if code != 0:
            raise SandboxError(f"cannot read {path}: {err.decode(errors='replace').strip()}")
        return out.getvalue()

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"'
        code, err = await self._io(["sh", "-c", script, "sh", path, f"{mode:o}"], data)
        if code != 0:
            raise SandboxError(f"cannot write {path}: {err.decode(errors='replace').strip()}")

    async def list_files(self, path: str) -> list[FileInfo]:
        out = io.BytesIO()
        code, err = await self._io(
            ["find", path, "-mindepth", "1", "-maxdepth", "1", "-printf", r"%y %s %m %p\0"],
            None,
            out,
        )
        if code != 0:
            raise SandboxError(f"cannot list {path}: {err.decode(errors='replace').strip()}")
        kinds = {"f": "file", "d": "dir", "l": "link"}
        entries = []
        for record in out.getvalue().split(b"\0"):
            if record:
                kind, size, mode, name = record.decode(errors="replace").split(" ", 3)
                entries.append(FileInfo(name, kinds.get(kind, "other"), int(size), int(mode, 8)))
        return sorted(entries, key=lambda e: e.path)

    async def copy_in(self, source: Path, dest: str) -> None:
        def send(raw: socket.socket) -> None:
            with raw.makefile("wb") as fh, tarfile.open(fileobj=fh, mode="w|") as tar:
                if source.is_dir():
                    for child in sorted(source.iterdir()):
                        tar.add(child, arcname=child.name, filter=_owned_by_agent)
                else:
                    tar.add(source, arcname=source.name, filter=_owned_by_agent)

        script = 'mkdir -p -- "$1" && tar -x --no-same-owner -C "$1"'
        code, err = await self._io(["sh", "-c", script, "sh", dest], send)
        if code != 0:
            raise SandboxError(f"cannot copy into {dest}: {err.decode(errors='replace').strip()}")

    async def copy_out(self, source: str, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            code, err = await self._io(["tar", "-c", "-C", source, "."], None, spool)
            if code != 0:
                raise SandboxError(f"cannot copy out {source}: {err.decode(errors='replace')}")
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                tar.extractall(dest, filter="data")


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _owned_by_agent(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 1000
    info.uname = info.gname = "agent"
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")


def remove_container(client: Any, container: Any) -> None:
    """Remove a container and its workspace volume(s), whatever state they are in."""
    import docker.errors

    try:
        container.reload()
        mounts = [m.get("Name") for m in container.attrs.get("Mounts", []) if m.get("Name")]
        container.remove(force=True)
    except docker.errors.NotFound:
        return
    for name in mounts:
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(name).remove(force=True)


# -- networks
#
# A networked sandbox reaches the internet, not this machine: it joins a bridge network of
# its own (one per data directory) whose traffic to any address of this machine (the
# bridge's gateway, docker0, 0.0.0.0 listeners) is rejected by an iptables rule on the
# bridge's interface, and whose traffic to ports Docker publishes here is rejected in
# DOCKER-USER. Reaching this machine is a separate grant (``network_host``): a second
# network without those rules. Without iptables the start is refused, never exposed.

_network_lock = threading.Lock()


def _network_names(host: bool) -> tuple[str, str]:
    """The network's name and its bridge interface's (at most 15 characters)."""
    label = home_label()
    if host:
        return f"sv-net-host-{label}", f"svh-{label[:10]}"
    return f"sv-net-{label}", f"svn-{label[:10]}"


def host_rules(bridge: str) -> list[list[str]]:
    """The iptables rules (chain, then match and target) that keep ``bridge`` off this
    machine."""
    return [
        ["INPUT", "-i", bridge, "-j", "REJECT"],
        ["DOCKER-USER", "-i", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "REJECT"],
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=30, check=False
    )


def _keep_off_host(client: Any, bridge: str) -> None:
    why = ""
    if not str(client.api.base_url).startswith("http+docker://local"):
        why = f"the Docker engine at {client.api.base_url} is not on this machine"
    elif shutil.which("iptables") is None:
        why = "iptables is not installed"
    for chain, *rule in host_rules(bridge) if not why else []:
        try:
            if _iptables("-C", chain, *rule).returncode == 0:
                continue
            done = _iptables("-I", chain, "1", *rule)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = subprocess.CompletedProcess([], 1, "", str(exc))
        if done.returncode != 0:
            why = f"iptables refused ({(done.stderr or '').strip()[:200]})"
            break
    if why:
        raise SandboxError(
            "network access was asked for, but this machine's own services cannot be kept "
            f"out of the sandbox's reach: {why}. Run the supervisor where it may change "
            "iptables (as root), or grant the host as well with "
            "`supervisor config set sandbox.network_host true`"
        )


def sandbox_network(client: Any, *, host: bool = False) -> str:
    """The name of the network networked sandboxes join, created (and, unless ``host``,
    fenced off this machine) on first use."""
    import docker.errors

    name, bridge = _network_names(host)
    with _network_lock:
        if not host:
            _keep_off_host(client, bridge)  # before any sandbox can join the network
        if client.networks.list(names=[name]):
            return name
        labels = {f"{LABEL}.managed": "1", f"{LABEL}.home": home_label()}
        try:
            client.networks.create(
                name,
                driver="bridge",
                labels=labels,
                check_duplicate=True,
                options={"com.docker.network.bridge.name": bridge},
            )
        except docker.errors.APIError as exc:
            if not client.networks.list(names=[name]):  # another process made it first
                raise SandboxError(f"cannot create the sandbox network {name}: {exc}") from None
    return name


def remove_network(network: Any) -> None:
    """Remove a sandbox network and the iptables rules that fenced it off this machine."""
    import docker.errors

    bridge = (network.attrs.get("Options") or {}).get("com.docker.network.bridge.name", "")
    with contextlib.suppress(docker.errors.NotFound):
        network.remove()
    if bridge and shutil.which("iptables"):
        for chain, *rule in host_rules(bridge):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                while _iptables("-D", chain, *rule).returncode == 0:
                    pass


# -- doctor checks


def check_engine() -> CheckResult:
    try:
        client = docker_client(timeout=5)
        version = client.version().get("Version", "?")
    except EngineUnavailable as exc:
        return CheckResult(False, str(exc).split(";")[0], ENGINE_FIX)
    return CheckResult(True, f"reachable, version {version}")


def check_image() -> CheckResult:
    from supervisor import config
    from supervisor.sandbox.image import default_image_tag

    tag = config.load()["sandbox.image"] or default_image_tag()
    try:
        client = docker_client(timeout=5)
    except EngineUnavailable:
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
