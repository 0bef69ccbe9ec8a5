"""Recipes: multi-step playbooks in Markdown with a YAML frontmatter.

``recipes/NAME.md``::

    ---
    name: NAME
    description: one line
    parameters:
      agents: {type: int, default: 1, help: parallel agents}
    steps:
      - id: setup
        kind: shell                 # agent | python | shell
        run: "make data"            # shell: a command; python: a registered step name
        check: "test -f data/ok"    # optional: a command whose exit 0 proves the step worked
      - id: work
        kind: agent
        prompt: "Do the work in {workspace}."   # the body below is given to the agent too
        depends: [setup]
        parallel: "{agents}"        # N agents (templated from parameters)
    ---
    The English playbook the agents follow.

Recipes are found in the built-in ``recipes/`` folder, the user's config folder
(``…/supervisor/recipes``), the project's ``./recipes``, and plugins (``register_recipes``);
a later source wins on a name clash. Python steps come from plugins (``register_steps``).

Every finished step is checkpointed in the ``steps`` table; ``resume`` continues after the
last finished step, also after a crash. A failed check stops the run and says which step,
which check, and what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from supervisor.errors import InputError

if TYPE_CHECKING:
    from supervisor.api import AgentInfo, Events, GpuSlots, HostInfo, Memory, PluginStore
    from supervisor.engine import Engine
    from supervisor.plugins import Plugins
    from supervisor.sandbox.base import Sandbox

KINDS = ("agent", "python", "shell")
TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "path": str}
RECIPE_KEYS = {"name", "description", "parameters", "steps"}
STEP_KEYS = {
    "id",
    "kind",
    "run",
    "prompt",
    "depends",
    "inputs",
    "check",
    "parallel",
    "timeout",
    "description",
}
PARAM_KEYS = {"type", "default", "help", "choices", "required"}


class RecipeError(InputError):
    """A recipe file that cannot be used; the message names the file and line."""


@dataclass
class Parameter:
    name: str
    type: str
    default: Any
    help: str = ""
    choices: list[Any] | None = None
    required: bool = False  # no default: the person must give it (`-p name=value`)

    def parse(self, text: str, where: str) -> Any:
        t = TYPES[self.type]
        try:
            if t is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            value = t(text)
        except ValueError:
            raise RecipeError(
                f"{where}: parameter {self.name} must be {self.type}, got {text!r}"
            ) from None
        if self.choices and value not in self.choices:
            raise RecipeError(f"{where}: parameter {self.name} must be one of {self.choices}")
        if self.type == "path" and value:
            # Relative to where the person typed it: the supervisor process that runs the
            # recipe works in another folder.
            value = str(Path(value).expanduser().resolve())
        return value


@dataclass
class Step:
    id: str
    kind: str
    run: str = ""
    prompt: str = ""
    depends: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    check: str = ""
    parallel: str = "1"
    timeout: float = 0.0
    description: str = ""
    line: int = 0


@dataclass
class Recipe:
    name: str
    description: str
    parameters: dict[str, Parameter]
    steps: list[Step]
    body: str
    path: Path

    def params(self, given: dict[str, str]) -> dict[str, Any]:
        """Defaults overridden by ``-p key=value`` texts, each checked against its type."""
        values = {name: p.default for name, p in self.parameters.items()}
        for key, text in given.items():
            if key not in self.parameters:
                raise RecipeError(
                    f"recipe {self.name}: no parameter {key!r} "
                    f"(has: {', '.join(self.parameters) or 'none'})"
                )
            values[key] = self.parameters[key].parse(text, f"recipe {self.name}")
        missing = [n for n, p in self.parameters.items() if p.required and values[n] in (None, "")]
        if missing:
            raise RecipeError(
                f"recipe {self.name}: parameter {missing[0]} is required "
                f"(give it with -p {missing[0]}=VALUE)"
            )
        return values

    def texts(self, values: dict[str, Any]) -> dict[str, str]:
        """Checked values back as the texts ``params`` takes (what a client sends)."""
        out = {}
        for key, value in values.items():
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, list | dict):
                out[key] = json.dumps(value)
            else:
                out[key] = str(value)
        return out

    def order(self) -> list[Step]:
        """Steps in dependency order (the file's order among independent steps)."""
        done: set[str] = set()
        ordered: list[Step] = []
        pending = list(self.steps)
        while pending:
            for step in pending:
                if all(d in done for d in step.depends):
                    ordered.append(step)
                    done.add(step.id)
                    pending.remove(step)
                    break
            else:
                raise RecipeError(
                    f"{self.path}: steps {[s.id for s in pending]} depend on each other in a cycle"
                )
        return ordered


# -- parsing and validation


def parse(path: Path, text: str | None = None) -> Recipe:
    """Read and validate a recipe file; errors name the file, the line and the problem."""
    import yaml

    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(f"{path}: cannot be read: {exc.strerror}") from None
    match = re.match(r"\A---[ \t]*\n(.*?\n)---[ \t]*(?:\n|\Z)(.*)\Z", text, re.S)
    if not match:
        raise RecipeError(
            f"{path}:1: a recipe starts with a '---' frontmatter block, "
            "closed by another '---' line"
        )
    front, body = match.group(1), match.group(2)
    try:
        node = yaml.compose(front)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}:{line}: invalid YAML: {problem}") from None
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(f"{path}:2: the frontmatter must be a mapping of keys")
    data = yaml.safe_load(front)

    def line_of(*keys: str | int) -> int:
        current: Any = node
        for key in keys:
            if isinstance(current, yaml.MappingNode):
                found = next((v for k, v in current.value if k.value == key), None)
                if found is None:
                    break
                current = found
            elif isinstance(current, yaml.SequenceNode) and isinstance(key, int):
                current = current.value[key]
        return int(current.start_mark.line) + 2

    def fail(message: str, *keys: str | int) -> RecipeError:
        return RecipeError(f"{path}:{line_of(*keys)}: {message}")

    unknown = set(data) - RECIPE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown key {key!r} (expected {', '.join(sorted(RECIPE_KEYS))})", key)
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise fail("name must be lowercase letters, digits, '-' or '_'", "name")
    parameters: dict[str, Parameter] = {}
    for pname, spec in (data.get("parameters") or {}).items():
        if not isinstance(spec, dict):
            raise fail(f"parameter {pname}: give type, default and help", "parameters", pname)
        bad = set(spec) - PARAM_KEYS
        if bad:
            raise fail(f"parameter {pname}: unknown key {sorted(bad)[0]!r}", "parameters", pname)
        ptype = spec.get("type", "str")
        if ptype not in TYPES:
            raise fail(
                f"parameter {pname}: type must be one of {', '.join(TYPES)}", "parameters", pname
            )
        default = spec.get("default")
        if default is not None and TYPES[ptype] is float and isinstance(default, int):
            default = float(default)
        if default is not None and not isinstance(default, TYPES[ptype]):
            raise fail(
                f"parameter {pname}: default {default!r} is not {ptype}", "parameters", pname
            )
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise fail(f"parameter {pname}: required must be true or false", "parameters", pname)
        parameters[pname] = Parameter(
            pname, ptype, default, str(spec.get("help", "")), spec.get("choices"), required
        )
    steps: list[Step] = []
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("steps must be a non-empty list", "steps")
    for i, raw in enumerate(raw_steps):
        if not isinstance(raw, dict):
            raise fail(f"steps[{i}] must be a mapping", "steps", i)
        bad = set(raw) - STEP_KEYS
        if bad:
            raise fail(
                f"steps[{i}]: unknown key {sorted(bad)[0]!r} "
                f"(expected {', '.join(sorted(STEP_KEYS))})",
                "steps",
                i,
            )
        sid = raw.get("id")
        if not isinstance(sid, str) or not sid:
            raise fail(f"steps[{i}]: every step needs an id", "steps", i)
        if any(s.id == sid for s in steps):
            raise fail(f"steps[{i}]: duplicate step id {sid!r}", "steps", i)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise fail(
                f"step {sid}: kind must be one of {', '.join(KINDS)}, got {kind!r}",
                "steps",
                i,
                "kind",
            )
        if kind in ("python", "shell") and not raw.get("run"):
            raise fail(f"step {sid}: a {kind} step needs 'run'", "steps", i)
        depends = raw.get("depends") or []
        if isinstance(depends, str):
            depends = [depends]
        for dep in depends:
            if not any(s.id == dep for s in steps) and dep not in [r.get("id") for r in raw_steps]:
                raise fail(f"step {sid}: depends on unknown step {dep!r}", "steps", i, "depends")
        steps.append(
            Step(
                id=sid,
                kind=kind,
                run=str(raw.get("run", "")),
                prompt=str(raw.get("prompt", "")),
                depends=list(depends),
                inputs=dict(raw.get("inputs") or {}),
                check=str(raw.get("check", "")),
                parallel=str(raw.get("parallel", 1)),
                timeout=float(raw.get("timeout", 0) or 0),
                description=str(raw.get("description", "")),
                line=line_of("steps", i),
            )
        )
    recipe = Recipe(
        name=name,
        description=str(data.get("description", "")),
        parameters=parameters,
        steps=steps,
        body=body.strip(),
        path=path,
    )
    recipe.order()  # refuse cycles now
    return recipe


