"""Where the next experiment comes from.

- :class:`SearchProposer` — the built-in proposer, used when no model is configured: a
  search over the hyperparameters the spec declares (``NAME = value`` lines in the editable
  files), one change at a time from the best so far, never repeating a configuration
  already tried on this target (in this run or an earlier one). It is labelled as such in
  every report.
- :class:`AgentProposer` — an LLM agent edits the code in the loop's sandbox, told the
  history and what failed before, and says in one line what it changed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

ASSIGNMENT = r"^(?P<name>{name})(?P<eq>\s*=\s*)(?P<value>[^#\n]*?)(?P<rest>\s*(#.*)?)$"


@dataclass
class Proposal:
    description: str
    files: dict[str, str]  # the editable files' new contents (empty: the agent edited them)
    params: dict[str, Any]


def read_params(files: dict[str, str], names: list[str]) -> dict[str, Any]:
    """The current value of each declared hyperparameter, as Python literals."""
    import ast

    values: dict[str, Any] = {}
    for name in names:
        for text in files.values():
            match = re.search(ASSIGNMENT.format(name=re.escape(name)), text, re.M)
            if match:
                try:
                    values[name] = ast.literal_eval(match.group("value").strip())
                except (ValueError, SyntaxError):
                    values[name] = match.group("value").strip()
                break
    return values


def write_param(files: dict[str, str], name: str, value: Any) -> dict[str, str]:
    pattern = re.compile(ASSIGNMENT.format(name=re.escape(name)), re.M)
    out = dict(files)
    for path, text in files.items():
        if pattern.search(text):
            out[path] = pattern.sub(
                lambda m: f"{m.group('name')}{m.group('eq')}{value!r}{m.group('rest')}",
                text,
                count=1,
            )
            break
    return out


def key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class SearchProposer:
    """Coordinate search over declared hyperparameters (no model needed)."""

    label = "built-in proposer (hyperparameter search, no model)"

    def __init__(self, space: dict[str, list[Any]], seed: int = 0) -> None:
        self.space = space
        self.rng = random.Random(seed)

    def propose(self, best_files: dict[str, str], tried: set[str]) -> Proposal | None:
        current = read_params(best_files, list(self.space))
        options: list[tuple[str, Any]] = []
        for name, values in self.space.items():
            if name not in current:
                continue
            if current[name] in values:
                i = values.index(current[name])
                neighbours = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
            else:
                neighbours = list(values)
            # Prefer the neighbours of the current value, then any other value.
            others = [v for v in values if v not in neighbours and v != current[name]]
            for rank, candidates in enumerate((neighbours, others)):
                for value in candidates:
                    params = {**current, name: value}
                    if key(params) not in tried:
                        options.append((f"{rank}:{name}", value))
        if not options:
            return None
        best_rank = min(o[0].split(":")[0] for o in options)
        options = [o for o in options if o[0].startswith(best_rank)]
        label, value = self.rng.choice(options)
        name = label.split(":", 1)[1]
        files = write_param(best_files, name, value)
        params = {**current, name: value}
        return Proposal(f"{name} {current[name]!r} -> {value!r}", files, params)


class AgentProposer:
    """An agent edits the editable files in the loop's sandbox."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.label = f"agents on {model}"

    def task(
        self, spec: Any, history: list[dict[str, Any]], notes: list[str], crash_log: str = ""
    ) -> str:
        lines = [
            f"You are running experiment after experiment on {spec.name}. Make ONE change to "
            f"{', '.join(spec.editable)} (and nothing else) that you expect to improve "
            f"{spec.metric_name} ({spec.direction} is better) under a fixed training time "
            f"budget of {spec.time_budget_s:g} s. Do not run the training yourself: the "
            "loop runs it after you finish. Files that must not change: "
            f"{', '.join(spec.fixed) or 'none'} — they are checked after every experiment, "
            "and one that changed them is recorded invalid and never kept. A change is kept "
            "only if it beats the best by more than the metric's run-to-run noise. Do not "
            "repeat an experiment listed below: an edit that gives code already tried is not "
            "run. Prefer simple changes; when two ideas are equally good, the simpler wins. "
            "Call finish(summary) with a one-line description of the change.",
        ]
        if crash_log:
            lines.append(
                "Your last change crashed. Fix it if the fix is trivial; otherwise "
                f"revert it and try something else. The end of the log:\n{crash_log}"
            )
        if history:
            lines.append(
                "Experiments so far (status, metric, description):\n"
                + "\n".join(
                    f"- {h['status']} {h['metric']} {h['description']}" for h in history[-30:]
                )
            )
        if notes:
            lines.append("Notes from earlier runs:\n" + "\n".join(f"- {n}" for n in notes[:20]))
        return "\n\n".join(lines)
