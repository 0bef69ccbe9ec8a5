"""Which host of a pool gets the next sandbox: a best-of-K score within per-host caps.

Pure and deterministic (same hosts, same loads, same seed: same choice), so the engine
calls it under no lock of its own and a test or a bench can drive it without an sshd.
The facts are the ones ``supervisor hosts check`` stored; the loads (sandboxes running,
recent failures) are the engine's own counts.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.errors import InputError

# How many hosts are compared for each placement: two random choices already spread
# load almost as well as looking at all of them, and stay cheap at hundreds of hosts.
BEST_OF_K = 3
FAILURE_MEMORY_S = 600.0  # a failure counts against a host for this long
BUSY = "(busy at its last check)"  # owners of GPUs that are no agent's
MIG = "(split into MIG instances)"


@dataclass
class HostSlots:
    """One host as placement sees it: its facts and what the engine has put on it."""

    name: str
    cpus: float = 0.0
    ram_mb: float = 0.0
    gpus: int = 0
    cap: int = 8  # sandboxes at most at once
    cordoned: bool = False
    reachable: bool | None = None
    running: set[str] = field(default_factory=set)  # agent ids
    gpu_owner: dict[int, str] = field(default_factory=dict)  # device index -> agent id
    failures: list[float] = field(default_factory=list)  # when sandboxes failed here
    down: str = ""  # why the host was found dead during this run ("" : alive)

    @classmethod
    def from_facts(cls, name: str, facts: Mapping[str, Any], **kw: Any) -> HostSlots:
        gpus = facts.get("gpus") or []
        host = cls(
            name,
            cpus=float(facts.get("cpus") or 0),
            ram_mb=float(facts.get("ram_mb") or 0),
            gpus=len(gpus),
            **kw,
        )
        # Something else used these at the host's last check, or they are split into MIG
        # instances: no agent gets them as whole GPUs.
        for i, g in enumerate(gpus):
            if g.get("busy") or g.get("mig") == "Enabled":
                index = i if g.get("index") is None else int(g["index"])
                host.gpu_owner[index] = BUSY if g.get("busy") else MIG
        return host

    def why_not(self, *, staying: bool = False) -> str:
        """Why no sandbox may go here now, or "". ``staying``: a resumed agent whose
        sandbox is here already (a cordon stops new agents only)."""
        if self.cordoned and not staying:
            return "cordoned"
        if self.down:
            return f"down ({self.down})"
        if self.reachable is False:
            return "unreachable at its last check"
        if len(self.running) >= self.cap:
            return f"full ({len(self.running)}/{self.cap} sandboxes)"
        return ""

    def free_gpus(self) -> list[int]:
        return [i for i in range(self.gpus) if i not in self.gpu_owner]

    def score(self, now: float, gpus: int = 0) -> float:
        """Higher is better: free share of the cap, CPU and memory left per sandbox,
        free GPU slots (for an agent that asks for GPUs only: others do not crowd GPU
        hosts for them), fewer recent failures."""
        n = len(self.running)
        recent = sum(1 for t in self.failures if now - t < FAILURE_MEMORY_S)
        return (
            (self.cap - n) / self.cap
            + min(self.cpus / (n + 1), 16.0) / 16.0
            + min(self.ram_mb / (n + 1), 65536.0) / 65536.0
            + (0.5 * len(self.free_gpus()) / max(self.gpus, 1) if gpus else 0.0)
            - 1.0 * recent
        )


@dataclass(frozen=True)
class Placement:
    host: str
    gpus: tuple[int, ...]
    score: float
    compared: tuple[str, ...]


class NoRoom(Exception):
    """Every host of the pool refused; ``reasons`` says why each did."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        super().__init__(
            "no host of the pool can take a sandbox now: "
            + "; ".join(f"{name} {why}" for name, why in sorted(reasons.items()))
        )


