"""The SQLite store: one database file, one writer thread, readers that never block.

Writes are queued to a single writer thread that commits them in batches (one
transaction per batch), so the engine can append thousands of events per second without
waiting on disk. Event ids are assigned inside the writer's transaction, so they are
unique and increasing even if two processes share the file. Subscribers are told about
events only after they are committed: anything a client has been shown survives a crash.

Readers use their own connection per thread; in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from supervisor.errors import StoreError
from supervisor.events import Event
from supervisor.store.migrations import migrations

BATCH_MAX = 10_000
EVENT_COLUMNS = ("id", "ts", "run_id", "agent_id", "type", "data", "text")
_INSERT_EVENT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * 7)})"

Subscriber = Callable[[list[Event]], None]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with supervisor's pragmas; autocommit, transactions are explicit."""
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL survives a crash of the process (not of the machine) and is much faster.
            conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot be opened as a database: {exc}") from None
    return conn


def check_file(path: Path) -> None:
    """Refuse, without touching it, a file that is not a SQLite database.

    Read through SQLite itself (read-only), never a descriptor of our own: closing any
    descriptor of the file drops every POSIX lock the process holds on it — SQLite's
    connections' included, which SQLite guards against only for its own — and then another
    process closing its last connection deletes the WAL under this one, losing every write
    committed after (a pool run's host lookups opened a Store beside the engine's, and a
    CLI command at the same time lost the run).
    """
    if not path.exists():
        return
    try:
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        # Not one SQLite can read, so not one this process holds locks on: its header
        # may be read directly, to tell a foreign file from a corrupt database.
        if "not a database" in str(exc) and not _sqlite_header(path):
            raise StoreError(f"{path}: not a SQLite database (refusing to touch it)") from None
        # Anything else (unreadable, corrupt) is said by inspect_existing.


