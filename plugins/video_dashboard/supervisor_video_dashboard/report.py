"""The recipe's Markdown report and its bench chart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor_video_dashboard.recipe import Layout

COLUMNS = (
    ("max_concurrency", "concurrency"),
    ("request_throughput", "req/s"),
    ("output_throughput", "output tok/s"),
    ("mean_ttft_ms", "TTFT mean"),
    ("median_ttft_ms", "TTFT median"),
    ("p99_ttft_ms", "TTFT p99"),
    ("mean_tpot_ms", "TPOT mean"),
    ("median_tpot_ms", "TPOT median"),
    ("p99_tpot_ms", "TPOT p99"),
    ("mean_itl_ms", "ITL mean"),
    ("median_itl_ms", "ITL median"),
    ("p99_itl_ms", "ITL p99"),
    ("mean_e2el_ms", "E2EL mean"),
    ("median_e2el_ms", "E2EL median"),
    ("p99_e2el_ms", "E2EL p99"),
)


def chart(figures: dict[str, Any], path: Path, *, title: str) -> Path | None:
    """Output tokens/s and median TTFT by concurrency, as a PNG (None without figures)."""
    levels = figures.get("levels") or []
    if not levels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt

    x = [str(f["max_concurrency"]) for f in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=110)
    bars = left.bar(x, [f["output_throughput"] for f in levels], color="#2b6cb0")
    left.bar_label(bars, fmt="%.1f")
    left.set_title("output tokens/s")
    left.set_xlabel("concurrent requests")
    width = 0.38
    pos = range(len(levels))
    for shift, key, colour, label in (
        (-width / 2, "median_ttft_ms", "#dd6b20", "TTFT median"),
        (width / 2, "p99_e2el_ms", "#718096", "E2EL p99"),
    ):
        right.bar(
            [p + shift for p in pos], [f[key] for f in levels], width, color=colour, label=label
        )
    right.set_xticks(list(pos), x)
    right.set_title("latency (ms)")
    right.set_xlabel("concurrent requests")
    right.legend(frameon=False, fontsize=8)
    for axis in (left, right):
        axis.grid(axis="y", alpha=0.3)
        axis.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _detail(text: str, limit: int = 140) -> str:
    """A check's detail as one code span: replies and pages hold newlines and HTML tags
    that would break the list or be rendered."""
    one = " ".join(text.replace("`", "'").split())
    return f"`{one[:limit]}{'…' if len(one) > limit else ''}`" if one else ""


def bench_table(figures: dict[str, Any]) -> str:
    levels = figures.get("levels") or []
    if not levels:
        return "_No bench: no model server of ours on this host._\n"
    head = "| " + " | ".join(name for _, name in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    rows = ["| " + " | ".join(str(f.get(key, "")) for key, _ in COLUMNS) + " |" for f in levels]
    errors = sorted({e for f in levels for e in f.get("errors", [])})
    failed = "".join(f"\n- failed: {e}" for e in errors[:5])
    return (
        "\n".join([head, rule, *rows])
        + failed
        + "\n\nLatencies in ms. "
        + (
            f"Measured with {figures.get('tool', 'our load generator')} "
            f"({sum(f.get('completed', 0) for f in levels)} requests, "
            f"{sum(f.get('failed', 0) for f in levels)} failed).\n"
        )
    )


def write_report(
    lay: Layout,
    *,
    host_out: dict[str, Any],
    model_out: dict[str, Any],
    bench_figures: dict[str, Any],
    checks: list[dict[str, Any]],
    chart_name: str,
    supervisor: str,
    manager: str = "",
) -> str:
    """The report; ``manager`` is what keeps the services running (systemd or the deploy
    API's fallback), as the service step found it."""
    facts = host_out.get("facts") or {}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# Video dashboard on {lay.host}",
        "",
        f"Set up {when} by `supervisor recipe run video-dashboard`.",
        "",
    ]
    if host_out.get("test_run"):
        lines += [
            "> **Test run.** Vision requests were answered by a scripted test server, not a "
            "vision model; the events it made are marked `test_run`.",
            "",
        ]
    gpus = ", ".join(facts.get("gpus") or []) or "no GPU"
    lines += [
        "## What was set up",
        "",
        f"- **Host:** {lay.host} — {facts.get('os', '')} {facts.get('arch', '')}, "
        f"{facts.get('cpus', '?')} CPUs, "
        f"{round((facts.get('ram_mb') or 0) / 1024, 1)} GiB RAM, {gpus}.",
        f"- **Path taken:** {lay.gpu_note}.",
    ]
    if lay.engine in ("vllm", "llama.cpp"):
        lines.append(
            f"- **Model server:** {lay.engine} {model_out.get('version', '')} serving "
            f"`{lay.served_name}` ({lay.model}) on `127.0.0.1:{lay.model_port}` as unit "
            f"`video-model` — {model_out.get('manager_note', '')}."
        )
    lines += [
        f"- **Video service and dashboard:** `127.0.0.1:{lay.port}`, unit `video-dashboard`, "
        f"started after the model server.",
        f"- **Files:** everything under `{lay.prefix}` (`service/`, `venv/`, `model-venv/`, "
        f"`config.json`, `data/` with `events.db`, `clips/`).",
        "",
        "## URLs",
        "",
        "Both services listen on the host's loopback only. Reach the dashboard from your "
        "machine with:",
        "",
        "```sh",
        f"{Path(supervisor).name} hosts forward {lay.host} {lay.port}",
        "```",
        "",
        "then open the printed `http://127.0.0.1:PORT/` — the dashboard; `/api/events` the "
        "events, `/summary.md` today's summary, `/health` the health panel's data.",
        "",
        "## Checks",
        "",
        *(f"- {'✓' if c['ok'] else '✗'} {c['name']} — {_detail(c['detail'])}" for c in checks),
        "",
        "## Bench",
        "",
        bench_table(bench_figures),
    ]
    if chart_name:
        lines += [f"![output tokens/s and TTFT by concurrency]({chart_name})", ""]
    if (manager or model_out.get("manager")) == "fallback":
        # The deploy API's fallback supervisor: a setsid loop per service, its files under
        # the login user's ~/.local/state/supervisor-deploy/NAME/ (pid, child.pid, log).
        state = "~/.local/state/supervisor-deploy"
        operate = [
            f"- Status and logs: `tail -n 100 {state}/video-dashboard/log` (and "
            f"`{state}/video-model/log`); the loop's pid is in `pid`, the service's in "
            "`child.pid`.",
            f"- Restart: `kill $(cat {state}/video-dashboard/child.pid)` — the fallback "
            "supervisor starts it again within seconds (same for `video-model`). Nothing starts "
            f"after a reboot: run `supervisor recipe run video-dashboard -p host={lay.host}` "
            "again (it changes only what differs and starts what is not running).",
            "- Uninstall: `for s in video-dashboard video-model; do "
            f"kill -- -$(cat {state}/$s/pid); rm -rf {state}/$s; done; rm -rf {lay.prefix}`.",
        ]
    else:
        operate = [
            "- Status and logs: `systemctl status video-dashboard video-model`, "
            "`journalctl -u video-dashboard -n 100`.",
            "- Restart: `systemctl restart video-model video-dashboard`.",
            "- Uninstall: `systemctl disable --now video-dashboard video-model`, remove their "
            f"unit files, then `rm -rf {lay.prefix}`.",
        ]
    lines += [
        "## Operate",
        "",
        *operate,
        f"- Configuration: edit `{lay.path('config.json')}` (cameras, frames per analysis), "
        "then restart `video-dashboard`.",
        "",
        "## Troubleshooting",
        "",
        "- Dashboard says the model server does not answer: check `video-model`'s log; a vLLM "
        "server still loading weights answers `/health` only when ready.",
        "- Out of GPU memory at start: lower `--gpu-memory-utilization` or `--max-num-seqs`, or "
        "choose a smaller model with `-p model=`.",
        "- A camera is `offline`: check its URL from the host (`ffmpeg -i URL -frames:v 1 x.jpg`).",
        "- Events come from `detector`, not the model: the service has no vision endpoint "
        "(CPU path) or the endpoint failed; `/health` names the reason.",
        "",
    ]
    return "\n".join(lines)
