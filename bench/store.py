"""Store throughput and search latency.

Appends events through the real Store (writer thread, batches, FTS triggers) and compares
with a baseline measured in the same run: the same rows inserted by bare sqlite3
executemany into the same schema, which is the floor the store's own overhead sits on.
Then fills the database to --events events (1M by default) and times full-text searches.

    .venv/bin/python bench/store.py [--events 1000000]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.events import Event
from supervisor.store import _INSERT_EVENT, Store, _event_row

WORDS = [
    "the",
    "model",
    "compiled",
    "kernel",
    "tensor",
    "cuda",
    "loss",
    "gradient",
    "docker",
    "shell",
    "python",
    "file",
    "test",
    "error",
    "warning",
    "install",
    "package",
    "build",
    "run",
    "step",
    "agent",
    "result",
    "metric",
    "train",
    "val",
    "bpb",
    "learning",
    "rate",
    "batch",
    "epoch",
    "checkpoint",
    "diff",
    "commit",
    "branch",
    "merge",
    "report",
    "host",
    "gpu",
]


def make_events(n: int, run_id: str, rng: random.Random, with_text: float) -> list[Event]:
    events = []
    for i in range(n):
        if rng.random() < with_text:
            text = " ".join(rng.choices(WORDS, k=12)) + f" item{i}"
            events.append(Event(type="message", run_id=run_id, agent_id="a1", text=text))
        else:
            events.append(
                Event(type="message.delta", run_id=run_id, agent_id="a1", data={"delta": "tok"})
            )
    return events


def seed(store: Store) -> None:
    def create(db):  # type: ignore[no-untyped-def]
        db.table("runs").insert(
            {"id": "r1", "title": "bench", "kind": "task", "status": "running", "created_at": 0.0}
        )
        db.table("agents").insert(
            {"id": "a1", "run_id": "r1", "name": "a1", "status": "running", "created_at": 0.0}
        )

    store.write(create).result()


def timed_append(store: Store, events: list[Event], batch: int) -> tuple[float, float]:
    """Seconds until every event is committed, and until every event is searchable."""
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        store.extend(events[i : i + batch])
    store.flush()
    committed = time.perf_counter() - start
    store.flush(index=True)
    return committed, time.perf_counter() - start


def baseline(path: Path, events: list[Event], batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(
        "CREATE TRIGGER bench_fts AFTER INSERT ON events WHEN new.text != '' BEGIN "
        "INSERT INTO events_fts (rowid, text) VALUES (new.id, new.text); END"
    )
    next_id = conn.execute("SELECT coalesce(max(id),0)+1 FROM events").fetchone()[0]
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        rows = []
        for event in events[i : i + batch]:
            event.id = next_id
            next_id += 1
            rows.append(_event_row(event))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT_EVENT, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))

    # 1. Worst case: every event carries text to index. Store vs bare sqlite3.
    store = Store.open(tmp / "a.db")
    seed(store)
    sample = make_events(args.sample, "r1", rng, with_text=1.0)
    t_store, t_store_indexed = timed_append(store, sample, args.batch)
    store.close()
    base_db = Store.open(tmp / "b.db")
    seed(base_db)
    base_db.close()
    # The baseline indexes as it inserts, as a trigger would: the usual way to use FTS5.
    t_base = baseline(tmp / "b.db", make_events(args.sample, "r1", rng, 1.0), args.batch)

    # 2. A realistic stream: most events (text deltas, status, costs) carry no text.
    store = Store.open(tmp / "c.db")
    seed(store)
    mixed = make_events(args.sample, "r1", rng, with_text=0.2)
    t_mixed, t_mixed_indexed = timed_append(store, mixed, args.batch)
    store.close()

    # 3. Fill to --events (half with text); time searches: rare, common, phrase, quotes.
    store = Store.open(tmp / "d.db")
    seed(store)
    t0 = time.perf_counter()
    remaining = args.events
    while remaining > 0:
        n = min(100_000, remaining)
        timed_append(store, make_events(n, "r1", rng, with_text=0.5), args.batch)
        remaining -= n
        print(f"filled {args.events - remaining:,} events", file=sys.stderr)
    fill_s = time.perf_counter() - t0
    queries = ["kernel", "item123456", "learning rate", 'say "hello"', "gpu AND docker", "bpb"]
    timings = []
    for q in queries * 5:
        t = time.perf_counter()
        store.search_events(q, limit=20)
        timings.append((time.perf_counter() - t) * 1000)
    count = store.db.execute("SELECT count(*) FROM events").fetchone()[0]
    size_mb = (tmp / "d.db").stat().st_size / 1e6
    store.close()

    result = {
        "append_events_per_s": round(args.sample / t_store),
        "append_and_index_events_per_s": round(args.sample / t_store_indexed),
        "append_events_per_s_mixed_stream": round(args.sample / t_mixed),
        "append_and_index_events_per_s_mixed_stream": round(args.sample / t_mixed_indexed),
        "baseline_sqlite_fts_trigger_per_s": round(args.sample / t_base),
        "append_speedup_vs_baseline": round(t_base / t_store, 2),
        "fill_events_per_s": round(args.events / fill_s),
        "events_in_db": count,
        "db_size_mb": round(size_mb, 1),
        "fts_search_ms": round(statistics.median(timings), 2),
        "fts_search_p95_ms": round(sorted(timings)[int(len(timings) * 0.95) - 1], 2),
        "batch": args.batch,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
