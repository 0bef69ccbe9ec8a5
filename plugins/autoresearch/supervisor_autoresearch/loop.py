"""The experiment loop, as recipe steps.

Per loop (one per agent): a sandbox with the target on branch ``autoresearch/<tag>-<i>``;
then until a limit: propose → commit → run under the time budget in an exclusive slot
(killed at twice the budget: a crash) → read the metric → keep the commit if it beat the
best so far, else reset → record the result (the store, ``results.tsv``, a memory note).

Loops share one :class:`Board`: each starts every experiment from the best result any of
them has found. Everything needed to continue is in the store, so ``recipe resume``
picks up after a crash where the loops left off.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.errors import InputError
from supervisor_autoresearch import proposers
from supervisor_autoresearch.spec import Spec, load

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from supervisor.recipes import StepContext
    from supervisor.sandbox.base import Sandbox

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RESULTS_HEADER = "commit\t{metric}\tmemory_gb\tstatus\tdescription\n"


def example_target() -> Path:
    return EXAMPLES / "autoresearch-cpu"


# -- slots: one experiment per GPU, or per set of CPU cores, at a time


class SlotPool:
    """Exclusive slots for experiments: ``CUDA_VISIBLE_DEVICES`` values or ``taskset`` core
    lists, handed out one experiment at a time."""

    def __init__(self, slots: list[str], kind: str) -> None:
        self.kind = kind  # gpu | cpu
        self._free: asyncio.Queue[str] = asyncio.Queue()
        for slot in slots:
            self._free.put_nowait(slot)
        self.slots = slots

    @classmethod
    def detect(cls, loops: int, cores_per_slot: int = 0) -> SlotPool:
        gpus = _gpus()
        if gpus:
            return cls(gpus, "gpu")
        cpus = sorted(os.sched_getaffinity(0))
        per = cores_per_slot or max(1, len(cpus) // max(loops, 1))
        groups = [cpus[i : i + per] for i in range(0, len(cpus) - per + 1, per)] or [cpus]
        return cls([",".join(map(str, g)) for g in groups], "cpu")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[str]:
        slot = await self._free.get()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)

    def wrap(self, slot: str, command: str) -> str:
        if self.kind == "gpu":
            # `env`, not a bare assignment: the command runs under `timeout`.
            return f"env CUDA_VISIBLE_DEVICES={slot} {command}"
        # Math libraries start one thread per core of the machine, not of the slot; more
        # threads than cores made CPU experiments 10-60x slower whenever a core was busy.
        n = len(slot.split(","))
        threads = f"env OMP_NUM_THREADS={n} OPENBLAS_NUM_THREADS={n} MKL_NUM_THREADS={n}"
        return f"{threads} taskset -c {slot} {command}"


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


# -- shared state


@dataclass
class Board:
    spec: Spec
    target: str
    best_metric: float | None = None
    best_files: dict[str, str] = field(default_factory=dict)
    best_by: str = ""
    count: int = 0  # experiments started in this run (the baseline not included)
    tried: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _board(ctx: StepContext) -> Board:
    boards: dict[str, Board] = ctx.engine.__dict__.setdefault("_autoresearch_boards", {})
    if ctx.run_id not in boards:
        spec = Spec(**ctx.outputs["prepare"]["spec"])
        board = Board(spec=spec, target=ctx.outputs["prepare"]["target_name"])
        ctx.engine.store.flush()
        rows = list(
            ctx.engine.store.db.query(
                "SELECT * FROM experiments WHERE target = ? ORDER BY id", [board.target]
            )
        )
        for row in rows:
            if row["params"]:
                board.tried.add(proposers.key(json.loads(row["params"])))
            if row["run_id"] == ctx.run_id:
                if row["n"] > 0:
                    board.count += 1
                if (
                    row["status"] == "keep"
                    and row["files"]
                    and spec.better(row["metric"], board.best_metric)
                ):
                    board.best_metric = row["metric"]
                    board.best_files = json.loads(row["files"])
                    board.best_by = row["agent_id"]
        boards[ctx.run_id] = board
        # After a crash the file may lack the last lines, or hold ones the store never
        # committed: the store is the truth.
        ours = [r for r in rows if r["run_id"] == ctx.run_id]
        (ctx.run_dir / "results.tsv").write_text(
            RESULTS_HEADER.format(metric=spec.metric_name) + "".join(_tsv_line(r) for r in ours)
        )
    return boards[ctx.run_id]


def _tsv_line(row: dict[str, Any]) -> str:
    """One results.tsv row: commit, metric, memory_gb, status, description."""
    metric = f"{row['metric']:.6f}" if row["metric"] is not None else "0.000000"
    memory = f"{row['memory_mb'] / 1024:.2f}" if row["memory_mb"] else "0.0"
    description = str(row["description"]).replace("\t", " ").replace("\n", " ")
    return f"{row['commit'] or '-'}\t{metric}\t{memory}\t{row['status']}\t{description}\n"


# -- steps


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve the target, read its spec, and make the run's copy a git repo on a branch."""
    given = str(ctx.params.get("target") or "")
    source = Path(given).expanduser() if given else example_target()
    if not source.is_dir():
        raise InputError(f"autoresearch: target {source} is not a folder")
    overrides = {
        "time_budget_s": float(ctx.params.get("time_budget") or 0) or None,
        "run": ctx.params.get("run") or None,
        "metric": ctx.params.get("metric") or None,
        "direction": ctx.params.get("direction") or None,
        "editable": ctx.params.get("editable") or None,
    }
    spec = load(source.resolve(), overrides)
    repo = ctx.run_dir / "target"
    if not repo.exists():
        if (source / ".git").exists():
            _git(["clone", "--quiet", str(source), str(repo)])
        else:
            shutil.copytree(
                source,
                repo,
                ignore=shutil.ignore_patterns("data", "run.log", "results.tsv", "__pycache__"),
            )
            _git(["init", "-q", "-b", "main"], repo)
            _git(["add", "-A"], repo)
            _git(["commit", "-q", "-m", "the target as given"], repo)
    tag = ctx.params.get("tag") or ctx.run_id
    (ctx.run_dir / "results.tsv").write_text(RESULTS_HEADER.format(metric=spec.metric_name))
    ctx.emit(
        f"target {source} ({spec.name}): edit {', '.join(spec.editable)}, "
        f"{spec.metric_name} {spec.direction} is better, budget {spec.time_budget_s:g}s"
    )
    return {
        "target": str(repo),
        "target_name": spec.name,
        "tag": tag,
        "spec": spec.__dict__,
        "source": str(source),
    }


