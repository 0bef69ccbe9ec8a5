"""A persistent shell driven over a byte stream, shared by the sandbox backends.

One ``bash`` per sandbox reads commands from its stdin. Each command is sent as one line:
its text as an ANSI-C quoted string (``$'...'``, every unsafe byte escaped, so the line
cannot be cut short by what the command contains), run with ``eval`` so ``cd`` and
``export`` persist, with stdin from /dev/null so it cannot eat the next command. After it,
the shell prints an end marker carrying a fresh random nonce and the exit status on stdout,
and another end marker on stderr; output can therefore never fake the end of a command.

A command's output is kept bounded: the head and tail of each stream in memory, the full
output spooled to a host file (up to a limit) once it passes the cap.

On timeout, every process the command started (found by start time under the shell, so
background jobs of earlier commands survive) is killed; the shell stays usable.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Protocol

from supervisor.sandbox.base import ExecResult, SandboxError

STDOUT, STDERR = 1, 2
DEFAULT_CAP = 32 * 1024  # bytes kept per stream (half head, half tail)
SPOOL_LIMIT = 100 * 1024 * 1024  # most bytes of full output saved per stream
KILL_GRACE_S = 5.0
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


def kill_script(shell_pid: int, since_file: str) -> str:
    """A POSIX sh script that kills the shell's descendants started by the current command.

    ``since_file`` holds the clock tick and the last pid handed out when the command began
    (written by the shell). A process is the command's if it started in a later tick, or
    in that same tick with a higher pid: ticks are 10 ms, and commands run back to back
    often share one. The sweep repeats so processes forked during the kill are caught.
    """
    return (
        f"read since lastpid < {since_file} 2>/dev/null || since=0 lastpid=0; "
        'tree() { for c in $(pgrep -P "$1"); do echo "$c"; tree "$c"; done; }; '
        "for round in 1 2 3; do "
        f"  for p in $(tree {shell_pid}); do "
        "    st=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f20); "
        '    [ -n "$st" ] || continue; '
        '    if [ "$st" -gt "$since" ] || { [ "$st" -eq "$since" ] && [ "$p" -gt "$lastpid" ]; }; '
        '    then kill -KILL "$p" 2>/dev/null; fi; '
        "  done; "
        "done; true"
    )


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
        run_kill: Callable[[str], Awaitable[None]],
        *,
        since_file: str,
        spool_dir: Path | None = None,
        cap: int = DEFAULT_CAP,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self._open = open_transport
        self._run_kill = run_kill
        self._since_file = since_file
        self._spool_dir = spool_dir
        self._cap = cap
        self._transport: Transport | None = None
        self._lock = asyncio.Lock()
        self.pid = 0
        self._count = 0

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
            if self._transport is None:
                await self.start()
            return await self._run(command, timeout=timeout, env=env, cwd=cwd)

    async def _run(
        self, command: str, *, timeout: float | None, env: dict[str, str] | None, cwd: str | None
    ) -> ExecResult:
        assert self._transport is not None
        self._count += 1
        nonce = secrets.token_hex(16)
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
        script = (
            "read -r __sv_up __sv_x </proc/uptime; read -r __sv_pid </proc/sys/kernel/ns_last_pid; "
            f'printf "%s %s\\n" "${{__sv_up/./}}" "$__sv_pid" >{self._since_file} 2>/dev/null; '
            f"{line}; "
            f"printf '__SV_{nonce}_%d__\\n' \"$?\"; printf '__SV_{nonce}__\\n' >&2\n"
        )
        start = time.perf_counter()
        timed_out = False
        exit_code: int | None = None
        try:
            await self._transport.send(script.encode())
            try:
                exit_code = await asyncio.wait_for(self._collect(out, err), timeout)
            except TimeoutError:
                timed_out = True
                await self._run_kill(kill_script(self.pid, self._since_file))
                try:
                    exit_code = await asyncio.wait_for(self._collect(out, err), KILL_GRACE_S)
                except TimeoutError:
                    await self._reset("did not return after its command was killed")
        except (OSError, SandboxError) as exc:
            await self._reset(str(exc))
        finally:
            out_sink.close()
            err_sink.close()
        if exit_code is None:
            # The shell died under the command (exit, a killed sandbox): start afresh next
            # time, and say so in stderr.
            err_sink.write(b"\n[the sandbox shell exited; cwd and variables were reset]\n")
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
        )

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
        return self._spool_dir / f"{self.name}-{self._count:05d}"

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
