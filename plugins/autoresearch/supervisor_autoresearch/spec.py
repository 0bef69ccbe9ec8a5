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

from supervisor.errors import InputError

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
        if value not in (None, "", 0):
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
    return Spec(**{"name": target.name, **table})