async def baseline(ctx: StepContext) -> dict[str, Any]:
    """Run the unmodified target once: the result every experiment must beat."""
    board = _board(ctx)
    if board.best_metric is not None:
        return {"metric": board.best_metric}
    async with Loop(ctx, board, index=0, label="baseline") as loop:
        record = await loop.experiment(None, n=0)
    if record["status"] != "keep":
        raise RuntimeError(
            f"the baseline did not give a result ({record['description']}); the end of its "
            f"log:\n{record['log']}"
        )
    return {"metric": record["metric"]}


async def run_loops(ctx: StepContext) -> dict[str, Any]:
    """N loops in parallel until a limit; each builds on the best any of them found."""
    board = _board(ctx)
    agents = max(1, int(ctx.params.get("agents") or 1))
    pool = SlotPool.detect(agents, int(ctx.params.get("cores_per_slot") or 0))
    ctx.emit(f"{agents} loop(s), {len(pool.slots)} {pool.kind} slot(s): {pool.slots}")
    results = await asyncio.gather(*(_one_loop(ctx, board, i + 1, pool) for i in range(agents)))
    return {"loops": results, "best": board.best_metric}


async def _one_loop(ctx: StepContext, board: Board, index: int, pool: SlotPool) -> dict[str, Any]:
    limit = int(ctx.params.get("experiments") or 0)
    hours = float(ctx.params.get("hours") or 0)
    deadline = time.monotonic() + hours * 3600 if hours else None
    proposer = _proposer(ctx, board, index)
    kept = done = 0
    async with Loop(ctx, board, index=index, label=f"agent-{index}", pool=pool) as loop:
        while True:
            async with board.lock:
                if limit and board.count >= limit:
                    break
                if deadline and time.monotonic() >= deadline:
                    break
                board.count += 1
                n = board.count
            record = await loop.experiment(proposer, n=n)
            if record["status"] == "exhausted":
                break
            done += 1
            kept += record["status"] == "keep"
        await loop.bring_back()
    return {"loop": index, "experiments": done, "kept": kept}


