"""Deploying to hosts: idempotent operations with a dry-run plan, over any sandbox.

The public deploy API for recipes and plugins, in the manner of pyinfra: every operation
first looks at the target, changes only what differs, and returns a :class:`Result` whose
``changed`` says whether it did (or, in a dry run, would). A :class:`Deployer` made with
``dry_run=True`` runs the same operations without changing anything and collects the
plan, which :func:`format_plan` shows as a changes table.

It works on anything shaped like a :class:`~supervisor.sandbox.base.Sandbox` — the ``ssh``
backend for a remote host, the ``local`` backend for this machine — using only ``exec``,
``read_file`` and ``write_file``. Everything that must be true on the target (checksums,
health checks, service state) is found out *on the target*, so nothing needs a port
forward.

Operations:

- :meth:`Deployer.put_file`, :meth:`Deployer.template`, :meth:`Deployer.put_directory` —
  upload bytes, a rendered :class:`string.Template`, or a local folder tree; skipped when
  the target's sha256 matches. Destinations the login user cannot write (or files that
  must belong to someone else) are written to a temp path and moved into place with
  ``sudo install -m MODE -o OWNER``.
- :meth:`Deployer.pip_install` — a virtual environment with packages in it; pip's output
  arrives as progress events while it runs.
- :meth:`Deployer.service` — a long-running command kept alive: a systemd unit (system,
  or ``--user`` with ``XDG_RUNTIME_DIR`` set and lingering checked), or where systemd is
  absent a ``setsid`` supervisor loop (a small shell script with a pid file and a log
  file, restarting the command on exit with backoff). The result and an event say which.
- :meth:`Deployer.wait_http` — wait for a URL to answer 2xx/3xx, from the target side.
- :meth:`Deployer.logs`, :meth:`Deployer.status` — a service's last log lines and state.
- :meth:`Deployer.remove_service` — stop, disable and remove a service (uninstall).

``sudo``: with ``sudo_password`` the password is answered on sudo's stdin (``sudo -S -p
PROMPT``, fed by the shell's ``printf`` builtin), never written to a file, never put in a
process's argv or environment, and redacted from everything this module emits; without
one, ``sudo -n`` is used and a sudo that wants a password is reported as such.

Events: pass ``emit`` (any callable taking an :class:`~supervisor.events.Event`) to have
each operation's start, progress and outcome recorded; in a recipe step that is
``emit=lambda e: ctx.events.emit(e.type, e.data, e.text)``.
Without it the API works the same, silently. Secrets (the sudo password, a service's
environment values under secret-looking names, credentials in an index URL, anything
shaped like a token) are redacted first.

Bad arguments (a relative remote path, a service name with a slash, a template naming a
value it was not given) raise :class:`~supervisor.errors.InputError` before anything is
touched; a failure on the target raises :class:`DeployError`. Both have one-line messages.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import hashlib
import json
import re
import secrets
import shlex
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from supervisor.errors import InputError, SupervisorError
from supervisor.events import Event, EventType
from supervisor.redact import SECRET_NAME, Redactor
from supervisor.sandbox.base import ExecResult

__all__ = [
    "DeployError",
    "Deployer",
    "Manager",
    "Result",
    "Service",
    "ServiceStatus",
    "Target",
    "format_plan",
    "render_template",
    "systemd_unit",
]

Manager = Literal["auto", "systemd", "systemd --user", "fallback"]
MANAGERS: tuple[str, ...] = ("auto", "systemd", "systemd --user", "fallback")

SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SUDO_PROMPT = "[supervisor-deploy sudo]"
DIFF_LIMIT = 256 * 1024  # bigger files are compared by checksum only
POLL_S = (0.2, 1.0)  # first and longest wait between polls of a background command
STOP_GRACE_S = 10.0


class DeployError(SupervisorError):
    """An operation failed on the target; the message is one line naming what and where."""


class Target(Protocol):
    """What the deploy API needs of a target: a :class:`~supervisor.sandbox.base.Sandbox`
    (``ssh``, ``local``, ``docker``) has all of it."""

    async def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult: ...

    async def read_file(self, path: str) -> bytes: ...

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...


@dataclass(frozen=True)
class Result:
    """What one operation did (or, in a dry run, would do).

    ``summary`` is one line for people ("created", "updated: +2 -1 lines", "no change");
    ``manager`` says which service manager a service operation used; ``diff`` is a unified
    diff of a text file's change, secrets redacted.
    """

    op: str
    target: str
    changed: bool
    summary: str
    dry_run: bool = False
    manager: str = ""
    diff: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.changed


@dataclass(frozen=True)
class Service:
    """A long-running command to keep alive on the target.

    ``command`` is an argv list (run as is) or a string (run by ``/bin/sh -c``). ``env``
    goes to an owner-only environment file, never into the unit text or a command line.
    ``user`` (system units only) runs the command as that user. ``after`` names units this
    one starts after and wants (systemd only).
    """

    name: str
    command: Sequence[str] | str
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    user: str | None = None
    after: Sequence[str] = ()
    restart_sec: int = 2

    def argv(self) -> list[str]:
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


@dataclass(frozen=True)
class ServiceStatus:
    """A service as the target sees it now; ``manager`` is empty when it is not installed.
    ``active`` means its command runs now (under the fallback: not while the loop waits to
    restart it); ``enabled`` means it starts at boot (never, under the fallback)."""

    name: str
    manager: str
    active: bool
    enabled: bool
    pid: int | None = None
    log: str = ""  # where its output goes: "journalctl ..." or the fallback's log file


@dataclass
class _Facts:
    uid: int
    user: str
    home: str
    pid1: str
    systemd: bool  # booted with systemd and it answers
    systemd_state: str
    commands: set[str]


# -- input checks and rendering


def _remote_path(path: str, what: str = "remote path") -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InputError(f"deploy: {what} {path!r} must be absolute (start with /)")
    if "\0" in path or "\n" in path:
        raise InputError(f"deploy: {what} {path!r} contains a NUL or newline")
    return path.rstrip("/") or "/"


def _service_name(name: str) -> str:
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise InputError(
            f"deploy: service name {name!r} may hold only letters, digits and . _ @ - "
            "(no slash, at most 100 characters)"
        )
    return name.removesuffix(".service")


def _mode(mode: int, dest: str) -> int:
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InputError(f"deploy: mode {mode!r} for {dest} is not a file mode like 0o644")
    return mode


def _account(name: str | None, what: str) -> str | None:
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", name):
        raise InputError(f"deploy: {what} {name!r} is not a user or group name")
    return name


def render_template(source: str, values: Mapping[str, Any], *, where: str = "template") -> str:
    """``source`` with ``$name``/``${name}`` replaced (:class:`string.Template`); ``$$`` is
    a literal ``$``. A placeholder without a value is an :class:`InputError`."""
    try:
        return string.Template(source).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise InputError(
            f"deploy: {where} uses ${exc.args[0]}, which has no value; "
            f"given: {', '.join(sorted(values)) or 'none'}"
        ) from None
    except ValueError as exc:
        raise InputError(f"deploy: {where}: {exc} (write $$ for a literal $)") from None


def _env_file(env: Mapping[str, str], where: str) -> bytes:
    """KEY="value" lines, escaped so POSIX sh and systemd's EnvironmentFile read the same."""
    lines = []
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise InputError(f"deploy: environment name {key!r} of {where} is not a valid name")
        if "\n" in value or "\0" in value:
            raise InputError(f"deploy: environment value of {key} in {where} has a newline")
        escaped = re.sub(r'(["\\`$])', r"\\\1", value)
        lines.append(f'{key}="{escaped}"\n')
    return "".join(lines).encode()


def _systemd_quote(arg: str) -> str:
    # systemd expands % specifiers and $VARS itself; double them so arguments reach the
    # command exactly as given.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    if escaped and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return f'"{escaped}"'


