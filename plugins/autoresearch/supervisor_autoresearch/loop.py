"""The experiment loop, as recipe steps.

Per loop (one per agent): a sandbox with the target on branch ``autoresearch/<tag>-<i>``;
then until a limit: propose → commit → run under the time budget in an exclusive slot
(killed at twice the budget: a crash) → check the fixed files are untouched (else
``invalid``) → read the metric → keep the commit only if it beat the best by more than the
noise floor the baseline's repeated runs measured (a marginal win runs again first, see
``judge.py``), else reset → record the result and its diff (the store, ``results.tsv``, a
memory note).

Loops share one :class:`Board`: each starts every experiment from the best result any of
them has found. Everything needed to continue is in the store, so ``recipe resume``
picks up after a crash where the loops left off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from supervisor import InputError, SandboxError

from supervisor_autoresearch import proposers
from supervisor_autoresearch.judge import KEEP, RERUN, Noise, judge
from supervisor_autoresearch.spec import Spec, load

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from supervisor import GpuSlots, Sandbox, StepContext

T = TypeVar("T")

# The repository's examples/ in a checkout; the copy inside the package when installed.
_HERE = Path(__file__).resolve().parent
EXAMPLES = next(
    (p for p in (_HERE.parents[2] / "examples", _HERE / "_examples") if p.is_dir()),
    _HERE / "_examples",
)
RESULTS_HEADER = "commit\t{metric}\tmemory_gb\tstatus\tdescription\n"
TAIL_BYTES = 1024 * 1024  # the metric is read from this much of the end of the log
TAIL_FILE = ".git/autoresearch-log-tail"
DIFF_FILE = ".git/autoresearch.diff"


def example_target() -> Path:
    return EXAMPLES / "autoresearch-cpu"


# -- slots: one experiment per GPU, or per set of CPU cores, at a time


class SlotPool:
    """Exclusive slots for experiments: ``CUDA_VISIBLE_DEVICES`` values or ``taskset`` core
    lists, handed out one experiment at a time. GPUs come from the engine's GPU slots
    (``ctx.gpu_slots``), which every agent and recipe of the supervisor process shares, so
    an experiment never shares its GPU with anyone's work."""

    def __init__(self, slots: list[str], kind: str, gpus: GpuSlots | None = None) -> None:
        self.kind = kind  # gpu | cpu
        self._gpus = gpus
        self._free: asyncio.Queue[str] = asyncio.Queue()
        for slot in slots:
            self._free.put_nowait(slot)
        self.slots = slots

    @classmethod
    def detect(cls, loops: int, cores_per_slot: int = 0, gpus: GpuSlots | None = None) -> SlotPool:
        if gpus is not None and gpus.devices:
            return cls(list(gpus.devices), "gpu", gpus)
        cpus = sorted(os.sched_getaffinity(0))
        per = cores_per_slot or max(1, len(cpus) // max(loops, 1))
        groups = [cpus[i : i + per] for i in range(0, len(cpus) - per + 1, per)] or [cpus]
        return cls([",".join(map(str, g)) for g in groups], "cpu")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[str]:
        if self._gpus is not None:
            holder = f"autoresearch-{id(self)}-{os.urandom(2).hex()}"
            async with self._gpus.hold(holder, among=self.slots) as got:
                yield got[0]
            return
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


@dataclass
class Place:
    """Where one loop runs: a host ("" : this machine), its slots there, and the device
    class its results are compared within ("" on this machine)."""

    host: str
    pool: SlotPool
    device_class: str = ""

    def describe(self) -> str:
        where = self.host or "this machine"
        what = f"GPU {self.pool.slots[0]}" if self.pool.kind == "gpu" else "CPU"
        return f"{where} {what}" + (f" ({self.device_class})" if self.pool.kind == "gpu" else "")


def places(ctx: StepContext, loops: int) -> list[Place]:
    """The slots of the run: this machine's (as before hosts existed), or with
    ``-p hosts=`` one per free GPU of every host of the pool, and the CPU of each host that
    has none (split by ``cores_per_slot`` when given). What is left out, and why, is said."""
    per = int(ctx.params.get("cores_per_slot") or 0)
    spec = str(ctx.params.get("hosts") or "")
    if not spec:
        return [Place("", SlotPool.detect(loops, per, ctx.gpu_slots))]
    if str(ctx.params.get("sandbox") or "") not in ("", "ssh"):
        raise InputError(f"hosts={spec}: loops on hosts run in ssh sandboxes, not sandbox=...")
    found: list[Place] = []
    for host in ctx.hosts(spec):
        if host.cordoned or host.reachable is False:
            why = "cordoned" if host.cordoned else "unreachable at its last check"
            ctx.emit(f"host {host.name}: {why}; no loop there")
            continue
        if host.gpus:
            busy = [g.id for g in host.gpus if g.busy]
            if busy:
                ctx.emit(
                    f"host {host.name}: GPU {', '.join(busy)} busy at its last check "
                    "(supervisor hosts check); no loop on them"
                )
            mig = [g.id for g in host.gpus if g.mig and not g.busy]
            if mig:
                ctx.emit(
                    f"host {host.name}: GPU {', '.join(mig)} split into MIG instances, which "
                    "are not experiment slots; no loop on them"
                )
            slots = ctx.host_gpu_slots(host.name)
            found += [
                Place(host.name, SlotPool([g.id], "gpu", slots), g.name or "GPU")
                for g in host.gpus
                if not g.busy and not g.mig
            ]
            continue
        cores = [str(i) for i in range(max(host.cpus, 1))]
        size = min(per or len(cores), len(cores))
        # Results compare within slots of one size: a 64-core slot beats a 4-core one.
        found += [
            Place(
                host.name, SlotPool([",".join(cores[i : i + size])], "cpu"), f"CPU ({size} cores)"
            )
            for i in range(0, len(cores) - size + 1, size)
        ]
    if not found:
        raise InputError(f"hosts={spec}: no free GPU or CPU slot on any of its hosts")
    return found


# -- shared state


@dataclass
class Standing:
    """The best result measured on one device class, and the noise measured there.

    A metric under a fixed time budget depends on the device (an H100 trains further in
    five minutes than an A100): results are compared only with results of the same class,
    each class has its own baseline, and a pool with one kind of device has one class."""

    metric: float | None = None
    runs: int = 1  # how many runs the best's metric is the mean of
    noise: Noise = field(default_factory=lambda: Noise(()))


@dataclass
class Board:
    spec: Spec
    target: str
    standings: dict[str, Standing] = field(default_factory=dict)  # device class -> best
    best_files: dict[str, str] = field(default_factory=dict)  # the newest kept, any class
    best_by: str = ""
    count: int = 0  # experiments started in this run (the baseline not included)
    lost: int = 0  # of those, ended unfinished with their host: others run in their place
    tried: set[str] = field(default_factory=set)  # hyperparameter configurations tried
    tried_files: set[str] = field(default_factory=set)  # editable files' contents tried
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def at(self, device_class: str) -> Standing:
        return self.standings.setdefault(device_class, Standing())


def load_board(ctx: StepContext) -> Board:
    """The run's state, read from the store at the start of each step.

    Never cached between steps: after a stop and a resume in the same supervisor process
    a cached board still counted the experiment that was interrupted, so the resumed loop
    thought its limit was reached and ended without running it.
    """
    spec = Spec(**ctx.outputs["prepare"]["spec"])
    board = Board(spec=spec, target=ctx.outputs["prepare"]["target_name"])
    ctx.store.flush()
    rows = list(
        ctx.store.db.query("SELECT * FROM experiments WHERE target = ? ORDER BY id", [board.target])
    )
    numbers: list[int] = []
    for row in rows:
        if row["params"]:
            board.tried.add(proposers.key(json.loads(row["params"])))
        if row["files"] and row["status"] != "invalid":  # never judged: may be tried again
            board.tried_files.add(files_key(json.loads(row["files"])))
        if row["run_id"] != ctx.run_id:
            continue
        runs = json.loads(row.get("runs") or "[]")
        standing = board.at(row.get("device_class") or "")
        if row["n"] > 0:
            numbers.append(row["n"])
        elif row["status"] == "keep" and runs:
            standing.noise = Noise(tuple(runs), spec.noise_spreads)
        if row["status"] == "keep" and row["files"] and spec.better(row["metric"], standing.metric):
            # Each class's bar is the best measured on it; every loop builds on the code
            # that last raised a bar.
            standing.metric = row["metric"]
            standing.runs = max(len(runs), 1)
            board.best_files = json.loads(row["files"])
            board.best_by = row["agent_id"]
    # Numbers taken but never recorded (lost with a host, nothing left to propose, a
    # crash of the supervisor) stay taken: a resumed run numbers on, counting what ran.
    board.count = max(numbers, default=0)
    board.lost = board.count - len(numbers)
    # After a crash the file may lack the last lines, or hold ones the store never
    # committed: the store is the truth.
    ours = [r for r in rows if r["run_id"] == ctx.run_id]
    (ctx.run_dir / "results.tsv").write_text(
        RESULTS_HEADER.format(metric=spec.metric_name) + "".join(_tsv_line(r) for r in ours)
    )
    return board


def files_key(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _tsv_line(row: dict[str, Any]) -> str:
    """One results.tsv row: commit, metric, memory_gb, status, description."""
    metric = f"{row['metric']:.6f}" if row["metric"] is not None else "0.000000"
    # NA, not 0.0: without a memory readout the memory is unknown, not zero.
    memory = f"{row['memory_mb'] / 1024:.2f}" if row["memory_mb"] is not None else "NA"
    description = str(row["description"]).replace("\t", " ").replace("\n", " ")
    return f"{row['commit'] or '-'}\t{metric}\t{memory}\t{row['status']}\t{description}\n"


# -- steps


def _source_and_spec(params: dict[str, Any]) -> tuple[Path, Spec]:
    given = str(params.get("target") or "")
    source = Path(given).expanduser() if given else example_target()
    if not source.is_dir():
        raise InputError(f"autoresearch: target {source} is not a folder")
    overrides = {
        "time_budget_s": float(params.get("time_budget") or 0) or None,
        "run": params.get("run") or None,
        "metric": params.get("metric") or None,
        "direction": params.get("direction") or None,
        "editable": params.get("editable") or None,
        "baseline_runs": int(params.get("baseline_runs") or 0) or None,
        "noise_spreads": float(params.get("noise_spreads") or 0) or None,
        # -1 (the parameter's default): the spec's; 0 is a real choice (never re-run).
        "max_reruns": None if int(params.get("max_reruns", -1)) < 0 else int(params["max_reruns"]),
    }
    spec = load(source.resolve(), overrides)
    if (source / ".git").exists():
        _refuse_uncommitted(source, spec)
    return source, spec


def _refuse_uncommitted(source: Path, spec: Spec) -> None:
    """A git target is copied at its last commit: uncommitted spec or files would not be
    what runs (a sandbox error, or a stale copy on resume), so say so before starting."""
    from supervisor_autoresearch.spec import SPEC_FILE

    paths = [SPEC_FILE, *spec.editable, *spec.fixed]
    out = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--", *paths],
        capture_output=True,
        text=True,
    ).stdout
    changed = sorted({line[3:].strip() for line in out.splitlines() if line.strip()})
    if changed:
        raise InputError(
            f"{source}: commit these files first (a git target is copied at its last "
            f"commit): {', '.join(changed)}"
        )


def plan(params: dict[str, Any]) -> list[str]:
    """For ``recipe run --dry-run``: read and check the target's spec, say what would run."""
    source, spec = _source_and_spec(params)
    where = (
        [f"loops on hosts {params['hosts']}: one per free GPU, one per host without GPUs"]
        if params.get("hosts")
        else []
    )
    return [
        *where,
        f"target {source} ({spec.name}): edit {', '.join(spec.editable)}; fixed "
        f"{', '.join(spec.fixed) or 'none'}",
        f"run `{spec.run}`, {spec.metric_name} {spec.direction} is better, budget "
        f"{spec.time_budget_s:g}s" + (f" / {spec.step_budget} steps" if spec.step_budget else ""),
        f"baseline {spec.baseline_runs} run(s); keep a change only if it beats the best by "
        f"more than {spec.noise_spreads:g} × their spread; up to {spec.max_reruns} re-run(s) "
        "of a marginal win",
        f"hyperparameters for the built-in proposer: {', '.join(spec.hyperparameters) or 'none'}",
        "environment: "
        + (
            f"packages {', '.join(spec.packages)} in an image built once from "
            f"{spec.image or 'the sandbox image'}"
            if spec.packages
            else f"image {spec.image}"
            if spec.image
            else "the sandbox image"
        ),
    ]


def _copy_ignore(source: Path, spec: Spec) -> Callable[[str, list[str]], set[str]]:
    """What a plain-folder copy leaves out: logs, results and caches of earlier runs by
    hand, and a top-level ``data/`` — unless the spec names files in it (then it is needed)."""
    named = {Path(p).parts[0] for p in [*spec.fixed, *spec.editable] if Path(p).parts}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {"run.log", "results.tsv", "__pycache__"}
        if "data" not in named and Path(folder) == source:
            skip.add("data")
        return skip & set(names)

    return ignore


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve the target, read its spec, and make the run's copy a git repo on a branch."""
    source, spec = _source_and_spec(ctx.params)
    repo = ctx.run_dir / "target"
    if not repo.exists():
        if (source / ".git").exists():
            _git(["clone", "--quiet", str(source), str(repo)])
        else:
            shutil.copytree(source, repo, ignore=_copy_ignore(source, spec))
            _git(["init", "-q", "-b", "main"], repo)
            _git(["add", "-A"], repo)
            _git(["commit", "-q", "-m", "the target as given"], repo)
    tag = ctx.params.get("tag") or ctx.run_id
    (ctx.run_dir / "results.tsv").write_text(RESULTS_HEADER.format(metric=spec.metric_name))
    how = "cloned at its last commit" if (source / ".git").exists() else "copied"
    ctx.emit(
        f"target {source} ({spec.name}, {how}): edit {', '.join(spec.editable)}, "
        f"{spec.metric_name} {spec.direction} is better, budget {spec.time_budget_s:g}s"
    )
    return {
        "target": str(repo),
        "target_name": spec.name,
        "tag": tag,
        "spec": spec.__dict__,
        "source": str(source),
    }


prepare.plan = plan  # type: ignore[attr-defined]


async def baseline(ctx: StepContext) -> dict[str, Any]:
    """Run the unmodified target N times: the result to beat, and the metric's noise —
    on each device class of the run's slots (one, unless a pool mixes GPU models)."""
    board = load_board(ctx)
    # Measured on a slot like the loops' own: a metric under a time budget depends on it.
    await _baselines(ctx, board, places(ctx, max(int(ctx.params.get("agents") or 0), 1)))
    shown = {cls: (st.metric, st.noise.floor) for cls, st in board.standings.items()}
    if list(shown) == [""]:
        return {"metric": shown[""][0], "noise_floor": shown[""][1]}
    return {"by_device": {cls: {"metric": m, "noise_floor": f} for cls, (m, f) in shown.items()}}


async def _baselines(ctx: StepContext, board: Board, found: list[Place]) -> None:
    """A baseline on each device class of ``found`` that has none yet, all at once."""
    todo: dict[str, Place] = {}
    for place in found:
        if board.at(place.device_class).metric is None:
            todo.setdefault(place.device_class, place)
    if not todo:
        return
    several = len({p.device_class for p in found}) > 1
    image = await _environment(ctx, board.spec)
    records = await _together(
        [_baseline_on(ctx, board, place, image, several) for place in todo.values()]
    )
    for record in records:
        if record["status"] != "keep":
            raise RuntimeError(
                f"the baseline did not give a result ({record['description']}); the end "
                f"of its log:\n{record['log']}"
            )


async def _together(work: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``work`` at once; when one fails, the others are cancelled (and awaited) before
    the failure goes on: no loop trains on, unseen, for a step that has failed."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _baseline_on(
    ctx: StepContext, board: Board, place: Place, image: str, several: bool
) -> dict[str, Any]:
    label = f"baseline-{_slug(place.device_class)}" if several else "baseline"
    async with Loop(ctx, board, index=0, label=label, place=place, image=image) as loop:
        return await loop.baseline(board.spec.baseline_runs)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "x"


async def run_loops(ctx: StepContext) -> dict[str, Any]:
    """Loops in parallel until a limit, each on its own slot (with ``hosts``: one per slot
    of the pool unless ``agents`` says how many); each builds on the best any found."""
    board = load_board(ctx)
    asked = int(ctx.params.get("agents") or 0)
    found = places(ctx, max(asked, 1))
    agents = asked or (len(found) if ctx.params.get("hosts") else 1)
    if len(found) == 1 and not found[0].host:
        pool = found[0].pool
        ctx.emit(f"{agents} loop(s), {len(pool.slots)} {pool.kind} slot(s): {pool.slots}")
    else:
        ctx.emit(
            f"{agents} loop(s) over {len(found)} slot(s): " + "; ".join(p.describe() for p in found)
        )
    missing = sorted({p.device_class for p in found if board.at(p.device_class).metric is None})
    if missing:
        # A slot that was not free when the baseline ran (a host added or back, a GPU no
        # longer busy): its results would be judged against nothing.
        ctx.emit(f"no baseline yet on {', '.join(missing)}: measuring it first")
        await _baselines(ctx, board, found)
    for cls, standing in sorted(board.standings.items()):
        ctx.emit((f"{cls}: " if cls else "") + standing.noise.describe(board.spec.metric_name))
    image = await _environment(ctx, board.spec)
    results = await _together(
        [_one_loop(ctx, board, i + 1, found[i % len(found)], image) for i in range(agents)]
    )
    if all(r.get("ended") for r in results):
        raise RuntimeError(f"every loop's host failed; the last: {results[-1]['ended']}")
    best = {cls: st.metric for cls, st in board.standings.items()}
    return {"loops": results, "best": best[""] if list(best) == [""] else best}


async def _environment(ctx: StepContext, spec: Spec) -> str:
    from supervisor_autoresearch import environment

    if ctx.params.get("hosts") and (spec.packages or spec.image):
        # The image is built by this machine's Docker engine, which the hosts do not see.
        raise InputError(
            f"{spec.name}: a spec with packages or an image cannot run on hosts yet; "
            "install what it needs in the spec's `setup` (run once per sandbox) instead"
        )
    return await environment.ensure(ctx, spec, Path(ctx.outputs["prepare"]["source"]))


async def _one_loop(
    ctx: StepContext, board: Board, index: int, place: Place, image: str
) -> dict[str, Any]:
    limit = int(ctx.params.get("experiments") or 0)
    hours = float(ctx.params.get("hours") or 0)
    deadline = time.monotonic() + hours * 3600 if hours else None
    proposer = _proposer(ctx, board, index)
    kept = done = n = 0
    label = f"agent-{index}"
    try:
        async with Loop(ctx, board, index=index, label=label, place=place, image=image) as loop:
            while True:
                async with board.lock:
                    if limit and board.count - board.lost >= limit:
                        break
                    if deadline and time.monotonic() >= deadline:
                        break
                    board.count += 1
                    n = board.count
                record = await loop.experiment(proposer, n=n)
                n = 0
                if record["status"] == "exhausted":
                    async with board.lock:
                        board.lost += 1  # its number was taken, nothing was run: not counted
                    break
                done += 1
                kept += record["status"] == "keep"
            await loop.bring_back()
    except (SandboxError, InputError, OSError, RuntimeError) as exc:
        # RuntimeError: the target's setup failed there (a host without what it needs).
        if not place.host:
            raise
        # A host of the pool failed under this loop (gone, or its sandbox could not be
        # made): this loop ends, the others go on, and the experiment it was running is
        # run by another loop instead (its number stays unused).
        async with board.lock:
            board.lost += 1 if n else 0
        ctx.emit(
            f"{label} on {place.describe()} ended: its host failed ({str(exc)[:500]}); "
            + (
                f"experiment #{n} was not finished and another loop runs one in its place; "
                if n
                else ""
            )
            + "the other loops go on",
            loop=label,
            host=place.host,
            lost=n or None,
        )
        return {"loop": index, "experiments": done, "kept": kept, "ended": str(exc)}
    return {"loop": index, "experiments": done, "kept": kept}


def _proposer(ctx: StepContext, board: Board, index: int) -> Any:
    choice = ctx.params.get("proposer") or "auto"
    model = ctx.settings.get("model", "")
    if choice == "model" or (choice == "auto" and model and _model_usable(ctx, model)):
        return proposers.AgentProposer(model)
    if not board.spec.hyperparameters:
        raise InputError(
            f"{board.spec.name}: no model is configured and the spec declares no "
            "[autoresearch.hyperparameters] for the built-in proposer"
        )
    return proposers.SearchProposer(board.spec.hyperparameters, seed=index)


def _model_usable(ctx: StepContext, model: str) -> bool:
    try:
        ctx.check_model(model)
    except InputError:
        return False
    return True


@dataclass
class Run:
    """One run of the training command."""

    metric: float | None
    memory: float | None
    code: str
    timed_out: bool
    log: str
    seconds: float


class Loop:
    """One loop's sandbox and branch, and how an experiment is run in it."""

    def __init__(
        self,
        ctx: StepContext,
        board: Board,
        *,
        index: int,
        label: str,
        place: Place | None = None,
        image: str = "",
    ) -> None:
        self.ctx, self.board, self.index, self.label = ctx, board, index, label
        self.image = image  # the target's environment ('' : the configured sandbox image)
        self.place = place or Place("", SlotPool.detect(1))
        self.pool = self.place.pool
        self.standing = board.at(self.place.device_class)  # the bar its results must clear
        self.spec = board.spec
        self.ended = ""  # why this loop stops before its limit (said to the person)
        self.sandbox: Sandbox | None = None
        self.branch = f"autoresearch/{ctx.outputs['prepare']['tag']}-{index}"
        # Only the editable files are ever committed: logs and data stay untracked.
        self._editable = " ".join(shlex.quote(f) for f in self.spec.editable)
        self._fixed: dict[str, str] = {}  # path -> sha256, as they were after setup

    async def __aenter__(self) -> Loop:
        # The person's settings (limits, image, environment allow-list) apply; the spec's
        # environment image, when it has one, replaces the image.
        self.sandbox = self.ctx.new_sandbox(
            self.label,
            workspace=Path(self.ctx.outputs["prepare"]["target"]),
            network=bool(self.ctx.params.get("network")),
            labels={"scope": self.board.target},
            backend=str(self.ctx.params.get("sandbox") or ""),
            image=self.image,
            host=self.place.host,
            # The loop's sandbox sees every GPU; each experiment runs on the one it holds.
            gpus=self.pool.slots if self.pool.kind == "gpu" else None,
        )
        await self.sandbox.start()
        await self._sh(f"git checkout -q -B {self.branch}")
        if self.spec.setup:
            self.ctx.emit(f"{self.label}: setup: {self.spec.setup}")
            result = await self._sh(self.spec.setup, timeout=1800)
            if not result.ok:
                raise RuntimeError(f"setup `{self.spec.setup}` failed:\n{result.stderr[-2000:]}")
        self._fixed = await self._fixed_hashes()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sandbox is not None:
            # Shielded: a stop cancels this task, and the sandbox (with the training that
            # may still run in it) must go all the same.
            await asyncio.shield(self.sandbox.destroy())

    async def _sh(self, command: str, timeout: float = 120) -> Any:
        assert self.sandbox is not None
        return await self.sandbox.exec(f"cd {self.sandbox.workdir} && {command}", timeout=timeout)

    async def _read(self, name: str) -> str:
        assert self.sandbox is not None
        return (await self.sandbox.read_file(f"{self.sandbox.workdir}/{name}")).decode(
            errors="replace"
        )

    async def _files(self) -> dict[str, str]:
        return {name: await self._read(name) for name in self.spec.editable}

    async def _write(self, files: dict[str, str]) -> None:
        assert self.sandbox is not None
        for name, text in files.items():
            await self.sandbox.write_file(f"{self.sandbox.workdir}/{name}", text.encode())

    async def _fixed_hashes(self) -> dict[str, str]:
        """sha256 of every file under the spec's fixed paths (files or folders)."""
        if not self.spec.fixed:
            return {}
        paths = " ".join(shlex.quote(p) for p in self.spec.fixed)
        out = await self._sh(
            f"find {paths} -type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum"
        )
        hashes = {}
        for line in out.stdout.splitlines():
            digest, _, path = line.partition("  ")
            if path:
                hashes[path] = digest
        return hashes

    async def _tampered(self) -> list[str]:
        """The fixed files that differ from what they were after setup."""
        if not self.spec.fixed:
            return []
        now = await self._fixed_hashes()
        return sorted(p for p in set(now) | set(self._fixed) if now.get(p) != self._fixed.get(p))

    async def _run_once(self, slot: str) -> Run:
        spec = self.spec
        budget = spec.time_budget_s
        env = f"AUTORESEARCH_TIME_BUDGET={budget:g}"
        if spec.step_budget:
            env += f" AUTORESEARCH_STEP_BUDGET={spec.step_budget}"
        # setpriv --pdeathsig: when the sandbox's shell dies (a stop, `server stop
        # --force`), `timeout` is told and kills the training's whole process group, so
        # no training outlives its run on a backend without containers.
        run = (
            "g=; command -v setpriv >/dev/null 2>&1 && g='setpriv --pdeathsig TERM --'; "
            f"{env} $g timeout -k 5 {spec.kill_after_s:g} {self.pool.wrap(slot, spec.run)} "
            "> run.log 2>&1; echo $?"
        )
        started = time.time()
        result = await self._sh(run, timeout=spec.kill_after_s + 60)
        seconds = time.time() - started
        # The metric is read from the log's last TAIL_BYTES (documented in the recipe).
        await self._sh(f"tail -c {TAIL_BYTES} run.log > {TAIL_FILE} 2>/dev/null; true")
        log = await self._read(TAIL_FILE)
        code = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "?"
        return Run(
            metric=spec.read_metric(log),
            memory=spec.read_memory(log),
            code=code,
            timed_out=code == "124" or result.timed_out,
            log=log,
            seconds=seconds,
        )

    def _crash_reason(self, run: Run) -> str:
        if run.timed_out:
            if self.spec.timeout_s:
                return f"killed at the spec's timeout_s ({self.spec.timeout_s:g}s)"
            return f"killed at twice the time budget ({self.spec.kill_after_s:g}s)"
        return (
            f"exit code {run.code}, no {self.spec.metric_name} in the last "
            f"{TAIL_BYTES // 1024} KB of the log"
        )

    async def baseline(self, count: int) -> dict[str, Any]:
        """Run the unchanged target ``count`` times: the best to beat and the noise floor."""
        board, spec = self.board, self.spec
        files = await self._files()
        params = proposers.read_params(files, list(spec.hyperparameters))
        board.tried.add(proposers.key(params))  # never "propose" the baseline again
        board.tried_files.add(files_key(files))
        sha = (await self._sh("git rev-parse --short HEAD")).stdout.strip()
        row: dict[str, Any] = {"n": 0, "commit": sha, "params": params, "files": files}
        runs: list[float] = []
        memory: float | None = None
        async with self.pool.slot() as slot:
            row.update(slot=slot, started_at=time.time())
            for i in range(count):
                self.ctx.emit(f"baseline: run {i + 1} of {count}")
                run = await self._run_once(slot)
                row["duration_s"] = round(time.time() - row["started_at"], 2)
                tampered = await self._tampered()
                if tampered:
                    raise InputError(
                        f"{spec.name}: the unchanged target changes its fixed files "
                        f"({', '.join(tampered)}); take them out of `fixed` in the spec"
                    )
                if run.metric is None:
                    return await self._record(
                        row,
                        status="crash",
                        description="baseline",
                        why=self._crash_reason(run),
                        log=run.log,
                    )
                runs.append(run.metric)
                memory = run.memory if run.memory is not None else memory
                if count > 1:
                    self.ctx.emit(f"baseline run {i + 1}: {spec.metric_name}={run.metric:.6f}")
        noise = Noise(tuple(runs), spec.noise_spreads)
        standing = self.standing
        async with board.lock:
            standing.noise = noise
            standing.metric = statistics.fmean(runs)
            standing.runs = len(runs)
            board.best_files = board.best_files or files
            board.best_by = board.best_by or self.label
        cls = self.place.device_class
        self.ctx.emit(
            (f"{cls}: " if cls else "") + noise.describe(spec.metric_name),
            noise_floor=noise.floor,
            device_class=cls,
        )
        return await self._record(
            row,
            status="keep",
            description="baseline",
            metric=standing.metric,
            memory=memory,
            runs=runs,
            log=run.log,
        )

    async def experiment(self, proposer: Any, *, n: int) -> dict[str, Any]:
        """Propose, commit, run (again when the win is marginal), judge, record."""
        board, spec = self.board, self.spec
        row: dict[str, Any] = {"n": n, "started_at": time.time()}
        # Start from the best so far, whoever found it.
        if board.best_files and board.best_files != await self._files():
            await self._write(board.best_files)
            await self._sh(
                f"git add -- {self._editable} && {GIT} commit -q -m "
                f"'sync to the best so far ({board.best_by})'"
            )
        proposal = await self._propose(proposer)
        if proposal is None:
            self.ctx.emit(self.ended or f"{self.label}: nothing left to try")
            return {"status": "exhausted"}
        description = proposal.description
        row.update(params=proposal.params, files=await self._files())
        key = files_key(row["files"])
        async with board.lock:
            repeat = isinstance(proposer, proposers.AgentProposer) and key in board.tried_files
            board.tried_files.add(key)
        if repeat:
            await self._sh(f"git checkout -q -- {self._editable}")
            return await self._record(
                row,
                status="discard",
                description=description,
                why="the same code as an experiment already tried; not run again",
            )
        commit = await self._sh(
            f"git add -- {self._editable} && {GIT} commit -q -m {shlex.quote(description)}"
        )
        if not commit.ok:
            return await self._record(
                row, status="discard", description="no change: " + description
            )
        row["commit"] = (await self._sh("git rev-parse --short HEAD")).stdout.strip()
        row["diff"] = await self._diff()
        self.ctx.emit(f"{self.label} #{n}: {description}")
        status, why, verdict, runs, memory, log = "crash", "", None, [], None, ""
        tampered = await self._tampered()  # the proposer itself may have changed them
        if not tampered:
            async with self.pool.slot() as slot:
                # The recorded times are the slot's: when this experiment had it to itself.
                row.update(slot=slot, started_at=time.time())
                while True:
                    run = await self._run_once(slot)
                    row["duration_s"] = round(time.time() - row["started_at"], 2)
                    log = run.log
                    tampered = await self._tampered()
                    if tampered:
                        break
                    if run.metric is None:
                        status, why = "crash", self._crash_reason(run)
                        break
                    runs.append(run.metric)
                    memory = run.memory if run.memory is not None else memory
                    async with board.lock:
                        verdict = judge(
                            spec.direction,
                            runs,
                            self.standing.metric,
                            self.standing.noise,
                            best_runs=self.standing.runs,
                            max_reruns=spec.max_reruns,
                        )
                        if verdict.status == KEEP:
                            self.standing.metric, board.best_by = verdict.score, self.label
                            self.standing.runs = len(runs)
                            board.best_files = row["files"]
                    status = verdict.status
                    if status != RERUN:
                        break
                    self.ctx.emit(
                        f"{self.label} #{n}: marginal — {spec.metric_name} {verdict.score:.6f} "
                        f"beats the best by {verdict.gain:.6g}, too close to the noise floor "
                        f"({self.standing.noise.floor:.6g}) to tell: re-run {len(runs)} of "
                        f"{spec.max_reruns}",
                        experiment=n,
                        rerun=len(runs),
                    )
        if status == "discard" and verdict and verdict.gain > 0:
            why = (
                f"better by {verdict.gain:.6g}, not by more than the noise floor "
                f"({self.standing.noise.floor:.6g})"
            )
        if tampered:
            status = "invalid"
            why = (
                f"it changed the fixed file(s) {', '.join(tampered)}; an experiment may not "
                "change the evaluation, so it was not judged"
            )
        if status != KEEP:
            await self._sh("git reset -q --hard HEAD~1")
        if tampered:
            board.tried_files.discard(key)  # never judged: the same code may run untampered
            await self._restore_fixed(tampered)
        return await self._record(
            row,
            status=status,
            description=description,
            why=why,
            metric=verdict.score if verdict and status != "invalid" else None,
            memory=memory,
            runs=runs,
            confidence=verdict.confidence if verdict else None,
            gain=verdict.gain if verdict else None,
            log=log,
        )

    async def _diff(self) -> str:
        """The experiment's change, as a unified diff of the editable files."""
        await self._sh(f"git -c core.pager=cat diff HEAD~1 HEAD -- {self._editable} > {DIFF_FILE}")
        return await self._read(DIFF_FILE)

    async def _restore_fixed(self, tampered: list[str]) -> None:
        """Put the fixed files back (the reset restores tracked ones; setup makes the rest
        again), or stop the loop: no later experiment could be judged fairly."""
        await self._sh(
            f"git checkout -q HEAD -- {' '.join(map(shlex.quote, tampered))} 2>/dev/null; true"
        )
        if await self._tampered() and self.spec.setup:
            await self._sh(self.spec.setup, timeout=1800)
        still = await self._tampered()
        if still:
            raise RuntimeError(
                f"an experiment changed the fixed file(s) {', '.join(still)} and they could "
                "not be restored"
            )

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
            n.body
            for n in self.ctx.memory(board.target).recall(
                f"{board.target} experiment {self.spec.metric_name}", limit=20
            )
        ]
        assert self.sandbox is not None
        agent = await self.ctx.run_agent(
            proposer.task(self.spec, history, notes),
            self.sandbox,
            name=f"{self.label}-editor",
            model=proposer.model,
            max_steps=30,
            exclude_tools=("ask_human", "spawn_agent", "wait_for", "send_message"),
        )
        if agent.status in ("stopped", "failed"):
            # Stopped (a spent budget, a person) or failed (the model gave up): running its
            # half-made edit would record a result nobody proposed, and the next agent
            # would most likely end the same way, experiment after experiment.
            await self._sh(f"git checkout -q -- {self._editable}")
            self.ended = (
                f"{self.label}: the editing agent {agent.status} ({agent.summary or 'no reason'}); "
                "this loop ends"
            )
            return None
        params = proposers.read_params(await self._files(), list(self.spec.hyperparameters))
        return proposers.Proposal(
            agent.summary.strip().splitlines()[0][:200] if agent.summary else "an edit", {}, params
        )

    def _history(self) -> list[dict[str, Any]]:
        store = self.ctx.store
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
        row: dict[str, Any],
        *,
        status: str,
        description: str,
        why: str = "",
        metric: float | None = None,
        memory: float | None = None,
        runs: list[float] | None = None,
        confidence: float | None = None,
        gain: float | None = None,
        log: str = "",
    ) -> dict[str, Any]:
        ctx, spec, board, noise = self.ctx, self.spec, self.board, self.standing.noise
        n = row["n"]
        runs = runs or []
        if len(runs) > 1 and n > 0:
            description += (
                f" (mean of {len(runs)} runs: {len(runs) - 1} re-run(s) of a marginal win)"
            )
        stored = {
            "run_id": ctx.run_id,
            "agent_id": self.label,
            "target": board.target,
            "n": n,
            "commit": row.get("commit", ""),
            "metric": metric,
            "memory_mb": memory,
            "status": status,
            "description": description + (f" ({why})" if why else ""),
            "params": json.dumps(row.get("params", {}), sort_keys=True, default=str),
            "files": json.dumps(row["files"]) if row.get("files") else "",
            "slot": row.get("slot", ""),
            "host": self.place.host,
            "device_class": self.place.device_class,
            "started_at": row["started_at"],
            "duration_s": row.get("duration_s", 0.0),
            "runs": json.dumps(runs),
            "reruns": max(len(runs) - 1, 0) if n > 0 else 0,
            "noise_floor": noise.floor if noise.measured else None,
            "confidence": confidence,
            "diff": row.get("diff", ""),
        }
        # Committed before anything else sees it: the store is what resume trusts, and
        # results.tsv is rewritten from it when a run is taken up again.
        await asyncio.wrap_future(
            ctx.store.write(lambda db: db.table("experiments").insert(dict(stored)))
        )
        with (ctx.run_dir / "results.tsv").open("a") as fh:
            fh.write(_tsv_line(stored))
        shown = f"{metric:.6f}" if metric is not None else "0.000000"
        best = self.standing.metric
        text = f"{self.label} #{n}: {status}"
        if best is not None:
            text += f" {spec.metric_name}={shown} (best {best:.6f})"
        if status == KEEP and n > 0 and gain is not None and confidence is not None:
            text += f" — {_how_sure(gain, confidence, noise)}"
        elif why:
            text += f" — {why}"
        # Any plugin's progress and metrics reach the TUI's Info tab and `supervisor logs`:
        # the same counts the report gives.
        labels: dict[str, Any] = {"status": status, "better": spec.direction}
        ctx.events.metric(spec.metric_name, metric, **labels)
        limit = int(ctx.params.get("experiments") or 0)
        if n > 0:
            ctx.events.progress(f"{self.label} experiments", n, limit or None)
        ctx.emit(
            text,
            experiment=n,
            status=status,
            metric=metric,
            best=best,
            loop=self.label,
            slot=stored["slot"],
            host=self.place.host,
            device_class=self.place.device_class,
            started_at=stored["started_at"],
            duration_s=stored["duration_s"],
            confidence=confidence,
            reruns=stored["reruns"],
        )
        if n > 0:
            # Memory for later agents and runs: what worked, what failed and why.
            verb = {
                "keep": "improved",
                "discard": "did not improve",
                "crash": "crashed",
                "invalid": "was invalid",
            }[status]
            body = (
                f"{spec.name}: {description} {verb} {spec.metric_name} "
                f"({shown if metric is not None else why})"
            )
            await ctx.memory(board.target).remember(body)
        return {**stored, "log": log[-1500:]}

    async def bring_back(self) -> None:
        """Fetch this loop's branch into the run's copy of the target: only its commits
        (the editable files' changes), never run.log or other output left in the tree."""
        assert self.sandbox is not None
        await self._sh("git reset -q --hard && git clean -q -f -d -x")
        message = await self.ctx.bring_back(
            self.sandbox, Path(self.ctx.outputs["prepare"]["target"]), branch=self.branch
        )
        self.ctx.emit(f"{self.label}: {message}")


def _how_sure(gain: float, confidence: float, noise: Noise) -> str:
    if not noise.measured:
        return f"better by {gain:.6g} (noise not measured)"
    times = f", {gain / noise.floor:.1f}× the noise floor" if noise.floor > 0 else ""
    return f"better by {gain:.6g}{times}, confidence {confidence:.0%}"


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