class Pool:
    """The hosts of one run and what is placed on them."""

    def __init__(self, hosts: Iterable[HostSlots], *, seed: int = 0, k: int = BEST_OF_K) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.k = k
        self.placed: dict[str, Placement] = {}  # agent id -> where it went, until released
        self.lost: dict[str, str] = {}  # agent id -> why its host was lost under it
        self.sync_s: list[float] = []  # seconds each step's workspace sync took
        self.unsaid: set[str] = set()  # placed, not yet said in the agent's transcript
        self.moved: dict[str, tuple[str, str]] = {}  # agent id -> (old host, old sandbox id)
        self.claimed: set[str] = set()  # counted again where their sandboxes were
        self.watcher: Any = None  # the engine's task watching the hosts in use
        self._rng = random.Random(seed)

    def place(self, agent_id: str, *, gpus: int = 0) -> Placement:
        """Choose a host for ``agent_id`` (and ``gpus`` whole GPU slots on it), record it."""
        reasons = {h.name: h.why_not() for h in self.hosts.values()}
        for h in self.hosts.values():
            if not reasons[h.name] and len(h.free_gpus()) < gpus:
                reasons[h.name] = f"{len(h.free_gpus())} free GPU slots, {gpus} asked"
        open_ = [name for name, why in reasons.items() if not why]
        if not open_:
            raise NoRoom(reasons)
        compared = self._rng.sample(open_, min(self.k, len(open_)))
        now = time.time()
        # Ties go to the name first in order, so a placement is reproducible.
        best = max(sorted(compared), key=lambda n: self.hosts[n].score(now, gpus))
        host = self.hosts[best]
        taken = tuple(host.free_gpus()[:gpus])
        host.running.add(agent_id)
        for i in taken:
            host.gpu_owner[i] = agent_id
        placed = self.placed[agent_id] = Placement(
            best, taken, host.score(now, gpus), tuple(sorted(compared))
        )
        return placed

    def claim(self, agent_id: str, name: str, gpus: int = 0) -> Placement:
        """Count ``agent_id`` on host ``name`` again, with ``gpus`` free GPU slots there: a
        resumed agent whose sandbox is still there (the caller has checked the host may
        take it)."""
        host = self.hosts[name]
        host.running.add(agent_id)
        self.claimed.add(agent_id)
        taken = tuple(host.free_gpus()[:gpus])
        for i in taken:
            host.gpu_owner[i] = agent_id
        placed = self.placed[agent_id] = Placement(name, taken, host.score(time.time()), (name,))
        return placed

    def release(self, agent_id: str, *, failed: bool = False) -> None:
        self.placed.pop(agent_id, None)
        self.unsaid.discard(agent_id)
        self.claimed.discard(agent_id)
        for h in self.hosts.values():
            if agent_id in h.running:
                h.running.discard(agent_id)
                h.gpu_owner = {i: a for i, a in h.gpu_owner.items() if a != agent_id}
                if failed:
                    h.failures.append(time.time())

    def where(self, agent_id: str) -> str:
        return next((h.name for h in self.hosts.values() if agent_id in h.running), "")


def resolve(spec: str, known: Sequence[str], pools: Mapping[str, Sequence[str]]) -> list[str]:
    """``--hosts`` as typed: ``a,b,c``, ``all``, or a pool name from the settings
    (``pools.NAME.hosts``). Every host named must be registered."""
    spec = spec.strip()
    if not spec:
        raise InputError("--hosts is empty (give a,b,c, all, or a pool name)")
    if spec == "all":
        if not known:
            raise InputError("--hosts all: no hosts yet (add one: supervisor hosts add)")
        return list(known)
    if spec in pools and spec not in known:
        names = [str(n) for n in pools[spec]]
        where = f"pool {spec!r} (pools.{spec}.hosts)"
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        where = "--hosts"
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"{where}: no host named {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(known) or 'none yet'})"
        )
    if not names:
        raise InputError(f"{where} names no hosts")
    return list(dict.fromkeys(names))


# -- where an agent runs, as a person reads it

LOCAL = "local"  # a docker or local sandbox, on the supervisor's own machine
Query = Callable[[str, list[Any]], Iterable[Mapping[str, Any]]]


def sandbox_host(sandbox_id: str | None) -> str:
    """The host an ssh sandbox id names (``ssh:HOST:MODE:...``), or ""."""
    parts = (sandbox_id or "").split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "ssh" else ""


def agent_hosts(query: Query, agents: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each agent's host, from what the store already holds: the host its ssh sandbox id
    names; before its sandbox started (or after it was moved off a lost host), the host
    of its last ``placement`` event (a pool's run) or its run's ``--host``; ``local`` for
    sandboxes on this machine. ``query(sql, args)`` reads the store (a client's or the
    store's own connection)."""
    found: dict[str, str] = {}
    unknown: list[Mapping[str, Any]] = []
    for a in agents:
        host = sandbox_host(a.get("sandbox_id"))
        if host:
            found[a["id"]] = host
        elif a.get("sandbox") != "ssh":
            found[a["id"]] = LOCAL
        else:
            unknown.append(a)
    for a in unknown:  # few: ssh agents whose sandbox is not (or no longer) started
        rows = list(
            query(
                "SELECT data FROM events WHERE agent_id = ? AND type = 'placement' "
                "ORDER BY id DESC LIMIT 1",
                [a["id"]],
            )
        )
        placed = json.loads(rows[0]["data"] or "{}") if rows else {}
        host = str(placed.get("host") or "") if placed.get("phase") == "placed" else ""
        if not host:
            run = list(query("SELECT params FROM runs WHERE id = ?", [a["run_id"]]))
            host = str(json.loads((run[0]["params"] if run else "") or "{}").get("host") or "")
        found[a["id"]] = host or "—"
    return found
