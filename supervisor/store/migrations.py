"""Schema migrations, append-only.

Each function is one migration, applied once and recorded in ``_sqlite_migrations``. An
applied migration is never edited: change the schema by appending a new function. Table and
column names are chosen for a person browsing the file in Datasette or ``sqlite-utils``.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("supervisor")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("runs").create(
        {
            "id": str,
            "title": str,  # the task in the person's words, or the recipe name
            "kind": str,  # task | recipe
            "recipe": str,
            "params": str,  # JSON
            "workspace": str,
            "status": str,  # running | paused | done | failed | stopped | interrupted
            "created_at": float,
            "updated_at": float,
            "finished_at": float,
            "cost_usd": float,
            "budget_usd": float,
        },
        pk="id",
        not_null={"title", "kind", "status", "created_at"},
        defaults={"cost_usd": 0.0, "status": "running"},
    )
    db.table("agents").create(
        {
            "id": str,
            "run_id": str,
            "parent_id": str,  # the team lead that spawned this agent, if any
            "name": str,
            "role": str,
            "task": str,
            "model": str,
            "sandbox": str,  # backend name
            "sandbox_id": str,  # container id or equivalent, for re-adoption
            "status": str,
            "doing": str,  # what it is doing now, one line
            "steps": int,
            "input_tokens": int,
            "output_tokens": int,
            "cost_usd": float,
            "budget_usd": float,
            "summary": str,
            "created_at": float,
            "updated_at": float,
            "finished_at": float,
        },
        pk="id",
        not_null={"run_id", "name", "status", "created_at"},
        defaults={"steps": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
        foreign_keys=[("run_id", "runs", "id"), ("parent_id", "agents", "id")],
    )
    db.table("agents").create_index(["run_id"])
    db.table("events").create(
        {
            "id": int,
            "ts": float,
            "run_id": str,
            "agent_id": str,
            "type": str,
            "data": str,  # JSON
            "text": str,  # what full-text search sees
        },
        pk="id",
        not_null={"ts", "type"},
        foreign_keys=[("run_id", "runs", "id"), ("agent_id", "agents", "id")],
    )
    db.table("events").create_index(["run_id", "id"])
    db.table("events").create_index(["agent_id", "id"])
    # Full-text indexing of events is deferred: the writer commits events first and
    # indexes them in chunks when it is otherwise idle (see Store._index_events), because
    # FTS costs ~80% of an append. Only events with text are indexed (text deltas, status
    # changes and costs carry none). `search_state` records how far indexing has got.
    db.table("events").enable_fts(["text"], tokenize="porter")
    db.table("search_state").create({"name": str, "indexed_up_to": int}, pk="name")
    db.table("search_state").insert({"name": "events", "indexed_up_to": 0})
    db.execute(
        "CREATE TRIGGER events_fts_delete AFTER DELETE ON events "
        "WHEN old.text != '' AND old.id <= "
        "(SELECT indexed_up_to FROM search_state WHERE name = 'events') BEGIN "
        "INSERT INTO events_fts (events_fts, rowid, text) VALUES ('delete', old.id, old.text); "
        "END"
    )
    db.table("notes").create(
        {
            "id": int,
            "scope": str,  # global | project | host | recipe
            "scope_key": str,  # which project, host or recipe ("" for global)
            "title": str,
            "body": str,
            "tags": str,
            "run_id": str,
            "agent_id": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"scope", "body", "created_at"},
        defaults={"scope_key": "", "title": "", "tags": ""},
    )
    db.table("notes").create_index(["scope", "scope_key"])
    db.table("notes").enable_fts(["title", "body", "tags"], create_triggers=True, tokenize="porter")
    db.table("artifacts").create(
        {
            "id": int,
            "run_id": str,
            "agent_id": str,
            "kind": str,  # report | output | plot | diff | file
            "name": str,
            "path": str,  # where the file lives on disk, under the data directory
            "mime": str,
            "size": int,
            "content": str,  # small text artifacts are kept inline too
            "created_at": float,
        },
        pk="id",
        not_null={"kind", "name", "created_at"},
        foreign_keys=[("run_id", "runs", "id"), ("agent_id", "agents", "id")],
    )
    db.table("artifacts").create_index(["run_id"])
    db.table("hosts").create(
        {
            "name": str,
            "address": str,
            "port": int,
            "user": str,
            "host_key": str,  # the pinned key's fingerprint
            "facts": str,  # JSON: OS, GPUs, drivers, disk
            "created_at": float,
            "updated_at": float,
        },
        pk="name",
        not_null={"address", "created_at"},
    )
    db.table("steps").create(
        {
            "run_id": str,
            "step_id": str,
            "status": str,  # pending | running | done | failed | skipped
            "attempt": int,
            "started_at": float,
            "finished_at": float,
            "output": str,  # JSON: what later steps may use
            "error": str,
        },
        pk=("run_id", "step_id"),
        not_null={"status"},
        defaults={"attempt": 0},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db.table("costs").create(
        {
            "id": int,
            "ts": float,
            "run_id": str,
            "agent_id": str,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "cost_usd": float,
        },
        pk="id",
        not_null={"ts", "model"},
        foreign_keys=[("run_id", "runs", "id"), ("agent_id", "agents", "id")],
    )
    db.table("costs").create_index(["ts"])
    db.table("costs").create_index(["run_id"])


@migrations()
def m002_experiments(db: Database) -> None:
    # One row per experiment of an experiment loop (a recipe's, written by its plugin).
    db.table("experiments").create(
        {
            "id": int,
            "run_id": str,
            "agent_id": str,  # which loop ("agent-1") ran it
            "target": str,  # the target's name, so later runs can see what was tried
            "n": int,  # experiment number within its loop (0: baseline)
            "commit": str,
            "metric": float,
            "memory_mb": float,
            "status": str,  # keep | discard | crash
            "description": str,
            "params": str,  # JSON: the hyperparameters or change tried
            "files": str,  # JSON: the editable files' content, for kept experiments
            "slot": str,  # the GPU or CPU cores it ran on
            "started_at": float,
            "duration_s": float,
        },
        pk="id",
        not_null={"run_id", "status", "started_at"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db.table("experiments").create_index(["run_id", "agent_id", "n"])
    db.table("experiments").create_index(["target"])


@migrations()
def m003_run_owner(db: Database) -> None:
    # Which process drives a running run ("pid:<n>"): the supervisor process takes over
    # only runs whose owner has died, never a `--foreground` run that is still alive.
    db.table("runs").add_column("owner", str)
    db.table("runs").add_column("resumes", int)  # automatic resumes after crashes


@migrations()
def m004_plugin_errors(db: Database) -> None:
    # Failures of plugins inside hooks during runs, kept where another process
    # (`supervisor plugins list`, `doctor`) can see them; the transcript has the event.
    db.table("plugin_errors").create(
        {"id": int, "ts": float, "plugin": str, "hook": str, "error": str, "run_id": str},
        pk="id",
        not_null={"ts", "plugin", "hook", "error"},
    )
    db.table("plugin_errors").create_index(["ts"])


@migrations()
def m005_experiments_to_their_plugin(db: Database) -> None:
    # The experiments table belongs to the plugin that fills it (its own migration set,
    # through register_migrations). An empty one made by m002 goes; one holding rows stays
    # for the plugin to adopt, so nothing recorded is lost.
    if "experiments" in db.table_names() and not db.table("experiments").count:
        db.table("experiments").drop()


@migrations()
def m006_host_checks(db: Database) -> None:
    # `supervisor hosts`: how a host is reached (a jump host, the key to log in with)
    # and what its last check found (facts stay in `facts`, JSON).
    hosts = db.table("hosts")
    hosts.add_column("jump", str)  # user@bastion[:port], or "" for none
    hosts.add_column("key_path", str)  # private key file ("" : ssh config / agent)
    hosts.add_column("reachable", int)  # 1 | 0 | NULL (never checked)
    hosts.add_column("checked_at", float)
    hosts.add_column("error", str)  # why the last check failed


@migrations()
def m007_host_cordon(db: Database) -> None:
    # `supervisor hosts cordon NAME`: no new sandboxes go to this host; running ones stay.
    db.table("hosts").add_column("cordoned", int)
