"""The report: a Markdown summary, a progress plot, and the kept changes with their diffs."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor_autoresearch.judge import Noise

if TYPE_CHECKING:
    from supervisor import StepContext


STATUSES = ("keep", "discard", "crash", "invalid")


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many experiments (the baseline not included) ended each way."""
    return {s: sum(r["status"] == s for r in rows if r["n"] > 0) for s in STATUSES}


def summary(rows: list[dict[str, Any]]) -> str:
    """The one line both the report and the plot's title say."""
    c = counts(rows)
    experiments = sum(r["n"] > 0 for r in rows)
    text = (
        f"{experiments} experiments ({c['keep']} kept, {c['discard']} discarded, "
        f"{c['crash']} crashed"
    )
    return text + (f", {c['invalid']} invalid)" if c["invalid"] else ")")


def plot(
    rows: list[dict[str, Any]], metric: str, direction: str, path: Path, floor: float = 0.0
) -> dict[str, Any]:
    """Every experiment a dot at its number; kept ones joined as the running best, and
    labelled; under the best, the noise floor a change had to clear. Returns the title and
    the x ticks drawn (whole experiment numbers)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    measured = [r for r in rows if r["metric"] is not None]
    colours = {"keep": "#2e9e44", "discard": "#9a9a9a", "crash": "#d62728", "invalid": "#8c564b"}
    for status in ("discard", "keep"):
        xs = [r["n"] for r in measured if r["status"] == status]
        ys = [r["metric"] for r in measured if r["status"] == status]
        if xs:
            ax.scatter(xs, ys, s=36, c=colours[status], label=status, zorder=3)
    # Each run behind a mean (the baseline's, a marginal win's re-runs), small and faint.
    singles = [(r["n"], v) for r in rows for v in json.loads(r.get("runs") or "[]")]
    if any(len(json.loads(r.get("runs") or "[]")) > 1 for r in rows):
        ax.scatter(
            [x for x, _ in singles],
            [y for _, y in singles],
            s=10,
            c="#1f77b4",
            alpha=0.5,
            label="single runs",
            zorder=2,
        )
    failed = [r for r in rows if r["status"] in ("crash", "invalid")]
    if failed and measured:
        top = (
            max(r["metric"] for r in measured)
            if direction == "lower"
            else min(r["metric"] for r in measured)
        )
        for status in ("crash", "invalid"):
            xs = [r["n"] for r in failed if r["status"] == status]
            if xs:
                ax.scatter(
                    xs, [top] * len(xs), marker="x", c=colours[status], label=status, zorder=3
                )
    best_x: list[int] = []
    best_y: list[float] = []
    for r in measured:
        if r["status"] == "keep":
            best_x.append(r["n"])
            best_y.append(r["metric"])
            ax.annotate(
                r["description"][:40],
                (r["n"], r["metric"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=7,
                rotation=20,
            )
    if best_x:
        best_x.append(max(r["n"] for r in rows))
        best_y.append(best_y[-1])
        ax.step(best_x, best_y, where="post", c=colours["keep"], lw=1.5, label="best so far")
        if floor > 0:
            beyond = [y - floor if direction == "lower" else y + floor for y in best_y]
            ax.fill_between(
                best_x, best_y, beyond, step="post", color=colours["keep"], alpha=0.12,
                label="noise floor (not kept)",
            )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment (0: the baseline)")
    ax.set_ylabel(f"{metric} ({direction} is better)")
    title = f"autoresearch: {summary(rows)}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title})
    ticks = [float(t) for t in ax.get_xticks()]
    plt.close(fig)
    return {"title": title, "xticks": ticks}


def best_kept(rows: list[dict[str, Any]], direction: str) -> dict[str, Any]:
    """The best *kept* result: a discarded one may score better by luck, inside the noise,
    and is not what the branch holds."""
    measured = [r for r in rows if r["metric"] is not None]
    standing = [r for r in measured if r["status"] == "keep"] or measured
    pick = min if direction == "lower" else max
    return pick(standing, key=lambda r: float(r["metric"]))


def report(ctx: StepContext) -> dict[str, Any]:
    """Write report.md and progress.png in the run's folder; print where they are."""
    ctx.store.flush()
    rows = [
        dict(r)
        for r in ctx.store.db.query(
            "SELECT * FROM experiments WHERE run_id = ? ORDER BY id", [ctx.run_id]
        )
    ]
    prepared = ctx.outputs["prepare"]
    spec = prepared["spec"]
    metric, direction = _metric_name(spec), spec.get("direction", "lower")
    png = ctx.run_dir / "progress.png"
    kept = [r for r in rows if r["status"] == "keep" and r["n"] > 0]
    best = best_kept(rows, direction)
    # With several device classes the best is compared with its own class's baseline
    # (the device classes table gives each class's).
    baseline = next(
        (r for r in rows if r["n"] == 0 and r.get("device_class") == best.get("device_class")),
        next((r for r in rows if r["n"] == 0), None),
    )
    noise = _noise(baseline, spec)
    plot(rows, metric, direction, png, noise.floor)
    experiments = sum(r["n"] > 0 for r in rows)
    hours = (rows[-1]["started_at"] + (rows[-1]["duration_s"] or 0) - rows[0]["started_at"]) / 3600
    per_hour = experiments / hours if hours > 0 else 0.0
    proposer = _proposer_label(ctx)
    base_value = baseline["metric"] if baseline else None
    change = ""
    if base_value:
        change = f" ({(best['metric'] - base_value) / base_value * 100:+.2f}% vs baseline)"
    reruns = sum(r.get("reruns") or 0 for r in rows)
    budget = f"time budget {spec['time_budget_s']:g} s"
    if spec.get("step_budget"):
        budget += f", step budget {spec['step_budget']}"
    lines = [
        f"# autoresearch: {spec['name']}",
        "",
        f"- target: `{prepared['source']}` (run copy `{prepared['target']}`)",
        f"- proposer: {proposer}",
        f"- metric: `{metric}`, {direction} is better; {budget}",
        f"- baseline: {_value(base_value)}"
        + (f" (mean of {len(noise.runs)} runs)" if noise.measured else ""),
        f"- {noise.describe(metric)}",
        f"- best: **{best['metric']:.6f}**{change}, by {best['agent_id']} — {best['description']}",
        f"- experiments: {summary(rows).replace(' experiments', '', 1)}, {per_hour:.1f} per hour"
        + (f"; {reruns} re-run(s) of marginal wins" if reruns else ""),
        "",
        "![progress](progress.png)",
        "",
    ]
    pooled = any(r.get("host") for r in rows)
    if pooled:
        lines += where_they_ran(rows, metric, direction, float(spec.get("noise_spreads", 1.0)))
    lines += [
        "## Experiments",
        "",
        f"| # | loop | {metric} | runs | memory MB | status | confidence | "
        + ("where | " if pooled else "")
        + "change |",
        "|---|---|---|---|---|---|---|" + ("---|" if pooled else "") + "---|",
    ]
    for r in rows:
        runs = json.loads(r.get("runs") or "[]")
        mem = f"{r['memory_mb']:.0f}" if r["memory_mb"] is not None else "unknown"
        sure = f"{r['confidence']:.0%}" if r.get("confidence") is not None else "—"
        lines.append(
            f"| {r['n']} | {r['agent_id']} | {_value(r['metric'])} | {len(runs) or '—'} | {mem} "
            f"| {r['status']} | {sure} | "
            + (f"{_where(r)} | " if pooled else "")
            + f"{r['description']} |"
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
            odds = r.get("confidence")
            lines += [
                f"### {r['description']} → {r['metric']:.6f}",
                "",
                f"confidence {odds:.0%} that this is better than the best before it, not noise"
                if odds is not None
                else "confidence unknown",
                "",
                "```diff",
                diff.rstrip() or "(no textual change)",
                "```",
                "",
            ]
            previous = files
    path = ctx.run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    ctx.emit(noise.describe(metric))
    for r in kept:
        sure = f"{r['confidence']:.0%}" if r.get("confidence") is not None else "unknown"
        ctx.emit(f"kept #{r['n']}: {r['description']} → {r['metric']:.6f}, confidence {sure}")
    ctx.emit(f"best {metric} {best['metric']:.6f}{change}")
    ctx.emit(f"report: {path}")
    ctx.emit(f"plot: {png}")
    ctx.emit(f"results: {ctx.run_dir / 'results.tsv'}")
    return {
        "best": best["metric"],
        "baseline": base_value,
        "noise_floor": noise.floor if noise.measured else None,
        "report": str(path),
        "plot": str(png),
    }


def _where(row: dict[str, Any]) -> str:
    slot = row.get("slot") or ""
    if _cpu(row.get("device_class")):
        return f"{row.get('host') or 'local'} CPU {slot}".rstrip()
    return f"{row['host']} GPU {slot} ({row['device_class']})"


def where_they_ran(
    rows: list[dict[str, Any]], metric: str, direction: str, spreads: float
) -> list[str]:
    """For a run over a pool: each device class's baseline and noise floor (results are
    compared within a class), and each slot's share of the experiments."""
    lines = [
        "## Device classes",
        "",
        "A metric under a fixed time budget depends on the device, so each class has its own "
        "baseline and noise floor, and a result is judged against the best of its class.",
        "",
        f"| class | baseline {metric} | noise floor | best kept | experiments |",
        "|---|---|---|---|---|",
    ]
    classes = sorted({r.get("device_class") or "" for r in rows})
    for cls in classes:
        mine = [r for r in rows if (r.get("device_class") or "") == cls]
        base = next((r for r in mine if r["n"] == 0 and r["status"] == "keep"), None)
        noise = Noise(tuple(json.loads((base or {}).get("runs") or "[]")), spreads)
        kept = [r for r in mine if r["status"] == "keep" and r["metric"] is not None]
        best = best_kept(kept, direction)["metric"] if kept else None
        floor = f"{noise.floor:.6g}" if noise.measured else "not measured"
        lines.append(
            f"| {cls or 'local'} | {_value(base['metric'] if base else None)} | {floor} "
            f"| {_value(best)} | {sum(r['n'] > 0 for r in mine)} |"
        )
    lines += [
        "",
        "## Where experiments ran",
        "",
        "| host | slot | experiments | kept | busy s |",
        "|---|---|---|---|---|",
    ]
    slots = sorted({(r.get("host") or "", r.get("slot") or "", r.get("device_class") or "")
                    for r in rows})  # fmt: skip
    for host, slot, cls in slots:
        mine = [
            r
            for r in rows
            if (r.get("host") or "", r.get("slot") or "", r.get("device_class") or "")
            == (host, slot, cls)
        ]
        kind = f"CPU {slot}" if _cpu(cls) else f"GPU {slot} ({cls})"
        busy = sum(r.get("duration_s") or 0 for r in mine)
        lines.append(
            f"| {host or 'local'} | {kind} | {sum(r['n'] > 0 for r in mine)} "
            f"| {sum(r['status'] == 'keep' and r['n'] > 0 for r in mine)} | {busy:.1f} |"
        )
    return [*lines, ""]


def _cpu(device_class: str | None) -> bool:
    return not device_class or device_class.startswith("CPU")


def _value(metric: float | None) -> str:
    return f"{metric:.6f}" if metric is not None else "—"


def _noise(baseline: dict[str, Any] | None, spec: dict[str, Any]) -> Noise:
    runs = json.loads((baseline or {}).get("runs") or "[]")
    return Noise(tuple(runs), float(spec.get("noise_spreads", 1.0)))


def _files_before(rows: list[dict[str, Any]], first_kept: dict[str, Any]) -> dict[str, str]:
    base = next((r for r in rows if r["n"] == 0 and r["files"]), None)
    return json.loads(base["files"]) if base else {}


def _metric_name(spec: dict[str, Any]) -> str:
    from supervisor_autoresearch.spec import Spec

    return Spec(**spec).metric_name


def _proposer_label(ctx: StepContext) -> str:
    from supervisor_autoresearch.loop import _model_usable

    choice = ctx.params.get("proposer") or "auto"
    model = ctx.settings.get("model", "")
    if choice == "model" or (choice == "auto" and model and _model_usable(ctx, model)):
        return f"agents on {model}"
    return "built-in proposer (hyperparameter search over the spec's declared values, no model)"
