"""A target's spec: what may change, how to run it, how to read the metric.

Read from ``autoresearch.toml`` in the target (the ``[autoresearch]`` table), with recipe
parameters overriding single fields. Errors name the file and the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import InputError

SPEC_FILE = "autoresearch.toml"


@dataclass
class Spec:
    name: str
    editable: list[str]
    run: str
    metric: str  # a regex with one group: the number
    direction: str = "lower"  # lower | higher
    time_budget_s: float = 300.0
    fixed: list[str] = field(default_factory=list)
    setup: str = ""
    memory: str = ""  # optional regex for a memory readout (MB)
    description: str = ""
    hyperparameters: dict[str, list[Any]] = field(default_factory=dict)
    # How many times the baseline runs to measure the metric's noise (1: not measured).
    baseline_runs: int = 3
    # A change must beat the best by more than this many spreads of the baseline runs.
    noise_spreads: float = 1.0
    # A marginal result (between half and twice the noise floor) runs up to this many more times.
    max_reruns: int = 2
    # Training steps per experiment (0: none), given as AUTORESEARCH_STEP_BUDGET: the
    # number of steps a wall-clock budget allows varies from run to run.
    step_budget: int = 0
    # A run past this many seconds is killed and counts as a crash (0: twice the time
    # budget). Raise it when start-up and evaluation take long next to a short budget.
    timeout_s: float = 0.0
    # What the experiments need: pip requirements or wheel files (paths in the target),
    # installed once into an image built from the sandbox image (see environment.py)...
    packages: list[str] = field(default_factory=list)
    # ... or an existing image to run them in (the base for ``packages`` when both given).
    image: str = ""

    @property
    def kill_after_s(self) -> float:
        return self.timeout_s or 2 * self.time_budget_s

    @property
    def metric_name(self) -> str:
        match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)", self.metric)
        return match.group(1) if match else "metric"

    def better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new < old if self.direction == "lower" else new > old

    def read_metric(self, log: str) -> float | None:
        found = re.findall(self.metric, log, re.M)
        return float(found[-1]) if found else None

    def read_memory(self, log: str) -> float | None:
        if not self.memory:
            return None
        found = re.findall(self.memory, log, re.M)
        return float(found[-1]) if found else None


def load(target: Path, overrides: dict[str, Any] | None = None) -> Spec:
    path = target / SPEC_FILE
    table: dict[str, Any] = {}
    if path.exists():
        try:
            table = tomllib.loads(path.read_text()).get("autoresearch", {})
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is not None and value != "":  # None: not given, the spec's value stands
            table[key] = value
    where = str(path) if path.exists() else f"{target} (no {SPEC_FILE}; give -p parameters)"
    for required in ("editable", "run", "metric"):
        if not table.get(required):
            raise InputError(f"{where}: the spec needs '{required}'")
    if isinstance(table["editable"], str):
        table["editable"] = [s.strip() for s in table["editable"].split(",") if s.strip()]
    if table.get("direction", "lower") not in ("lower", "higher"):
        raise InputError(f"{where}: direction must be 'lower' or 'higher'")
    try:
        re.compile(table["metric"], re.M)
        if table.get("memory"):
            re.compile(table["memory"], re.M)
    except re.error as exc:
        raise InputError(
            f"{where}: metric/memory is not a valid regular expression: {exc}"
        ) from None
    for name in table["editable"]:
        if not (target / name).is_file():
            raise InputError(f"{where}: editable file {name} does not exist in {target}")
    known = {f for f in Spec.__dataclass_fields__}
    unknown = set(table) - known
    if unknown:
        raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    _check_numbers(table, where)
    packages = table.get("packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
        raise InputError(f"{where}: packages must be a list of requirements or wheel paths")
    if not isinstance(table.get("image", ""), str):
        raise InputError(f"{where}: image must be an image name")
    _check_hyperparameters(table, target, where)
    return Spec(**{"name": target.name, **table})


def _check_numbers(table: dict[str, Any], where: str) -> None:
    for name, kind, least in (
        ("baseline_runs", int, 1),
        ("max_reruns", int, 0),
        ("step_budget", int, 0),
        ("noise_spreads", float, 0),
        ("time_budget_s", float, 0),
        ("timeout_s", float, 0),
    ):
        if name not in table:
            continue
        value = table[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and ok and float(value) != int(value):
            ok = False
        if not ok or value < least:
            whole = "a whole number" if kind is int else "a number"
            raise InputError(f"{where}: {name} must be {whole} of at least {least}, not {value!r}")
        table[name] = kind(value)


def _check_hyperparameters(table: dict[str, Any], target: Path, where: str) -> None:
    """The built-in proposer edits `NAME = value` lines: a name with no such line in the
    editable files would never be tried, so the spec is refused rather than half-used."""
    from supervisor_autoresearch.proposers import read_params

    space = table.get("hyperparameters") or {}
    if not isinstance(space, dict):
        raise InputError(f"{where}: [autoresearch.hyperparameters] must be a table")
    for name, values in space.items():
        if not isinstance(values, list) or not values:
            raise InputError(
                f"{where}: hyperparameter {name} needs a list of candidate values, not {values!r}"
            )
    files = {name: (target / name).read_text(errors="replace") for name in table["editable"]}
    missing = [name for name in space if name not in read_params(files, [name])]
    if missing:
        raise InputError(
            f"{where}: hyperparameters {', '.join(missing)} match no `NAME = value` line "
            f"in {', '.join(table['editable'])}"
        )
