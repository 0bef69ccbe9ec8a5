"""Real OpenSSH servers for tests: Debian's sshd on a 127.0.0.x address and a free port.

Each :class:`SSHServer` has its own host key, config and log, runs ``/usr/sbin/sshd -D -f
CONFIG -e`` as a child of the test, and is killed at :meth:`stop`. Test users are real
accounts (``useradd``, a password hash set through ``chpasswd``) with unique names per test
session, removed at the end; a user can get a scripted ``nvidia-smi`` on its PATH that
prints what real machines print (one GPU, eight mixed GPUs, a DGX Spark's GB10 whose
memory reads ``[N/A]``).

Tests run as root here and in CI (creating users needs it). Everything waits with a
deadline; nothing talks to an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
_SESSION = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
_counter = 0


def available() -> str:
    """Why real sshd tests cannot run here ("" when they can)."""
    if not os.path.exists(SSHD):
        return "Debian's openssh-server is not installed (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "creating test users needs root"
    if not shutil.which("useradd") or not shutil.which("chpasswd"):
        return "useradd/chpasswd missing"
    return ""


def free_address() -> tuple[str, int]:
    """A 127.0.0.x address (x random, so test servers rarely share one) and a free port."""
    for _ in range(50):
        host = f"127.0.0.{random.randint(10, 250)}"
        with socket.socket() as probe:
            try:
                probe.bind((host, 0))
            except OSError:
                continue
            port = probe.getsockname()[1]
        return host, port
    raise RuntimeError("no free loopback address")


# -- users


@dataclass
class User:
    name: str
    password: str
    home: Path
    uid: int
    gid: int

    def write(self, rel: str, text: str, mode: int = 0o644) -> Path:
        """A file in the user's home, owned by the user."""
        path = self.home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chown(path.parent, self.uid, self.gid)
        path.write_text(text)
        path.chmod(mode)
        os.chown(path, self.uid, self.gid)
        return path

    def authorized_keys(self) -> str:
        path = self.home / ".ssh" / "authorized_keys"
        return path.read_text() if path.exists() else ""


