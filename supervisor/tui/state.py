"""What the TUI knows about the fleet, kept without textual so it is cheap and testable.

The state starts from one consistent SQLite snapshot (rows and the last event id read in
the same read transaction, so no event is applied twice or missed) and then follows the
server's events. Applying a batch says which rows changed; the screen redraws only those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor.fleet import LOCAL, agent_hosts
from supervisor.status import FINAL

if TYPE_CHECKING:
    from supervisor.client import Client
    from supervisor.events import Event

ENDED = FINAL
ACTIVE_RUN = ("running", "paused")
RECENT_FINISHED_RUNS = 20
OPEN_FINISHED_RUNS = 3  # the newest finished runs start unfolded: recent work stays in view
STATUS_WORDS = {"waiting": "waiting for you"}
SORT_KEYS = ("started", "name", "status", "cost", "tokens", "elapsed")
# Statuses in the order a person wants to see them when sorting by status.
STATUS_ORDER = {
    "waiting": 0,
    "running": 1,
    "starting": 2,
    "paused": 3,
    "interrupted": 4,
    "failed": 5,
    "stopped": 6,
    "done": 7,
}


@dataclass
class AgentInfo:
    id: str
    run_id: str
    name: str
    parent_id: str | None = None
    role: str = ""
    task: str = ""
    model: str = ""
    sandbox: str = ""
    host: str = ""  # where its sandbox runs: a host's name, or "local"
    status: str = "starting"
    doing: str = ""
    steps: int = 0
    tokens: int = 0
    cost: float = 0.0
    budget_usd: float | None = None
    summary: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    paused: bool = False  # a pause was asked for (the status follows at the next step)
    pending: dict[str, Any] | None = None  # the question or approval it waits on
    doing_since: float = 0.0  # when it began what ``doing`` says (a long command's clock)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AgentInfo:
        return cls(
            id=row["id"],
            run_id=row["run_id"],
            name=row.get("name") or row["id"],
            parent_id=row.get("parent_id"),
            role=row.get("role") or "",
            task=row.get("task") or "",
            model=row.get("model") or "",
            sandbox=row.get("sandbox") or "",
            status=row.get("status") or "",
            doing=row.get("doing") or "",
            steps=int(row.get("steps") or 0),
            tokens=int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0),
            cost=float(row.get("cost_usd") or 0.0),
            budget_usd=row.get("budget_usd"),
            summary=row.get("summary") or "",
            created_at=float(row.get("created_at") or 0.0),
            finished_at=row.get("finished_at"),
            doing_since=float(row.get("updated_at") or 0.0),
        )

    @property
    def status_text(self) -> str:
        return STATUS_WORDS.get(self.status, self.status)

    def elapsed(self, now: float) -> float:
        end = self.finished_at if self.status in ENDED and self.finished_at else now
        return max(0.0, end - self.created_at)


@dataclass
class RunInfo:
    id: str
    title: str
    kind: str = "task"
    recipe: str | None = None
    status: str = "running"
    created_at: float = 0.0
    finished_at: float | None = None
    cost: float = 0.0
    budget_usd: float | None = None
    workspace: str = ""
    collapsed: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunInfo:
        status = row.get("status") or "running"
        return cls(
            id=row["id"],
            title=row.get("title") or row["id"],
            kind=row.get("kind") or "task",
            recipe=row.get("recipe"),
            status=status,
            created_at=float(row.get("created_at") or 0.0),
            finished_at=row.get("finished_at"),
            cost=float(row.get("cost_usd") or 0.0),
            budget_usd=row.get("budget_usd"),
            workspace=row.get("workspace") or "",
            collapsed=status not in ACTIVE_RUN and status != "interrupted",
        )

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN

    def elapsed(self, now: float) -> float:
        end = self.finished_at if not self.active and self.finished_at else now
        return max(0.0, end - self.created_at)


@dataclass
class Changes:
    """What one batch of events changed."""

    rows: set[str] = field(default_factory=set)  # agent ids and run ids to redraw
    structure: bool = False  # rows were added (or a run's status changed its place)
    asked: list[AgentInfo] = field(default_factory=list)  # agents that began to wait
    notes: bool = False
    spent: bool = False

    def __bool__(self) -> bool:
        return bool(self.rows or self.structure or self.asked or self.notes or self.spent)


@dataclass
class Fleet:
    runs: dict[str, RunInfo] = field(default_factory=dict)
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    spent_today: float = 0.0
    last_event_id: int = 0
    # What each budget last said ("fleet", "daily" or a run id -> (words, level)); the
    # cost bar shows them so a brake is seen without opening a transcript.
    budgets: dict[str, tuple[str, str]] = field(default_factory=dict)

    # -- loading

    @classmethod
    def load(cls, client: Client, extra_runs: Iterable[str] = ()) -> Fleet:
        """Active runs and the latest finished ones, with their agents, as one snapshot.

        Reads happen inside one read transaction: the rows and ``last_event_id`` describe
        the same moment, so the events that follow it apply to exactly these rows.
        """
        db = client.db
        db.execute("BEGIN")
        try:
            last = client.last_event_id()
            rows = client.runs(limit=500)
            keep: list[dict[str, Any]] = []
            finished = 0
            wanted = set(extra_runs)
            for row in rows:
                if row["status"] in ACTIVE_RUN or row["status"] == "interrupted":
                    keep.append(row)
                elif finished < RECENT_FINISHED_RUNS or row["id"] in wanted:
                    finished += 1
                    keep.append(row)
            agents = client.agents([r["id"] for r in keep]) if keep else []
            hosts = agent_hosts(client.query, agents)
            waiting = [a["id"] for a in agents if a["status"] == "waiting"]
            asked = _last_asks(client, waiting)
            spent = client.spent_today()
        finally:
            db.execute("COMMIT")
        fleet = cls(spent_today=spent, last_event_id=last)
        unfolded = 0
        for row in keep:  # newest first
            run = fleet.runs[row["id"]] = RunInfo.from_row(row)
            if run.collapsed and unfolded < OPEN_FINISHED_RUNS:
                run.collapsed = False
                unfolded += 1
        for row in agents:
            agent = AgentInfo.from_row(row)
            agent.host = hosts[agent.id]
            agent.pending = asked.get(agent.id)
            fleet.agents[agent.id] = agent
        return fleet

    def add_run_from_db(self, client: Client, run_id: str) -> bool:
        """Show an older run (the history screen jumped to it); False if there is none."""
        rows = client.query("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            return False
        run = RunInfo.from_row(rows[0])
        run.collapsed = False
        self.runs[run_id] = run
        rows = client.agents([run_id])
        hosts = agent_hosts(client.query, rows)
        for row in rows:
            agent = self.agents.setdefault(row["id"], AgentInfo.from_row(row))
            agent.host = agent.host or hosts[row["id"]]
        return True

    # -- following events

    def apply(self, events: Iterable[Event]) -> Changes:
        changes = Changes()
        for event in events:
            handler = _HANDLERS.get(str(event.type))
            if handler is not None:
                handler(self, event, changes)
            if event.id is not None:
                self.last_event_id = max(self.last_event_id, event.id)
        return changes

    def _run_created(self, e: Event, ch: Changes) -> None:
        if e.run_id is None or e.run_id in self.runs:
            return
        self.runs[e.run_id] = RunInfo(
            id=e.run_id,
            title=str(e.data.get("title") or e.run_id),
            kind=str(e.data.get("kind") or "task"),
            created_at=e.ts,
        )
        ch.structure = True

    def _run_status(self, e: Event, ch: Changes) -> None:
        run = self.runs.get(e.run_id or "")
        if run is None:
            return
        run.status = str(e.data.get("status") or run.status)
        run.finished_at = None if run.active else e.ts
        ch.rows.add(run.id)
        if not run.active:
            self.budgets.pop(run.id, None)
            if not any(r.active for r in self.runs.values()):
                self.budgets.pop("fleet", None)  # the fleet budget covers live runs only
            ch.spent = True

    def _agent_created(self, e: Event, ch: Changes) -> None:
        if e.agent_id is None or e.run_id is None:
            return
        agent = self.agents.get(e.agent_id)
        if agent is None:
            self.agents[e.agent_id] = AgentInfo(
                id=e.agent_id,
                run_id=e.run_id,
                name=str(e.data.get("name") or e.agent_id),
                parent_id=e.data.get("parent_id"),
                model=str(e.data.get("model") or ""),
                sandbox=str(e.data.get("sandbox") or ""),
                host=str(e.data.get("host") or "")
                or (LOCAL if e.data.get("sandbox") not in (None, "ssh") else ""),
                task=e.text,
                created_at=e.ts,
            )
            ch.structure = True

    def _agent_status(self, e: Event, ch: Changes) -> None:
        agent = self.agents.get(e.agent_id or "")
        if agent is None:
            return
        status = str(e.data.get("status") or agent.status)
        doing = str(e.data.get("doing") or "")
        if doing == "thinking":
            agent.steps += 1  # the agent says "thinking" once at the start of every step
        if status != agent.status and agent.status in ENDED and status not in ENDED:
            agent.finished_at = None  # restarted
        agent.status = status
        if doing != agent.doing:
            agent.doing_since = e.ts
        agent.doing = doing
        if status in ENDED or status == "interrupted":
            agent.finished_at = e.ts
            agent.summary = str(e.data.get("summary") or agent.summary)
            agent.paused = False
        if status == "running" and doing == "resumed":
            agent.paused = False
        if status != "waiting":
            agent.pending = None
        ch.rows.add(agent.id)

    def _placement(self, e: Event, ch: Changes) -> None:
        """Placed on a pool's host (or moved to another after its host was lost)."""
        agent = self.agents.get(e.agent_id or "")
        if agent is not None and e.data.get("phase") == "placed" and e.data.get("host"):
            agent.host = str(e.data["host"])
            ch.structure = True  # a host filter may now show or hide it

    def _cost(self, e: Event, ch: Changes) -> None:
        cost = float(e.data.get("cost_usd") or 0.0)
        self.spent_today += cost
        ch.spent = True
        agent = self.agents.get(e.agent_id or "")
        if agent is not None:
            agent.cost = float(e.data.get("agent_cost_usd") or agent.cost + cost)
            agent.tokens += int(e.data.get("input_tokens") or 0)
            agent.tokens += int(e.data.get("output_tokens") or 0)
            ch.rows.add(agent.id)
        run = self.runs.get(e.run_id or "")
        if run is not None:
            run.cost += cost
            ch.rows.add(run.id)

    def _asked(self, e: Event, ch: Changes) -> None:
        agent = self.agents.get(e.agent_id or "")
        if agent is None:
            return
        agent.pending = _pending(e)
        ch.asked.append(agent)
        ch.rows.add(agent.id)

    def _answered(self, e: Event, ch: Changes) -> None:
        agent = self.agents.get(e.agent_id or "")
        if agent is not None and agent.pending is not None:
            agent.pending = None
            ch.rows.add(agent.id)

    def _log(self, e: Event, ch: Changes) -> None:
        agent = self.agents.get(e.agent_id or "")
        if agent is not None and "paused" in e.data:
            agent.paused = bool(e.data["paused"])
            ch.rows.add(agent.id)
        if any(str(k).startswith("budget.") for k in e.data.get("settings_changed") or ()):
            self.budgets.pop("fleet", None)  # a fleet or daily limit was changed
            self.budgets.pop("daily", None)
            ch.spent = True

    def _note(self, e: Event, ch: Changes) -> None:
        ch.notes = True

    def _budget(self, e: Event, ch: Changes) -> None:
        """A budget warned, braked, held an agent, shrank or was set: the cost bar says it."""
        d = e.data
        scope = str(d.get("scope") or "")
        if scope == "agent" or e.type == "budget.held":
            return  # the agent's own row says it is paused or was not started
        if e.type == "budget.set":  # raised or lowered: what it says next is news again
            self.budgets.pop(e.run_id or "", None)
            ch.spent = True
            return
        key, name = scope, scope
        if scope not in ("fleet", "daily"):
            run = self.runs.get(e.run_id or "")
            key, name = e.run_id or "", f"run {run.title[:16] if run else e.run_id}"
        unit = " tokens" if d.get("unit") == "tokens" else ""
        if e.type == "budget.brake":
            words, level = f"■ {name}{unit} budget spent: no new agents", "brake"
        elif e.type == "budget.shrink":
            words, level = f"⇣ {name}{unit} budget: {d.get('allowed')} step at once", "shrink"
        else:
            share = float(d.get("spent") or 0) / float(d.get("limit") or 1)
            words, level = f"⚠ {name}{unit} budget {share:.0%} spent", "warning"
        if self.budgets.get(key, ("", ""))[1] == "brake" and level != "brake":
            return  # a later warning from another run does not hide a brake
        self.budgets[key] = (words, level)
        ch.spent = True

    # -- reading

    def children(self, run_id: str) -> list[AgentInfo]:
        return [a for a in self.agents.values() if a.run_id == run_id]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for agent in self.agents.values():
            out[agent.status] = out.get(agent.status, 0) + 1
        return out

    def rows(
        self, *, query: str = "", sort: str = "started", now: float | None = None
    ) -> list[tuple[str, int, RunInfo | AgentInfo]]:
        """The fleet table's rows in order: ``(key, depth, item)``; runs newest first, each
        followed by its agents (a lead's workers under it), filtered and sorted."""
        now = time.time() if now is None else now
        needle, on_host = split_query(query)
        key = _sort_key(sort, now)
        out: list[tuple[str, int, RunInfo | AgentInfo]] = []
        runs = sorted(self.runs.values(), key=lambda r: (not r.active, -r.created_at))
        for run in runs:
            members = self.children(run.id)
            if on_host:
                members = [a for a in members if a.host.lower() == on_host]
                if not members:
                    continue
            run_text = f"{run.id} {run.title} {run.status}".lower()
            if needle:
                shown = {
                    a.id
                    for a in members
                    if needle in run_text
                    or needle
                    in f"{a.name} {a.id} {a.status_text} {a.task} {a.doing} {a.host}".lower()
                }
                if not shown:
                    continue
                # A matching worker is shown under its lead, so the tree stays readable.
                for a in list(members):
                    if a.id in shown and a.parent_id:
                        shown.add(a.parent_id)
                members = [a for a in members if a.id in shown]
            out.append((f"run:{run.id}", 0, run))
            if run.collapsed and not (needle or on_host):
                continue
            ids = {a.id for a in members}
            by_parent: dict[str | None, list[AgentInfo]] = {}
            for a in members:
                parent = a.parent_id if a.parent_id in ids else None
                by_parent.setdefault(parent, []).append(a)

            _walk(by_parent, None, 1, key, out)
        return out