def _sqlite_header(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def inspect_existing(path: Path) -> None:
    """Refuse foreign, newer or corrupt databases, reading only (not even the WAL switch)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    conn = connect(path, readonly=True)
    try:
        db = Database(conn)
        tables = set(db.table_names())
        known = {m.name for m in migrations._migrations}
        applied = {m.name for m in migrations.applied(db)}
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: database is corrupt or unreadable: {exc}") from None
    finally:
        conn.close()
    user_tables = {t for t in tables if not t.startswith(("_sqlite", "sqlite_"))}
    if user_tables and not applied:
        raise StoreError(f"{path}: not a supervisor database (it holds tables of another program)")
    newer = applied - known
    if newer:
        raise StoreError(
            f"{path}: written by a newer supervisor (unknown migration "
            f"{sorted(newer)[0]}); upgrade supervisor to use it"
        )


def migrate(db: Database, path: Path) -> None:
    """Apply pending migrations (after :func:`inspect_existing` accepted the file)."""
    try:
        migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot apply schema migrations: {exc}") from None


@contextlib.contextmanager
def _migration_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"{lock_path}: cannot be created: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _apply_holding_the_write_lock(
    conn: sqlite3.Connection, db: Database, migration_set: Migrations
) -> None:
    """Apply a migration set inside ``BEGIN IMMEDIATE``.

    sqlite-utils runs each migration in a deferred ``BEGIN``: its first read takes a
    snapshot, and the write after it cannot wait for the lock (SQLite returns "database is
    locked" at once rather than risk a deadlock) whenever the store's writer thread is
    committing or indexing at that moment. ``BEGIN IMMEDIATE`` waits for the write lock
    (busy_timeout) before reading anything. Each migration still runs in its own savepoint,
    so the ones before a failing one stay applied, as sqlite-utils promises.
    """
    if any(not m.transactional for m in migration_set.pending(db)):
        migration_set.apply(db)  # VACUUM and its kind cannot run inside a transaction
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        migration_set.apply(db)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


class _Flush:
    """A marker in the write queue; set once everything queued before it is committed
    (and, with ``index``, searchable)."""

    def __init__(self, index: bool) -> None:
        self.index = index
        self.done = threading.Event()


class _Stop:
    pass


class Store:
    """The database: queue writes with :meth:`append` / :meth:`write`, read with :attr:`db`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._subscribers: list[Subscriber] = []
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors: list[str] = []

    # -- lifecycle

    def migrate_plugins(self, sets: list[tuple[str, Migrations]]) -> list[tuple[str, str]]:
        """Apply plugins' own migration sets (``register_migrations``), one process at a
        time; returns ``(plugin, error)`` for each set that failed (the others apply)."""
        failed: list[tuple[str, str]] = []
        with _migration_lock(self.path):
            conn = connect(self.path)
            try:
                db = Database(conn)
                for plugin, migration_set in sets:
                    if migration_set.name == migrations.name:
                        failed.append((plugin, "a plugin's migrations may not be named supervisor"))
                        continue
                    try:
                        _apply_holding_the_write_lock(conn, db, migration_set)
                    except Exception as exc:
                        failed.append((plugin, f"{type(exc).__name__}: {exc}"))
            finally:
                conn.close()
        return failed

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating and migrating if needed) the database at ``path``."""
        store = cls(path)
        check_file(store.path)
        # A file refused here must not get a lock file (or anything else) beside it.
        inspect_existing(store.path)
        # Two processes opening a new database at once (the CLI beside a running engine)
        # would both see the migrations pending, and the WAL switch does not wait for a
        # busy lock: one process at a time inspects and migrates.
        with _migration_lock(store.path):
            inspect_existing(store.path)
            conn = connect(store.path)
            try:
                migrate(Database(conn), store.path)
            finally:
                conn.close()
        store._thread = threading.Thread(target=store._writer, name="store-writer", daemon=True)
        store._thread.start()
        return store

    def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_Stop())
            self._thread.join()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing

    def append(self, event: Event) -> None:
        """Queue an event; never blocks. Its ``id`` is set once it is committed."""
        self._queue.put(event)

    def extend(self, events: list[Event]) -> None:
        """Queue many events at once (cheaper than one :meth:`append` per event)."""
        self._queue.put(events)

    def write(self, fn: Callable[[Database], Any]) -> Future[Any]:
        """Run ``fn(db)`` in the writer's transaction; the future holds its result."""
        future: Future[Any] = Future()
        self._queue.put((fn, future))
        return future

    def flush(self, timeout: float | None = None, *, index: bool = False) -> bool:
        """Wait until everything queued so far is committed; False on timeout.

        With ``index``, also wait until those events are found by :meth:`search_events`
        (indexing otherwise runs whenever the writer is idle, normally within
        milliseconds).
        """
        marker = _Flush(index)
        self._queue.put(marker)
        return marker.done.wait(timeout)

    async def aflush(self, *, index: bool = False) -> None:
        await asyncio.to_thread(self.flush, index=index)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(events)`` in the writer thread after each commit; returns unsubscribe."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def _writer(self) -> None:
        conn = connect(self.path)
        db = Database(conn)
        stop = False
        behind = True  # whether events may be waiting to be indexed
        while not stop:
            if behind:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    # Idle: index a chunk, then look at the queue again.
                    behind = self._index_events(conn)
                    continue
            else:
                first = self._queue.get()
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(isinstance(op, _Stop) for op in batch)
            committed = self._commit(conn, db, batch)
            behind = behind or bool(committed)
            if any(isinstance(op, _Flush) and op.index for op in batch) or stop:
                while self._index_events(conn):
                    pass
                behind = False
            for fn in list(self._subscribers):
                if committed:
                    try:
                        fn(committed)
                    except Exception as exc:  # a subscriber must not kill the writer
                        self.errors.append(f"subscriber failed: {exc!r}")
            for op in batch:
                if isinstance(op, _Flush):
                    op.done.set()
        conn.close()

    def _index_events(self, conn: sqlite3.Connection, chunk: int = 5000) -> bool:
        """Index the next ``chunk`` unindexed events for search; True if more remain."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = conn.execute(
                "SELECT indexed_up_to FROM search_state WHERE name = 'events'"
            ).fetchone()[0]
            upto = conn.execute(
                "SELECT max(id) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
                (done, chunk),
            ).fetchone()[0]
            if upto is None:
                conn.execute("COMMIT")
                return False
            conn.execute(
                "INSERT INTO events_fts (rowid, text) SELECT id, text FROM events "
                "WHERE id > ? AND id <= ? AND text != ''",
                (done, upto),
            )
            conn.execute("UPDATE search_state SET indexed_up_to = ? WHERE name = 'events'", (upto,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.errors.append(f"indexing failed: {exc}")
            return False
        return True

    def _commit(self, conn: sqlite3.Connection, db: Database, batch: list[Any]) -> list[Event]:
        events: list[Event] = []
        outcomes: list[tuple[Future[Any], Any, Exception | None]] = []
        rows: list[tuple[Any, ...]] = []
        try:
            # IMMEDIATE takes the write lock now, so the ids read below stay ours.
            conn.execute("BEGIN IMMEDIATE")
            next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
            for op in batch:
                if isinstance(op, Event):
                    op.id = next_id
                    next_id += 1
                    rows.append(_event_row(op))
                    events.append(op)
                elif isinstance(op, list):
                    for event in op:
                        event.id = next_id
                        next_id += 1
                        rows.append(_event_row(event))
                        events.append(event)
                elif isinstance(op, tuple):
                    if rows:
                        # Keep order: events queued before a write are inserted before it.
                        conn.executemany(_INSERT_EVENT, rows)
                        rows = []
                    fn, future = op
                    conn.execute("SAVEPOINT op")
                    try:
                        result = fn(db)
                    except Exception as exc:
                        # Undo just this write; the rest of the batch still commits.
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        outcomes.append((future, None, exc))
                    else:
                        conn.execute("RELEASE op")
                        outcomes.append((future, result, None))
            if rows:
                conn.executemany(_INSERT_EVENT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.errors.append(f"write failed: {exc}")
            for op in batch:
                if isinstance(op, tuple):
                    op[1].set_exception(StoreError(f"{self.path}: write failed: {exc}"))
            return []
        # Futures resolve only after COMMIT: a caller never sees a write that could vanish.
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        return events

    # -- reading

    @property
    def db(self) -> Database:
        """A sqlite-utils Database for reading, one connection per thread."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = connect(self.path)
            self._local.conn = conn
            db = self._local.db = Database(conn)
        return db

    def events(
        self,
        *,
        run_id: str | None = None,
        agent_id: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Committed events in order, optionally of one run or agent, after an id."""
        where = ["id > ?"]
        args: list[Any] = [after]
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if agent_id is not None:
            where.append("agent_id = ?")
            args.append(agent_id)
        for row in self.db["events"].rows_where(
            " AND ".join(where), args, order_by="id", limit=limit
        ):
            yield Event.from_row(row)

    def search_events(self, query: str, *, limit: int = 20) -> list[Event]:
        """Full-text search over event text, newest first; any user string is safe."""
        # Ordering by rowid lets FTS5 stop after `limit` hits instead of ranking every
        # match, which keeps search fast on millions of events.
        sql = (
            "SELECT events.* FROM events JOIN events_fts ON events.id = events_fts.rowid "
            "WHERE events_fts MATCH ? ORDER BY events_fts.rowid DESC LIMIT ?"
        )
        quoted = self.db.quote_fts(query)
        return [Event.from_row(dict(r)) for r in self.db.query(sql, [quoted, limit])]

    def search_notes(self, query: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """Full-text search over memory notes, most relevant first."""
        return list(self.db.table("notes").search(query, limit=limit, quote=True))


def _event_row(event: Event) -> tuple[Any, ...]:
    row = event.to_row()
    return tuple(row[c] for c in EVENT_COLUMNS)


def open_default() -> Store:
    """Open the store in the configured data directory."""
    from supervisor import config

    directory = config.ensure_data_dir()
    path = directory / "supervisor.db"
    # Created owner-only before SQLite opens it: SQLite gives its -wal and -shm files the
    # database file's permissions.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    store = Store.open(path)
    os.chmod(store.path, 0o600)
    return store
