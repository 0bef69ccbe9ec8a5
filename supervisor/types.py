"""Plain data types that plugins register and receive.

Kept free of heavy imports: the CLI loads plugins on every start and must stay fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model made it: the tool's name and its parsed arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class Tool:
    """A tool an agent may call.

    ``parameters`` is a JSON Schema object for the arguments, sent to the model as is.
    ``run`` is awaited with the agent's tool context and the parsed arguments; what it
    returns (text) goes back to the model.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class ModelSpec:
    """A model reachable through litellm, under an optional short alias.

    Prices are in US dollars per million tokens; leave them ``None`` for models litellm
    already knows.
    """

    alias: str
    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    context_window: int | None = None


@dataclass(frozen=True)
class SandboxBackend:
    """A named way to run an agent's commands; ``factory`` builds a sandbox."""

    name: str
    factory: Callable[..., Any]
    isolated: bool
    description: str = ""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a doctor check: ``detail`` says what was found, ``fix`` what to do."""

    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Check:
    """A check shown by ``supervisor doctor``; failing required checks make it exit 1."""

    name: str
    run: Callable[[], CheckResult]
    required: bool = True


@dataclass
class PluginInfo:
    """What the plugin manager knows of one plugin, loaded or not."""

    name: str
    source: Literal["built-in", "entry point"]
    version: str = ""
    module: str = ""
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