HOST_FILTER = "host:"


def split_query(query: str) -> tuple[str, str]:
    """The fleet filter as typed: free text, and ``host:NAME`` for one host's agents
    (``host:local`` for this machine's)."""
    words, host = [], ""
    for word in query.split():
        if word.lower().startswith(HOST_FILTER):
            host = word[len(HOST_FILTER) :].lower()
        else:
            words.append(word)
    return " ".join(words).lower(), host


def _walk(
    by_parent: dict[str | None, list[AgentInfo]],
    parent: str | None,
    depth: int,
    key: Callable[[AgentInfo], Any],
    out: list[tuple[str, int, RunInfo | AgentInfo]],
) -> None:
    for agent in sorted(by_parent.get(parent, []), key=key):
        out.append((agent.id, depth, agent))
        _walk(by_parent, agent.id, depth + 1, key, out)


def _sort_key(sort: str, now: float) -> Callable[[AgentInfo], Any]:
    if sort == "name":
        return lambda a: a.name.lower()
    if sort == "status":
        return lambda a: (STATUS_ORDER.get(a.status, 9), a.created_at)
    if sort == "cost":
        return lambda a: -a.cost
    if sort == "tokens":
        return lambda a: -a.tokens
    if sort == "elapsed":
        return lambda a: -a.elapsed(now)
    return lambda a: a.created_at


