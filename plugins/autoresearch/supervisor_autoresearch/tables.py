"""The plugin's own table, ``experiments``: one row per experiment of a loop, kept or not.

A named migration set (``register_migrations``), append-only like supervisor's own. A
database from before the plugin owned the table already has it, with fewer columns: it is
adopted, and the columns it lacks are added.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("autoresearch")

COLUMNS: dict[str, type] = {
    "id": int,
    "run_id": str,
    "agent_id": str,  # which loop ("agent-1") ran it
    "target": str,  # the target's name, so later runs can see what was tried
    "n": int,  # experiment number within its loop (0: baseline)
    "commit": str,
    "metric": float,
    "memory_mb": float,
    "status": str,  # keep | discard | crash | invalid
    "description": str,
    "params": str,  # JSON: the hyperparameters or change tried
    "files": str,  # JSON: the editable files' content, for kept experiments
    "slot": str,  # the GPU or CPU cores it ran on
    "host": str,  # the host it ran on ("" : the supervisor's machine)
    "device_class": str,  # the GPU model (or CPU) its metric is compared within
    "started_at": float,
    "duration_s": float,
    "runs": str,  # JSON list: the metric of each run (a marginal win's re-runs too)
    "reruns": int,  # runs beyond the first, made because a win was marginal
    "noise_floor": float,  # what the change was judged against
    "confidence": float,  # P(the improvement is real), for judged ones
    "diff": str,  # every experiment's change, discarded ones too
}


@migrations()
def m001_experiments(db: Database) -> None:
    table = db.table("experiments")
    if not table.exists():
        table.create(
            COLUMNS,
            pk="id",
            not_null={"run_id", "status", "started_at"},
            foreign_keys=[("run_id", "runs", "id")],
        )
        table.create_index(["run_id", "agent_id", "n"])
        table.create_index(["target"])
        return
    have = set(table.columns_dict)
    for name, kind in COLUMNS.items():
        if name not in have:
            table.add_column(name, kind)


@migrations()
def m002_host_and_device(db: Database) -> None:
    """Where each experiment ran, for runs over a pool of hosts (``-p hosts=``)."""
    table = db.table("experiments")
    have = set(table.columns_dict)
    for name in ("host", "device_class"):
        if name not in have:
            table.add_column(name, str)
