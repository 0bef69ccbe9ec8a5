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


@dataclass
class SandboxRow:
    """One sandbox a backend made for this data directory, as ``supervisor sandbox ls``
    shows it. ``id`` is what :attr:`SandboxBackend.attach` takes back; ``pool_owner`` names
    the supervisor process holding an unassigned warm sandbox."""

    name: str
    id: str
    run: str
    agent: str
    pool: bool
    state: str
    age_s: float
    memory_mb: float | None
    network: bool
    backend: str = "docker"
    pool_owner: str = ""


@dataclass(frozen=True)
class SandboxBackend:
    """A named way to run an agent's commands.

    ``factory(spec, **kwargs)`` builds a sandbox, not yet started. The optional callables
    let supervisor manage the backend's sandboxes after the agent that made them (re-adopt
    on resume, ``sandbox ls|prune|shell``, ``agent diff``); a backend without one is told
    so when it would be needed:

    - ``attach(sandbox_id)``: a sandbox object for an existing sandbox, by the id it
      reported (``Sandbox.id``); raises ``SandboxError`` if it no longer exists.
    - ``list_all()``: a :class:`SandboxRow` per sandbox it made for this data directory.
    - ``prune(keep)``: remove every sandbox whose row ``keep(row)`` refuses, and leftovers
      of its own (volumes, networks); returns what it removed, one line each.

    Capability flags say what a sandbox of this backend can be given: ``network`` access
    (that keeps the host out unless granted), ``gpus`` by device id, ``ports`` published to
    the host, a ``remote`` host (``SandboxSpec.host``). An agent asking for one its backend
    lacks is refused before anything starts.
    """

    name: str
    factory: Callable[..., Any]
    isolated: bool
    description: str = ""
    attach: Callable[[str], Any] | None = None
    list_all: Callable[[], Any] | None = None
    prune: Callable[[Callable[[SandboxRow], bool]], Any] | None = None
    network: bool = False
    gpus: bool = False
    ports: bool = False
    remote: bool = False


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


# Which environment variables hold each provider's credentials (the model boundary and the
# doctor's check both read it; kept here, where importing costs nothing).
PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "anthropic": ("ANTHROPIC_API_KEY",),
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY"),
    "bedrock": ("AWS_ACCESS_KEY_ID",),
    "azure": ("AZURE_API_KEY",),
}
