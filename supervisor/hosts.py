"""Remote hosts over SSH (Fabric): the registry, pinned host keys, key bootstrap, facts.

A host is a row of the ``hosts`` table: a name, the address as the person typed it (an
``~/.ssh/config`` alias works: HostName, Port, User, ProxyJump and IdentityFile are read
from it at every connect, never its host-key policy), an optional jump host, the key to log
in with, and the facts of its last check.

Host keys are checked explicitly, never Fabric's accept-anything default: supervisor keeps
its own ``known_hosts`` in the data directory (lines are only ever appended; the newest
line for a host wins, so re-trusting a reinstalled host is one more line), every
connection gets paramiko's :class:`~paramiko.RejectPolicy`, an unknown key is refused unless
the person trusts its SHA256 fingerprint, and a changed key is refused with both
fingerprints and the command that re-trusts it. Jump hosts are checked the same way.

Everything is bounded: TCP connect, banner, auth and channel opens time out after 10 s,
a whole connect after 30 s, every remote command has a deadline (its process group is
killed on the host when it passes), and :func:`heartbeat` notices a host that stopped
answering even while its TCP connection looks open.

A password (``hosts add --password``) is used once, to install supervisor's own ed25519
key the way ssh-copy-id does; it lives only in memory for that connection.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import select
import shlex
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from supervisor.errors import InputError, SupervisorError

if TYPE_CHECKING:
    import fabric
    import paramiko

    from supervisor.store import Store

TIMEOUT_S = 10.0  # TCP connect, SSH banner, auth, each channel open
CONNECT_DEADLINE_S = 30.0  # a whole connect, jump hosts included
HEARTBEAT_EVERY_S = 10.0
HEARTBEAT_TIMEOUT_S = 10.0  # a dead host is noticed within EVERY + TIMEOUT = 20 s
DEFAULT_PORT = 22
KEY_NAME = "id_ed25519"
PID_MARKER = "__SV_PID_"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


class HostError(InputError):
    """A host cannot be used: unreachable, refused, unknown or changed key, bad name.

    Reported as one line with exit code 2; nothing is recorded.
    """


class HostKeyError(HostError):
    """The host's key is not the one pinned, or not pinned and not trusted."""

    def __init__(self, message: str, offered: str) -> None:
        super().__init__(message)
        self.offered = offered  # the SHA256 fingerprint the host showed


class HostLost(SupervisorError):
    """A connection stopped answering (heartbeat unanswered, or closed under a command)."""


# -- targets and names


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int  # 0: not given (the ssh config's, else 22)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port else text


def parse_target(text: str, *, what: str = "host") -> Target:
    """``user@host[:port]`` (user optional); a malformed one is an InputError."""
    m = _TARGET.match(text.strip())
    if not m:
        raise HostError(f"{what} {text!r} is not user@host[:port]")
    port = int(m["port"]) if m["port"] else 0
    if m["port"] and not 1 <= port <= 65535:
        raise HostError(f"{what} {text!r}: port {port} is not between 1 and 65535")
    return Target(m["user"] or "", m["v6"] or m["host"], port)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise HostError(f"host name {name!r} must be letters, digits, '.', '_' or '-' (at most 63)")
    return name


# -- the registry


@dataclass
class Host:
    """A registered host (a row of the ``hosts`` table)."""

    name: str
    address: str  # as typed: a host name, an address, or an ~/.ssh/config alias
    port: int = 0
    user: str = ""
    jump: str = ""  # user@bastion[:port], or "" (the ssh config's ProxyJump, if any)
    key_path: str = ""  # the private key to log in with ("" : ssh config / agent)
    host_key: str = ""  # the pinned key's SHA256 fingerprint
    facts: dict[str, Any] = field(default_factory=dict)
    reachable: bool | None = None
    checked_at: float | None = None
    error: str = ""
    created_at: float = 0.0
    cordoned: bool = False  # no new sandboxes placed here (`supervisor hosts cordon`)

    @property
    def target(self) -> Target:
        return Target(self.user, self.address, self.port)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Host:
        reachable = row.get("reachable")
        return cls(
            name=row["name"],
            address=row["address"],
            port=row.get("port") or 0,
            user=row.get("user") or "",
            jump=row.get("jump") or "",
            key_path=row.get("key_path") or "",
            host_key=row.get("host_key") or "",
            facts=json.loads(row.get("facts") or "{}"),
            reachable=None if reachable is None else bool(reachable),
            checked_at=row.get("checked_at"),
            error=row.get("error") or "",
            created_at=row.get("created_at") or 0.0,
            cordoned=bool(row.get("cordoned")),
        )

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "jump": self.jump,
            "key_path": self.key_path,
            "host_key": self.host_key,
            "facts": json.dumps(self.facts),
            "reachable": None if self.reachable is None else int(self.reachable),
            "checked_at": self.checked_at,
            "error": self.error,
            "created_at": self.created_at or time.time(),
            "updated_at": time.time(),
            "cordoned": int(self.cordoned),
        }

    def summary(self) -> dict[str, Any]:
        """What ``hosts ls --json`` prints for this host."""
        gpus = self.facts.get("gpus") or []
        return {
            "name": self.name,
            "target": str(self.target),
            "jump": self.jump,
            "host_key": self.host_key,
            "reachable": self.reachable,
            "checked_at": self.checked_at,
            "error": self.error,
            "gpus": len(gpus),
            "gpus_busy": sum(1 for g in gpus if g.get("busy")),
            "cordoned": self.cordoned,
            "facts": self.facts,
        }