# -- finding recipes


def search_paths() -> list[Path]:
    """Folders searched for recipes, lowest precedence first."""
    from supervisor import config
    from supervisor.sandbox.image import sandboxes_dir

    # Beside sandboxes/ in a checkout; inside the package (_recipes) when installed.
    home = sandboxes_dir().parent
    builtin = home / ("_recipes" if sandboxes_dir().name == "_sandboxes" else "recipes")
    user = config.config_path().parent / "recipes"
    return [builtin, user, Path.cwd() / "recipes"]


def discover() -> dict[str, Path]:
    """Every recipe by name (built-in, plugins, user folder, project folder)."""
    from supervisor.plugins import get_plugins

    found: dict[str, Path] = {}
    paths = search_paths()
    for path in sorted(paths[0].glob("*.md")) if paths[0].is_dir() else []:
        found[path.stem] = path
    for _, path in get_plugins().collect("register_recipes"):
        found[Path(path).stem] = Path(path)
    for folder in paths[1:]:
        if folder.is_dir():
            for path in sorted(folder.glob("*.md")):
                found[path.stem] = path
    return found


def load(name_or_path: str) -> Recipe:
    candidate = Path(name_or_path)
    if candidate.suffix == ".md" and candidate.exists():
        return parse(candidate)
    found = discover()
    if name_or_path not in found:
        raise RecipeError(
            f"no recipe named {name_or_path!r} (have: "
            f"{', '.join(sorted(found)) or 'none'}; see `supervisor recipe list`)"
        )
    return parse(found[name_or_path])