def systemd_unit(service: Service, *, user_mode: bool = False, env_file: str | None = None) -> str:
    """The unit text :meth:`Deployer.service` writes for ``service``."""
    argv = service.argv()
    after = " ".join(f"{a}" if "." in a else f"{a}.service" for a in service.after)
    lines = [
        "# Written by supervisor deploy; the next deploy overwrites changes made here.",
        "[Unit]",
        f"Description={service.description or service.name}",
    ]
    if not user_mode:
        lines += ["After=network-online.target", "Wants=network-online.target"]
    if after:
        lines += [f"After={after}", f"Wants={after}"]
    # Keep restarting however often it fails; RestartSec spaces the attempts.
    lines += ["StartLimitIntervalSec=0", "", "[Service]", "Type=simple"]
    lines.append("ExecStart=" + " ".join(_systemd_quote(a) for a in argv))
    if service.workdir:
        lines.append(f"WorkingDirectory={_systemd_quote(service.workdir)}")
    if env_file:
        lines.append(f"EnvironmentFile={_systemd_quote(env_file)}")
    if service.user and not user_mode:
        lines.append(f"User={service.user}")
    lines += [
        "Restart=always",
        f"RestartSec={service.restart_sec}",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_mode else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


FALLBACK_SCRIPT = """\
#!/bin/sh
# Written by supervisor deploy: keeps ${name} running on a host without systemd.
# Restarts the command whenever it exits, waiting 1, 2, 4 ... 30 s between quick failures
# (a run of 30 s or more resets the wait). Stop it by signalling its process group.
dir=${dir_q}
log="$$dir/log"
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
echo $$$$ > "$$dir/pid"
stopping=0
child=
trap 'stopping=1; [ -n "$$child" ] && kill -TERM "$$child" 2>/dev/null' TERM INT HUP
backoff=1
while [ "$$stopping" = 0 ]; do
    # Keep the log bounded: one previous generation is kept.
    if [ "$$(wc -c < "$$log" 2>/dev/null || echo 0)" -gt ${log_max} ]; then
        mv -f "$$log" "$$log.1"
    fi
    started=$$(date +%s)
    echo "[supervisor $$(stamp)] starting ${name}" >> "$$log"
    (
        if [ -f "$$dir/env" ]; then set -a; . "$$dir/env"; set +a; fi
        ${cd}exec ${command}
    ) >> "$$log" 2>&1 < /dev/null &
    child=$$!
    echo "$$child" > "$$dir/child.pid"
    wait "$$child"
    rc=$$?
    [ "$$stopping" = 1 ] && break
    ran=$$(( $$(date +%s) - started ))
    [ "$$ran" -ge 30 ] && backoff=1
    echo "[supervisor $$(stamp)] ${name} exited with status $$rc after $${ran}s;" \\
        "restarting in $${backoff}s" >> "$$log"
    sleep "$$backoff" &
    wait $$!
    backoff=$$(( backoff * 2 ))
    [ "$$backoff" -gt 30 ] && backoff=30
done
[ -n "$$child" ] && wait "$$child" 2>/dev/null
echo "[supervisor $$(stamp)] ${name} stopped" >> "$$log"
rm -f "$$dir/pid" "$$dir/child.pid"
"""


def fallback_script(
    service: Service,
    state_dir: str,
    *,
    run_as: str | None = None,
    log_max: int = 50 * 1024 * 1024,
) -> str:
    """The supervisor loop :meth:`Deployer.service` runs where systemd is absent;
    ``run_as`` runs the command as that user (with ``runuser``; the loop runs as root)."""
    cd = f"cd {shlex.quote(service.workdir)} && " if service.workdir else ""
    argv = service.argv()
    if run_as:
        argv = ["runuser", "-u", run_as, "--", *argv]
    return string.Template(FALLBACK_SCRIPT).substitute(
        name=service.name,
        dir_q=shlex.quote(state_dir),
        log_max=str(log_max),
        cd=cd.replace("$", "$$"),
        command=shlex.join(argv).replace("$", "$$"),
    )


def format_plan(results: Sequence[Result], *, host: str = "") -> str:
    """A changes table, as pyinfra shows before it acts: one row per operation."""
    changed = [r for r in results if r.changed]
    dry = any(r.dry_run for r in results)
    head = f"{'Plan' if dry else 'Changes'}{f' for {host}' if host else ''}: "
    if not changed:
        head += "nothing to change" if dry else "nothing changed"
    else:
        verb = "would change" if dry else "changed"
        head += f"{len(changed)} of {len(results)} operation(s) {verb} something"
    rows = [("operation", "target", "change")]
    for r in results:
        op = f"{r.op} ({r.manager})" if r.manager else r.op
        rows.append((op, r.target, r.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [head]
    for i, (op, tgt, change) in enumerate(rows):
        mark = " " if i == 0 else ("*" if results[i - 1].changed else " ")
        lines.append(f"{mark} {op:<{widths[0]}}  {tgt:<{widths[1]}}  {change}".rstrip())
    return "\n".join(lines)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _diff(old: bytes | None, new: bytes, name: str) -> tuple[str, int, int]:
    """A unified diff and the counts of added and removed lines ("" when not text)."""
    if len(new) > DIFF_LIMIT or (old is not None and len(old) > DIFF_LIMIT):
        return "", 0, 0
    try:
        a = old.decode().splitlines(keepends=True) if old is not None else []
        b = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return "", 0, 0
    lines = list(difflib.unified_diff(a, b, f"{name} (on target)", f"{name} (new)"))
    added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines), added, removed


# -- the deployer


class Deployer:
    """Runs deploy operations on one target and remembers what each did.

    ``host`` names the target in events, errors and the plan. ``dry_run`` makes every
    operation look without touching. ``emit`` receives each event (already redacted).
    ``state_dir`` is where service environment files and the fallback supervisor keep
    their files (default ``/var/lib/supervisor-deploy`` as root, else
    ``~/.local/state/supervisor-deploy``).
    """

    def __init__(
        self,
        target: Target,
        *,
        host: str = "",
        dry_run: bool = False,
        sudo_password: str | None = None,
        emit: Callable[[Event], object] | None = None,
        redactor: Redactor | None = None,
        state_dir: str | None = None,
        run_id: str | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.target = target
        self.host = host or str(getattr(target, "id", "") or "target")
        self.dry_run = dry_run
        self._password = sudo_password
        self._emit = emit
        self.redactor = redactor or Redactor()
        if sudo_password:
            self.redactor.add("sudo password", sudo_password)
        self._state_dir = _remote_path(state_dir, "state_dir") if state_dir else None
        self.run_id = run_id
        self.agent_id = agent_id
        self.results: list[Result] = []
        self._facts: _Facts | None = None
        self._sudo_ok: bool | None = None
        self._user_systemd: bool | None = None
        self._lingered = False  # this deployer turned lingering on

    # -- events and results

    def event(self, op: str, target: str, phase: str, text: str, **data: Any) -> None:
        """Emit one ``deploy`` event (redacted); does nothing without an emitter."""
        if self._emit is None:
            return
        payload: dict[str, Any] = {"op": op, "target": target, "host": self.host, "phase": phase}
        payload.update(data)
        if self.dry_run:
            payload["dry_run"] = True
        self._emit(
            Event(
                type=EventType.DEPLOY,
                run_id=self.run_id,
                agent_id=self.agent_id,
                data=self.redactor.value(payload),
                text=self.redactor.text(f"{self.host}: {text}"),
            )
        )

    def _done(self, result: Result) -> Result:
        """Record ``result`` as a row of the plan and emit its ``done`` event."""
        result = self._quiet(result)
        self.results.append(result)
        what = result.summary
        if result.changed and self.dry_run:
            what = f"would {what}"
        label = f"{result.op} ({result.manager})" if result.manager else result.op
        data: dict[str, Any] = {"changed": result.changed, "summary": result.summary}
        if result.manager:
            data["manager"] = result.manager
        if result.diff:
            data["diff"] = result.diff
        self.event(result.op, result.target, "done", f"{label} {result.target}: {what}", **data)
        return result

    def _quiet(self, result: Result) -> Result:
        """``result`` redacted and marked with this deployer's dry-run flag."""
        return Result(
            op=result.op,
            target=result.target,
            changed=result.changed,
            summary=self.redactor.text(result.summary),
            dry_run=self.dry_run,
            manager=result.manager,
            diff=self.redactor.text(result.diff),
            details=self.redactor.value(result.details),
        )

    def _fail(self, op: str, target: str, message: str) -> DeployError:
        full = self.redactor.text(f"deploy on {self.host}: {message}")
        self.event(op, target, "failed", message, error=full)  # the text names the host
        return DeployError(full)

    def plan(self) -> str:
        """The changes table of every operation run so far (see :func:`format_plan`)."""
        return format_plan(self.results, host=self.host)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)

    # -- running commands

    async def run(self, command: str, *, timeout: float = 120, op: str = "exec") -> ExecResult:
        """Run ``command`` on the target (no sudo); a timeout is a :class:`DeployError`."""
        result = await self.target.exec(command, timeout=timeout)
        if result.timed_out:
            raise self._fail(op, "", f"command timed out after {timeout:g}s: {command[:120]}")
        return result

    async def _check(self, command: str, *, op: str, what: str, timeout: float = 120) -> str:
        result = await self.run(command, timeout=timeout, op=op)
        if not result.ok:
            detail = _one_line(result.stderr or result.stdout) or f"exit code {result.exit_code}"
            raise self._fail(op, what, f"{op} {what}: {detail}")
        return result.stdout

    async def facts(self) -> _Facts:
        """What the operations need to know of the target, in one round trip (cached)."""
        if self._facts is not None:
            return self._facts
        script = (
            # The account's home from passwd, not $HOME: a sandbox shell may have a
            # private HOME that goes away with it, and systemd --user uses passwd's.
            'h=$(getent passwd "$(id -u)" | cut -d: -f6); '
            'printf "uid=%s\\nuser=%s\\nhome=%s\\n" "$(id -u)" "$(id -un)" "${h:-$HOME}"; '
            'printf "pid1=%s\\n" "$(cat /proc/1/comm 2>/dev/null)"; '
            "for c in systemctl journalctl loginctl curl python3 sudo setsid sha256sum; do "
            '  command -v "$c" >/dev/null 2>&1 && echo "has=$c"; done; '
            "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then "
            '  echo "systemd=$(systemctl is-system-running 2>/dev/null)"; fi'
        )
        out = await self._check(script, op="facts", what="")
        values: dict[str, str] = {}
        commands: set[str] = set()
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "has":
                commands.add(value)
            else:
                values[key] = value
        state = values.get("systemd", "")
        self._facts = _Facts(
            uid=int(values.get("uid") or -1),
            user=values.get("user", ""),
            home=values.get("home", ""),
            pid1=values.get("pid1", ""),
            # is-system-running exits non-zero for "degraded" (a unit failed), which still
            # means systemd runs the machine; only offline/unknown mean it does not.
            systemd="systemd" in values and state not in ("offline", "unknown", ""),
            systemd_state=state,
            commands=commands,
        )
        return self._facts

    async def _root(self) -> bool:
        return (await self.facts()).uid == 0

    def _sudo_line(self, command: str) -> str:
        if self._password is None:
            return f"sudo -n -- sh -c {shlex.quote(command)}"
        # printf is a bash builtin: the password never appears in a process's argv, and
        # sudo reads it from the pipe because of -S. When sudo has cached credentials it
        # reads nothing, so the command's stdin is closed before it runs: whatever it is,
        # it can never read the password.
        inner = f"sh -c {shlex.quote('exec </dev/null; ' + command)}"
        return (
            f"printf '%s\\n' {shlex.quote(self._password)} | "
            f"sudo -S -p {shlex.quote(SUDO_PROMPT)} -- {inner}"
        )

    async def sudo(
        self, command: str, *, timeout: float = 120, op: str = "sudo", what: str = ""
    ) -> ExecResult:
        """Run ``command`` as root: directly when the login user is root, else with sudo.

        A sudo that needs a password nobody gave, or refuses the one given, is a
        :class:`DeployError` saying so."""
        if await self._root():
            return await self.run(command, timeout=timeout, op=op)
        if "sudo" not in (await self.facts()).commands:
            raise self._fail(op, what, f"{what or op} needs root and sudo is not installed")
        result = await self.run(self._sudo_line(command), timeout=timeout, op=op)
        stderr = result.stderr.replace(SUDO_PROMPT, "")
        if not result.ok:
            if "a password is required" in stderr or "a terminal is required" in stderr:
                raise self._fail(
                    op,
                    what,
                    f"{what or op} needs root and sudo asks for a password: pass "
                    "sudo_password= (answered on sudo's stdin, never stored)",
                )
            if "incorrect password" in stderr or "Sorry, try again" in stderr:
                raise self._fail(op, what, "sudo refused the password given")
            if "is not in the sudoers file" in stderr or "may not run sudo" in stderr:
                raise self._fail(op, what, f"{(await self.facts()).user} may not use sudo")
        return ExecResult(
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=stderr,
            duration_s=result.duration_s,
            timed_out=result.timed_out,
        )

    async def _sudo_check(self, command: str, *, op: str, what: str, timeout: float = 120) -> str:
        result = await self.sudo(command, timeout=timeout, op=op, what=what)
        if not result.ok:
            detail = _one_line(result.stderr or result.stdout) or f"exit code {result.exit_code}"
            raise self._fail(op, what, f"{op} {what}: {detail}")
        return result.stdout

    async def _exec_as(
        self, command: str, *, privileged: bool, op: str, what: str, timeout: float = 120
    ) -> str:
        if privileged:
            return await self._sudo_check(command, op=op, what=what, timeout=timeout)
        return await self._check(command, op=op, what=what, timeout=timeout)

    # -- files

    async def _file_state(self, dest: str, privileged: bool) -> dict[str, str]:
        q = shlex.quote(dest)
        script = (
            f"f={q}; "
            'if [ -f "$f" ]; then '
            '  if [ -r "$f" ]; then s=$(sha256sum < "$f"); s=${s%% *}; else s=unreadable; fi; '
            '  echo "state=file"; echo "sha=$s"; '
            '  echo "mode=$(stat -c %a "$f")"; echo "owner=$(stat -c %U "$f")"; '
            '  echo "size=$(stat -c %s "$f")"; '
            '  echo "group=$(stat -c %G "$f")"; '
            'elif [ -e "$f" ]; then echo "state=other"; else echo "state=missing"; fi; '
            'd=$(dirname -- "$f"); while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done; '
            '[ -d "$d" ] && [ -w "$d" ] && echo "dir=writable" || echo "dir=readonly"'
        )
        out = await self._exec_as(script, privileged=privileged, op="files.put", what=dest)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    async def _needs_root(
        self, state: Mapping[str, str], owner: str | None, group: str | None
    ) -> bool:
        if await self._root():
            return False
        facts = await self.facts()
        if state.get("dir") != "writable":
            return True
        if owner is not None and owner != facts.user:
            return True
        # chgrp to a group the user is not in needs root too; let install -g decide.
        return group is not None

    async def _old_content(self, dest: str, privileged: bool) -> bytes | None:
        if privileged:
            out = await self._sudo_check(f"base64 < {shlex.quote(dest)}", op="files.put", what=dest)
            return base64.b64decode(out)
        try:
            return await self.target.read_file(dest)
        except SupervisorError:
            return None

    async def _write(
        self,
        dest: str,
        data: bytes,
        *,
        mode: int,
        owner: str | None,
        group: str | None,
        privileged: bool,
        op: str,
    ) -> None:
        q = shlex.quote(dest)
        if not privileged:
            # Written beside the destination and renamed over it, so a reader never sees
            # half a file.
            tmp = f"{dest.rsplit('/', 1)[0]}/.{dest.rsplit('/', 1)[1]}.sv-{secrets.token_hex(4)}"
            await self._check(
                f"mkdir -p -- {shlex.quote(tmp.rsplit('/', 1)[0] or '/')}", op=op, what=dest
            )
            await self.target.write_file(tmp, data, mode)
            await self._check(
                f"chmod {mode:o} {shlex.quote(tmp)} && mv -f -- {shlex.quote(tmp)} {q} "
                f"|| {{ rm -f -- {shlex.quote(tmp)}; false; }}",
                op=op,
                what=dest,
            )
            return
        # mktemp makes the file owner-only (0600) whatever the umask.
        tmp = (await self._check("mktemp", op=op, what=dest)).strip()
        try:
            await self.target.write_file(tmp, data, 0o600)
            flags = f"-m {mode:o}"
            if owner:
                flags += f" -o {shlex.quote(owner)}"
            if group:
                flags += f" -g {shlex.quote(group)}"
            await self._sudo_check(f"install -D {flags} {shlex.quote(tmp)} {q}", op=op, what=dest)
        finally:
            await self.target.exec(f"rm -f -- {shlex.quote(tmp)}", timeout=30)

    async def _put(
        self,
        op: str,
        dest: str,
        data: bytes,
        *,
        mode: int,
        owner: str | None = None,
        group: str | None = None,
        diff: bool,
        record: bool = True,
    ) -> Result:
        """Upload ``data`` to ``dest`` unless the target already has it. ``record=False``
        is for files an operation writes as part of itself (a unit, a script): they get no
        row in the plan and no events of their own."""
        dest = _remote_path(dest)
        _mode(mode, dest)
        _account(owner, "owner")
        _account(group, "group")
        done = self._done if record else self._quiet
        if record:
            self.event(op, dest, "start", f"{op} {dest}")
        state = await self._file_state(dest, False)
        privileged = await self._needs_root(state, owner, group)
        unreadable = state.get("sha") == "unreadable"
        if unreadable:
            state = await self._file_state(dest, True)
            privileged = True
        if state.get("state") == "other":
            raise self._fail(op, dest, f"{dest} exists and is not a regular file")
        new_sha = _sha256(data)
        changes: list[str] = []
        text_diff = ""
        if state.get("state") == "missing":
            changes.append(f"create ({len(data)} bytes)")
            if diff:
                text_diff, _, _ = _diff(None, data, dest)
        else:
            if state.get("sha") != new_sha:
                small = int(state.get("size") or 0) <= DIFF_LIMIT
                old = await self._old_content(dest, unreadable) if diff and small else None
                text_diff, added, removed = (
                    _diff(old, data, dest) if old is not None else ("", 0, 0)
                )
                changes.append(
                    f"update: +{added} -{removed} lines" if text_diff else "update (content)"
                )
            if state.get("mode") != f"{mode:o}":
                changes.append(f"mode {state.get('mode')} → {mode:o}")
            if owner and state.get("owner") != owner:
                changes.append(f"owner {state.get('owner')} → {owner}")
            if group and state.get("group") != group:
                changes.append(f"group {state.get('group')} → {group}")
        details = {"sha256": new_sha, "bytes": len(data), "sudo": privileged}
        if not changes:
            return done(Result(op, dest, False, "no change", details=details))
        if not self.dry_run:
            await self._write(
                dest, data, mode=mode, owner=owner, group=group, privileged=privileged, op=op
            )
        return done(Result(op, dest, True, "; ".join(changes), diff=text_diff, details=details))

    async def put_file(
        self,
        dest: str,
        content: bytes | str | Path,
        *,
        mode: int = 0o644,
        owner: str | None = None,
        group: str | None = None,
    ) -> Result:
        """Make the file ``dest`` hold ``content`` (bytes, text, or a local file's bytes)
        with ``mode`` (and ``owner``/``group`` when given)."""
        if isinstance(content, Path):
            try:
                data = content.read_bytes()
            except OSError as exc:
                raise InputError(f"deploy: cannot read {content}: {exc.strerror}") from None
        else:
            data = content.encode() if isinstance(content, str) else content
        return await self._put(
            "files.put", dest, data, mode=mode, owner=owner, group=group, diff=True
        )

    async def template(
        self,
        dest: str,
        source: str | Path,
        values: Mapping[str, Any],
        *,
        mode: int = 0o644,
        owner: str | None = None,
        group: str | None = None,
    ) -> Result:
        """Render ``source`` (template text, or a local :class:`~pathlib.Path` to read) with
        :func:`render_template` and upload it as :meth:`put_file` does; the result's
        ``diff`` shows what changes."""
        if isinstance(source, Path):
            try:
                source = source.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"deploy: cannot read template {source}: {exc}") from None
        text = render_template(source, values, where=f"template for {dest}")
        return await self._put(
            "files.template", dest, text.encode(), mode=mode, owner=owner, group=group, diff=True
        )

    async def put_directory(
        self,
        source: Path,
        dest: str,
        *,
        owner: str | None = None,
        group: str | None = None,
    ) -> Result:
        """Make the folder ``dest`` hold ``source``'s regular files (modes kept, symlinks
        and special files skipped and said so). Extra files on the target are left."""
        dest = _remote_path(dest)
        _account(owner, "owner")
        _account(group, "group")
        if not source.is_dir():
            raise InputError(f"deploy: {source} is not a local folder")
        op = "files.directory"
        self.event(op, dest, "start", f"{op} {source} → {dest}")
        local: dict[str, tuple[bytes, int]] = {}
        skipped: list[str] = []
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                skipped.append(rel)
            elif path.is_file():
                local[rel] = (path.read_bytes(), path.stat().st_mode & 0o7777)
        if skipped:
            self.event(op, dest, "progress", f"skipped (not regular files): {', '.join(skipped)}")
        q = shlex.quote(dest)
        listing = (
            # A subshell: the target's shell keeps its working directory between commands.
            f"if [ -d {q} ]; then (cd {q} && find . -type f -printf '%m %u %g %p\\n' | "
            'while read -r m u g p; do if [ -r "$p" ]; then s=$(sha256sum < "$p"); '
            'else s=unreadable; fi; echo "${s%% *} $m $u $g ${p#./}"; done); fi'
        )
        state = await self._file_state(dest + "/.", False)
        privileged = await self._needs_root(state, owner, group)
        out = await self._exec_as(listing, privileged=privileged, op=op, what=dest)
        remote: dict[str, tuple[str, str, str, str]] = {}
        for line in out.splitlines():
            sha, mode_s, user, grp, rel = line.split(" ", 4)
            remote[rel] = (sha, mode_s, user, grp)
        todo = [
            rel
            for rel, (data, mode) in local.items()
            if rel not in remote
            or remote[rel][:2] != (_sha256(data), f"{mode:o}")
            or (owner is not None and remote[rel][2] != owner)
            or (group is not None and remote[rel][3] != group)
        ]
        new = sum(1 for rel in todo if rel not in remote)
        summary = f"{len(todo)} of {len(local)} file(s) to write ({new} new)"
        if todo and not self.dry_run:
            for i, rel in enumerate(todo, 1):
                data, mode = local[rel]
                await self._write(
                    f"{dest}/{rel}",
                    data,
                    mode=mode,
                    owner=owner,
                    group=group,
                    privileged=privileged,
                    op=op,
                )
                self.event(op, dest, "progress", f"{op} {dest}: {i}/{len(todo)} {rel}", done=i)
            summary = f"wrote {len(todo)} of {len(local)} file(s) ({new} new)"
        details = {"files": sorted(todo), "skipped": skipped, "sudo": privileged}
        return self._done(Result(op, dest, bool(todo), summary, details=details))

    # -- long commands with progress

    async def stream(
        self,
        command: str,
        *,
        op: str,
        what: str,
        timeout: float = 1800,
        on_line: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Run ``command`` in the background on the target, passing its output lines (both
        streams) to progress events as they come; returns the last 50 lines. A non-zero
        exit or the ``timeout`` is a :class:`DeployError` with the last line."""
        facts = await self.facts()
        if "setsid" not in facts.commands:
            raise self._fail(op, what, "setsid (util-linux) is not installed on the target")
        wrapped = shlex.quote(command + '; echo $? > "$0/rc"')
        start = (
            'if __sv_d=$(mktemp -d "${TMPDIR:-/tmp}/sv-deploy.XXXXXX"); then '
            f'setsid sh -c {wrapped} "$__sv_d" '
            '>"$__sv_d/log" 2>&1 </dev/null & printf "%s %s\\n" "$!" "$__sv_d"; fi'
        )
        out = (await self._check(start, op=op, what=what)).split()
        if len(out) != 2:
            raise self._fail(op, what, f"could not start in the background: {out}")
        pid, workdir = int(out[0]), out[1]
        qd = shlex.quote(workdir)
        offset = 0
        pending = b""
        tail: list[str] = []
        deadline = time.monotonic() + timeout
        wait = POLL_S[0]
        rc: int | None = None
        try:
            while True:
                # The exit status is read before the size: once it exists the log is
                # complete, so the last poll never misses the end of the output.
                poll = (
                    f"cat {qd}/rc 2>/dev/null || echo running; stat -c %s {qd}/log; "
                    f"tail -c +{offset + 1} {qd}/log | head -c 1048576 | base64 -w0; echo"
                )
                res = await self._check(poll, op=op, what=what, timeout=60)
                status, size_s, chunk_b64 = [*res.split("\n"), "", "", ""][:3]
                chunk = base64.b64decode(chunk_b64)
                offset += len(chunk)
                pending += chunk
                *complete, pending = re.split(rb"\r\n|\r|\n", pending)
                finished = status.strip() != "running" and offset >= int(size_s or 0)
                if finished and pending:
                    complete.append(pending)
                    pending = b""
                lines = [
                    self.redactor.text(ln.decode("utf-8", errors="replace"))
                    for ln in complete
                    if ln.strip()
                ]
                if lines:
                    tail = (tail + lines)[-50:]
                    for line in lines:
                        if on_line is not None:
                            on_line(line)
                    # One event per poll; a burst of output keeps its last 200 lines.
                    self.event(
                        op, what, "progress", lines[-1], lines=lines[-200:], count=len(lines)
                    )
                if finished:
                    rc = int(status.strip() or 1)
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(wait)
                wait = min(wait * 1.5, POLL_S[1])
        finally:
            if rc is None:
                await self.target.exec(
                    f"kill -TERM -- -{pid} 2>/dev/null; sleep 2; kill -KILL -- -{pid} 2>/dev/null",
                    timeout=30,
                )
            await self.target.exec(f"rm -rf -- {qd}", timeout=30)
        if rc is None:
            raise self._fail(
                op,
                what,
                f"{op} {what} timed out after {timeout:g}s (last: {tail[-1] if tail else '-'})",
            )
        if rc != 0:
            raise self._fail(
                op, what, f"{op} {what} failed (exit {rc}): {tail[-1] if tail else 'no output'}"
            )
        return tail

    # -- python packages

    async def pip_install(
        self,
        venv: str,
        packages: Sequence[str],
        *,
        python: str = "python3",
        pip_args: Sequence[str] = (),
        timeout: float = 3600,
    ) -> Result:
        """Make the virtual environment ``venv`` exist (made with ``python -m venv``) and
        hold ``packages`` (requirement strings). Requirements already satisfied are not
        reinstalled; paths and URLs are always handed to pip. ``pip_args`` go to ``pip
        install`` as given (``--index-url ...``, ``--no-index --find-links DIR``)."""
        venv = _remote_path(venv, "venv")
        if not packages:
            raise InputError(f"deploy: pip_install into {venv} names no packages")
        op = "pip.install"
        for arg in pip_args:
            # An index URL may carry credentials (https://user:token@host/simple).
            for secret in re.findall(r"://[^/:@\s]+:([^/@\s]+)@", arg):
                self.redactor.add("index password", secret)
        self.event(op, venv, "start", f"{op} {' '.join(packages)} into {venv}")
        vpy = shlex.quote(f"{venv}/bin/python")
        exists = (await self.run(f"test -x {vpy}", op=op)).ok
        missing = list(packages)
        if exists:
            unmet, opaque = await self._unsatisfied(venv, packages)
            missing = [p for p in packages if p in unmet or p in opaque]
        changes = []
        if not exists:
            changes.append(f"create venv with {python}")
        if missing:
            changes.append(f"install {' '.join(missing)}")
        details = {"packages": list(packages), "missing": missing}
        if not changes:
            return self._done(Result(op, venv, False, "no change", details=details))
        if not self.dry_run:
            if not exists:
                self.event(op, venv, "progress", f"creating virtual environment {venv}")
                await self._check(
                    f"{shlex.quote(python)} -m venv {shlex.quote(venv)}",
                    op=op,
                    what=venv,
                    timeout=600,
                )
            args = " ".join(shlex.quote(a) for a in [*pip_args, *packages])
            command = (
                "PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "
                f"{vpy} -m pip install {args}"
            )
            await self.stream(command, op=op, what=venv, timeout=timeout)
            left, _ = await self._unsatisfied(venv, packages)
            if left:
                raise self._fail(op, venv, f"pip finished but {' '.join(left)} is not installed")
        return self._done(Result(op, venv, True, "; ".join(changes), details=details))

    async def _unsatisfied(self, venv: str, packages: Sequence[str]) -> tuple[list[str], list[str]]:
        """The requirements the venv does not satisfy, and those it cannot judge (paths,
        URLs: pip decides). Run by the venv's own python, with pip's vendored packaging
        when the venv has no packaging of its own."""
        check = (
            "import json, sys\n"
            "from importlib.metadata import version, PackageNotFoundError\n"
            "try:\n    from packaging.requirements import Requirement\n"
            "except ImportError:\n"
            "    from pip._vendor.packaging.requirements import Requirement\n"
            "missing, opaque = [], []\n"
            "for spec in sys.argv[1:]:\n"
            "    try:\n        req = Requirement(spec)\n"
            "    except Exception:\n        opaque.append(spec); continue\n"
            "    if req.url:\n        opaque.append(spec); continue\n"
            "    if req.marker and not req.marker.evaluate():\n        continue\n"
            "    try:\n        have = version(req.name)\n"
            "    except PackageNotFoundError:\n        missing.append(spec); continue\n"
            "    if req.specifier and not req.specifier.contains(have, prereleases=True):\n"
            "        missing.append(spec)\n"
            "print(json.dumps([missing, opaque]))\n"
        )
        out = await self._check(
            f"{shlex.quote(venv + '/bin/python')} -c {shlex.quote(check)} "
            + " ".join(shlex.quote(p) for p in packages),
            op="pip.install",
            what=venv,
        )
        try:
            missing, opaque = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return list(packages), []
        return [str(m) for m in missing], [str(o) for o in opaque]

    # -- services

    async def _state_root(self, manager: str) -> str:
        """Where ``manager``'s services keep their files: root's place for system units
        (and for anything when logged in as root), else the login user's."""
        if self._state_dir:
            return self._state_dir
        facts = await self.facts()
        if facts.uid == 0 or manager == "systemd":
            return "/var/lib/supervisor-deploy"
        return f"{facts.home}/.local/state/supervisor-deploy"

    async def _can_sudo(self) -> bool:
        if await self._root():
            return True
        if self._sudo_ok is None:
            if "sudo" not in (await self.facts()).commands:
                self._sudo_ok = False
            elif self._password is not None:
                self._sudo_ok = True
            else:
                self._sudo_ok = (await self.run("sudo -n true", op="facts")).ok
        return self._sudo_ok

    def _user_env(self, facts: _Facts) -> str:
        return f"XDG_RUNTIME_DIR=/run/user/{facts.uid}"

    async def _user_manager(self) -> bool:
        if self._user_systemd is None:
            facts = await self.facts()
            if not facts.systemd:
                self._user_systemd = False
            else:
                res = await self.run(
                    f"{self._user_env(facts)} systemctl --user is-system-running", op="facts"
                )
                self._user_systemd = res.stdout.strip() not in ("offline", "unknown", "")
        return self._user_systemd

    async def choose_manager(
        self, manager: Manager = "auto", *, linger: bool = False
    ) -> tuple[str, str]:
        """The service manager ``manager`` resolves to on this target, and why. With
        ``linger``, a user manager that is not running yet is started by turning on
        lingering (``sudo loginctl enable-linger``)."""
        if manager not in MANAGERS:
            raise InputError(f"deploy: manager {manager!r} is not one of {', '.join(MANAGERS)}")
        facts = await self.facts()
        no_systemd = (
            "systemctl is not installed"
            if "systemctl" not in facts.commands
            else f"systemd is not running on this host: PID 1 is {facts.pid1 or 'unknown'}"
            + (
                f", systemctl is-system-running says {facts.systemd_state}"
                if facts.systemd_state
                else ""
            )
        )
        if manager == "fallback":
            return "fallback", "asked for the fallback supervisor"
        if manager == "systemd":
            if not facts.systemd:
                raise self._fail("service", "", f"cannot use systemd: {no_systemd}")
            if not await self._can_sudo():
                raise self._fail(
                    "service", "", "system units need root: pass sudo_password= or use a user unit"
                )
            return "systemd", "asked for systemd"
        if manager == "systemd --user":
            if not facts.systemd:
                raise self._fail("service", "", f"no systemd user manager: {no_systemd}")
            if not await self._user_manager():
                if not linger:
                    raise self._fail(
                        "service",
                        "",
                        f"no systemd user manager runs for {facts.user} (not logged in and "
                        "lingering off): pass linger=True",
                    )
                if self.dry_run:
                    return "systemd --user", "asked for a user unit (lingering to be enabled)"
                await self._enable_linger()
            return "systemd --user", "asked for a user unit"
        if not facts.systemd:
            return "fallback", no_systemd
        if await self._can_sudo():
            return "systemd", f"systemd is running ({facts.systemd_state})"
        if await self._user_manager():
            if await self._lingering():
                return "systemd --user", "systemd is running, sudo is not available"
            # Without lingering the user manager (and the service) stops when the last
            # session ends — ours included.
            return (
                "fallback",
                f"sudo is not available and lingering is off for {facts.user}, so a user "
                "unit would stop at logout (linger=True with a sudo password turns it on)",
            )
        return "fallback", "systemd is running but neither sudo nor a user manager is available"

    async def _lingering(self) -> bool:
        user = shlex.quote((await self.facts()).user)
        res = await self.run(f"loginctl show-user {user} -p Linger --value 2>/dev/null", op="facts")
        return res.stdout.strip() == "yes"

    async def _enable_linger(self) -> None:
        facts = await self.facts()
        await self._sudo_check(
            f"loginctl enable-linger {shlex.quote(facts.user)}", op="service", what=facts.user
        )
        self._lingered = True
        self.event("service", facts.user, "progress", f"enabled lingering for {facts.user}")
        # The user manager starts asynchronously once lingering is on.
        deadline = time.monotonic() + 20
        while True:
            self._user_systemd = None
            if await self._user_manager():
                return
            if time.monotonic() > deadline:
                raise self._fail(
                    "service", facts.user, f"the user manager of {facts.user} did not start"
                )
            await asyncio.sleep(0.2)

    def _systemctl(self, manager: str, facts: _Facts) -> str:
        if manager == "systemd --user":
            return f"{self._user_env(facts)} systemctl --user"
        return "systemctl"

    async def _ctl(self, manager: str, args: str, *, what: str, check: bool = True) -> ExecResult:
        facts = await self.facts()
        command = f"{self._systemctl(manager, facts)} {args}"
        if manager == "systemd":
            result = await self.sudo(command, op="service", what=what)
        else:
            result = await self.run(command, op="service")
        if check and not result.ok:
            detail = _one_line(result.stderr or result.stdout) or f"exit {result.exit_code}"
            raise self._fail("service", what, f"systemctl {args}: {detail}")
        return result

    async def _unit_path(self, manager: str, name: str) -> str:
        if manager == "systemd --user":
            return f"{(await self.facts()).home}/.config/systemd/user/{name}.service"
        return f"/etc/systemd/system/{name}.service"

    async def service(
        self,
        service: Service,
        *,
        manager: Manager = "auto",
        enabled: bool = True,
        restart: bool | Result | Sequence[Result] = False,
        linger: bool = False,
    ) -> Result:
        """Install ``service`` and make it run: write its unit (or supervisor script) and
        environment file, enable it, and start it — restarting it when either changed,
        when it is not running, or when ``restart`` is true (or is a result, or results,
        of which one changed: ``restart=config_result``).

        ``manager="auto"`` uses systemd when it runs the host (a system unit with root or
        sudo, else a ``--user`` unit), and otherwise the fallback supervisor; the result's
        ``manager`` and an event say which and why. For user units ``linger=True`` turns
        on lingering (with sudo) so the service outlives the login session; without it, a
        user whose lingering is off is warned in an event."""
        name = _service_name(service.name)
        argv = service.argv()
        if not argv or not argv[0]:
            raise InputError(f"deploy: service {name} has an empty command")
        if service.workdir:
            _remote_path(service.workdir, f"workdir of service {name}")
        _account(service.user, f"user of service {name}")
        env_bytes = _env_file(service.env, f"service {name}")
        for key, value in service.env.items():
            # Only values under secret-looking names: redacting every value would hide
            # ordinary paths and ports wherever they appear.
            if SECRET_NAME.search(key):
                self.redactor.add(f"{name} {key}", value)
        if isinstance(restart, Result):
            restart_now = restart.changed
        elif isinstance(restart, bool):
            restart_now = restart
        else:
            restart_now = any(r.changed for r in restart)
        op = "service"
        chosen, why = await self.choose_manager(manager, linger=linger)
        self.event(
            op, name, "start", f"service {name}: using {chosen} ({why})", manager=chosen, why=why
        )
        moved = []
        for other in await self._installed_all(name):
            if other != chosen:
                # Two managers running one service would fight over its port.
                moved.append(f"remove the {other} copy ({await self._uninstall(name, other)})")
                self.event(op, name, "progress", f"service {name}: {moved[-1]}", manager=other)
        if chosen == "fallback":
            return await self._fallback_service(service, name, env_bytes, restart_now, why, moved)
        return await self._systemd_service(
            service, name, chosen, env_bytes, restart_now, enabled, linger, why, moved
        )

    async def _systemd_service(
        self,
        service: Service,
        name: str,
        manager: str,
        env_bytes: bytes,
        restart_now: bool,
        enabled: bool,
        linger: bool,
        why: str,
        moved: list[str],
    ) -> Result:
        facts = await self.facts()
        user_mode = manager == "systemd --user"
        if user_mode and service.user and service.user != facts.user:
            raise self._fail(
                "service",
                name,
                f"a user unit runs as {facts.user}, not {service.user}: use a system unit "
                "(sudo) for another user",
            )
        changes: list[str] = list(moved)
        if user_mode:
            lingering = await self._lingering()
            if self._lingered:  # turned on just now, to start the user manager
                changes.append(f"enable lingering for {facts.user}")
                self._lingered = False
            elif not lingering and linger:
                changes.append(f"enable lingering for {facts.user}")
                if not self.dry_run:
                    await self._enable_linger()
            elif not lingering:
                self.event(
                    "service",
                    name,
                    "warning",
                    f"lingering is off for {facts.user}: user units stop when their last "
                    f"session ends (run: sudo loginctl enable-linger {facts.user})",
                    linger=False,
                )
        state_dir = f"{await self._state_root(manager)}/{name}"
        env_path = f"{state_dir}/env" if env_bytes else None
        unit = systemd_unit(service, user_mode=user_mode, env_file=env_path).encode()
        unit_path = await self._unit_path(manager, name)
        owner = None if user_mode else "root"
        files = []
        if env_path is not None:
            files.append(
                await self._put(
                    "files.put",
                    env_path,
                    env_bytes,
                    mode=0o600,
                    owner=owner,
                    diff=False,
                    record=False,
                )
            )
        unit_result = await self._put(
            "files.put", unit_path, unit, mode=0o644, owner=owner, diff=True, record=False
        )
        files.append(unit_result)
        written = any(r.changed for r in files)
        if unit_result.changed:
            changes.append(f"unit {unit_result.summary}")
        if env_path is not None and files[0].changed:
            changes.append("environment updated")
        is_active = await self._ctl(manager, f"is-active {name}.service", what=name, check=False)
        is_enabled = await self._ctl(manager, f"is-enabled {name}.service", what=name, check=False)
        active = is_active.stdout.strip() == "active"
        enabled_now = is_enabled.stdout.strip() == "enabled"
        if enabled and not enabled_now:
            changes.append("enable")
        if not active:
            changes.append("start")
        elif written or restart_now:
            changes.append("restart")
        if not self.dry_run:
            if written:
                await self._ctl(manager, "daemon-reload", what=name)
            if enabled and not enabled_now:
                await self._ctl(manager, f"enable {name}.service", what=name)
            if not active or written or restart_now:
                await self._ctl(manager, f"restart {name}.service", what=name)
        details = {"unit": unit_path, "why": why, "state_dir": state_dir}
        summary = "; ".join(changes) if changes else "no change"
        return self._done(
            Result(
                "service",
                name,
                bool(changes),
                summary,
                manager=manager,
                diff=unit_result.diff,
                details=details,
            )
        )

    async def _fallback_paths(self, name: str) -> dict[str, str]:
        d = f"{await self._state_root('fallback')}/{name}"
        return {
            "dir": d,
            "script": f"{d}/run.sh",
            "env": f"{d}/env",
            "pid": f"{d}/pid",
            "child": f"{d}/child.pid",
            "log": f"{d}/log",
        }

    async def _fallback_pid(self, paths: Mapping[str, str]) -> int | None:
        """The running supervisor loop's pid, checked to be our script (not a reused pid)."""
        script = (
            f'p=$(cat {shlex.quote(paths["pid"])} 2>/dev/null) && [ -n "$p" ] && '
            f"kill -0 \"$p\" 2>/dev/null && tr '\\0' ' ' < /proc/$p/cmdline | "
            f'grep -qF -- {shlex.quote(paths["script"])} && echo "$p"'
        )
        out = (await self.run(script, op="service")).stdout.strip()
        return int(out) if out.isdigit() else None

    async def _fallback_stop(self, paths: Mapping[str, str], name: str) -> bool:
        pid = await self._fallback_pid(paths)
        if pid is None:
            return False
        # The loop is a session and process group leader (setsid): signalling the group
        # reaches the loop, the command and anything the command started in its group.
        await self._check(
            f"kill -TERM -- -{pid} 2>/dev/null; i=0; "
            f"while kill -0 -- -{pid} 2>/dev/null && [ $i -lt {int(STOP_GRACE_S * 10)} ]; "
            "do sleep 0.1; i=$((i+1)); done; "
            f"kill -KILL -- -{pid} 2>/dev/null; true",
            op="service",
            what=name,
            timeout=STOP_GRACE_S + 30,
        )
        return True

    async def _fallback_service(
        self,
        service: Service,
        name: str,
        env_bytes: bytes,
        restart_now: bool,
        why: str,
        moved: list[str],
    ) -> Result:
        if "setsid" not in (await self.facts()).commands:
            raise self._fail("service", name, "the fallback supervisor needs setsid (util-linux)")
        facts = await self.facts()
        run_as = service.user if service.user and service.user != facts.user else None
        if run_as and facts.uid != 0:
            raise self._fail(
                "service",
                name,
                f"the fallback can run {name} as {run_as} only when logged in as root",
            )
        if service.after:
            self.event(
                "service",
                name,
                "warning",
                f"service {name}: the fallback supervisor does not order services; "
                f"after={', '.join(service.after)} is not enforced",
            )
        self.event(
            "service",
            name,
            "warning",
            f"service {name}: the fallback supervisor is not started at boot (no systemd)",
        )
        paths = await self._fallback_paths(name)
        script = fallback_script(service, paths["dir"], run_as=run_as).encode()
        env_result = await self._put(
            "files.put", paths["env"], env_bytes, mode=0o600, diff=False, record=False
        )
        script_result = await self._put(
            "files.put", paths["script"], script, mode=0o755, diff=True, record=False
        )
        pid = await self._fallback_pid(paths)
        changes: list[str] = list(moved)
        if script_result.changed:
            changes.append(f"supervisor script {script_result.summary}")
        if env_result.changed and env_bytes:
            changes.append("environment updated")
        elif env_result.changed and not env_result.summary.startswith("create"):
            changes.append("environment cleared")
        written = script_result.changed or env_result.changed
        if pid is None:
            changes.append("start")
        elif written or restart_now:
            changes.append("restart")
        if not self.dry_run and (pid is None or written or restart_now):
            await self._fallback_stop(paths, name)
            await self._check(
                f"setsid -f sh {shlex.quote(paths['script'])} >/dev/null 2>&1 </dev/null",
                op="service",
                what=name,
            )
            deadline = time.monotonic() + 10
            while (pid := await self._fallback_pid(paths)) is None:
                if time.monotonic() > deadline:
                    raise self._fail(
                        "service", name, f"the supervisor loop did not start; see {paths['log']}"
                    )
                await asyncio.sleep(0.05)
        details = {"why": why, **paths, "pid_now": pid}
        summary = "; ".join(changes) if changes else "no change"
        return self._done(
            Result(
                "service",
                name,
                bool(changes),
                summary,
                manager="fallback",
                diff=script_result.diff,
                details=details,
            )
        )

    async def _installed(self, name: str) -> str:
        """Which manager has ``name`` installed ("" when none does)."""
        found = await self._installed_all(name)
        return found[0] if found else ""

    async def _installed_all(self, name: str) -> list[str]:
        """Every manager that has ``name`` installed, systemd first."""
        facts = await self.facts()
        checks = []
        if facts.systemd:
            checks.append(("systemd", await self._unit_path("systemd", name)))
            checks.append(("systemd --user", await self._unit_path("systemd --user", name)))
        paths = await self._fallback_paths(name)
        checks.append(("fallback", paths["script"]))
        script = "; ".join(f"[ -e {shlex.quote(p)} ] && echo {shlex.quote(m)}" for m, p in checks)
        out = (await self.run(script + "; true", op="service")).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def status(self, name: str) -> ServiceStatus:
        """The service's manager, whether it runs and is enabled, and its main pid."""
        name = _service_name(name)
        manager = await self._installed(name)
        if not manager:
            return ServiceStatus(name, "", False, False)
        if manager == "fallback":
            paths = await self._fallback_paths(name)
            pid = await self._fallback_pid(paths)
            child: int | None = None
            if pid is not None:
                # The command's pid while it runs; none while the loop waits to restart it.
                child_file = shlex.quote(paths["child"])
                probe = f'c=$(cat {child_file}) && kill -0 "$c" && echo "$c"'
                out = (await self.run(f"{{ {probe}; }} 2>/dev/null", op="service")).stdout.strip()
                child = int(out) if out.isdigit() else None
            # Not enabled: without systemd nothing starts it again after a reboot.
            return ServiceStatus(name, manager, child is not None, False, child, paths["log"])
        show = await self._ctl(
            manager,
            f"show {name}.service -p ActiveState -p UnitFileState -p MainPID",
            what=name,
            check=False,
        )
        props = dict(ln.split("=", 1) for ln in show.stdout.splitlines() if "=" in ln)
        main = int(props.get("MainPID", "0") or 0)
        flag = " --user" if manager == "systemd --user" else ""
        return ServiceStatus(
            name,
            manager,
            props.get("ActiveState") == "active",
            props.get("UnitFileState") == "enabled",
            main or None,
            f"journalctl{flag} -u {name}.service",
        )

    async def logs(self, name: str, lines: int = 100) -> str:
        """The last ``lines`` lines of the service's output (journalctl, or the fallback's
        log file), redacted."""
        name = _service_name(name)
        if not isinstance(lines, int) or lines < 1:
            raise InputError(f"deploy: lines must be a positive number, not {lines!r}")
        manager = await self._installed(name)
        if not manager:
            raise self._fail("service.logs", name, f"service {name} is not installed")
        if manager == "fallback":
            log = (await self._fallback_paths(name))["log"]
            out = await self._check(
                f"tail -n {lines} {shlex.quote(log)}", op="service.logs", what=name
            )
        else:
            facts = await self.facts()
            flag = (
                f"{self._user_env(facts)} journalctl --user"
                if manager == "systemd --user"
                else "journalctl"
            )
            cmd = f"{flag} -u {name}.service -n {lines} --no-pager -o short-iso"
            result = await self.run(cmd, op="service.logs")
            out = result.stdout
            # A user outside the journal's groups sees no system unit's lines (journalctl
            # says so on stderr); root does, through sudo when it is available.
            blind = (
                not result.ok
                or "insufficient permissions" in result.stderr
                or ("not seeing messages" in result.stderr)
            )
            if manager == "systemd" and facts.uid != 0 and blind and await self._can_sudo():
                out = await self._sudo_check(cmd, op="service.logs", what=name)
            elif not result.ok:
                detail = _one_line(result.stderr) or f"exit code {result.exit_code}"
                raise self._fail("service.logs", name, f"journalctl for {name}: {detail}")
        text = self.redactor.text(out)
        self.event(
            "service.logs",
            name,
            "done",
            f"service.logs {name}: {len(text.splitlines())} line(s) ({manager})",
            manager=manager,
        )
        return text

    async def remove_service(self, name: str) -> Result:
        """Stop, disable and remove the service: its unit or supervisor script, environment
        file, pid and log files. Nothing of it runs afterwards."""
        name = _service_name(name)
        op = "service.remove"
        self.event(op, name, "start", f"{op} {name}")
        managers = await self._installed_all(name)
        if not managers:
            return self._done(Result(op, name, False, "not installed"))
        summaries = [await self._uninstall(name, manager) for manager in managers]
        return self._done(Result(op, name, True, "; ".join(summaries), manager=managers[0]))

    async def _uninstall(self, name: str, manager: str) -> str:
        op = "service.remove"
        if manager == "fallback":
            paths = await self._fallback_paths(name)
            running = await self._fallback_pid(paths) is not None
            if not self.dry_run:
                await self._fallback_stop(paths, name)
                await self._check(f"rm -rf -- {shlex.quote(paths['dir'])}", op=op, what=name)
            return ("stop; " if running else "") + f"remove {paths['dir']}"
        unit = await self._unit_path(manager, name)
        state = f"{await self._state_root(manager)}/{name}"
        if not self.dry_run:
            await self._ctl(manager, f"disable --now {name}.service", what=name, check=False)
            rm = f"rm -f -- {shlex.quote(unit)} && rm -rf -- {shlex.quote(state)}"
            if manager == "systemd":
                await self._sudo_check(rm, op=op, what=name)
            else:
                await self._check(rm, op=op, what=name)
            await self._ctl(manager, "daemon-reload", what=name)
            await self._ctl(manager, f"reset-failed {name}.service", what=name, check=False)
        return f"stop, disable; remove {unit}"

    # -- health

    async def wait_http(
        self,
        url: str,
        *,
        deadline_s: float = 60,
        interval_s: float = 0.5,
        expect: Sequence[int] = (),
    ) -> Result:
        """Wait until ``url`` answers (2xx/3xx, or one of ``expect``) when fetched on the
        target itself, with curl or python3; a :class:`DeployError` naming the URL and the
        last failure once ``deadline_s`` has passed."""
        if not re.fullmatch(r"https?://[^\s'\"]+", url or ""):
            raise InputError(f"deploy: health check URL {url!r} must be an http(s):// URL")
        op = "http.wait"
        self.event(op, url, "start", f"waiting up to {deadline_s:g}s for {url}")
        if self.dry_run:
            return self._done(Result(op, url, False, "checked when applied"))
        facts = await self.facts()
        start = time.monotonic()
        end = start + deadline_s
        last = "no answer"
        attempts = 0
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            per_try = max(0.5, min(left, 5.0))
            q = shlex.quote(url)
            if "curl" in facts.commands:
                cmd = f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time {per_try:.1f} {q}"
            elif "python3" in facts.commands:
                cmd = (
                    "python3 -c "
                    + shlex.quote(
                        "import sys, urllib.request, urllib.error\n"
                        "try:\n"
                        f"    r = urllib.request.urlopen(sys.argv[1], timeout={per_try:.1f})\n"
                        "    print(r.status, end='')\n"
                        "except urllib.error.HTTPError as e:\n    print(e.code, end='')\n"
                        "except Exception as e:\n    print(e, file=sys.stderr); sys.exit(7)\n"
                    )
                    + f" {q}"
                )
            else:
                raise self._fail(op, url, "neither curl nor python3 is on the target")
            res = await self.target.exec(cmd, timeout=per_try + 5)
            attempts += 1
            code = res.stdout.strip()
            if (
                res.ok
                and code.isdigit()
                and (int(code) in expect if expect else 200 <= int(code) < 400)
            ):
                took = time.monotonic() - start
                return self._done(
                    Result(
                        op,
                        url,
                        False,
                        f"answered {code} after {took:.1f}s",
                        details={
                            "status": int(code),
                            "seconds": round(took, 2),
                            "attempts": attempts,
                        },
                    )
                )
            if code.isdigit() and code != "000":
                last = f"HTTP {code}"
            else:
                last = _one_line(res.stderr).removeprefix("curl: ") or "no answer"
            if attempts == 1 or attempts % 10 == 0:
                self.event(op, url, "progress", f"{url}: {last}", attempts=attempts)
            await asyncio.sleep(min(interval_s, max(0.0, end - time.monotonic())))
        raise self._fail(
            op, url, f"{url} did not answer within {deadline_s:g}s ({attempts} tries; last: {last})"
        )
