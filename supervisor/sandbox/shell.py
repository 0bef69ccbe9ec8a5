"""A persistent shell driven over a byte stream, shared by the sandbox backends.

One ``bash`` per sandbox reads commands from its stdin. Each command is sent as one line:
its text as an ANSI-C quoted string (``$'...'``, every unsafe byte escaped, so the line
cannot be cut short by what the command contains), run with ``eval`` so ``cd`` and
``export`` persist, with stdin from /dev/null so it cannot eat the next command. After it,
the shell prints an end marker carrying a fresh random nonce and the exit status on stdout,
and another end marker on stderr; output can therefore never fake the end of a command.

A command's output is kept bounded: the head and tail of each stream in memory, the full
output spooled to a host file (up to a limit) once it passes the cap.

On timeout, every process the command started is killed from outside the agent's shell, by
a :class:`Reaper` the agent cannot fool: the start of each command (clock tick and last
pid) is taken by the reaper and kept in the supervisor's memory, the command's processes
are stopped first (so a fork bomb cannot outrun the kill) and then killed, and processes
that escaped the shell's tree (``setsid``, double forks) are found by start time too.
Background jobs of earlier commands survive. A command that keeps the shell itself busy
(a builtin loop) gets the shell killed and restarted, and the result says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Protocol

from supervisor.sandbox.base import SAVED_LIMIT as SPOOL_LIMIT
from supervisor.sandbox.base import ExecResult, SandboxError

STDOUT, STDERR = 1, 2
DEFAULT_CAP = 32 * 1024  # bytes kept per stream (half head, half tail)
KILL_GRACE_S = 2.0  # a killed command's shell answers at once, or is itself stuck
START_TIMEOUT_S = 30.0  # a shell that has not answered by then never will


class Transport(Protocol):
    """A running ``bash`` reading our stdin; frames come back tagged by stream."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> tuple[int, bytes] | None:
        """The next ``(stream, bytes)`` frame, or None once the shell has exited."""
        ...

    async def close(self) -> None: ...


def quote(command: str) -> str:
    """``command`` as a bash ANSI-C string: printable ASCII kept, everything else \\xHH."""
    data = command.encode("utf-8", errors="surrogateescape")
    if b"\0" in data:
        raise ValueError("a command cannot contain a NUL byte")
    out = []
    for b in data:
        if 0x20 <= b < 0x7F and b not in (0x27, 0x5C):  # ' and \
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"


class Unstoppable(SandboxError):
    """A timed-out command could not be killed (its reaper is gone and cannot come back):
    the backend must stop it some other way (restart the sandbox)."""


class Reaper(Protocol):
    """Marks the start of a command and kills what it started, from outside its shell."""

    async def mark(self) -> str:
        """The clock tick and last pid handed out now, as ``"TICK PID"``."""
        ...

    async def kill(self, mark: str, shell_pid: int) -> int:
        """Stop, then kill, every process started after ``mark`` under ``shell_pid`` (or
        orphaned from it); how many were killed. Raises SandboxError if it cannot."""
        ...

    async def kill_shell(self, shell_pid: int) -> None:
        """Kill the shell itself (a command keeps it busy)."""
        ...