def registered_steps(plugins: Plugins | None = None) -> dict[str, Callable[..., Any]]:
    """Python steps by name, from every plugin's ``register_steps``."""
    from supervisor.plugins import get_plugins

    return dict(item for _, item in (plugins or get_plugins()).collect("register_steps"))


def plan(recipe: Recipe, values: dict[str, Any]) -> list[str]:
    """What the python steps say they would do, for ``recipe run --dry-run``.

    A step function may carry a ``plan`` attribute, ``plan(params) -> list[str]``, that
    reads and checks the step's inputs (raising ``InputError`` on bad ones) without doing
    the work; its lines are shown under the step's id."""
    lines: list[str] = []
    steps = registered_steps()
    for step in recipe.order():
        check = getattr(steps.get(step.run), "plan", None) if step.kind == "python" else None
        if callable(check):
            lines += [f"{step.id}: {line}" for line in check(values)]
    return lines


def validate(recipe: Recipe) -> None:
    """Checks that need the plugins: every python step names a registered step."""
    known = registered_steps()
    for step in recipe.steps:
        if step.kind == "python" and step.run not in known:
            raise RecipeError(
                f"{recipe.path}:{step.line}: step {step.id}: no python step "
                f"{step.run!r} is registered (have: {', '.join(sorted(known)) or 'none'})"
            )


