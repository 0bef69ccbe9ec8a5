"""``supervisor autoresearch log|show``: every experiment ever run, kept or not, with its
change — the discarded ideas are worth as much as the kept ones."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from supervisor import InputError, data_dir

COLUMNS = (
    'id, run_id, agent_id, target, n, "commit", metric, memory_mb, status, description, params, '
    "slot, host, device_class, started_at, duration_s, runs, reruns, noise_floor, confidence"
)


def _rows(sql: str, args: list[Any]) -> list[dict[str, Any]]:
    """Read-only: a command never writes the database (the supervisor process does)."""
    import sqlite3

    path = data_dir() / "supervisor.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'experiments'").fetchone():
            return []
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in ("runs", "params", "files"):
        if name in out and isinstance(out[name], str):
            out[name] = json.loads(out[name] or ("[]" if name == "runs" else "{}"))
    return out


@click.group("autoresearch")
def autoresearch() -> None:
    """Experiments of autoresearch runs: every one, kept or discarded, with its diff."""


@autoresearch.command("log")
@click.option("--run", "run_id", default="", help="Only this run's experiments.")
@click.option("--target", default="", help="Only experiments on this target (the spec's name).")
@click.option("--status", default="", help="Only keep, discard, crash or invalid ones.")
@click.option("-s", "--search", default="", help="Only those whose change or diff has TEXT.")
@click.option("-n", "--limit", default=200, show_default=True, help="At most this many, newest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def log(run_id: str, target: str, status: str, search: str, limit: int, as_json: bool) -> None:
    """Every experiment (newest last): id, run, loop, number, metric, status, change."""
    where, args = [], []
    for column, value in (("run_id", run_id), ("target", target), ("status", status)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if search:
        where.append("(instr(lower(description), lower(?)) OR instr(lower(diff), lower(?)))")
        args += [search, search]
    sql = f"SELECT {COLUMNS} FROM experiments"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = _rows(f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id", [*args, limit])
    if as_json:
        click.echo(json.dumps([_shown(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no experiments" + (" match" if where else " yet"), err=True)
        return
    for r in rows:
        metric = f"{r['metric']:.6f}" if r["metric"] is not None else "—"
        sure = f" {r['confidence']:.0%}" if r["status"] == "keep" and r["n"] else ""
        click.echo(
            f"{r['id']:>5}  {r['run_id']}  {r['agent_id']:<9} #{r['n']:<3} {metric:>10}  "
            f"{r['status']:<7}{sure:>5}  {r['description']}"
        )


@autoresearch.command("show")
@click.argument("experiment", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show(experiment: int, as_json: bool) -> None:
    """One experiment (an id from `log`): its result, its runs and its diff."""
    rows = _rows("SELECT * FROM experiments WHERE id = ?", [experiment])
    if not rows:
        raise InputError(f"no experiment {experiment} (see `supervisor autoresearch log`)")
    row = _shown(rows[0])
    if as_json:
        row.pop("files", None)
        click.echo(json.dumps(row, indent=2))
        return
    metric = f"{row['metric']:.6f}" if row["metric"] is not None else "—"
    lines = [
        f"experiment {row['id']}: {row['target']} #{row['n']} by {row['agent_id']} "
        f"(run {row['run_id']}, commit {row['commit'] or '—'})",
        f"status: {row['status']}",
        f"metric: {metric}"
        + (f" (mean of {len(row['runs'])} runs: {row['runs']})" if len(row["runs"]) > 1 else ""),
        f"change: {row['description']}",
    ]
    if row.get("noise_floor") is not None:
        lines.append(f"noise floor: {row['noise_floor']:.6g}")
    if row.get("confidence") is not None:
        lines.append(f"confidence that it beats the best before it: {row['confidence']:.0%}")
    sys.stdout.write("\n".join(lines) + "\n\n" + (row.get("diff") or "(no diff)\n"))