def create_user(*, nvidia_smi: str = "", docker: bool = False) -> User:
    """A real account with a random password; ``nvidia_smi`` names a GPU layout."""
    global _counter
    _counter += 1
    name = f"svt{_SESSION}{_counter}"
    password = "pw-" + secrets.token_urlsafe(12)
    cmd = ["useradd", "--create-home", "--shell", "/bin/bash", name]
    if docker and _group_exists("docker"):
        cmd[1:1] = ["--groups", "docker"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    # The password goes through stdin, never argv (chpasswd hashes it into /etc/shadow).
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
    import pwd

    entry = pwd.getpwnam(name)
    user = User(name, password, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)
    if nvidia_smi:
        install_nvidia_smi(user, nvidia_smi)
    return user


def remove_user(user: User) -> None:
    subprocess.run(["pkill", "-KILL", "-u", user.name], capture_output=True, timeout=30)
    subprocess.run(["userdel", "--force", "--remove", user.name], capture_output=True, timeout=30)


def _group_exists(group: str) -> bool:
    import grp

    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


# -- the server


@dataclass
class SSHServer:
    """One sshd with its own host key; ``users`` may log in (password or key)."""

    root: Path
    host: str = ""
    port: int = 0
    users: list[User] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    max_sessions: int = 10

    @property
    def host_key_path(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def fingerprint(self) -> str:
        """The host key's SHA256 fingerprint, as ``ssh-keygen -l`` prints it."""
        out = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(self.host_key_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return out.split()[1]

    def new_host_key(self) -> None:
        """Replace the host key (a reinstalled machine); restart to take effect."""
        for suffix in ("", ".pub"):
            Path(f"{self.host_key_path}{suffix}").unlink(missing_ok=True)
        self._keygen()

    def _keygen(self) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key_path)],
            check=True,
            timeout=30,
        )

    def start(self) -> SSHServer:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            self._keygen()
        if not self.host:
            self.host, self.port = free_address()
        config = self.root / "sshd_config"
        allow = " ".join(u.name for u in self.users) or "nobody"
        config.write_text(
            f"ListenAddress {self.host}:{self.port}\n"
            f"HostKey {self.host_key_path}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            "UsePAM no\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            "PermitRootLogin no\n"
            f"AllowUsers {allow}\n"
            # ~/.ssh/environment puts a user's scripted nvidia-smi on the session's PATH.
            "PermitUserEnvironment yes\n"
            f"MaxSessions {self.max_sessions}\n"
            "MaxStartups 100:30:200\n"
            "PrintMotd no\n"
            "AllowTcpForwarding yes\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-e"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self.log[-2000:]}")
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex((self.host, self.port)) == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port} within 15 s")

    def restart(self) -> None:
        self.stop()
        self.start()

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes and everything under them."""
        if self.proc is None:
            return []
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            out = subprocess.run(
                ["pgrep", "-P", str(todo.pop())], capture_output=True, text=True, timeout=30
            ).stdout
            kids = [int(p) for p in out.split()]
            found += kids
            todo += kids
        return found

    def freeze(self) -> list[int]:
        """Stop every session process (a host that hangs without closing the TCP
        connection, as a dead machine or a dropped link looks); returns their pids."""
        pids = self.sessions()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def kill_sessions(self, pids: list[int] | None = None) -> None:
        for pid in pids if pids is not None else self.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill_sessions()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def sshd(root: Path, *layouts: str, docker: bool = False) -> Iterator[tuple[SSHServer, list[User]]]:
    """A started server with one user per entry of ``layouts`` ("" for no GPU)."""
    users = [create_user(nvidia_smi=layout, docker=docker) for layout in layouts or ("",)]
    server = SSHServer(root, users=users)
    try:
        server.start()
        yield server, users
    finally:
        server.stop()
        for user in users:
            remove_user(user)


def silent_listener() -> tuple[socket.socket, str, int]:
    """A listening socket that accepts connections and never sends an SSH banner."""
    host, port = free_address()
    sock = socket.socket()
    sock.bind((host, port))
    sock.listen(16)
    return sock, host, port


# -- a scripted nvidia-smi

# Field values per GPU, as `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`
# prints them on the real machines named. The script prints the asked-for fields in the
# asked-for order, with units unless `nounits`, as nvidia-smi does.
_RTX4090 = {
    "index": "0",
    "uuid": "GPU-5b7a3c1e-8f0d-4b2a-9c61-2d7e4f1a0b93",
    "name": "NVIDIA GeForce RTX 4090",
    "pci.bus_id": "00000000:01:00.0",
    "memory.total": "24564 MiB",
    "memory.used": "1180 MiB",
    "utilization.gpu": "3 %",
    "temperature.gpu": "41",
    "power.draw": "28.43 W",
    "power.limit": "450.00 W",
    "driver_version": "550.54.14",
    "compute_cap": "8.9",
    "mig.mode.current": "[N/A]",
}


def _h100(i: int, used: int, util: int) -> dict[str, str]:
    return {
        "index": str(i),
        "uuid": f"GPU-{i}1e2a7b4-{i}c3d-4e5f-8a9b-0c1d2e3f4a5b",
        "name": "NVIDIA H100 80GB HBM3",
        "pci.bus_id": f"00000000:{0x18 + i:02X}:00.0",
        "memory.total": "81559 MiB",
        "memory.used": f"{used} MiB",
        "utilization.gpu": f"{util} %",
        "temperature.gpu": str(33 + util // 10),
        "power.draw": f"{70 + util * 6}.12 W",
        "power.limit": "700.00 W",
        "driver_version": "535.183.01",
        "compute_cap": "9.0",
        "mig.mode.current": "Disabled",
    }


def _a100(i: int, used: int, util: int, mig: str = "Disabled") -> dict[str, str]:
    return {
        "index": str(i),
        "uuid": f"GPU-{i}9f8e7d6-{i}b5a-4c3d-9e8f-7a6b5c4d3e2f",
        "name": "NVIDIA A100-SXM4-80GB",
        "pci.bus_id": f"00000000:{0x90 + i:02X}:00.0",
        "memory.total": "81920 MiB",
        "memory.used": f"{used} MiB",
        "utilization.gpu": f"{util} %",
        "temperature.gpu": str(30 + util // 10),
        "power.draw": f"{60 + util * 3}.50 W",
        "power.limit": "400.00 W",
        "driver_version": "535.183.01",
        "compute_cap": "8.0",
        "mig.mode.current": mig,
    }


_GB10 = {
    "index": "0",
    "uuid": "GPU-a4c2e1f0-7b3d-4e9a-b8c6-1d2f3e4a5b6c",
    "name": "NVIDIA GB10",
    "pci.bus_id": "0000000F:01:00.0",
    "memory.total": "[N/A]",
    "memory.used": "[N/A]",
    "utilization.gpu": "0 %",
    "temperature.gpu": "43",
    "power.draw": "4.62 W",
    "power.limit": "[N/A]",
    "driver_version": "580.95.05",
    "compute_cap": "12.1",
    "mig.mode.current": "[N/A]",
}

LAYOUTS: dict[str, tuple[list[dict[str, str]], str]] = {
    "one": ([_RTX4090], "12.4"),
    "eight-mixed": (
        [
            _h100(0, 71234, 97),
            _h100(1, 70112, 95),
            _h100(2, 3, 0),
            _h100(3, 3, 0),
            _a100(4, 40960, 64),
            _a100(5, 0, 0, mig="Enabled"),
            _a100(6, 12, 0),
            _a100(7, 12, 0),
        ],
        "12.2",
    ),
    "gb10": ([_GB10], "13.0"),
}

_SCRIPT = r"""#!/usr/bin/python3
# Scripted nvidia-smi (tests): prints what the real one prints on this machine layout.
import json, sys
GPUS, CUDA = json.loads(%(data)r)
args = sys.argv[1:]
query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
fmt = next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), "")
if query is not None:
    fields = [f.strip() for f in query.split(",") if f.strip()]
    for g in GPUS:
        row = []
        for f in fields:
            if f not in g:
                print(f'Field "{f}" is not a valid field to query.', file=sys.stderr)
                sys.exit(2)
            v = g[f]
            if "nounits" in fmt and not v.startswith("["):
                v = v.replace(" MiB", "").replace(" %%", "").replace(" W", "")
            row.append(v)
        print(", ".join(row))
