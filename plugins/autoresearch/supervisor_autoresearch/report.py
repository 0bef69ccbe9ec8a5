"""The report: a Markdown summary, a progress plot, and the kept changes with their diffs."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.recipes import StepContext


def plot(rows: list[dict[str, Any]], metric: str, direction: str, path: Path) -> None:
    """Every experiment a dot; kept ones joined as the running best, and labelled."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    measured = [(i, r) for i, r in enumerate(rows) if r["metric"] is not None]
    colours = {"keep": "#2e9e44", "discard": "#9a9a9a", "crash": "#d62728"}
    for status in ("discard", "keep"):
        xs = [i for i, r in measured if r["status"] == status]
        ys = [r["metric"] for _, r in measured if r["status"] == status]
        if xs:
            ax.scatter(xs, ys, s=36, c=colours[status], label=status, zorder=3)
    crashes = [i for i, r in enumerate(rows) if r["status"] == "crash"]
    if crashes and measured:
        top = (
            max(r["metric"] for _, r in measured)
            if direction == "lower"
            else min(r["metric"] for _, r in measured)
        )
        ax.scatter(
            crashes, [top] * len(crashes), marker="x", c=colours["crash"], label="crash", zorder=3
        )
    best_x: list[int] = []
    best_y: list[float] = []
    for i, r in measured:
        if r["status"] == "keep":
            best_x.append(i)
            best_y.append(r["metric"])
            ax.annotate(
                r["description"][:40],
                (i, r["metric"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=7,
                rotation=20,
            )
    if best_x:
        best_x.append(len(rows) - 1)
        best_y.append(best_y[-1])
        ax.step(best_x, best_y, where="post", c=colours["keep"], lw=1.5, label="best so far")
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric} ({direction} is better)")
    ax.set_title(f"autoresearch: {len(rows)} experiments")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(ctx: StepContext) -> dict[str, Any]:
    """Write report.md and progress.png in the run's folder; print where they are."""
    ctx.engine.store.flush()
    rows = [
        dict(r)
        for r in ctx.engine.store.db.query(
            "SELECT * FROM experiments WHERE run_id = ? ORDER BY id", [ctx.run_id]
        )
    ]
    prepared = ctx.outputs["prepare"]
    spec = prepared["spec"]
    metric, direction = _metric_name(spec), spec.get("direction", "lower")
    png = ctx.run_dir / "progress.png"
    plot(rows, metric, direction, png)
    measured = [r for r in rows if r["metric"] is not None]
    baseline = next((r for r in rows if r["n"] == 0), None)
    kept = [r for r in rows if r["status"] == "keep" and r["n"] > 0]
    best = (
        min(measured, key=lambda r: r["metric"])
        if direction == "lower"
        else max(measured, key=lambda r: r["metric"])
    )
    counts = {
        s: sum(r["status"] == s for r in rows if r["n"] > 0) for s in ("keep", "discard", "crash")
    }
    hours = (rows[-1]["started_at"] + (rows[-1]["duration_s"] or 0) - rows[0]["started_at"]) / 3600
    per_hour = (len(rows) - 1) / hours if hours > 0 else 0.0
    proposer = ctx.outputs.get("loop", {}) and _proposer_label(ctx)
    base_value = baseline["metric"] if baseline else None
    change = ""
    if base_value:
        change = f" ({(best['metric'] - base_value) / base_value * 100:+.2f}% vs baseline)"
    lines = [
        f"# autoresearch: {spec['name']}",
        "",
        f"- target: `{prepared['source']}` (run copy `{prepared['target']}`)",
        f"- proposer: {proposer}",
        f"- metric: `{metric}`, {direction} is better; time budget {spec['time_budget_s']:g} s",
        f"- baseline: {base_value}",
        f"- best: **{best['metric']:.6f}**{change}, by {best['agent_id']} — {best['description']}",
        f"- experiments: {len(rows) - 1} ({counts['keep']} kept, {counts['discard']} discarded, "
        f"{counts['crash']} crashed), {per_hour:.1f} per hour",
        "",
        "![progress](progress.png)",
        "",
        "## Experiments",
        "",
        f"| # | loop | {metric} | memory MB | status | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r['metric']:.6f}" if r["metric"] is not None else "—"
        mem = f"{r['memory_mb']:.0f}" if r["memory_mb"] else "—"
        lines.append(
            f"| {r['n']} | {r['agent_id']} | {value} | {mem} | {r['status']} | {r['description']} |"
        )
    if kept:
        lines += ["", "## Kept changes", ""]
        previous = _files_before(rows, kept[0])
        for r in kept:
            files = json.loads(r["files"] or "{}")
            diff = "".join(
                "".join(
                    difflib.unified_diff(
                        previous.get(name, "").splitlines(True),
                        text.splitlines(True),
                        f"a/{name}",
                        f"b/{name}",
                    )
                )
                for name, text in files.items()
            )
            lines += [
                f"### {r['description']} → {r['metric']:.6f}",
                "",
                "```diff",
                diff.rstrip() or "(no textual change)",
                "```",
                "",
            ]
            previous = files
    path = ctx.run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    ctx.emit(f"best {metric} {best['metric']:.6f}{change}")
    ctx.emit(f"report: {path}")
    ctx.emit(f"plot: {png}")
    ctx.emit(f"results: {ctx.run_dir / 'results.tsv'}")
    return {"best": best["metric"], "baseline": base_value, "report": str(path), "plot": str(png)}


def _files_before(rows: list[dict[str, Any]], first_kept: dict[str, Any]) -> dict[str, str]:
    base = next((r for r in rows if r["n"] == 0 and r["files"]), None)
    return json.loads(base["files"]) if base else {}


def _metric_name(spec: dict[str, Any]) -> str:
    from supervisor_autoresearch.spec import Spec

    return Spec(**spec).metric_name


def _proposer_label(ctx: StepContext) -> str:
    from supervisor_autoresearch.loop import _model_usable

    choice = ctx.params.get("proposer") or "auto"
    model = ctx.engine.settings.get("model", "")
    if choice == "model" or (choice == "auto" and model and _model_usable(ctx, model)):
        return f"agents on {model}"
    return "built-in proposer (hyperparameter search over the spec's declared values, no model)"