def render(template: str, values: dict[str, Any]) -> str:
    """``{name}`` placeholders filled from parameters and run values; others left alone."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


# -- running


class StepFailed(Exception):
    def __init__(self, step: Step, message: str) -> None:
        super().__init__(f"step {step.id} failed: {message}")
        self.step = step


@dataclass
class StepContext:
    """What a python step receives: :class:`supervisor.api.StepContext` over the engine."""

    engine: Engine  # internal: plugins use the services below (the lint rule holds them)
    recipe: Recipe
    step: Step
    run_id: str
    params: dict[str, Any]
    run_dir: Path
    outputs: dict[str, Any]
    progress: Callable[[str], None]

    @property
    def data_dir(self) -> Path:
        return self.engine.data_dir

    @property
    def playbook(self) -> str:
        return render(self.recipe.body, self.params)

    @property
    def settings(self) -> Mapping[str, Any]:
        return MappingProxyType(self.engine.settings)

    @property
    def events(self) -> Events:
        from supervisor.context import AgentEvents

        return AgentEvents(self.engine, None, self.run_id)

    @property
    def store(self) -> PluginStore:
        return self.engine.store

    @property
    def gpu_slots(self) -> GpuSlots:
        return self.engine.gpu_slots

    def hosts(self, spec: str) -> list[HostInfo]:
        from supervisor.api import GpuInfo, HostInfo

        pool = self.engine.pool_name(spec)
        if pool:  # the run's spend counts against the pool's budget too
            self.engine.run_pools[self.run_id] = pool
        return [
            HostInfo(
                name=h.name,
                cpus=int(h.facts.get("cpus") or 0),
                ram_mb=int(h.facts.get("ram_mb") or 0),
                gpus=tuple(
                    GpuInfo(
                        str(g["index"]),
                        str(g.get("name") or ""),
                        g.get("memory_total_mb"),
                        bool(g.get("busy")),
                        g.get("mig") == "Enabled",
                    )
                    for g in h.facts.get("gpus") or []
                    if g.get("index") is not None
                ),
                cordoned=h.cordoned,
                reachable=h.reachable,
            )
            for h in self.engine.named_hosts(spec)
        ]

    def host_gpu_slots(self, host: str) -> GpuSlots:
        return _RunGpus(self.engine, self.run_id, host)

    def memory(self, scope_key: str) -> Memory:
        """Memory notes of the project ``scope_key`` (and global ones)."""
        from supervisor.context import RunMemory

        return RunMemory(self.engine, self.run_id, scope_key)

    def emit(self, text: str, **data: Any) -> None:
        from supervisor.events import EventType

        self.engine.emit(
            EventType.STEP, None, {"step": self.step.id, **data}, text, run_id=self.run_id
        )
        self.progress(text)

    def new_sandbox(
        self,
        name: str,
        *,
        workspace: Path | None = None,
        network: bool = False,
        gpus: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        backend: str = "",
        image: str = "",
        host: str = "",
    ) -> Sandbox:
        return self.engine.step_sandbox(
            self.run_id,
            name,
            workspace=workspace,
            network=network,
            gpus=gpus,
            labels=dict(labels or {}),
            backend=backend,
            image=image,
            host=host,
        )

    async def run_agent(
        self,
        task: str,
        sandbox: Sandbox,
        *,
        name: str,
        model: str | None = None,
        exclude_tools: tuple[str, ...] = (),
        max_steps: int = 0,
    ) -> AgentInfo:
        agent = await self.engine.run_in_sandbox(
            self.run_id,
            task,
            sandbox,
            name=name,
            model=model,
            exclude_tools=exclude_tools,
            max_steps=max_steps,
        )
        return agent.info()

    async def sandbox_image(
        self,
        *,
        requirements: Sequence[str] = (),
        wheels: dict[str, bytes] | None = None,
        base: str = "",
        name: str = "",
    ) -> str:
        from supervisor.errors import InputError
        from supervisor.sandbox.image import derive

        backend = str(self.params.get("sandbox") or self.engine.settings["sandbox.backend"])
        if backend != "docker":
            raise InputError(
                f"{name or self.recipe.name}: an image with packages needs the docker sandbox "
                f"backend, not {backend!r}"
            )
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:
            loop.call_soon_threadsafe(self.emit, f"image: {line}")

        return await asyncio.to_thread(
            derive,
            base or self.engine.settings["sandbox.image"],
            requirements=list(requirements),
            wheels=dict(wheels or {}),
            mode=self.engine.settings["sandbox.build"],
            progress=progress,
            name=name,
        )

    async def bring_back(self, sandbox: Sandbox, target: Path, *, branch: str = "") -> str:
        from supervisor.sandbox.workspace import WorkspaceError, apply

        try:
            return await apply(sandbox, target, branch=branch or None)
        except WorkspaceError as exc:
            return str(exc)

    def check_model(self, model: str | None = None) -> str:
        from supervisor.models import check_usable

        spec = self.engine.models.registry.resolve(model or self.engine.settings["model"])
        check_usable(spec)
        return spec.alias


class _RunGpus:
    """A host's GPU slots as one run's steps hold them: each hold and release is a
    ``placement`` event of the run, so the hosts view shows the GPU busy and the
    transcript says who had which GPU when."""

    def __init__(self, engine: Engine, run_id: str, host: str) -> None:
        self.engine, self.run_id, self.host = engine, run_id, host
        self._slots = engine.host_gpu_slots(host)

    @property
    def devices(self) -> list[str]:
        return self._slots.devices

    def hold(
        self, holder: str, count: int = 1, among: Sequence[str] = ()
    ) -> AbstractAsyncContextManager[list[str]]:
        return self._hold(holder, count, among)

    @contextlib.asynccontextmanager
    async def _hold(
        self, holder: str, count: int, among: Sequence[str]
    ) -> AsyncIterator[list[str]]:
        from supervisor.events import EventType

        async with self._slots.hold(holder, count, among) as got:
            data = {"host": self.host, "gpus": [int(d) for d in got], "holder": holder}
            where = f"GPU {','.join(got)} of host {self.host}"
            self.engine.emit(
                EventType.PLACEMENT, None, {"phase": "gpu_held", **data},
                f"{holder}: {where} held", run_id=self.run_id,
            )  # fmt: skip
            try:
                yield got
            finally:
                self.engine.emit(
                    EventType.PLACEMENT, None, {"phase": "gpu_released", **data},
                    f"{holder}: {where} released", run_id=self.run_id,
                )  # fmt: skip


class RecipeRunner:
    """Runs a recipe's steps in order, checkpointing each one in the ``steps`` table."""

    def __init__(
        self, engine: Engine, recipe: Recipe, *, progress: Callable[[str], None] = print
    ) -> None:
        self.engine = engine
        self.recipe = recipe
        self.progress = progress

    async def start(self, params: dict[str, Any]) -> str:
        run_id = await self.engine.create_run(
            title=f"recipe {self.recipe.name}",
            kind="recipe",
            recipe=self.recipe.name,
            params={"recipe_path": str(self.recipe.path), "params": params},
        )
        return run_id

    async def run(self, run_id: str, params: dict[str, Any]) -> str:
        """Run (or continue) every step not yet done; returns the run's final status."""
        store = self.engine.store
        run_dir = self.engine.data_dir / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        store.flush()
        done = {
            r["step_id"]: json.loads(r["output"] or "null")
            for r in store.db.query(
                "SELECT step_id, output FROM steps WHERE run_id = ? AND status = 'done'", [run_id]
            )
        }
        outputs: dict[str, Any] = dict(done)
        values = {**params, "run_id": run_id, "run_dir": str(run_dir)}
        status = "done"
        try:
            for step in self.recipe.order():
                if step.id in done:
                    self._say(run_id, step, f"✓ {step.id} (done earlier)")
                    continue
                self._mark(run_id, step, "running")
                self._say(run_id, step, f"▶ {step.id}")
                started = time.monotonic()
                # A step's inputs are values of its own, templated from the run's.
                inputs = {k: render(str(v), values) for k, v in step.inputs.items()}
                step_values = {**values, **inputs}
                ctx = StepContext(
                    self.engine,
                    self.recipe,
                    step,
                    run_id,
                    {**params, **inputs},
                    run_dir,
                    outputs,
                    self.progress,
                )
                deadline = asyncio.timeout(step.timeout or None)
                try:
                    async with deadline:
                        output = await self._run_step(ctx, step_values)
                        if step.check:
                            await self._check(step, render(step.check, step_values), run_dir)
                except TimeoutError as exc:
                    error = (
                        f"step {step.id} took longer than its timeout ({step.timeout:g}s)"
                        if deadline.expired()
                        else f"step {step.id} failed: TimeoutError: {exc}"
                    )
                    self._mark(run_id, step, "failed", error=error)
                    self._say(run_id, step, f"✗ {error}")
                    status = "failed"
                    break
                except InputError as exc:
                    # The user's to fix (a bad target, parameter or spec): recorded, then
                    # reported as bad input — one line, exit code 2 — not as a failed step.
                    self._mark(run_id, step, "failed", error=str(exc))
                    status = "failed"
                    raise
                except StepFailed as exc:
                    self._mark(run_id, step, "failed", error=str(exc))
                    self._say(run_id, step, f"✗ {exc}")
                    status = "failed"
                    break
                outputs[step.id] = output
                self._mark(run_id, step, "done", output=output)
                self._say(run_id, step, f"✓ {step.id} ({time.monotonic() - started:.1f}s)")
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            self.engine.finish_run(run_id, status)
        return status

    def _say(self, run_id: str, step: Step, text: str) -> None:
        """A progress line, as an event (clients of the server print it) and here."""
        from supervisor.events import EventType

        self.engine.emit(EventType.STEP, None, {"step": step.id}, text, run_id=run_id)
        self.progress(text)

    async def _run_step(self, ctx: StepContext, values: dict[str, Any]) -> Any:
        step = ctx.step
        if step.kind == "python":
            fn = registered_steps(self.engine.plugins).get(step.run)
            if fn is None:
                raise StepFailed(step, f"no python step {step.run!r} is registered")
            try:
                result = fn(ctx)
                if inspect.isawaitable(result):
                    result = await result
            except (StepFailed, InputError):
                raise
            except Exception as exc:
                raise StepFailed(step, f"{type(exc).__name__}: {exc}") from exc
            return result
        if step.kind == "shell":
            command = render(step.run, values)
            proc = await asyncio.create_subprocess_shell(
                command,
                cwd=ctx.run_dir,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            text = out.decode(errors="replace")
            if proc.returncode != 0:
                raise StepFailed(step, f"`{command}` exited {proc.returncode}:\n{text[-2000:]}")
            return {"output": text[-4000:]}
        # An agent step: N agents work the prompt (and the playbook) until they finish.
        from supervisor.engine import RunOptions

        count = int(render(step.parallel, values) or 1)
        task = render(step.prompt or f"Do the step {step.id!r} of the playbook.", values)
        task += f"\n\nThe playbook ({self.recipe.name}):\n{render(self.recipe.body, values)}"
        workspace = values.get("workspace")
        options = RunOptions(
            task=task, agents=count, workspace=Path(workspace) if workspace else None
        )
        statuses = await self.engine.run_agents(ctx.run_id, options)
        if any(s != "done" for s in statuses):
            raise StepFailed(step, f"agents ended {statuses}")
        return {"agents": statuses}

    async def _check(self, step: Step, command: str, cwd: Path) -> None:
        proc = await asyncio.to_thread(
            subprocess.run, command, shell=True, cwd=cwd, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise StepFailed(
                step,
                f"check `{command}` exited {proc.returncode}:\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}",
            )

    def _mark(
        self, run_id: str, step: Step, status: str, *, output: Any = None, error: str = ""
    ) -> None:
        now = time.time()
        row: dict[str, Any] = {
            "run_id": run_id,
            "step_id": step.id,
            "status": status,
            "error": error,
            "output": json.dumps(output, default=str),
        }
        row["started_at" if status == "running" else "finished_at"] = now

        def write(db: Any) -> None:
            existing = db.table("steps").count_where(
                "run_id = ? AND step_id = ?", [run_id, step.id]
            )
            if existing:
                attempt = 1 if status == "running" else 0
                db.execute(
                    "UPDATE steps SET status = ?, error = ?, output = ?, attempt = attempt + ?, "
                    f"{'started_at' if status == 'running' else 'finished_at'} = ? "
                    "WHERE run_id = ? AND step_id = ?",
                    [status, error, row["output"], attempt, now, run_id, step.id],
                )
            else:
                db.table("steps").insert({**row, "attempt": 1})

        self.engine.store.write(write)
        from supervisor.events import EventType

        self.engine.emit(
            EventType.STEP,
            None,
            {"step": step.id, "status": status, "error": error},
            error,
            run_id=run_id,
        )


def scaffold(name: str, folder: Path, *, plugin: bool = False) -> list[Path]:
    """Write a new recipe (and optionally a plugin package for its code)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise RecipeError(f"recipe name {name!r}: use lowercase letters, digits, '-' or '_'")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    if path.exists():
        raise RecipeError(f"{path} already exists")
    module = f"supervisor_{name.replace('-', '_')}"
    step_ref = f"{name}.hello" if plugin else ""
    steps = (
        f"  - id: prepare\n    kind: python\n    run: {step_ref}\n"
        if plugin
        else '  - id: prepare\n    kind: shell\n    run: "echo preparing {target}"\n'
    )
    path.write_text(
        f"---\nname: {name}\ndescription: What this recipe does, in one line.\n"
        "parameters:\n  target:\n    type: str\n    default: world\n"
        "    help: What to work on.\n"
        f"steps:\n{steps}"
        "  - id: work\n    kind: agent\n    depends: [prepare]\n"
        '    prompt: "Work on {target} as the playbook says."\n'
        "    parallel: 1\n---\n"
        f"# {name}\n\nThe playbook: say, step by step and in plain English, what the agents "
        "should do and how they know they are done.\n"
    )
    written = [path]
    if plugin:
        pkg = folder.parent / f"{module.replace('_', '-')}"
        (pkg / module).mkdir(parents=True, exist_ok=True)
        (pkg / "pyproject.toml").write_text(
            f'[project]\nname = "{module.replace("_", "-")}"\nversion = "0.1.0"\n'
            'dependencies = ["supervisor-agents"]\n\n'
            f'[project.entry-points.supervisor]\n{name} = "{module}"\n\n'
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        )
        (pkg / module / "__init__.py").write_text(
            f'"""Steps for the {name} recipe."""\n\n'
            "from supervisor import hookimpl\n\n\n"
            "def hello(ctx):\n"
            '    """A deterministic step: ctx has params, run_dir, outputs, engine."""\n'
            "    ctx.emit(f\"preparing {ctx.params['target']}\")\n"
            '    return {"prepared": ctx.params["target"]}\n\n\n'
            "@hookimpl\n"
            "def register_steps(register):\n"
            f'    register("{name}.hello", hello)\n'
        )
        written += [pkg / "pyproject.toml", pkg / module / "__init__.py"]
    return written