def _pending(e: Event) -> dict[str, Any]:
    if str(e.type) == "approval.asked":
        return {
            "kind": "approval",
            "tool": e.data.get("tool", ""),
            "arguments": e.data.get("arguments", {}),
            "pattern": e.data.get("pattern", ""),
            "text": e.text,
        }
    return {"kind": "question", "text": str(e.data.get("question") or e.text)}


def _last_asks(client: Client, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What each waiting agent waits on: its last question or approval request."""
    found: dict[str, dict[str, Any]] = {}
    for agent_id in agent_ids:
        events = client.events(
            agent_id=agent_id,
            types=("human.asked", "approval.asked", "human.answered"),
            newest=True,
            limit=1,
        )
        if events and str(events[-1].type) != "human.answered":
            found[agent_id] = _pending(events[-1])
    return found


_HANDLERS: dict[str, Callable[[Fleet, Event, Changes], None]] = {
    "run.created": Fleet._run_created,
    "run.status": Fleet._run_status,
    "agent.created": Fleet._agent_created,
    "agent.status": Fleet._agent_status,
    "cost": Fleet._cost,
    "placement": Fleet._placement,
    "human.asked": Fleet._asked,
    "approval.asked": Fleet._asked,
    "human.answered": Fleet._answered,
    "approval.resolved": Fleet._answered,
    "log": Fleet._log,
    "note.written": Fleet._note,
    "budget.warning": Fleet._budget,
    "budget.brake": Fleet._budget,
    "budget.shrink": Fleet._budget,
    "budget.set": Fleet._budget,
}


def money(value: float | None) -> str:
    if not value:
        return "$0"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.4f}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def tokens(count: int) -> str:
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.1f}M"
