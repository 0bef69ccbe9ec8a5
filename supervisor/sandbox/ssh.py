"""The ``ssh`` backend: an agent's sandbox on a registered remote host (``run --host``).

When the host's Docker engine answers and has the sandbox image, the sandbox is a
container there, created and driven with the docker CLI through our own SSH channel, with
the same hardening as a local sandbox (non-root, every capability dropped,
no-new-privileges, read-only root, limits, no network unless granted; GPUs passed by
device when asked for). Otherwise it is a folder of its own under ``~/.supervisor`` on the
host, NOT isolated from the host account — and the agent's status says which, in words.

The sandboxes on a host share its SSH connections (:class:`HostLink`), each carrying
at most :data:`MAX_CHANNELS` channels (under sshd's MaxSessions, and fewer where sshd
refuses more); another connection is made when they are full. Commands go to one
persistent bash per agent on one channel, with the same nonce-marker protocol as the local
backends (:mod:`supervisor.sandbox.shell`), so a command costs a round trip, not a new
channel and shell. A heartbeat (a global request answered by the host, under a watchdog)
notices a host that stopped answering within ``HEARTBEAT_EVERY_S + HEARTBEAT_TIMEOUT_S``;
the command that was running reports it, and the next one reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import re
import shlex
import tarfile
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, TypeVar

from supervisor import hosts
from supervisor.sandbox.base import ExecResult, FileInfo, Sandbox, SandboxError, SandboxSpec
from supervisor.sandbox.shell import REAPER_FUNCTIONS, STDERR, STDOUT, PersistentShell, quote

if TYPE_CHECKING:
    import fabric
    import paramiko

T = TypeVar("T")

MAX_CHANNELS = 8  # per connection at first; sshd's MaxSessions defaults to 10
ONE_OFF_ROOM = 2  # of each connection's channels, kept from shells for files and kills
MAX_LANES = 32  # connections to one host at most; past that a channel waits for a free one
REFUSED_RETRY_S = 20.0  # how long a channel the host refuses is asked for again
HOST_LABEL = "supervisor.host"  # SandboxSpec.labels key naming the host
USER = "1000:1000"
IO_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 1800.0
MISSING_IMAGE = "missing image"


# -- the connections to a host


class _Lane:
    """One SSH connection of a :class:`HostLink` and the channels it carries."""

    def __init__(self, conn: fabric.Connection) -> None:
        self.conn = conn
        self.cap = MAX_CHANNELS
        self.used = 0  # channels open (or opening) on it, persistent shells included
        self.shells = 0
        self.lost_reason = ""

    @property
    def active(self) -> bool:
        transport = self.conn.transport
        return transport is not None and transport.is_active()

    def room(self, shell: bool) -> bool:
        if not self.active or self.used >= self.cap:
            return False
        return not shell or self.shells < max(1, self.cap - ONE_OFF_ROOM)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _refused(exc: BaseException) -> bool:
    """Did the host refuse to open a channel (sshd's MaxSessions, or its count of
    sessions whose processes are still exiting), rather than the connection failing?"""
    import paramiko

    if isinstance(exc, paramiko.ChannelException):
        return True
    # paramiko keeps one failure per connection: a thread opening a channel at the same
    # time may take another's ChannelException and leave this one without it.
    return isinstance(exc, paramiko.SSHException) and str(exc) == "Unable to open channel."


class HostLink:
    """The SSH connections to a host, shared by the sandboxes on it in this event loop.

    Each connection (a *lane*) carries at most :data:`MAX_CHANNELS` channels, of which
    :data:`ONE_OFF_ROOM` are kept from persistent shells for one-off commands; when the
    lanes are full another connection is made, so every sandbox on the host has its shell
    at once, however many the host's cap allows. A channel the host refuses (sshd still
    counts a session whose process is exiting after we closed its channel, or its
    MaxSessions is lower than ours) is asked for again with a short backoff, and that
    lane carries fewer channels from then on; a refusal that lasts
    :data:`REFUSED_RETRY_S` is said plainly.
    """

    _links: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, HostLink]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, host: hosts.Host) -> None:
        self.host = host
        self.lanes: list[_Lane] = []
        self.lost_reason = ""  # why the last lane lost was lost
        self._connect_lock = asyncio.Lock()
        self._freed = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None
        self._build_lock = asyncio.Lock()
        self._built: set[str] = set()
        self.users = 0

    @classmethod
    def get(cls, host: hosts.Host) -> HostLink:
        links = cls._links.setdefault(asyncio.get_running_loop(), {})
        link = links.get(host.name)
        if link is None:
            link = links[host.name] = cls(host)
        return link

    @property
    def connected(self) -> bool:
        return any(lane.active for lane in self.lanes)

    async def ensure(self) -> fabric.Connection:
        """An open connection, connecting (once, whoever asks) if there is none."""
        for lane in self.lanes:
            if lane.active:
                return lane.conn
        async with self._connect_lock:
            for lane in self.lanes:
                if lane.active:
                    return lane.conn
            return (await self._new_lane()).conn

    async def _new_lane(self) -> _Lane:
        """Connect once more (the caller holds the connect lock)."""
        try:
            conn = await asyncio.to_thread(hosts.connect, self.host)
        except hosts.HostKeyError:
            raise
        except hosts.HostError:
            # One slow or refused connect does not fail an agent: try once more.
            await asyncio.sleep(1.0)
            conn = await asyncio.to_thread(hosts.connect, self.host)
        self.lanes = [lane for lane in self.lanes if lane.active or lane.used]
        lane = _Lane(conn)
        self.lanes.append(lane)
        if self._beat is None or self._beat.done():
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        return lane

    def _pick(self, shell: bool) -> _Lane | None:
        # The fullest lane with room: idle lanes stay idle, and shells pack together.
        fits = [lane for lane in self.lanes if lane.room(shell)]
        return max(fits, key=lambda lane: lane.used) if fits else None

    async def _slot(self, shell: bool) -> _Lane:
        """A lane with room for one more channel (or shell), taken."""
        while True:
            lane = self._pick(shell)
            if lane is None:
                async with self._connect_lock:
                    lane = self._pick(shell)
                    if lane is None and sum(x.active for x in self.lanes) < MAX_LANES:
                        lane = await self._new_lane()
            if lane is not None:
                lane.used += 1
                lane.shells += shell
                return lane
            self._freed.clear()
            await self._freed.wait()

    def _unslot(self, lane: _Lane, shell: bool) -> None:
        lane.used -= 1
        lane.shells -= shell
        self._freed.set()

    async def _on_a_lane(self, shell: bool, fn: Callable[[_Lane], T]) -> tuple[_Lane, T]:
        """``fn(lane)`` (in a thread) opens a channel on a lane with room; a refusal is
        asked again until :data:`REFUSED_RETRY_S`. The slot stays taken on success."""
        deadline = asyncio.get_running_loop().time() + REFUSED_RETRY_S
        delay, refusals = 0.05, 0
        while True:
            lane = await self._slot(shell)
            try:
                result = await asyncio.to_thread(fn, lane)
            except BaseException as exc:
                self._unslot(lane, shell)
                if not isinstance(exc, Exception) or isinstance(exc, hosts.HostLost):
                    raise
                if not lane.active:
                    # The connection died as the channel opened: nothing ran; the next
                    # command connects again.
                    why = lane.lost_reason or f"the connection to host {self.host.name} closed"
                    raise SandboxError(f"{why} ({type(exc).__name__}: {exc})") from None
                if not _refused(exc):
                    raise
                refusals += 1
                # sshd allows fewer sessions on this connection than we counted.
                lane.cap = max(1, min(lane.cap, lane.used))
                if asyncio.get_running_loop().time() > deadline:
                    raise SandboxError(
                        f"host {self.host.name} refused to open an SSH channel {refusals} "
                        f"times over {REFUSED_RETRY_S:.0f} s ({exc}); check sshd's "
                        "MaxSessions and the host's process limits"
                    ) from None
            else:
                return lane, result
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _heartbeat(self) -> None:
        while self.lanes:
            await asyncio.sleep(hosts.HEARTBEAT_EVERY_S)
            lanes = [lane for lane in self.lanes if lane.active]
            if not lanes:
                return
            alive = await asyncio.gather(
                *(asyncio.to_thread(hosts.heartbeat, lane.conn.transport) for lane in lanes)
            )
            for lane, ok in zip(lanes, alive, strict=True):
                if not ok:
                    self._lose_lane(
                        lane,
                        f"host {self.host.name} stopped answering (no heartbeat reply within "
                        f"{hosts.HEARTBEAT_TIMEOUT_S:.0f} s); the connection was closed",
                    )

    def _lose_lane(self, lane: _Lane, reason: str) -> None:
        """Drop one connection: every channel on it sees its end at once."""
        lane.lost_reason = self.lost_reason = reason
        lane.close()

    def lose(self, reason: str) -> None:
        """Drop every connection to the host."""
        for lane in self.lanes:
            self._lose_lane(lane, reason)

    async def open_shell(self, command: str) -> tuple[_Lane, paramiko.Channel]:
        """A channel running ``command`` for a persistent shell; the caller gives its
        slot back with :meth:`shell_closed`."""

        def open_exec(lane: _Lane) -> paramiko.Channel:
            chan = lane.conn.transport.open_session(timeout=hosts.TIMEOUT_S)
            try:
                chan.exec_command(command)
            except BaseException:
                chan.close()
                raise
            return chan

        lane, chan = await self._on_a_lane(True, open_exec)
        return lane, chan

    def shell_closed(self, lane: _Lane) -> None:
        self._unslot(lane, True)

    async def build_default_image(self, tag: str, progress: Any) -> str:
        """Build the default sandbox image on the host (once per link, whoever asks);
        empty on success, else why it could not be built."""
        async with self._build_lock:
            if tag in self._built:
                return ""
            from supervisor.sandbox.image import sandboxes_dir

            progress(f"host {self.host.name}: building sandbox image {tag} there (minutes)")
            result = await build_image(self, sandboxes_dir() / "default", tag, progress)
            if result:
                return f"image {tag} is not on the host and building it there failed: {result}"
            self._built.add(tag)
            return ""

    async def run(
        self,
        command: str,
        *,
        stdin: bytes | IO[bytes] | None = None,
        out: hosts.Sink | None = None,
        timeout: float = IO_TIMEOUT_S,
    ) -> hosts.Result:
        """A one-off command on its own channel (files, kills, docker)."""

        def call(lane: _Lane) -> hosts.Result:
            # A refused open raises before any of stdin is read: asking again is safe.
            try:
                return hosts.run(lane.conn, command, timeout=timeout, stdin=stdin, out=out)
            except hosts.HostLost as exc:
                # The connection is gone (hosts.run closes one that stopped answering):
                # the commands of the other channels on it are told why, too.
                lane.lost_reason = lane.lost_reason or str(exc)
                raise

        await self.ensure()
        try:
            lane, result = await self._on_a_lane(False, call)
        except hosts.HostLost as exc:
            self.lost_reason = self.lost_reason or str(exc)
            raise SandboxError(self.lost_reason) from None
        self._unslot(lane, False)
        return result

    async def release(self) -> None:
        """One sandbox fewer on this host; the last one closes the connections."""
        self.users -= 1
        if self.users > 0:
            return
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        lanes, self.lanes = self.lanes, []
        for lane in lanes:
            await asyncio.to_thread(lane.close)


async def host_down(name: str) -> str:
    """Why host NAME cannot be reached now, or "" when it can: a connection the
    sandboxes here share is up, or a new one can be made (the placement watcher asks this
    every few seconds of the hosts that run agents)."""
    link = HostLink._links.get(asyncio.get_running_loop(), {}).get(name)
    if link is not None and link.connected:
        return ""
    try:
        host = await asyncio.to_thread(hosts.get_host, name)
        probe = await asyncio.to_thread(hosts.connect, host)
    except (hosts.HostError, OSError) as exc:
        return (link.lost_reason + "; " if link is not None and link.lost_reason else "") + str(exc)
    await asyncio.to_thread(probe.close)
    return ""


class _Lines(io.RawIOBase):
    """A write-only stream handing each complete line to a callback (build progress)."""

    def __init__(self, line: Any) -> None:
        self._line = line
        self._buf = b""
        self.tail: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buf += bytes(data)
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            text = raw.decode(errors="replace").strip()
            if text:
                self.tail = [*self.tail[-4:], text]
                self._line(text)
        return len(data)


async def build_image(link: HostLink, context: Path, tag: str, progress: Any) -> str:
    """``docker build`` on the host from a local build context streamed through our
    channel (the host's own architecture; its engine pulls the base image). Empty on
    success, else the build's last line."""
    with tempfile.TemporaryFile() as spool:
        # GNU format: the docker CLI takes a stream starting with a pax header for a
        # Dockerfile, not a build context.
        with tarfile.open(fileobj=spool, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for child in sorted(context.iterdir()):
                tar.add(child, arcname=child.name)
        spool.seek(0)
        lines = _Lines(lambda text: progress(f"host {link.host.name}: {text}"))
        command = f"docker build -t {shlex.quote(tag)} - 2>&1"
        result = await link.run(command, stdin=spool, out=lines, timeout=BUILD_TIMEOUT_S)
    if result.timed_out:
        return f"no result within {BUILD_TIMEOUT_S:.0f} s"
    if result.exit_code != 0:
        return (lines.tail[-1] if lines.tail else f"exit code {result.exit_code}")[:300]
    return ""


def _log(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


class _ChannelShell:
    """A bash on an SSH channel, as the shell protocol's transport.

    Reads are event-driven: paramiko signals a pipe when either stream has data, and the
    event loop drains both — no thread per channel, and a round trip costs well under a
    millisecond on a fast link.
    """

    def __init__(self, chan: paramiko.Channel, release: Any, lane: _Lane | None = None) -> None:
        self.chan = chan
        self.lane = lane
        self._release = release
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._fd = chan.fileno()
        self._done = False
        self._loop.add_reader(self._fd, self._drain)
        self._drain()

    def _drain(self) -> None:
        chan = self.chan
        while chan.recv_ready():
            self._queue.put_nowait((STDOUT, chan.recv(256 * 1024)))
        while chan.recv_stderr_ready():
            self._queue.put_nowait((STDERR, chan.recv_stderr(256 * 1024)))
        ended = chan.closed or chan.eof_received
        if ended and not (chan.recv_ready() or chan.recv_stderr_ready()):
            self._finish()

    @property
    def ended(self) -> bool:
        return self._done or self.chan.closed

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._loop.remove_reader(self._fd)
        self._queue.put_nowait(None)

    async def send(self, data: bytes) -> None:
        if self.chan.closed:
            raise OSError("the channel is closed")
        if len(data) < 32 * 1024:
            self.chan.sendall(data)
        else:
            await asyncio.to_thread(self.chan.sendall, data)

    async def recv(self) -> tuple[int, bytes] | None:
        frame = await self._queue.get()
        if frame is None:
            self._queue.put_nowait(None)
        return frame

    async def close(self) -> None:
        # Closed at once, never first an EOF for bash to exit on (which sshd would count
        # less): paramiko may send that EOF after our reply to sshd's CLOSE if bash ends
        # meanwhile, and sshd then drops the whole connection. A channel open that sshd
        # refuses while it still counts this session is asked for again instead.
        self._finish()
        self.chan.close()
        if self._release is not None:
            release, self._release = self._release, None
            release()


# -- the sandbox


class _ChannelReaper:
    """A :class:`~supervisor.sandbox.shell.Reaper` that reaches the agent's machine on a
    one-off channel of the host's connection, outside the agent's shell (which a command
    could have tampered with): a channel open (~40 ms) per command given a timeout, and
    no channel held while idle, so a host still serves as many agents as before."""

    def __init__(self, link: Any, wrap: Callable[[list[str]], str], *, orphans: bool) -> None:
        self._link, self._wrap, self._orphans = link, wrap, orphans

    async def _bash(self, script: str) -> str:
        result = await self._link.run(
            self._wrap(["bash", "--noprofile", "--norc", "-c", REAPER_FUNCTIONS + script]),
            timeout=60,
        )
        if result.exit_code != 0:
            raise SandboxError(f"cannot reach the agent's processes: {result.stderr[-300:]}")
        return str(result.stdout).strip()

    async def mark(self) -> str:
        return await self._bash("__sv_mark")

    async def kill(self, mark: str, shell_pid: int) -> int:
        since, lastpid = mark.split()
        orphans = 1 if self._orphans else 0
        return int(await self._bash(f"__sv_kill {int(since)} {int(lastpid)} {shell_pid} {orphans}"))

    async def kill_shell(self, shell_pid: int) -> None:
        await self._bash(f"kill -KILL {int(shell_pid)}")


class SSHSandbox(Sandbox):
    """An agent's sandbox on a remote host: a container there, or a folder."""

    backend = "ssh"

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        host: str = "",
        spool_dir: Path | None = None,
        progress: Any = None,
    ) -> None:
        super().__init__(spec)
        self.host_name = host or spec.labels.get(HOST_LABEL, "")
        self._spool_dir = spool_dir
        self._progress = progress or _log
        self.mode = ""  # container | folder
        self.note = ""  # said to the person: where and how isolated
        self.container = ""  # container id (container mode)
        self.root = ""  # the sandbox folder on the host (folder mode)
        self._link: HostLink | None = None
        self._shell: PersistentShell | None = None
        self._channel: _ChannelShell | None = None  # the shell's current channel

    @property
    def isolated(self) -> bool:  # type: ignore[override]
        return self.mode != "folder"

    @property
    def id(self) -> str:
        if self.mode == "container":
            return f"ssh:{self.host_name}:container:{self.container}"
        if self.mode == "folder":
            return f"ssh:{self.host_name}:folder:{self.root}"
        return ""

    @property
    def workdir(self) -> str:  # type: ignore[override]
        return f"{self.root}/workspace" if self.mode == "folder" else "/workspace"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "host": self.host_name, "mode": self.mode, "note": self.note}

    @classmethod
    def attach(cls, sandbox_id: str) -> SSHSandbox:
        """A sandbox object for an existing sandbox on a host (re-adoption, agent diff);
        it connects on first use."""
        m = re.fullmatch(r"ssh:([^:]+):(container|folder):(.+)", sandbox_id)
        if not m:
            raise SandboxError(f"not an ssh sandbox id: {sandbox_id!r}")
        sandbox = cls(SandboxSpec(run_id="", agent_id=""), host=m[1])
        sandbox.mode = m[2]
        if sandbox.mode == "container":
            sandbox.container = m[3]
        else:
            sandbox.root = m[3]
        sandbox.note = sandbox._describe_mode()
        return sandbox

    # -- lifecycle

    async def _ensure_link(self) -> HostLink:
        if self._link is None:
            if not self.host_name:
                raise SandboxError("an ssh sandbox needs a host (supervisor run --host NAME)")
            host = await asyncio.to_thread(hosts.get_host, self.host_name)
            self._link = HostLink.get(host)
            self._link.users += 1
        await self._link.ensure()
        return self._link

    async def start(self) -> None:
        from supervisor.sandbox import workspace

        if self.spec.workspace is not None:
            workspace.check(self.spec.workspace)
        link = await self._ensure_link()
        try:
            why_not = await self._container_possible(link)
            if why_not:
                await self._make_folder(link)
                self.note = self._describe_mode(why_not)
            else:
                await self._make_container(link)
                self.note = self._describe_mode()
            await self._open_shell()
            await self._prepare()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy()
            raise

    def _describe_mode(self, why_not: str = "") -> str:
        if self.mode == "container":
            return f"in a container on host {self.host_name} (isolated)"
        reason = f" ({why_not})" if why_not else ""
        return (
            f"in folder {self.root} on host {self.host_name}, NOT isolated from that "
            f"account{reason}"
        )

    def _image(self) -> str:
        from supervisor.sandbox.image import default_image_tag

        return self.spec.image or default_image_tag()

    async def _container_possible(self, link: HostLink) -> str:
        """Empty when a container can be made on the host, else why not (one round trip)."""
        image = self._image()
        script = (
            "command -v docker >/dev/null 2>&1 || { echo 'no docker on the host'; exit 0; }; "
            "timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || "
            "{ echo 'its Docker engine does not answer this user'; exit 0; }; "
            f"timeout 20 docker image inspect {shlex.quote(image)} >/dev/null 2>&1 || "
            f"{{ echo '{MISSING_IMAGE}'; exit 0; }}; "
        )
        if self.spec.gpus:
            script += (
                "timeout 20 docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' "
                "| grep -qw nvidia || echo 'its Docker engine has no NVIDIA runtime'"
            )
        result = await link.run(script, timeout=90)
        why_not = result.stdout.strip()
        if why_not.startswith(MISSING_IMAGE):
            if self.spec.image:  # the person named it: theirs to provide
                return f"image {image} is not on the host"
            why_not = await link.build_default_image(image, self._progress)
        return why_not

    def _labels(self) -> dict[str, str]:
        from supervisor.sandbox.docker import LABEL, home_label

        labels = {
            f"{LABEL}.managed": "1",
            f"{LABEL}.home": home_label(),
            f"{LABEL}.run": self.spec.run_id,
            f"{LABEL}.agent": self.spec.agent_id,
            f"{LABEL}.network": "1" if self.spec.network else "0",
            HOST_LABEL: self.host_name,
        }
        labels.update({k: v for k, v in self.spec.labels.items() if k != HOST_LABEL})
        return labels

    async def _make_container(self, link: HostLink) -> None:
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", self.spec.agent_id).strip("-.")[:24]
        suffix = os.urandom(3).hex()
        run = re.sub(r"[^a-zA-Z0-9]+", "", self.spec.run_id)[:8] or "run"
        name, volume = f"sv-{run}-{slug or 'agent'}-{suffix}", f"sv-ws-{slug or 'agent'}-{suffix}"
        labels = [a for k, v in self._labels().items() for a in ("--label", f"{k}={v}")]
        create = ["docker", "volume", "create", *labels, volume]
        run_args = [
            "docker", "run", "--detach", "--init", "--name", name, *labels,
            "--user", USER, "--workdir", "/workspace", "--env", "HOME=/tmp/home",
            "--hostname", "sandbox", "--read-only",
            "--tmpfs", "/tmp:rw,nosuid,nodev,size=1g",
            "--volume", f"{volume}:/workspace:rw",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", "bridge" if self.spec.network else "none",
            "--memory", self.spec.memory, "--memory-swap", self.spec.memory,
            "--cpus", f"{self.spec.cpus:g}", "--pids-limit", str(self.spec.pids),
        ]  # fmt: skip
        if self.spec.gpus:
            run_args += ["--gpus", "all"]
        run_args += [self._image(), "sandbox-idle", "infinity"]
        script = f"{shlex.join(create)} >/dev/null && {shlex.join(run_args)}"
        result = await link.run(script, timeout=120)
        cid = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{64}", cid):
            await link.run(f"docker volume rm -f {shlex.quote(volume)} >/dev/null 2>&1; true")
            raise SandboxError(
                f"host {self.host_name}: cannot start a sandbox container: "
                f"{result.stderr.strip()[-300:] or result.stdout.strip()[-300:]}"
            )
        self.mode, self.container = "container", cid

    async def _make_folder(self, link: HostLink) -> None:
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", self.spec.agent_id).strip("-.")[:40]
        script = (
            'umask 077; base="$HOME/.supervisor/sandboxes"; mkdir -p "$base" && '
            f'root=$(mktemp -d "$base/{slug or "sandbox"}-XXXXXX") && '
            'mkdir "$root/workspace" "$root/home" && printf "%s\\n" "$root"'
        )
        result = await link.run(script, timeout=60)
        if result.exit_code != 0 or not result.stdout.strip():
            raise SandboxError(
                f"host {self.host_name}: cannot make a sandbox folder: {result.stderr.strip()}"
            )
        self.mode, self.root = "folder", result.stdout.strip()

    async def _prepare(self) -> None:
        from supervisor.sandbox import workspace

        if self.spec.workspace is not None:
            tmp, staged = workspace.stage(self.spec.workspace, self.spec.agent_id)
            with tmp:
                await self.copy_in(staged, self.workdir)
        script = workspace.init_script(self.spec.agent_id or "agent")
        script = script.replace("cd /workspace", f"cd {shlex.quote(self.workdir)}")
        result = await self.exec(script)
        if not result.ok:
            raise SandboxError(
                f"host {self.host_name}: workspace setup failed: {result.stderr.strip()[-500:]}"
            )

    def _shell_command(self) -> str:
        if self.mode == "container":
            return self._wrap(["bash", "--noprofile", "--norc"])
        ws, home = shlex.quote(f"{self.root}/workspace"), shlex.quote(f"{self.root}/home")
        # Only PATH (where the host's tools are) comes from the login; no profile runs.
        return (
            f'cd {ws} && exec env -i PATH="$PATH" LANG=C.UTF-8 HOME={home} bash --noprofile --norc'
        )

    def _wrap(self, argv: list[str]) -> str:
        """A one-off command line running ``argv`` where the agent's commands run."""
        if self.mode == "container":
            return shlex.join(
                ["docker", "exec", "-i", "-u", USER, "-w", "/workspace", self.container, *argv]
            )
        return f"cd {shlex.quote(self.workdir)} && {shlex.join(argv)}"

    async def _open_shell(self) -> None:
        link = await self._ensure_link()
        env = dict(self.spec.env)
        if self.spec.gpus:
            # The GPUs placed for this sandbox (the container sees the host's every GPU,
            # with the host's numbering): CUDA programs use these only.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.spec.gpus)
        # Exported through the shell's stdin, never a command line other users could see.
        exports = "".join(f"export {k}={quote(v)}\n" for k, v in env.items())

        async def open_transport() -> _ChannelShell:
            lane, chan = await link.open_shell(self._shell_command())
            shell = self._channel = _ChannelShell(chan, lambda: link.shell_closed(lane), lane)
            if exports:
                await shell.send(exports.encode())
            return shell

        self._shell = PersistentShell(
            f"{self.host_name}-{self.spec.agent_id or 'sandbox'}",
            open_transport,
            # In a container every orphan is the agent's; in a folder on a machine others
            # use, only the shell's own descendants are.
            _ChannelReaper(link, self._wrap, orphans=self.mode == "container"),
            spool_dir=self._spool_dir,
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
        if not self.mode:
            raise SandboxError("sandbox is not started")
        link = await self._ensure_link()
        reopened = False
        if self._shell is not None and self._channel is not None and self._channel.ended:
            # The connection was lost while the shell was idle: a new one, said so below.
            await self._shell.close()
            self._shell, reopened = None, True
        if self._shell is None:
            try:
                await self._open_shell()
            except SandboxError:
                await self._check_exists(link)
                raise
        assert self._shell is not None
        result = await self._shell.run(command, timeout=timeout, env=env, cwd=cwd)
        lane = self._channel.lane if self._channel is not None else None
        if result.exit_code == -1 and not result.timed_out and lane is not None and not lane.active:
            # The connection died under the command: say so; the next command reconnects.
            why = lane.lost_reason or f"the connection to host {self.host_name} closed"
            raise SandboxError(f"{why}; the command's outcome is unknown")
        if reopened:
            note = (
                f"[the connection to host {self.host_name} was lost and made again; "
                "cwd and variables were reset]\n"
            )
            result = dataclasses.replace(result, stderr=note + result.stderr)
        return result

    async def _check_exists(self, link: HostLink) -> None:
        """Say plainly when the sandbox is gone (removed on the host, or by a prune)."""
        if self.mode == "container":
            probe = f"docker inspect -f '{{{{.State.Running}}}}' {shlex.quote(self.container)}"
            gone = (await link.run(probe, timeout=60)).stdout.strip() != "true"
            what = f"container {self.container[:12]}"
        else:
            gone = (await link.run(f"test -d {shlex.quote(self.workdir)}")).exit_code != 0
            what = f"folder {self.root}"
        if gone:
            raise SandboxError(f"sandbox {what} on host {self.host_name} no longer exists")

    async def stop(self) -> None:
        if self._shell is not None:
            await self._shell.close()
            self._shell = None
        if self.mode == "container" and self._link is not None:
            with contextlib.suppress(SandboxError, hosts.HostError):
                await self._link.run(f"docker stop -t 5 {self.container} >/dev/null", timeout=60)

    async def destroy(self) -> None:
        if self._shell is not None:
            await self._shell.close()
            self._shell = None
        if self.mode and self.host_name:
            link = await self._ensure_link()
            if self.mode == "container":
                cid = shlex.quote(self.container)
                await link.run(
                    f"vols=$(docker inspect -f '{{{{range .Mounts}}}}{{{{.Name}}}} "
                    f"{{{{end}}}}' {cid} 2>/dev/null); docker rm -f {cid} >/dev/null 2>&1; "
                    'for v in $vols; do docker volume rm -f "$v" >/dev/null 2>&1; done; true',
                    timeout=120,
                )
            elif self.root:
                await link.run(f"rm -rf -- {shlex.quote(self.root)}", timeout=300)
        if self._link is not None:
            link, self._link = self._link, None
            await link.release()

    # -- files (each a one-off command on its own channel)

    def _path(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir}/{path}"

    async def _io(
        self,
        argv: list[str],
        *,
        stdin: bytes | IO[bytes] | None = None,
        out: IO[bytes] | None = None,
    ) -> hosts.Result:
        link = await self._ensure_link()
        return await link.run(self._wrap(argv), stdin=stdin, out=out)

    async def read_file(self, path: str) -> bytes:
        out = io.BytesIO()
        result = await self._io(["cat", "--", self._path(path)], out=out)
        if result.exit_code != 0:
            raise SandboxError(f"cannot read {path}: {result.stderr.strip()}")
        return out.getvalue()

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"'
        result = await self._io(
            ["sh", "-c", script, "sh", self._path(path), f"{mode:o}"], stdin=data
        )
        if result.exit_code != 0:
            raise SandboxError(f"cannot write {path}: {result.stderr.strip()}")

    async def list_files(self, path: str) -> list[FileInfo]:
        out = io.BytesIO()
        found = ["find", self._path(path), "-mindepth", "1", "-maxdepth", "1"]
        result = await self._io([*found, "-printf", r"%y %s %m %p\0"], out=out)
        if result.exit_code != 0:
            raise SandboxError(f"cannot list {path}: {result.stderr.strip()}")
        kinds = {"f": "file", "d": "dir", "l": "link"}
        entries = []
        for record in out.getvalue().split(b"\0"):
            if record:
                kind, size, mode, name = record.decode(errors="replace").split(" ", 3)
                entries.append(FileInfo(name, kinds.get(kind, "other"), int(size), int(mode, 8)))
        return sorted(entries, key=lambda e: e.path)

    async def copy_in(self, source: Path, dest: str) -> None:
        from supervisor.sandbox.docker import _owned_by_agent

        owner = _owned_by_agent if self.mode == "container" else None
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w|") as tar:
                children = sorted(source.iterdir()) if source.is_dir() else [source]
                for child in children:
                    tar.add(child, arcname=child.name, filter=owner)
            spool.seek(0)
            script = 'mkdir -p -- "$1" && tar -x --no-same-owner -C "$1"'
            result = await self._io(["sh", "-c", script, "sh", self._path(dest)], stdin=spool)
        if result.exit_code != 0:
            raise SandboxError(f"cannot copy into {dest}: {result.stderr.strip()}")

    async def copy_out(self, source: str, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            result = await self._io(["tar", "-c", "-C", self._path(source), "."], out=spool)
            if result.exit_code != 0:
                raise SandboxError(f"cannot copy out {source}: {result.stderr.strip()}")
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                tar.extractall(dest, filter="data")