def _proposer(ctx: StepContext, board: Board, index: int) -> Any:
    choice = ctx.params.get("proposer") or "auto"
    model = ctx.engine.settings.get("model", "")
    if choice == "model" or (choice == "auto" and model and _model_usable(ctx, model)):
        return proposers.AgentProposer(model)
    if not board.spec.hyperparameters:
        raise InputError(
            f"{board.spec.name}: no model is configured and the spec declares no "
            "[autoresearch.hyperparameters] for the built-in proposer"
        )
    return proposers.SearchProposer(board.spec.hyperparameters, seed=index)


def _model_usable(ctx: StepContext, model: str) -> bool:
    from supervisor.models import ModelError, check_usable

    try:
        check_usable(ctx.engine.models.registry.resolve(model))
    except ModelError:
        return False
    return True


class Loop:
    """One loop's sandbox and branch, and how an experiment is run in it."""

    def __init__(
        self,
        ctx: StepContext,
        board: Board,
        *,
        index: int,
        label: str,
        pool: SlotPool | None = None,
    ) -> None:
        self.ctx, self.board, self.index, self.label = ctx, board, index, label
        self.pool = pool or SlotPool.detect(1)
        self.spec = board.spec
        self.sandbox: Sandbox | None = None
        self.branch = f"autoresearch/{ctx.outputs['prepare']['tag']}-{index}"
        # Only the editable files are ever committed: logs and data stay untracked.
        self._editable = " ".join(shlex.quote(f) for f in self.spec.editable)

    async def __aenter__(self) -> Loop:
        from supervisor.sandbox.base import SandboxSpec
        from supervisor.sandbox.manager import new_sandbox

        settings = self.ctx.engine.settings
        backend = self.ctx.params.get("sandbox") or settings["sandbox.backend"]
        spec = SandboxSpec(
            run_id=self.ctx.run_id,
            agent_id=f"{self.label}-{os.urandom(2).hex()}",
            workspace=Path(self.ctx.outputs["prepare"]["target"]),
            memory=settings["sandbox.memory"],
            cpus=settings["sandbox.cpus"],
            pids=settings["sandbox.pids"],
            image=settings["sandbox.image"],
            network=bool(self.ctx.params.get("network")),
            labels={"scope": self.board.target},
        )
        self.sandbox = new_sandbox(spec, backend)
        await self.sandbox.start()
        await self._sh(f"git checkout -q -B {self.branch}")
        if self.spec.setup:
            self.ctx.emit(f"{self.label}: setup: {self.spec.setup}")
            result = await self._sh(self.spec.setup, timeout=1800)
            if not result.ok:
                raise RuntimeError(f"setup `{self.spec.setup}` failed:\n{result.stderr[-2000:]}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sandbox is not None:
            await self.sandbox.destroy()

    async def _sh(self, command: str, timeout: float = 120) -> Any:
        assert self.sandbox is not None
        return await self.sandbox.exec(f"cd {self.sandbox.workdir} && {command}", timeout=timeout)

    async def _files(self) -> dict[str, str]:
        assert self.sandbox is not None
        return {
            name: (await self.sandbox.read_file(f"{self.sandbox.workdir}/{name}")).decode()
            for name in self.spec.editable
        }

    async def _write(self, files: dict[str, str]) -> None:
        assert self.sandbox is not None
        for name, text in files.items():
            await self.sandbox.write_file(f"{self.sandbox.workdir}/{name}", text.encode())

    async def experiment(self, proposer: Any, *, n: int) -> dict[str, Any]:
        """Propose, commit, run, judge, record. ``proposer`` None: the baseline."""
        board, spec = self.board, self.spec
        started = time.time()
        params: dict[str, Any] = {}
        if proposer is None:
            description = "baseline"
            params = proposers.read_params(await self._files(), list(spec.hyperparameters))
            board.tried.add(proposers.key(params))  # never "propose" the baseline again
        else:
            # Start from the best so far, whoever found it.
            if board.best_files and board.best_files != await self._files():
                await self._write(board.best_files)
                await self._sh(
                    f"git add -- {self._editable} && {GIT} commit -q -m "
                    f"'sync to the best so far ({board.best_by})'"
                )
            proposal = await self._propose(proposer)
            if proposal is None:
                self.ctx.emit(f"{self.label}: nothing left to try")
                return {"status": "exhausted"}
            description, params = proposal.description, proposal.params
            commit = await self._sh(
                f"git add -- {self._editable} && {GIT} commit -q -m {shlex.quote(description)}"
            )
            if not commit.ok:
                return await self._record(
                    n,
                    "",
                    None,
                    None,
                    "discard",
                    "no change: " + description,
                    params,
                    started,
                    "",
                    "",
                )
        sha = (await self._sh("git rev-parse --short HEAD")).stdout.strip()
        self.ctx.emit(f"{self.label} #{n}: {description}")
        async with self.pool.slot() as slot:
            # The recorded times are the slot's: when this experiment had it to itself.
            started = time.time()
            budget = spec.time_budget_s
            command = self.pool.wrap(slot, spec.run)
            run = (
                f"AUTORESEARCH_TIME_BUDGET={budget:g} timeout -k 5 {2 * budget:g} "
                f"{command} > run.log 2>&1; echo $?"
            )
            result = await self._sh(run, timeout=2 * budget + 60)
            run_s = time.time() - started
        log = (await self._sh("tail -c 4000 run.log")).stdout
        code = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "?"
        metric = spec.read_metric(log)
        memory = spec.read_memory(log)
        if code == "124" or result.timed_out:
            status, why = "crash", f"killed at twice the time budget ({2 * budget:g}s)"
        elif metric is None:
            status, why = "crash", f"exit code {code}, no {spec.metric_name} in the log"
        else:
            async with board.lock:
                improved = spec.better(metric, board.best_metric)
                if improved:
                    board.best_metric, board.best_by = metric, self.label
                    board.best_files = await self._files()
            status, why = ("keep" if improved else "discard"), ""
        if status != "keep" and proposer is not None:
            await self._sh("git reset -q --hard HEAD~1")
        files = json.dumps(board.best_files) if status == "keep" else ""
        record = await self._record(
            n,
            sha,
            metric,
            memory,
            status,
            description,
            params,
            started,
            files,
            slot,
            why=why,
            run_s=run_s,
        )
        record["log"] = log[-1500:]
        return record

    async def _propose(self, proposer: Any) -> proposers.Proposal | None:
        board = self.board
        if isinstance(proposer, proposers.SearchProposer):
            async with board.lock:
                proposal = proposer.propose(board.best_files or await self._files(), board.tried)
                if proposal is not None:
                    board.tried.add(proposers.key(proposal.params))
            if proposal is not None:
                await self._write(proposal.files)
            return proposal
        history = self._history()
        notes = [
            n["body"]
            for n in self.ctx.engine.recall(
                f"{board.target} experiment {self.spec.metric_name}", board.target, limit=20
            )
        ]
        assert self.sandbox is not None
        agent = await self.ctx.engine.run_in_sandbox(
            self.ctx.run_id,
            proposer.task(self.spec, history, notes),
            self.sandbox,
            name=f"{self.label}-editor",
            model=proposer.model,
            max_steps=30,
            exclude_tools=("ask_human", "spawn_agent", "wait_for", "send_message"),
        )
        params = proposers.read_params(await self._files(), list(self.spec.hyperparameters))
        return proposers.Proposal(
            agent.summary.strip().splitlines()[0][:200] if agent.summary else "an edit", {}, params
        )

    def _history(self) -> list[dict[str, Any]]:
        store = self.ctx.engine.store
        store.flush()
        return [
            dict(r)
            for r in store.db.query(
                "SELECT status, metric, description FROM experiments WHERE target = ? ORDER BY id",
                [self.board.target],
            )
        ]

    async def _record(
        self,
        n: int,
        sha: str,
        metric: float | None,
        memory: float | None,
        status: str,
        description: str,
        params: dict[str, Any],
        started: float,
        files: str,
        slot: str,
        *,
        why: str = "",
        run_s: float = 0.0,
    ) -> dict[str, Any]:
        ctx, spec = self.ctx, self.spec
        row = {
            "run_id": ctx.run_id,
            "agent_id": self.label,
            "target": self.board.target,
            "n": n,
            "commit": sha,
            "metric": metric,
            "memory_mb": memory,
            "status": status,
            "description": description + (f" ({why})" if why else ""),
            "params": json.dumps(params, sort_keys=True, default=str),
            "files": files,
            "slot": slot,
            "started_at": started,
            "duration_s": round(run_s, 2),
        }
        stored = dict(row)  # the writer runs later; the caller may add to ``row``
        # Committed before anything else sees it: the store is what resume trusts, and
        # results.tsv is rewritten from it when a run is taken up again.
        await asyncio.wrap_future(
            ctx.engine.store.write(lambda db: db.table("experiments").insert(stored))
        )
        shown = f"{metric:.6f}" if metric is not None else "0.000000"
        with (ctx.run_dir / "results.tsv").open("a") as fh:
            fh.write(_tsv_line(row))
        best = self.board.best_metric
        ctx.emit(
            f"{self.label} #{n}: {status} {spec.metric_name}={shown} (best {best:.6f})"
            if best is not None
            else f"{self.label} #{n}: {status}",
            experiment=n,
            status=status,
            metric=metric,
            best=best,
            loop=self.label,
            slot=slot,
            started_at=started,
            duration_s=run_s,
        )
        if n > 0:
            # Memory for later agents and runs: what worked, what failed and why.
            verb = {"keep": "improved", "discard": "did not improve", "crash": "crashed"}[status]
            body = (
                f"{spec.name}: {description} {verb} {spec.metric_name} "
                f"({shown if metric is not None else why})"
            )
            note = {
                "scope": "project",
                "scope_key": self.board.target,
                "body": body,
                "run_id": ctx.run_id,
                "created_at": time.time(),
            }
            ctx.engine.store.write(lambda db: db.table("notes").insert(note))
        return row

    async def bring_back(self) -> None:
        """Fetch this loop's branch into the run's copy of the target."""
        from supervisor.sandbox.workspace import WorkspaceError, apply

        assert self.sandbox is not None
        try:
            target = Path(self.ctx.outputs["prepare"]["target"])
            message = await apply(self.sandbox, target, branch=self.branch)
        except WorkspaceError as exc:
            message = str(exc)
        self.ctx.emit(f"{self.label}: {message}")


GIT = "git -c user.name='autoresearch' -c user.email=autoresearch@supervisor.invalid"


def _git(args: list[str], cwd: Path | None = None) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "autoresearch",
        "GIT_COMMITTER_NAME": "autoresearch",
        "GIT_AUTHOR_EMAIL": "autoresearch@supervisor.invalid",
        "GIT_COMMITTER_EMAIL": "autoresearch@supervisor.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)
