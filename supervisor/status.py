"""Run and agent statuses: one spelling, one set of ended ones.

Both are ``StrEnum``s, so they compare equal to (and are stored as) their plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class AgentStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting"  # for a person: a question or an approval
    PAUSED = "paused"  # by a person, or by a budget
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"  # the supervisor process went away; resumable


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


# An agent or run in one of these is not working now. ``interrupted`` is ended too: nothing
# drives it until a resume (which sets it running again).
ENDED: frozenset[str] = frozenset({"done", "failed", "stopped", "interrupted"})
# Ended for good: a resume does not take these up again.
FINAL: frozenset[str] = frozenset({"done", "failed", "stopped"})
# Being worked on now (a person may be needed): not ended.
ACTIVE: frozenset[str] = frozenset({"running", "paused", "waiting"})
# Runs whose sandboxes must stay: active ones, and interrupted ones (they resume in them).
LIVE: frozenset[str] = ACTIVE | {"interrupted"}
