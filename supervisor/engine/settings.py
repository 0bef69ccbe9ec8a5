"""The engine's room for settings read again when the person changes them.

Functions of the engine, bound as :class:`supervisor.engine.Engine`'s methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor import config
from supervisor.events import EventType
from supervisor.models import ModelRegistry

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from supervisor.engine import Engine


def refresh_settings(engine: Engine) -> list[str]:
    """Read the settings file again if it changed since it was last read; returns the
    keys whose values changed. New runs and agents use the new values; tool-call policy
    applies to running agents at their next call; what cannot change under agents
    already running is said in each active run's transcript. Bad settings raise."""
    if not engine._settings_from_config:
        return []
    stamp = engine._config_stamp()
    if stamp == engine._settings_stamp:
        return []
    fresh = config.load().values
    engine._settings_stamp = stamp
    changed = sorted(
        k for k in fresh.keys() | engine.settings.keys() if fresh.get(k) != engine.settings.get(k)
    )
    if not changed:
        return []
    engine.settings = fresh
    if any(k == "model" or k.startswith("models.") for k in changed):
        engine.models.registry = ModelRegistry.load()
    engine.models.retries = fresh["model.retries"]
    engine.models.stall_timeout_s = fresh["model.stall_timeout_s"]
    for policy in engine._policies.values():
        policy.ask[:] = fresh["policy.ask"]
        policy.deny[:] = fresh["policy.deny"]
    later = [k for k in changed if k in engine.RESTART_SETTINGS]
    note = f"settings changed ({', '.join(changed)}): new agents use them"
    if any(k.startswith("policy.") for k in changed):
        note += "; tool-call policy applies from each agent's next call"
    if any(k.startswith(("sandbox.", "agent.", "model", "budget.agent")) for k in changed):
        note += "; agents already running keep their sandbox, model and limits"
    if any(k.startswith("models.") and k.endswith((".max_concurrent", ".rpm")) for k in changed):
        note += "; model call limits apply from each next call"
    if later:
        note += f"; {', '.join(later)} apply when the supervisor process restarts"
    active = {a.run_id for a in engine.agents.values() if engine.running(a)}
    for run_id in sorted(active):
        data = {"settings_changed": changed, "restart_needed": later}
        engine.emit(EventType.LOG, None, data, note, run_id=run_id)
    return changed


def _config_stamp() -> tuple[int, int]:
    try:
        info = config.config_path().stat()
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)