# The reaper's functions, for a bash in the same pid namespace as the agent's processes.
# Only builtins: under a fork bomb at the pids limit nothing new can start, and the reaper
# was started before. A process is the command's if it started after the mark (a later
# tick, or the same tick with a higher pid: ticks are 10 ms and commands run back to back)
# and its parents lead to the agent's shell or to PID 1 (orphans, setsid). Processes of
# other execs (file copies, a person's `sandbox shell`) lead to PID 0 and are spared.
# On a machine others share (orphans=0) only the shell's own descendants are taken.
# Everything found is stopped first, again until no new one appears, then killed. A killed
# process takes a moment to die (longer on a loaded machine); the caller calls again until
# none is left alive, so that the command's processes are gone when its result returns.
REAPER_FUNCTIONS = r"""
__sv_mark() {
  local up x lp
  read -r up x </proc/uptime; read -r lp </proc/sys/kernel/ns_last_pid; echo "${up/./} $lp"
}
__sv_kill() {
  local since=$1 lastpid=$2 shell=$3 orphans=${4:-1} round d p line c new
  local -A parent stopped
  local -a f cands
  for ((round = 0; round < 500; round++)); do
    parent=(); cands=()
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      [[ $p == "$$" ]] && continue
      read -r line <"$d/stat" 2>/dev/null || continue
      set -f; f=(${line##*) }); set +f
      parent[$p]=${f[1]}
      [[ ${f[0]} == [ZX] ]] && continue  # already dead, waiting to be reaped
      if (( f[19] > since || (f[19] == since && p > lastpid) )); then cands+=("$p"); fi
    done
    new=0
    for p in "${cands[@]}"; do
      [[ -n ${stopped[$p]} ]] && continue
      c=$p
      while [[ $c != "$shell" && $c != 1 && $c != 0 && -n ${parent[$c]} ]]; do c=${parent[$c]}; done
      if [[ $c == "$shell" || ( $orphans == 1 && $c == 1 ) ]]; then
        kill -STOP "$p" 2>/dev/null; stopped[$p]=1; new=1
      fi
    done
    (( new )) || break
  done
  for p in "${!stopped[@]}"; do kill -KILL "$p" 2>/dev/null; done
  echo "${#stopped[@]}"
}
"""