@contextlib.contextmanager
def _store(store: Store | None) -> Iterator[Store]:
    if store is not None:
        yield store
        return
    from supervisor.store import open_default

    opened = open_default()
    try:
        yield opened
    finally:
        opened.close()


def list_hosts(store: Store | None = None) -> list[Host]:
    with _store(store) as s:
        return [Host.from_row(dict(r)) for r in s.db["hosts"].rows_where(order_by="name")]


def find_host(name: str, store: Store | None = None) -> Host | None:
    with _store(store) as s:
        rows = list(s.db["hosts"].rows_where("name = ?", [name]))
    return Host.from_row(dict(rows[0])) if rows else None


def get_host(name: str, store: Store | None = None) -> Host:
    host = find_host(name, store)
    if host is None:
        known = ", ".join(h.name for h in list_hosts(store)) or "none yet"
        raise HostError(f"no host named {name!r} (known: {known}; add one: supervisor hosts add)")
    return host


def save_host(host: Host, store: Store | None = None) -> None:
    row = host.row()
    with _store(store) as s:
        s.write(lambda db: db.table("hosts").upsert(row, pk="name")).result()


def set_cordon(name: str, cordoned: bool, store: Store | None = None) -> Host:
    """Stop (or allow again) new placements on a host; running sandboxes are untouched."""
    host = get_host(name, store)
    with _store(store) as s:
        s.write(lambda db: db.table("hosts").update(name, {"cordoned": int(cordoned)})).result()
    host.cordoned = cordoned
    return host


def remove_host(name: str, store: Store | None = None) -> Host:
    host = get_host(name, store)
    with _store(store) as s:
        s.write(lambda db: db.table("hosts").delete(name)).result()
    return host


# -- keys: supervisor's own, and the pinned host keys


def ssh_dir() -> Path:
    from supervisor import config

    path = config.ensure_data_dir() / "ssh"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def known_hosts_path() -> Path:
    return ssh_dir() / "known_hosts"


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_entry(hostname: str, port: int) -> str:
    """How known_hosts names a host: ``host``, or ``[host]:port`` off port 22."""
    return hostname if port == DEFAULT_PORT else f"[{hostname}]:{port}"


def read_pins() -> dict[str, dict[str, paramiko.PKey]]:
    """Pinned keys by host entry and key type; a later line replaces an earlier one."""
    import paramiko

    path = known_hosts_path()
    pins: dict[str, dict[str, paramiko.PKey]] = {}
    if not path.exists():
        return pins
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        with contextlib.suppress(Exception):  # a line we cannot read is not a pin
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            if entry is None:
                continue
            for name in entry.hostnames:
                pins.setdefault(name, {})[entry.key.get_name()] = entry.key
    return pins


def pin(entry: str, key: paramiko.PKey, note: str = "") -> None:
    """Append a pin (never rewriting the file: comments and other lines stay)."""
    path = known_hosts_path()
    line = f"{entry} {key.get_name()} {key.get_base64()}\n"
    if note:
        line = f"# {note}\n{line}"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


def key_paths() -> tuple[Path, Path]:
    directory = ssh_dir()
    return directory / KEY_NAME, directory / f"{KEY_NAME}.pub"


def ensure_key() -> tuple[Path, str]:
    """Supervisor's own ed25519 key (made once, owner-only); (private path, public line)."""
    private, public = key_paths()
    if not private.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public.write_text(f"{pub.decode()} supervisor@{socket.gethostname()}\n")
    return private, public.read_text().strip()


def load_key(path: Path) -> paramiko.PKey:
    """A private key file, or a HostError naming it."""
    import paramiko

    if not path.is_file():
        raise HostError(f"key file {path} does not exist")
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise HostError(
            f"key file {path} is encrypted; load it into ssh-agent or use an unencrypted key"
        ) from None
    except Exception:
        raise HostError(f"key file {path} is not an SSH private key") from None


# -- connections


def _ssh_config(alias: str) -> dict[str, Any]:
    """The person's ~/.ssh/config for ``alias``: only HostName, Port, User, ProxyJump,
    IdentityFile are used (host-key settings there never weaken ours)."""
    import paramiko

    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return {}
    try:
        found = paramiko.SSHConfig.from_path(str(path)).lookup(alias)
    except Exception as exc:
        raise HostError(f"{path}: cannot be read: {exc}") from None
    keep = ("hostname", "port", "user", "proxyjump", "identityfile")
    return {k: found[k] for k in keep if k in found}


@dataclass(frozen=True)
class Endpoint:
    """Where a connection actually goes, after the ssh config was applied."""

    name: str  # the host's registered name, or what was typed
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    jumps: tuple[Endpoint, ...] = ()

    @property
    def entry(self) -> str:
        return key_entry(self.hostname, self.port)


def resolve(target: Target, *, name: str = "", jump: str = "", key_path: str = "") -> Endpoint:
    cfg = _ssh_config(target.host)
    import getpass

    port = target.port or int(cfg.get("port", DEFAULT_PORT))
    user = target.user or cfg.get("user") or getpass.getuser()
    keys = (key_path,) if key_path else tuple(cfg.get("identityfile", ()))
    hops = jump or cfg.get("proxyjump", "")
    jumps: list[Endpoint] = []
    if hops and hops.lower() != "none":
        for hop in hops.split(","):
            hop_target = parse_target(hop, what="jump host")
            jumps.append(resolve(hop_target, name=hop))
    return Endpoint(
        name or str(target), cfg.get("hostname", target.host), port, user, keys, tuple(jumps)
    )


