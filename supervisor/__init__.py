"""supervisor: run fleets of LLM agents in hardened sandboxes, from a terminal.

This module is the public API for plugin authors: everything a plugin needs is importable
from here, and plugins import nothing else of supervisor (a lint rule holds the built-in
plugins to it). Anything not listed in ``__all__`` is internal and may change.

Importing it stays cheap (the CLI loads every plugin at each start): heavy parts are
imported where they are used.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from supervisor.api import (
    AgentInfo,
    Artifacts,
    Events,
    Finished,
    GpuInfo,
    GpuSlots,
    HostInfo,
    Human,
    Memory,
    Note,
    PluginStore,
    StepContext,
    Team,
    ToolContext,
)
from supervisor.errors import InputError, SupervisorError
from supervisor.events import CATALOGUE, Event, EventType
from supervisor.sandbox.base import ExecResult, FileInfo, Sandbox, SandboxError, SandboxSpec
from supervisor.status import ENDED, AgentStatus, RunStatus
from supervisor.types import (
    Check,
    CheckResult,
    ModelSpec,
    PluginInfo,
    SandboxBackend,
    Tool,
    ToolCall,
)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("supervisor")
"""Marks a function in a plugin module as an implementation of a hook."""


def data_dir() -> Path:
    """supervisor's data directory (``$SUPERVISOR_HOME``, else the XDG data folder): the
    database is ``data_dir() / "supervisor.db"``."""
    from supervisor import config

    return config.data_dir()


__all__ = [
    "CATALOGUE",
    "ENDED",
    "AgentInfo",
    "AgentStatus",
    "Artifacts",
    "Check",
    "CheckResult",
    "Event",
    "EventType",
    "Events",
    "ExecResult",
    "FileInfo",
    "Finished",
    "GpuInfo",
    "GpuSlots",
    "HostInfo",
    "Human",
    "InputError",
    "Memory",
    "ModelSpec",
    "Note",
    "PluginInfo",
    "PluginStore",
    "RunStatus",
    "Sandbox",
    "SandboxBackend",
    "SandboxError",
    "SandboxSpec",
    "StepContext",
    "SupervisorError",
    "Team",
    "Tool",
    "ToolCall",
    "ToolContext",
    "__version__",
    "data_dir",
    "hookimpl",
]
