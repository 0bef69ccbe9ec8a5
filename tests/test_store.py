from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from supervisor.errors import StoreError
from supervisor.events import Event, EventType
from supervisor.store import Store


def new_run(store: Store, run_id: str = "r1") -> None:
    store.write(
        lambda db: db["runs"].insert(
            {
                "id": run_id,
                "title": "t",
                "kind": "task",
                "status": "running",
                "created_at": time.time(),
            }
        )
    ).result()


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store.open(tmp_path / "s.db")
    yield s
    s.close()


def test_schema_has_the_tables_a_person_expects(store: Store) -> None:
    names = set(store.db.table_names())
    assert {"runs", "agents", "events", "notes", "artifacts", "hosts", "steps", "costs"} <= names
    assert "events_fts" in names and "notes_fts" in names
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopen_applies_no_migration_twice(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.db").close()
    s = Store.open(tmp_path / "s.db")
    from supervisor.store.migrations import migrations

    rows = list(s.db["_sqlite_migrations"].rows)
    assert [r["name"] for r in rows] == [m.name for m in migrations._migrations]
    assert len({r["name"] for r in rows}) == len(rows)
    s.close()


def test_events_get_increasing_ids_and_reach_subscribers(store: Store) -> None:
    new_run(store)
    seen: list[int] = []
    store.subscribe(lambda events: seen.extend(e.id for e in events if e.id is not None))
    for i in range(1000):
        store.append(Event(type=EventType.LOG, run_id="r1", text=f"line {i}"))
    assert store.flush(10)
    assert seen == list(range(1, 1001))
    stored = list(store.events(run_id="r1", after=990))
    assert [e.text for e in stored] == [f"line {i}" for i in range(990, 1000)]


def test_event_order_is_kept_around_writes(store: Store) -> None:
    new_run(store)
    store.append(Event(type="log", run_id="r1", text="before"))
    store.write(lambda db: db["runs"].update("r1", {"status": "done"}))
    store.append(Event(type="log", run_id="r1", text="after"))
    store.flush()
    assert [e.text for e in store.events()] == ["before", "after"]
    assert store.db["runs"].get("r1")["status"] == "done"


def test_failed_write_is_reported_and_others_still_land(store: Store) -> None:
    new_run(store)
    bad = store.write(
        lambda db: db["agents"].insert(
            {
                "id": "a1",
                "run_id": "missing-run",
                "name": "x",
                "status": "running",
                "created_at": 0.0,
            }
        )
    )
    store.append(Event(type="log", run_id="r1", text="kept"))
    with pytest.raises(sqlite3.IntegrityError):
        bad.result(10)
    store.flush()
    assert [e.text for e in store.events()] == ["kept"]


def test_search_events_accepts_any_user_string(store: Store) -> None:
    new_run(store)
    store.append(Event(type="message", run_id="r1", text="compiling the kernel with gcc"))
    store.append(Event(type="message.delta", run_id="r1", data={"delta": "kernel"}))
    store.append(Event(type="message", run_id="r1", text='she said "hello" (AND) NOT'))
    store.flush(index=True)
    hits = store.search_events("kernel")
    assert [e.text for e in hits] == ["compiling the kernel with gcc"]
    assert store.search_events('"hello" (AND') and store.search_events("NOT")
    assert store.search_events("compile")  # porter stemming: compile ~ compiling


def test_notes_fts(store: Store) -> None:
    store.write(
        lambda db: db["notes"].insert(
            {
                "scope": "project",
                "scope_key": "repo",
                "body": "lr 3e-4 diverged after warmup",
                "created_at": time.time(),
            }
        )
    ).result()
    assert store.search_notes("diverged")[0]["scope_key"] == "repo"


def test_readers_do_not_wait_for_the_writer(store: Store) -> None:
    new_run(store)
    start = threading.Event()

    def slow(db):  # type: ignore[no-untyped-def]
        start.set()
        time.sleep(0.5)

    fut = store.write(slow)
    start.wait(5)
    t = time.perf_counter()
    assert store.db["runs"].count == 1
    assert time.perf_counter() - t < 0.4  # the writer holds its transaction for 0.5 s
    fut.result()


def test_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"hello" * 1000)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store.open(path)
    assert path.read_bytes() == b"hello" * 1000


def test_foreign_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a supervisor database"):
        Store.open(path)
    assert path.read_bytes() == before


def test_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path).close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page, keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"corrupt or unreadable|cannot be opened"):
        Store.open(path)


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = Store.open(path)
    s.write(
        lambda db: db["_sqlite_migrations"].insert(
            {"migration_set": "supervisor", "name": "m999_future", "applied_at": "x"}
        )
    ).result()
    s.close()
    with pytest.raises(StoreError, match="newer supervisor"):
        Store.open(path)


def test_indexing_catches_up_while_idle(store: Store) -> None:
    new_run(store)
    store.extend(
        [Event(type="message", run_id="r1", text=f"word{i} shared") for i in range(12_000)]
    )
    store.flush()  # committed; indexing continues in the background
    deadline = time.time() + 10
    while time.time() < deadline and not store.search_events("word11999"):
        time.sleep(0.05)
    assert store.search_events("word11999")[0].text == "word11999 shared"
    assert store.search_events("word0")


def test_deleted_events_leave_search(store: Store) -> None:
    new_run(store)
    store.append(Event(type="message", run_id="r1", text="ephemeral secretive thing"))
    store.flush(index=True)
    store.write(lambda db: db.execute("DELETE FROM events")).result()
    assert store.search_events("secretive") == []
    assert store.db.execute("INSERT INTO events_fts(events_fts) VALUES('integrity-check')")


def test_processes_opening_a_new_database_at_once(tmp_path: Path) -> None:
    """The CLI beside a starting engine: every process gets a migrated database."""
    import subprocess
    import sys

    code = (
        "import sys; from supervisor.store import Store; "
        "s = Store.open(__import__('pathlib').Path(sys.argv[1])); "
        "print(len(list(s.db['_sqlite_migrations'].rows))); s.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "new.db")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outcomes = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outcomes]
    from supervisor.store.migrations import migrations

    assert {out.strip() for out, _ in outcomes} == {str(len(migrations._migrations))}


def test_a_second_store_in_the_process_never_costs_the_first_its_writes(tmp_path: Path) -> None:
    """The engine's store is open; something in the same process opens and closes the
    database again (a host lookup does); another process opens and closes it (a CLI
    command). Every write the engine commits after that must still be there."""
    import subprocess
    import sys

    path = tmp_path / "supervisor.db"
    engine_store = Store.open(path)
    engine_store.write(lambda db: db.execute("CREATE TABLE kept (x)")).result()
    engine_store.write(lambda db: db.execute("INSERT INTO kept VALUES (1)")).result()
    assert engine_store.db.execute("SELECT count(*) FROM kept").fetchone() == (1,)
    Store.open(path).close()
    cli = f"from pathlib import Path; from supervisor.store import Store; Store.open(Path({str(path)!r})).close()"
    subprocess.run([sys.executable, "-c", cli], check=True, timeout=60)
    engine_store.write(lambda db: db.execute("INSERT INTO kept VALUES (2)")).result()
    # Seen by every other reader while the engine runs (a lost WAL shows only when the
    # engine closes, or never if it crashes).
    fresh = sqlite3.connect(path)
    try:
        assert fresh.execute("SELECT count(*) FROM kept").fetchone() == (2,)
    finally:
        fresh.close()
        engine_store.close()