def endpoint(host: Host) -> Endpoint:
    return resolve(host.target, name=host.name, jump=host.jump, key_path=host.key_path)


def _policy(trust: str, seen: list[tuple[str, paramiko.PKey]]) -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class Pinned(paramiko.RejectPolicy):  # type: ignore[misc]
        """Reject unknown keys (remembering what was offered), unless the person trusted
        exactly this fingerprint."""

        def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
            seen.append((hostname, key))
            if trust and fingerprint(key) == trust:
                return
            super().missing_host_key(client, hostname, key)

    return Pinned()


def _quiet_paramiko() -> None:
    """paramiko logs transport failures itself; with no handler Python would print them
    to stderr beside our one line. They reach the person as our error instead."""
    import logging

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _describe(ep: Endpoint) -> str:
    return f"{ep.name} ({ep.user}@{ep.hostname}:{ep.port})"


def _connect_error(ep: Endpoint, exc: BaseException) -> HostError:
    """One line for a failed connect, saying what and where."""
    import paramiko

    where = _describe(ep)
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return HostError(f"{where}: authentication failed (wrong password, or key not accepted)")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # Every address of the name refused or failed: say why for the first one.
        errors = list(exc.errors.values())
        exc = errors[0] if errors else exc
        if not isinstance(exc, ConnectionRefusedError) and errno.ECONNREFUSED in [
            getattr(e, "errno", None) for e in errors
        ]:
            exc = ConnectionRefusedError()
    if isinstance(exc, ConnectionRefusedError):
        return HostError(f"cannot reach {where}: connection refused (is sshd running?)")
    if isinstance(exc, socket.gaierror):
        return HostError(f"cannot reach {where}: unknown host name {ep.hostname!r}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return HostError(f"cannot reach {where}: no answer within {TIMEOUT_S:.0f} s")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Connect and banner timeouts race (both 10 s): either way the host said nothing SSH.
    if "banner" in text.lower() or text in ("No existing session", "Negotiation failed."):
        return HostError(
            f"cannot reach {where}: no SSH banner or handshake within {TIMEOUT_S:.0f} s"
        )
    if isinstance(exc, paramiko.ChannelException):
        return HostError(f"cannot reach {where} through its jump host: {text}")
    return HostError(f"cannot reach {where}: {text[:200]}")


def _bounded(fn: Callable[[], Any], deadline_s: float, abort: Callable[[], None], what: str) -> Any:
    """Run ``fn`` in a thread; past the deadline call ``abort`` and raise HostError."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call, name="ssh-bounded", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        with contextlib.suppress(Exception):
            abort()
        raise HostError(f"{what}: no answer within {deadline_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _build(
    ep: Endpoint,
    *,
    password: str | None,
    trust: str,
    only_key: str,
    seen: list[tuple[str, paramiko.PKey]],
) -> fabric.Connection:
    import fabric
    import paramiko

    # Never a gateway from config files we did not read ourselves; jump hosts are
    # built here, with the same key checks.
    gateway: Any = _chain(ep.jumps, seen=seen) if ep.jumps else False
    kwargs: dict[str, Any] = {
        "banner_timeout": TIMEOUT_S,
        "auth_timeout": TIMEOUT_S,
        "channel_timeout": TIMEOUT_S,
    }
    if password is not None:
        kwargs.update(password=password, look_for_keys=False, allow_agent=False)
    elif only_key:
        kwargs.update(key_filename=[only_key], look_for_keys=False, allow_agent=False)
    else:
        keys = [os.path.expanduser(k) for k in ep.key_files]
        own = key_paths()[0]
        if own.exists():
            keys.append(str(own))
        explicit = bool(ep.key_files)
        kwargs.update(key_filename=keys, look_for_keys=not explicit, allow_agent=not explicit)
    _quiet_paramiko()
    config = fabric.Config(ssh_config=paramiko.SSHConfig())  # ours resolved already
    conn = fabric.Connection(
        ep.hostname,
        user=ep.user,
        port=ep.port,
        config=config,
        gateway=gateway,
        forward_agent=False,
        connect_timeout=int(TIMEOUT_S),
        connect_kwargs=kwargs,
    )
    # Fabric hard-codes AutoAddPolicy and never loads known_hosts: replace both.
    pins = read_pins()
    offered = pins.get(ep.entry)
    if offered and not trust:
        table = conn.client.get_host_keys()
        for keytype, key in offered.items():
            table.add(ep.entry, keytype, key)
    conn.client.set_missing_host_key_policy(_policy(trust, seen))
    return conn


def _chain(hops: tuple[Endpoint, ...], *, seen: list[Any]) -> Any:
    """Connections through each jump host in turn (the first reached directly)."""
    gateway: Any = False
    for hop in hops:
        conn = _build(
            Endpoint(hop.name, hop.hostname, hop.port, hop.user, hop.key_files),
            password=None,
            trust="",
            only_key="",
            seen=seen,
        )
        conn.gateway = gateway
        gateway = conn
    return gateway


def connect(
    host: Host | Endpoint,
    *,
    password: str | None = None,
    trust: str = "",
    only_key: str = "",
) -> fabric.Connection:
    """An open Fabric connection with the host key checked; HostError on any failure.

    ``trust``: the SHA256 fingerprint the person accepted for a key not yet pinned (or
    replacing the pinned one). ``only_key``: log in with this key file and nothing else.
    """
    import paramiko

    ep = endpoint(host) if isinstance(host, Host) else host
    seen: list[tuple[str, paramiko.PKey]] = []
    conn = _build(ep, password=password, trust=trust, only_key=only_key, seen=seen)
    try:
        _bounded(conn.open, CONNECT_DEADLINE_S, conn.close, f"cannot reach {_describe(ep)}")
    except paramiko.BadHostKeyException as exc:
        conn.close()
        pinned, offered = fingerprint(exc.expected_key), fingerprint(exc.key)
        at = _which(ep, exc.hostname)
        raise HostKeyError(
            f"host key of {_describe(at)}{_via(ep, at)} CHANGED: pinned {pinned}, offered "
            f"{offered}; refusing to connect (someone may be intercepting). If the host was "
            f"reinstalled, re-trust it deliberately: supervisor hosts add {_retrust(at, offered)}",
            offered,
        ) from None
    except paramiko.SSHException as exc:
        conn.close()
        unknown = [(n, k) for n, k in seen if fingerprint(k) != trust]
        if "not found in known_hosts" in str(exc) and unknown:
            hostname, key = unknown[-1]
            offered = fingerprint(key)
            at = _which(ep, hostname)
            raise HostKeyError(
                f"unknown host key for {_describe(at)}{_via(ep, at)}: {key.get_name()} "
                f"{offered}; not trusted. If that is the host's key, trust it: supervisor hosts "
                f"add {_retrust(at, offered)}",
                offered,
            ) from None
        raise _connect_error(ep, exc) from None
    except BaseException as exc:
        conn.close()
        raise _connect_error(ep, exc) from None
    return conn


def _which(ep: Endpoint, hostname: str) -> Endpoint:
    """The hop of a connection (the host itself or one of its jump hosts) named so."""
    for hop in (*ep.jumps, ep):
        if hostname in (hop.hostname, hop.entry):
            return hop
    return ep


def _via(ep: Endpoint, hop: Endpoint) -> str:
    return "" if hop is ep else f", the jump host to {ep.name},"


def _retrust(ep: Endpoint, offered: str) -> str:
    target = Target(ep.user, ep.hostname, ep.port if ep.port != DEFAULT_PORT else 0)
    name = ep.name
    if not _NAME.match(name):  # a jump host given as user@host: its registered name
        known = [h for h in list_hosts() if (h.address, h.port) == (ep.hostname, ep.port)]
        name = known[0].name if known else "NAME"
    return f"{name} {target} --trust {offered}"


def pin_connection(conn: fabric.Connection, ep: Endpoint, note: str) -> str:
    """Pin the key this connection's host showed, unless already pinned; its fingerprint."""
    key = conn.transport.get_remote_server_key()
    current = read_pins().get(ep.entry, {}).get(key.get_name())
    if current is None or current != key:
        pin(ep.entry, key, note)
    return fingerprint(key)


def probe_key(ep: Endpoint) -> tuple[str, str]:
    """The key type and SHA256 fingerprint the host shows, without logging in."""
    import paramiko

    seen: list[tuple[str, paramiko.PKey]] = []
    conn = _build(ep, password=None, trust="", only_key="", seen=seen)
    conn.client.get_host_keys().clear()
    conn.connect_kwargs.update(look_for_keys=False, allow_agent=False, key_filename=[])

    class Record(paramiko.RejectPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
            seen.append((hostname, key))
            raise paramiko.SSHException("probe only")

    conn.client.set_missing_host_key_policy(Record())
    try:
        _bounded(conn.open, CONNECT_DEADLINE_S, conn.close, f"cannot reach {_describe(ep)}")
    except Exception as exc:
        if not seen:
            raise _connect_error(ep, exc) from None
    finally:
        conn.close()
    key = seen[-1][1]
    return key.get_name(), fingerprint(key)


# -- remote commands, bounded


class Sink(Protocol):
    """Where a remote command's output goes as it arrives (a binary file, a line parser)."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run(
    conn: fabric.Connection,
    command: str,
    *,
    timeout: float = 60.0,
    stdin: bytes | IO[bytes] | None = None,
    out: Sink | None = None,
    err: Sink | None = None,
) -> Result:
    """Run ``command`` on the host with a deadline; on timeout its process group dies.

    Output goes to ``out``/``err`` as it arrives when given, else is returned.
    """
    transport = conn.transport
    if transport is None or not transport.is_active():
        raise HostLost(f"{conn.host}: not connected")
    chan = transport.open_session(timeout=TIMEOUT_S)
    # First the session's pid, after a marker (a login shell's rc files may print before
    # it): sshd makes every session its own process group, so killing that group stops
    # everything the command started.
    #
    # Nothing is sent on a channel the command may have ended: paramiko sends a channel's
    # data and EOF after releasing its lock, so they can reach sshd after our reply to its
    # CLOSE, and sshd then drops the whole connection ("packet referred to nonexistent
    # channel"), every other channel on it with it. A command given no input reads
    # /dev/null instead of waiting for our EOF.
    redirect = " </dev/null" if stdin is None else ""
    chan.exec_command(f"echo {PID_MARKER}$$; exec /bin/sh -c {shlex.quote(command)}{redirect}")
    if stdin is not None:
        chunks = (
            iter([stdin]) if isinstance(stdin, bytes) else iter(lambda: stdin.read(256 * 1024), b"")
        )
        for chunk in chunks:
            if _ended(chan):
                break  # it ended without reading all of it (a failed mkdir, say)
            chan.sendall(chunk)
        if not _ended(chan):
            chan.shutdown_write()
    buf_out, buf_err = bytearray(), bytearray()
    pid = ""
    head = bytearray()
    deadline = heard = time.monotonic()
    deadline += timeout
    timed_out = False
    try:
        while True:
            if chan.recv_ready():
                data = chan.recv(65536)
                if not pid:
                    head += data
                    at = head.find(PID_MARKER.encode())
                    if at < 0 or b"\n" not in head[at:]:
                        continue
                    first, _, data = bytes(head[at:]).partition(b"\n")
                    pid = first.decode(errors="replace").removeprefix(PID_MARKER).strip()
                if out is not None:
                    out.write(data)
                    out.flush()
                else:
                    buf_out += data
                continue
            if chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                if err is not None:
                    err.write(data)
                    err.flush()
                else:
                    buf_err += data
                continue
            if chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            if not transport.is_active():
                raise HostLost(f"{conn.host}: the connection closed during a command")
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                timed_out = True
                kill_group(conn, pid)
                break
            if now - heard > HEARTBEAT_EVERY_S:
                # A quiet command on a host that may have died: ask the host itself.
                if not heartbeat(transport):
                    conn.close()
                    raise HostLost(
                        f"{conn.host} stopped answering during a command (no heartbeat reply "
                        f"within {HEARTBEAT_TIMEOUT_S:.0f} s); its outcome is unknown"
                    )
                heard = time.monotonic()
            if select.select([chan], [], [], min(left, 0.5))[0]:
                heard = time.monotonic()
    finally:
        chan.close()
    if not timed_out and chan.exit_status == -1:
        # Closed without an exit status: the connection died under the command.
        raise HostLost(f"{conn.host}: the connection closed during a command; outcome unknown")
    code = chan.recv_exit_status() if not timed_out else -1
    return Result(
        code,
        buf_out.decode(errors="replace"),
        buf_err.decode(errors="replace"),
        timed_out,
    )


def _ended(chan: paramiko.Channel) -> bool:
    return bool(chan.closed or chan.eof_received or chan.exit_status_ready())


def kill_script(pid: str) -> str:
    """Kill the process group of session ``pid`` (TERM, then KILL after a second)."""
    return (
        f"pg=$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f3); "
        '[ -n "$pg" ] || exit 0; kill -TERM -- "-$pg" 2>/dev/null; sleep 1; '
        'kill -KILL -- "-$pg" 2>/dev/null; true'
    )


def kill_group(conn: fabric.Connection, pid: str) -> None:
    if not pid.isdigit():
        return
    with contextlib.suppress(Exception):
        chan = conn.transport.open_session(timeout=TIMEOUT_S)
        chan.exec_command(kill_script(pid))
        chan.settimeout(TIMEOUT_S)
        chan.recv_exit_status()
        chan.close()


def heartbeat(transport: paramiko.Transport, timeout: float = HEARTBEAT_TIMEOUT_S) -> bool:
    """Does the host answer a global request within ``timeout``?

    paramiko's own keepalive sends without waiting and never notices a dead peer; a
    request that waits for its reply does, and a watchdog bounds the wait.
    """
    lock = _heartbeat_locks.setdefault(transport, threading.Lock())
    # One request at a time per connection (paramiko keeps one pending-reply slot); a
    # heartbeat still waiting on the host counts against the next one's time.
    if not lock.acquire(timeout=timeout):
        return False
    done = threading.Event()

    def ask() -> None:
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:
            pass
        finally:
            done.set()
            lock.release()

    if not transport.is_active():
        lock.release()
        return False
    threading.Thread(target=ask, name="ssh-heartbeat", daemon=True).start()
    return done.wait(timeout) and transport.is_active()


_heartbeat_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


# -- bootstrap: install our key the way ssh-copy-id does

INSTALL_KEY = (
    "umask 077; mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/authorized_keys && "
    "chmod 600 ~/.ssh/authorized_keys && key=$(cat) && f=~/.ssh/authorized_keys && "
    'if grep -qxF "$key" "$f"; then echo present; else '
    '{ [ ! -s "$f" ] || [ -z "$(tail -c1 "$f")" ] || echo >> "$f"; } && '
    'printf "%s\\n" "$key" >> "$f" && echo added; fi; '
    "command -v restorecon >/dev/null 2>&1 && restorecon -F ~/.ssh ~/.ssh/authorized_keys "
    ">/dev/null 2>&1; true"
)


def install_key(conn: fabric.Connection, public_line: str) -> bool:
    """Add our public key to the host's authorized_keys (no duplicate); True if added."""
    result = run(conn, INSTALL_KEY, timeout=30, stdin=public_line.encode() + b"\n")
    if result.exit_code != 0:
        raise HostError(
            f"{conn.host}: cannot install the key: {result.stderr.strip()[-200:] or 'failed'}"
        )
    return "added" in result.stdout


# -- facts, in one round trip

GPU_FIELDS = (
    "index,uuid,name,pci.bus_id,memory.total,memory.used,utilization.gpu,temperature.gpu,"
    "power.draw,power.limit,driver_version,compute_cap,mig.mode.current"
)
# Drivers before 510 know no compute_cap: asked again without it.
GPU_FIELDS_OLD = GPU_FIELDS.replace("compute_cap,", "")

FACTS_SCRIPT = r"""
export LC_ALL=C
q() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037')"; }
[ -r /etc/os-release ] && . /etc/os-release
mem=$(awk '/^MemTotal:/{print $2}' /proc/meminfo 2>/dev/null)
avail=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo 2>/dev/null)
disk=$(df -Pk "$HOME" 2>/dev/null | awk 'NR==2{print $4}')
dv=""; derr=""; drt=""
if command -v docker >/dev/null 2>&1; then
  if dv=$(timeout 10 docker version --format '{{.Server.Version}}' 2>&1); then
    drt=$(timeout 10 docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null)
  else derr=$(printf '%s' "$dv" | tail -n 1); dv=""; fi
else derr="no docker command"; fi
py=$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
sd=no; sdv=""; linger=no
if [ -d /run/systemd/system ]; then sd=yes; sdv=$(systemctl --version 2>/dev/null | awk 'NR==1{print $2}'); fi
[ -e "/var/lib/systemd/linger/$(id -un)" ] && linger=yes
fields=""; gpus=""; grc=""; cuda=""
if command -v nvidia-smi >/dev/null 2>&1; then
  fields="@FIELDS@"
  gpus=$(timeout 20 nvidia-smi --query-gpu="$fields" --format=csv,noheader,nounits 2>&1); grc=$?
  if [ "$grc" != 0 ]; then
    fields="@FIELDS_OLD@"
    gpus=$(timeout 20 nvidia-smi --query-gpu="$fields" --format=csv,noheader,nounits 2>&1); grc=$?
  fi
  cuda=$(timeout 20 nvidia-smi -q 2>/dev/null | sed -n 's/^CUDA Version *: *//p' | head -n 1)
fi
printf '{"os": %s, "os_id": %s, "os_version": %s, "arch": %s, "kernel": %s, ' \
  "$(q "$PRETTY_NAME")" "$(q "$ID")" "$(q "$VERSION_ID")" "$(q "$(uname -m)")" "$(q "$(uname -r)")"
printf '"cpus": %s, "mem_kb": %s, "mem_available_kb": %s, "disk_free_kb": %s, "home": %s, ' \
  "$(q "$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)")" "$(q "$mem")" "$(q "$avail")" "$(q "$disk")" "$(q "$HOME")"
printf '"user": %s, "docker": %s, "docker_error": %s, "docker_runtimes": %s, "python": %s, ' \
  "$(q "$(id -un)")" "$(q "$dv")" "$(q "$derr")" "$(q "$drt")" "$(q "$py")"
printf '"systemd": %s, "systemd_version": %s, "linger": %s, ' "$(q "$sd")" "$(q "$sdv")" "$(q "$linger")"
printf '"load1": %s, ' "$(q "$(cut -d ' ' -f 1 /proc/loadavg 2>/dev/null)")"
printf '"gpu_fields": %s, "gpu_rc": %s, "cuda": %s, "gpu_lines": [' "$(q "$fields")" "$(q "$grc")" "$(q "$cuda")"
first=1
printf '%s\n' "$gpus" | while IFS= read -r line; do
  [ -n "$line" ] || continue
  [ "$first" = 1 ] || printf ', '
  first=0; q "$line"
done
printf ']}\n'
""".replace("@FIELDS_OLD@", GPU_FIELDS_OLD).replace("@FIELDS@", GPU_FIELDS)  # noqa: E501


def _num(text: str) -> float | None:
    """A number nvidia-smi printed, or None for [N/A], [Not Supported], blanks."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    value = _num(text)
    return None if value is None else int(value)


def parse_facts(raw: dict[str, Any]) -> dict[str, Any]:
    """The facts script's JSON made into typed facts (pure: tested on recorded outputs)."""
    ram_mb = (_int(raw.get("mem_kb", "")) or 0) // 1024
    avail_mb = (_int(raw.get("mem_available_kb", "")) or 0) // 1024
    runtimes = raw.get("docker_runtimes", "").split()
    facts: dict[str, Any] = {
        "os": raw.get("os") or raw.get("os_id") or "",
        "os_id": raw.get("os_id", ""),
        "os_version": raw.get("os_version", ""),
        "arch": raw.get("arch", ""),
        "kernel": raw.get("kernel", ""),
        "cpus": _int(raw.get("cpus", "")) or 0,
        "ram_mb": ram_mb,
        "ram_available_mb": avail_mb,
        "disk_free_gb": round((_int(raw.get("disk_free_kb", "")) or 0) / 2**20, 1),
        "user": raw.get("user", ""),
        "home": raw.get("home", ""),
        "docker": raw.get("docker") or None,
        "docker_error": raw.get("docker_error", "") if not raw.get("docker") else "",
        "docker_nvidia": "nvidia" in runtimes,
        "python": raw.get("python") or None,
        "systemd": raw.get("systemd") == "yes",
        "systemd_version": raw.get("systemd_version", ""),
        "linger": raw.get("linger") == "yes",
        "cuda": raw.get("cuda") or None,
        "load1": _num(raw.get("load1", "")),  # 1-minute load average; None: not read
        "gpus": [],
        "gpu_error": "",
    }
    lines: list[str] = list(raw.get("gpu_lines") or [])
    if raw.get("gpu_fields") and raw.get("gpu_rc") not in ("", "0"):
        facts["gpu_error"] = (lines[-1] if lines else "nvidia-smi failed")[:200]
        return facts
    names = raw.get("gpu_fields", "").split(",")
    for line in lines:
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(names):
            facts["gpu_error"] = f"unexpected nvidia-smi line: {line[:120]}"
            continue
        g = dict(zip(names, values, strict=True))
        total, used = _int(g.get("memory.total", "")), _int(g.get("memory.used", ""))
        # A GB10 (DGX Spark) shares one memory with the CPU: nvidia-smi prints [N/A], and
        # the memory the GPU can use is the host's RAM.
        unified = total is None
        if unified:
            total, used = ram_mb, max(0, ram_mb - avail_mb)
        util = _int(g.get("utilization.gpu", ""))
        mig = g.get("mig.mode.current", "")
        gpu = {
            "index": _int(g.get("index", "")),
            "uuid": g.get("uuid", ""),
            "name": g.get("name", ""),
            "pci_bus_id": g.get("pci.bus_id", ""),
            "memory_total_mb": total,
            "memory_used_mb": used,
            "memory_unified": unified,
            "utilization_pct": util,
            "temperature_c": _int(g.get("temperature.gpu", "")),
            "power_w": _num(g.get("power.draw", "")),
            "power_limit_w": _num(g.get("power.limit", "")),
            "driver": g.get("driver_version", ""),
            "cuda": facts["cuda"],
            "compute_capability": g.get("compute_cap") or None,
            "mig": None if mig.startswith("[") or not mig else mig,
        }
        busy_memory = not unified and total and used is not None and used > 0.05 * total
        gpu["busy"] = bool((util or 0) >= 10 or busy_memory)
        facts["gpus"].append(gpu)
    return facts


def gather_facts(conn: fabric.Connection, timeout: float = 60.0) -> dict[str, Any]:
    """Facts about the host from one command (one round trip)."""
    result = run(conn, "bash -s", timeout=timeout, stdin=FACTS_SCRIPT.encode())
    if result.timed_out:
        raise HostError(f"{conn.host}: facts took longer than {timeout:.0f} s")
    try:
        raw = json.loads(result.stdout)
    except ValueError:
        raise HostError(
            f"{conn.host}: the facts script printed no JSON: "
            f"{(result.stderr or result.stdout).strip()[-200:]}"
        ) from None
    facts = parse_facts(raw)
    facts["checked_at"] = time.time()
    return facts


def describe_facts(facts: dict[str, Any]) -> str:
    """One line a person reads: OS, arch, CPUs, RAM, GPUs."""
    parts = [
        facts.get("os") or "?",
        facts.get("arch") or "?",
        f"{facts.get('cpus', 0)} CPUs",
        f"{facts.get('ram_mb', 0) / 1024:.1f} GiB RAM",
    ]
    gpus = facts.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            label = g["name"]
            if g.get("memory_unified"):
                label += f" (unified memory, {g['memory_total_mb'] / 1024:.1f} GiB)"
            names[label] = names.get(label, 0) + 1
        busy = sum(1 for g in gpus if g.get("busy"))
        listed = ", ".join(f"{n}× {label}" for label, n in names.items())
        parts.append(f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: {listed}; {busy} busy")
    else:
        parts.append("no GPU" + (f" ({facts['gpu_error']})" if facts.get("gpu_error") else ""))
    parts.append(f"docker {facts['docker']}" if facts.get("docker") else "no docker")
    return ", ".join(parts)


# -- adding and checking hosts


def add_host(
    name: str,
    target_text: str,
    *,
    password: Callable[[], str] | None = None,
    key: Path | None = None,
    jump: str = "",
    trust: str = "",
    confirm: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] = lambda line: None,
    store: Store | None = None,
) -> Host:
    """Register a host: check (or trust) its key, install our key when a password is
    given, verify a key-only login, record its facts. Nothing is recorded on failure.

    ``password`` is asked only after the host key is trusted, so a password never goes to
    an unverified host. ``confirm(question)`` asks the person to trust an unknown key.
    """
    check_name(name)
    target = parse_target(target_text)
    if jump:
        parse_target(jump, what="jump host")
    if trust and not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", trust):
        raise HostError(f"--trust {trust!r} is not a SHA256 fingerprint (SHA256: and 43 chars)")
    key_path = ""
    if key is not None:
        key = key.expanduser().resolve()
        load_key(key)
        key_path = str(key)
    existing = find_host(name, store)
    if existing is not None and (existing.address, existing.port, existing.user) != (
        target.host,
        target.port,
        target.user,
    ):
        raise HostError(
            f"a host named {name!r} already exists ({existing.target}); "
            f"remove it first: supervisor hosts rm {name}"
        )
    host = Host(name, target.host, target.port, target.user, jump, key_path)
    host.created_at = existing.created_at if existing else time.time()
    ep = endpoint(host)
    for hop in ep.jumps:  # each jump host's key must be pinned or trusted first
        _ensure_trusted(hop, "", confirm, progress)
    trust = _ensure_trusted(ep, trust, confirm, progress)
    if password is not None:
        own_key, public_line = ensure_key()
        secret = password()
        progress(f"logging in to {ep.user}@{ep.hostname} with the password (used once)")
        conn = connect(ep, password=secret, trust=trust)
        del secret
        try:
            with _sessions_refused(ep):
                added = install_key(conn, public_line)
            progress(
                "installed supervisor's key in ~/.ssh/authorized_keys"
                if added
                else "supervisor's key was already in ~/.ssh/authorized_keys"
            )
        finally:
            conn.close()
            conn.connect_kwargs.pop("password", None)
        host.key_path = str(own_key)
        ep = endpoint(host)
        progress("checking that a key-only login works")
        conn = connect(ep, only_key=str(own_key), trust=trust)
    else:
        conn = connect(ep, trust=trust)
    try:
        fp = pin_connection(conn, ep, f"{name} added {time.strftime('%Y-%m-%d %H:%M:%S')}")
        progress("reading facts")
        with _sessions_refused(ep):
            host.facts = gather_facts(conn)
    finally:
        conn.close()
    host.host_key = fp
    host.reachable = True
    host.checked_at = time.time()
    host.error = ""
    save_host(host, store)
    return host


@contextlib.contextmanager
def _sessions_refused(ep: Endpoint) -> Iterator[None]:
    """A host that logs us in but opens no session (sshd's MaxSessions 0, a process limit
    reached) is said in one line, not as paramiko's exception."""
    import paramiko

    try:
        yield
    except paramiko.SSHException as exc:
        refused = isinstance(exc, paramiko.ChannelException) or str(exc) == (
            "Unable to open channel."
        )
        if not refused:
            raise
        raise HostError(
            f"{_describe(ep)}: logged in, but sshd refused to open a session "
            f"({getattr(exc, 'text', '') or exc}); "
            "check its MaxSessions and the account's process limit"
        ) from None


def _ensure_trusted(
    ep: Endpoint,
    trust: str,
    confirm: Callable[[str], bool] | None,
    progress: Callable[[str], None],
) -> str:
    """The fingerprint to trust for a key not pinned yet ("" when pinned already)."""
    pinned = read_pins().get(ep.entry)
    if pinned and not trust:
        return ""
    keytype, offered = probe_key(ep)
    if trust:
        if trust != offered:
            raise HostKeyError(
                f"host key of {_describe(ep)} is {keytype} {offered}, not the {trust} you "
                f"trusted; refusing. If {offered} is the host's key: supervisor hosts add "
                f"{_retrust(ep, offered)}",
                offered,
            )
        return trust
    if confirm is None:
        raise HostKeyError(
            f"unknown host key for {_describe(ep)}: {keytype} {offered}; not trusted. "
            f"If that is the host's key: supervisor hosts add ... --trust {offered}",
            offered,
        )
    progress(f"{_describe(ep)} shows host key {keytype} {offered}")
    if not confirm(f"Trust {offered} for {ep.hostname}:{ep.port}?"):
        raise HostKeyError(f"host key {offered} of {_describe(ep)} not trusted", offered)
    return offered


@dataclass
class CheckOutcome:
    name: str
    ok: bool
    detail: str
    seconds: float
    host: Host | None = None


def check_host(host: Host, store: Store | None = None) -> CheckOutcome:
    """Connect, read facts, record them (or the error) in the hosts table."""
    start = time.monotonic()
    try:
        conn = connect(host)
        try:
            facts = gather_facts(conn)
        finally:
            conn.close()
    except (HostError, HostLost) as exc:
        host.reachable, host.error = False, str(exc)
        host.checked_at = time.time()
        save_host(host, store)
        return CheckOutcome(host.name, False, str(exc), time.monotonic() - start, host)
    host.facts, host.reachable, host.error = facts, True, ""
    host.checked_at = time.time()
    save_host(host, store)
    return CheckOutcome(host.name, True, describe_facts(facts), time.monotonic() - start, host)


def check_hosts(
    hosts: list[Host], *, parallel: bool = True, store: Store | None = None
) -> list[CheckOutcome]:
    """Check hosts at once (one slow host never holds the others up)."""
    with _store(store) as s:
        if not parallel or len(hosts) < 2:
            return [check_host(h, s) for h in hosts]
        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            return list(pool.map(lambda h: check_host(h, s), hosts))


def free_local_port(preferred: int, *, exact: bool) -> int:
    """A port on 127.0.0.1 to listen on: ``preferred`` if free (required when ``exact``)."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                if exact:
                    raise HostError(
                        f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
                    ) from None
                continue
            return int(probe.getsockname()[1])
    raise HostError("no free port on 127.0.0.1")


def watch(conn: fabric.Connection, every: float = HEARTBEAT_EVERY_S) -> None:
    """Block while the host answers heartbeats; HostLost once it stops."""
    while True:
        time.sleep(every)
        if not heartbeat(conn.transport):
            raise HostLost(
                f"{conn.host} stopped answering (no heartbeat reply within "
                f"{HEARTBEAT_TIMEOUT_S:.0f} s)"
            )


# -- said to people (hosts ls, the TUI's hosts view)


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, now - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


STALE_S = 60.0  # a load sampled longer ago than this says how old it is


def load_summary(facts: dict[str, Any], checked_at: float | None, now: float) -> str:
    """``3.2/8`` (the "load" column): the host's 1-minute load average over its cores, as
    last sampled (by ``hosts check``, or every ~10 s by the engine while it runs agents
    there), with its age once that is over a minute (``3.2/8 (5m)``); "—" when it never
    was sampled."""
    load = facts.get("load1")
    if not isinstance(load, int | float):
        return "—"
    cores = int(facts.get("cpus") or 0)
    text = f"{load:.1f}/{cores or '?'}"
    at = facts.get("load_at") or checked_at
    if at and now - float(at) > STALE_S:
        text += f" ({ago(float(at), now).removesuffix(' ago')})"
    return text
