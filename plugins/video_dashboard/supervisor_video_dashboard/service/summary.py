"""The daily Markdown summary: an overview, a timeline and one line, made from the day's
events (the descriptions in it come from whoever analysed each event)."""

from __future__ import annotations

import collections
import time
from datetime import date, datetime, timedelta
from typing import Any

from .store import CATEGORIES, Filters, Store

THREAT = {0: "normal", 1: "worth a look", 2: "likely threat"}


def day_bounds(day: date) -> tuple[float, float]:
    start = datetime.combine(day, datetime.min.time())
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def daily(store: Store, day: date) -> str:
    since, until = day_bounds(day)
    events = store.events(Filters(since=since, until=until, limit=10000))
    events.reverse()  # oldest first
    active = [e for e in events if e["activity"]]
    cams = collections.Counter(e["camera"] for e in events)
    cats = collections.Counter(c for e in active for c in e["categories"])
    worst = max((e["threat"] for e in events), default=0)
    failed = sum(1 for e in events if e["error"])
    lines = [f"# Daily summary — {day.isoformat()}", "", "## Overview", ""]
    if not events:
        lines += ["No events were recorded this day.", ""]
    else:
        by_cam = ", ".join(f"{name} {n}" for name, n in sorted(cams.items()))
        lines.append(
            f"- {_n(len(events), 'event')} ({len(active)} with activity) from "
            f"{_n(len(cams), 'camera')}: {by_cam}."
        )
        if cats:
            lines.append(
                "- Seen: "
                + ", ".join(f"{c} in {_n(cats[c], 'event')}" for c in CATEGORIES if cats[c])
                + "."
            )
        lines.append(f"- Highest threat level: {worst} ({THREAT[worst]}).")
        sources = collections.Counter(e["source"] for e in events)
        if sources["detector"]:
            lines.append(
                f"- {sources['detector']} events come from the people detector (CPU path), "
                "not a language model."
            )
        if failed:
            lines.append(f"- {failed} analyses failed; their events say why.")
        if any(e["test_run"] for e in events):
            lines.append("- Test run: the vision answers came from a scripted test server.")
        lines.append("")
    lines += ["## Timeline", ""]
    shown = active or events
    if not shown:
        lines.append("Nothing to show.")
    for e in shown:
        clock = time.strftime("%H:%M:%S", time.localtime(e["started"]))
        badge = f" **threat {e['threat']}**" if e["threat"] else ""
        lines.append(f"- {clock} · {e['camera']} · {_one(e)}{badge}")
    if active and len(active) < len(events):
        lines.append(f"- ({len(events) - len(active)} events without activity not listed)")
    lines += ["", "## In one line", "", one_line(events, active, worst, cats), ""]
    return "\n".join(lines)


def _one(event: dict[str, Any]) -> str:
    text = str(event["title"])
    if event["summary"] and event["summary"] != text:
        text += f" — {event['summary']}"
    return text


def one_line(
    events: list[dict[str, Any]],
    active: list[dict[str, Any]],
    worst: int,
    cats: collections.Counter[str],
) -> str:
    if not events:
        return "A quiet day: nothing recorded."
    if not active:
        return f"A quiet day: {len(events)} events, none with activity."
    seen = ", ".join(c for c in CATEGORIES if cats[c]) or "motion only"
    tail = {0: "nothing of concern", 1: "something worth a look", 2: "a likely threat"}[worst]
    return f"{_n(len(active), 'event')} with activity ({seen}); {tail}."


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