class ShellReaper:
    """A :class:`Reaper` that is a second persistent bash beside the agent's (started with
    the sandbox, before any command), driven over its own transport."""

    def __init__(
        self,
        name: str,
        open_transport: Callable[[], Awaitable[Transport]],
        *,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self._shell = PersistentShell(
            f"{name}-reaper", open_transport, None, start_timeout=start_timeout
        )
        self._ready = False

    async def start(self) -> None:
        await self._shell.start()
        self._ready = False
        await self._call(REAPER_FUNCTIONS)
        self._ready = True

    async def _call(self, script: str) -> str:
        if not self._ready and script is not REAPER_FUNCTIONS:
            await self.start()
        result = await self._shell.run(script, timeout=60)
        if result.exit_code != 0:
            self._ready = False
            await self._shell.close()
            raise SandboxError(
                f"sandbox {self._shell.name}: {result.stderr.strip()[-300:] or 'no answer'}"
            )
        return result.stdout.strip()

    async def mark(self) -> str:
        return await self._call("__sv_mark")

    async def kill(self, mark: str, shell_pid: int) -> int:
        since, lastpid = mark.split()
        return int(await self._call(f"__sv_kill {int(since)} {int(lastpid)} {int(shell_pid)}"))

    async def kill_shell(self, shell_pid: int) -> None:
        await self._call(f"kill -KILL {int(shell_pid)}")

    async def close(self) -> None:
        self._ready = False
        await self._shell.close()


class _Sink:
    """Collects one stream: head and tail in memory, the rest spooled once past the cap."""

    def __init__(self, cap: int, spool: Callable[[], IO[bytes]] | None) -> None:
        self.half = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self._open_spool = spool
        self.spool: IO[bytes] | None = None
        self.spooled = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if len(self.head) < self.half:
            take = self.half - len(self.head)
            self.head += data[:take]
            data = data[take:]
        if self.spool is None and self.total > 2 * self.half and self._open_spool:
            self.spool = self._open_spool()
            self.spool.write(bytes(self.head) + bytes(self.tail))
            self.spooled = len(self.head) + len(self.tail)
        if self.spool is not None and self.spooled < SPOOL_LIMIT:
            chunk = data[: SPOOL_LIMIT - self.spooled]
            self.spool.write(chunk)
            self.spooled += len(chunk)
        self.tail += data
        if len(self.tail) > self.half:
            del self.tail[: len(self.tail) - self.half]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
        skipped = self.total - len(self.head) - len(self.tail)
        return (
            bytes(self.head).decode("utf-8", errors="replace")
            + f"\n[... {skipped} bytes cut; full output saved ...]\n"
            + bytes(self.tail).decode("utf-8", errors="replace")
        )

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


class _Scanner:
    """Finds an end marker in a stream, passing everything before it to a sink."""

    def __init__(self, marker: bytes, sink: _Sink) -> None:
        self.marker = marker
        self.sink = sink
        self.pending = b""
        self.found = False
        self.after = b""  # bytes after the marker (the exit status, for stdout)

    def feed(self, data: bytes) -> None:
        if self.found:
            self.after += data
            return
        self.pending += data
        idx = self.pending.find(self.marker)
        if idx >= 0:
            self.sink.write(self.pending[:idx])
            self.after = self.pending[idx + len(self.marker) :]
            self.pending = b""
            self.found = True
            return
        keep = len(self.marker) - 1
        if len(self.pending) > keep:
            self.sink.write(self.pending[:-keep] if keep else self.pending)
            self.pending = self.pending[-keep:] if keep else b""


class PersistentShell:
    """Runs commands one at a time in a long-lived shell reached through a transport."""

    def __init__(
        self,
        name: str,
        open_transport: Callable[[], Awaitable[Transport]],
        reaper: Reaper | None,
        *,
        spool_dir: Path | None = None,
        cap: int = DEFAULT_CAP,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self._open = open_transport
        self._reaper = reaper
        self._spool_dir = spool_dir
        self._cap = cap
        self._transport: Transport | None = None
        self._lock = asyncio.Lock()
        self.pid = 0
        self._count = 0
        self._spool_name = ""

    async def start(self) -> None:
        """Open the shell and wait for its ready marker, at most ``start_timeout`` seconds
        (a shell stuck in its startup files would otherwise hang the agent forever)."""
        transport = await self._open()
        try:
            self.pid = await asyncio.wait_for(self._handshake(transport), self.start_timeout)
        except TimeoutError:
            await transport.close()
            raise SandboxError(
                f"sandbox {self.name}: its shell did not answer within {self.start_timeout:g} s"
            ) from None
        except BaseException:
            await transport.close()
            raise
        self._transport = transport

    async def _handshake(self, transport: Transport) -> int:
        nonce = secrets.token_hex(16)
        # HOME may point into a fresh tmpfs (the Docker sandbox's /tmp/home).
        await transport.send(
            f'mkdir -p "$HOME" 2>/dev/null; printf \'__SV_READY_{nonce}_%s__\\n\' "$$"\n'.encode()
        )
        marker = f"__SV_READY_{nonce}_".encode()
        buf = b""
        while marker not in buf or not buf.endswith(b"__\n"):
            frame = await transport.recv()
            if frame is None:
                raise SandboxError(f"sandbox {self.name}: its shell exited at start")
            if frame[0] == STDOUT:
                buf += frame[1]
        return int(buf.split(marker, 1)[1][:-3])

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        async with self._lock:
            if self._transport is not None and getattr(self._transport, "eof", False):
                await self._reset("its shell had exited")  # a command sent now never runs
            if self._transport is None:
                await self.start()
            return await self._run(command, timeout=timeout, env=env, cwd=cwd)

    async def _run(
        self, command: str, *, timeout: float | None, env: dict[str, str] | None, cwd: str | None
    ) -> ExecResult:
        assert self._transport is not None
        self._count += 1
        nonce = secrets.token_hex(16)
        # Unique per command, also across shells of one sandbox (a restarted shell counts
        # from 1 again).
        self._spool_name = f"{self.name}-{self._count:05d}-{nonce[:6]}"
        out_sink = _Sink(self._cap, self._spooler(STDOUT))
        err_sink = _Sink(self._cap, self._spooler(STDERR))
        out = _Scanner(f"__SV_{nonce}_".encode(), out_sink)
        err = _Scanner(f"__SV_{nonce}__\n".encode(), err_sink)
        body = quote(command)
        if env or cwd:
            prefix = "".join(f"export {k}={quote(v)}; " for k, v in (env or {}).items())
            if cwd:
                prefix += f"cd -- {quote(cwd)} && "
            body = quote(prefix + f"eval {body}")
            line = f"( eval {body} ) </dev/null"
        else:
            line = f"eval {body} </dev/null"
        script = f"{line}; printf '__SV_{nonce}_%d__\\n' \"$?\"; printf '__SV_{nonce}__\\n' >&2\n"
        start = time.perf_counter()
        timed_out = False
        exit_code: int | None = None
        note = "the sandbox shell exited"
        # The command's start is taken outside its shell, where it cannot be rewritten.
        mark = await self._mark() if timeout is not None else ""
        try:
            await self._transport.send(script.encode())
            try:
                exit_code = await asyncio.wait_for(self._collect(out, err), timeout)
            except TimeoutError:
                timed_out = True
                exit_code, note = await self._kill_command(mark, out, err)
        except Unstoppable:
            await self._reset("its command cannot be stopped")
            raise
        except (OSError, SandboxError) as exc:
            await self._reset(str(exc))
        finally:
            out_sink.close()
            err_sink.close()
        if exit_code is None:
            # The shell died under the command (exit, a killed sandbox) or was killed with
            # it: start afresh next time, and say so in stderr.
            err_sink.write(f"\n[{note}; cwd and variables were reset]\n".encode())
            exit_code = -1
        spooled = out_sink.spool is not None or err_sink.spool is not None
        return ExecResult(
            exit_code=exit_code,
            stdout=out_sink.text(),
            stderr=err_sink.text(),
            duration_s=time.perf_counter() - start,
            timed_out=timed_out,
            stdout_truncated=out_sink.truncated,
            stderr_truncated=err_sink.truncated,
            output_path=self._spool_base() if spooled else None,
            stdout_bytes=out_sink.total,
            stderr_bytes=err_sink.total,
        )

    async def _mark(self) -> str:
        if self._reaper is None:
            return ""
        try:
            try:
                return await self._reaper.mark()
            except SandboxError:
                return await self._reaper.mark()  # the reaper starts afresh once
        except SandboxError as exc:
            raise SandboxError(f"nothing could stop this command on timeout: {exc}") from None

    async def _kill_command(
        self, mark: str, out: _Scanner, err: _Scanner
    ) -> tuple[int | None, str]:
        """Kill a timed-out command's processes; if the shell itself stays busy, kill it
        too. The exit status (None once the shell is gone) and what happened."""
        if self._reaper is not None and mark:
            try:
                try:
                    await self._kill_until_gone(mark)
                except SandboxError:
                    await self._kill_until_gone(mark)  # the reaper starts afresh once
                return await asyncio.wait_for(self._collect(out, err), KILL_GRACE_S), ""
            except SandboxError as exc:
                raise Unstoppable(f"cannot stop the timed-out command: {exc}") from None
            except TimeoutError:
                # Nothing left to kill but the shell itself: a builtin loop spins in it.
                with contextlib.suppress(OSError, SandboxError):
                    await self._reaper.kill_shell(self.pid)
        await self._reset("its command could not be stopped alone")
        return None, "the command kept the sandbox shell busy, so the shell was killed too"

    async def _kill_until_gone(self, mark: str) -> None:
        """Kill the command's processes, and again until none is left alive (dying ones
        included), within :data:`KILL_GRACE_S`."""
        assert self._reaper is not None
        deadline = time.monotonic() + KILL_GRACE_S
        while await self._reaper.kill(mark, self.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _collect(self, out: _Scanner, err: _Scanner) -> int | None:
        """Read frames until both end markers arrived; the exit status, or None at EOF."""
        assert self._transport is not None
        while not (out.found and out.after.endswith(b"__\n") and err.found):
            frame = await self._transport.recv()
            if frame is None:
                await self._reset("shell exited")
                return None
            stream, data = frame
            (out if stream == STDOUT else err).feed(data)
        return int(out.after[:-3])

    async def _reset(self, why: str) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    def _spool_base(self) -> Path | None:
        if self._spool_dir is None:
            return None
        return self._spool_dir / self._spool_name

    def _spooler(self, stream: int) -> Callable[[], IO[bytes]] | None:
        if self._spool_dir is None:
            return None

        def open_spool() -> IO[bytes]:
            assert self._spool_dir is not None
            self._spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            base = self._spool_base()
            suffix = "stdout" if stream == STDOUT else "stderr"
            return open(f"{base}.{suffix}", "wb")

        return open_spool