elif "-q" in args or "--query" in args:
    print("==============NVSMI LOG==============\n")
    print(f"Driver Version                            : {GPUS[0]['driver_version']}")
    print(f"CUDA Version                              : {CUDA}\n")
    print(f"Attached GPUs                             : {len(GPUS)}")
else:
    print(f"| NVIDIA-SMI {GPUS[0]['driver_version']}    Driver Version: {GPUS[0]['driver_version']}    CUDA Version: {CUDA}     |")
"""


def install_nvidia_smi(user: User, layout: str) -> None:
    """Put a scripted ``nvidia-smi`` for ``layout`` on the user's PATH (sessions read
    ~/.ssh/environment, which the test server permits)."""
    import json

    gpus, cuda = LAYOUTS[layout]
    user.write("bin/nvidia-smi", _SCRIPT % {"data": json.dumps([gpus, cuda])}, mode=0o755)
    user.write(
        ".ssh/environment",
        f"PATH={user.home}/bin:/usr/local/bin:/usr/bin:/bin\n",
        mode=0o600,
    )
    os.chmod(user.home / ".ssh", 0o700)


def register_hosts(servers: list[SSHServer], prefix: str = "h") -> dict[str, str]:
    """``supervisor hosts add`` each server's one user as host PREFIX0, PREFIX1, … in the
    current $SUPERVISOR_HOME (its key pinned, our key installed with the password); which
    host each user logs in to."""
    from supervisor import hosts

    names = {}
    for i, srv in enumerate(servers):
        (u,) = srv.users
        hosts.add_host(
            f"{prefix}{i}",
            f"{u.name}@{srv.host}:{srv.port}",
            password=lambda u=u: u.password,
            trust=srv.fingerprint(),
        )
        names[u.name] = f"{prefix}{i}"
    return names
