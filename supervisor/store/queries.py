"""Read queries shared by the CLI and the TUI: plain functions over a read connection, so
both show the same numbers (they read committed rows; writes go through the engine)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metric:
    """One named series of ``metric`` events: values in order, which way is better (when
    the emitter said), and tallies of its string labels (e.g. ``status: keep 3``)."""

    name: str
    values: list[float] = field(default_factory=list)
    better: str = ""  # lower | higher | "" (not said)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def best(self) -> float | None:
        if not self.values or self.better not in ("lower", "higher"):
            return None
        return min(self.values) if self.better == "lower" else max(self.values)


@dataclass
class Progress:
    label: str
    done: float
    total: float | None
    unit: str


@dataclass
class Series:
    metrics: dict[str, Metric] = field(default_factory=dict)
    progress: dict[str, Progress] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.progress)


def run_series(db: sqlite3.Connection, run_id: str) -> Series:
    """Every ``metric`` and ``progress`` event of a run, in order (any plugin's)."""
    rows = db.execute(
        "SELECT type, data FROM events WHERE run_id = ? AND type IN ('metric', 'progress') "
        "ORDER BY id",
        [run_id],
    ).fetchall()
    series = Series()
    for kind, raw in rows:
        data: dict[str, Any] = json.loads(raw or "{}")
        if kind == "progress":
            label = str(data.get("label", ""))
            total = data.get("total")
            series.progress[label] = Progress(
                label,
                float(data.get("done") or 0),
                float(total) if total is not None else None,
                str(data.get("unit", "")),
            )
            continue
        name = str(data.get("name", ""))
        metric = series.metrics.setdefault(name, Metric(name))
        labels = data.get("labels") or {}
        if labels.get("better") in ("lower", "higher"):
            metric.better = str(labels["better"])
        for key, value in labels.items():
            if key != "better" and isinstance(value, str):
                counts = metric.tallies.setdefault(key, {})
                counts[value] = counts.get(value, 0) + 1
        value = data.get("value")
        if isinstance(value, int | float):
            metric.values.append(float(value))
    return series
