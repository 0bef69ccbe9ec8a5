"""supervisor: run fleets of LLM agents in hardened sandboxes, from a terminal.

This module is the public API for plugin authors. Everything a plugin needs is importable
from here; anything else is internal and may change.
"""

from __future__ import annotations

import pluggy

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

__all__ = [
    "Check",
    "CheckResult",
    "ModelSpec",
    "PluginInfo",
    "SandboxBackend",
    "Tool",
    "ToolCall",
    "__version__",
    "hookimpl",
]
