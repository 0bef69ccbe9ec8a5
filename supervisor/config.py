"""Settings and paths.

Settings come from three layers, later ones winning: the defaults declared in
:data:`SETTINGS`, the TOML file at :func:`config_path`, and ``SUPERVISOR_*`` environment
variables (``sandbox.memory`` is overridden by ``SUPERVISOR_SANDBOX_MEMORY``).

Every key is declared with its type, so a typo or a wrong type is an error that names the
key and where it came from, instead of a setting silently ignored. Environment variables
that match no key are ignored on purpose: other programs (supervisord among them) export
``SUPERVISOR_*`` variables of their own.

``SUPERVISOR_HOME`` moves everything (database, keys, logs, socket, and the config file
unless ``SUPERVISOR_CONFIG`` names one) into one folder; tests use it so they never touch
the real home.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError

APP = "supervisor"


# A value check: None when the value is acceptable, else what it must be ("at least 1").
Check = Callable[[Any], "str | None"]

PID_MAX = 4_194_304  # Linux's highest possible pid_max: a larger pids limit means "no limit"
MEMORY_MIN = 6 * 2**20  # Docker refuses a memory limit below 6 MiB
_MEMORY = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*$")


def between(low: float, high: float | None = None) -> Check:
    """A number from ``low`` to ``high`` (inclusive); NaN and infinity never pass."""

    def check(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "a finite number"
        if value < low or (high is not None and value > high):
            return (
                f"from {_num(low)} to {_num(high)}" if high is not None else f"at least {_num(low)}"
            )
        return None

    return check


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def memory_bytes(text: str) -> int | None:
    """Docker's memory syntax (``512m``, ``2g``, ``1.5gb``) in bytes, or None."""
    match = _MEMORY.match(text)
    if not match:
        return None
    scale = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match[2].lower()]
    return int(float(match[1]) * scale)


def _memory(value: Any) -> str | None:
    size = memory_bytes(value)
    if size is None:
        return "a size such as 512m or 2g"
    return "at least 6m" if size < MEMORY_MIN else None


@dataclass(frozen=True)
class Setting:
    """One declared setting: its dotted key, type, default, a line of help, and the
    bounds a value must keep (a limit that would switch itself off is refused)."""

    key: str
    type: type
    default: Any
    help: str
    check: Check | None = None

    @property
    def env(self) -> str:
        return "SUPERVISOR_" + self.key.replace(".", "_").replace("-", "_").upper()


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting("model", str, "", "Default model: a litellm model string or an alias."),
        Setting("sandbox.backend", str, "docker", "Sandbox backend for new agents."),
        Setting("sandbox.image", str, "", "Sandbox image; empty means the built-in default."),
        Setting("sandbox.build", str, "auto", "Image build: auto, online or offline."),
        Setting("sandbox.memory", str, "2g", "Memory limit per sandbox (Docker syntax).", _memory),
        Setting(
            "sandbox.cpus", float, 2.0, "CPU limit per sandbox, in cores.", between(0.01, 1024)
        ),
        Setting("sandbox.pids", int, 512, "Process limit per sandbox.", between(16, PID_MAX)),
        Setting(
            "sandbox.pool_size",
            int,
            2,
            "Ready Docker sandboxes kept warm for new agents, from the first one on (0: none).",
            between(0, 64),
        ),
        Setting(
            "sandbox.network_host",
            bool,
            False,
            "Networked sandboxes may also reach services on this machine.",
        ),
        Setting("sandbox.env_allow", list, [], "Host environment variables passed in."),
        Setting("budget.daily_usd", float, 0.0, "Fleet spend limit per day (0: none).", between(0)),
        Setting("budget.run_usd", float, 0.0, "Default spend limit per run (0: none).", between(0)),
        Setting(
            "budget.agent_usd", float, 0.0, "Default spend limit per agent (0: none).", between(0)
        ),
        Setting(
            "budget.run_tokens",
            int,
            0,
            "Default token limit per run, input and output (0: none); for $0 self-hosted models.",
            between(0),
        ),
        Setting(
            "budget.fleet_usd",
            float,
            0.0,
            "Spend limit over all live runs together (0: none).",
            between(0),
        ),
        Setting(
            "budget.fleet_tokens",
            int,
            0,
            "Token limit over all live runs together (0: none).",
            between(0),
        ),
        Setting(
            "budget.warn_at",
            float,
            0.8,
            "Share of a budget at which a warning is given, once (0 to 1).",
            between(0, 1),
        ),
        Setting(
            "budget.at_limit",
            str,
            "pause",
            "What agents do at a spent budget, after their current step: pause (wait for a "
            "raise) or stop (end, freeing sandboxes and GPU slots).",
            lambda v: None if v in ("pause", "stop") else "pause or stop",
        ),
        Setting("plugins.disabled", list, [], "Plugin names never to load."),
        Setting("agent.max_steps", int, 100, "Default step limit per agent.", between(1)),
        Setting(
            "agent.max_wall_s",
            float,
            0.0,
            "Default wall-time limit per agent (0: none).",
            between(0),
        ),
        Setting("agent.max_tokens", int, 0, "Default token limit per agent (0: none).", between(0)),
        Setting(
            "model.max_concurrent",
            int,
            64,
            "Model calls in flight at once, all models.",
            between(1),
        ),
        Setting(
            "model.retries",
            int,
            6,
            "Retries of a failed model call (429, 5xx, stalls).",
            between(0, 100),
        ),
        Setting(
            "model.stall_timeout_s", float, 60.0, "Abort a stream silent this long.", between(1)
        ),
        Setting(
            "team.max_depth",
            int,
            2,
            "How deep agents may lead agents (1: workers cannot start workers).",
            between(1, 10),
        ),
        Setting(
            "team.max_agents",
            int,
            16,
            "Agents that agents of one run may start, in all.",
            between(0, 1000),
        ),
        Setting(
            "hosts.max_sandboxes",
            int,
            8,
            "Sandboxes at most at once on one host of a pool (`run --hosts`).",
            between(1, 10000),
        ),
        Setting(
            "server.auto_resume",
            bool,
            True,
            "Resume runs a crashed supervisor process left behind when it starts again.",
        ),
        Setting(
            "policy.ask",
            list,
            ["shell:git push*"],
            "Tool calls that wait for a person's approval (tool or tool:command-glob).",
        ),
        Setting(
            "policy.deny",
            list,
            ["shell:rm -rf /", "shell:rm -rf /*", "shell:rm -rf ~*"],
            "Tool calls refused outright (tool or tool:command-glob).",
        ),
    ]
}

# Tables of settings keyed by a name the user chooses: `models.<alias>.<field>`.
TABLES: dict[str, dict[str, tuple[type, str, Check | None]]] = {
    "models": {
        "model": (str, "litellm model string, e.g. hosted_vllm/Qwen3-VL-8B", None),
        "api_base": (str, "base URL of an OpenAI-compatible server", None),
        "api_key_env": (str, "environment variable holding the API key", None),
        "input_per_mtok": (float, "price in USD per million input tokens", between(0)),
        "output_per_mtok": (float, "price in USD per million output tokens", between(0)),
        "context_window": (int, "context window in tokens", between(1)),
        "max_concurrent": (int, "calls in flight at once to this model", between(1)),
        "rpm": (int, "requests per minute to this model", between(1)),
    },
    # `pools.NAME.hosts = ["a", "b"]`: `supervisor run --hosts NAME` places over them.
    "pools": {
        "hosts": (list, "registered hosts of this pool", None),
        "budget_usd": (float, "spend limit over the live runs on this pool (0: none)", between(0)),
        "budget_tokens": (
            int,
            "token limit over the live runs on this pool (0: none)",
            between(0),
        ),
    },
}

# The field of each table entry the others need: an alias without it cannot be used.
TABLE_REQUIRED = {"models": "model"}


def setting_for(key: str) -> Setting | None:
    """The declared setting for ``key``, including table entries like models.x.api_base."""
    if key in SETTINGS:
        return SETTINGS[key]
    table, _, rest = key.partition(".")
    name, _, field_name = rest.rpartition(".")
    fields = TABLES.get(table)
    if fields and name and field_name in fields:
        t, help_text, check = fields[field_name]
        return Setting(key, t, None, help_text, check)
    return None


def check_tables(values: Mapping[str, Any], where: str) -> None:
    """Refuse a table entry missing its required field (``models.x.api_base`` without
    ``models.x.model`` would make every later run fail)."""
    entries: dict[tuple[str, str], set[str]] = {}
    for key in values:
        table, _, rest = key.partition(".")
        name, _, field_name = rest.rpartition(".")
        if table in TABLES and name:
            entries.setdefault((table, name), set()).add(field_name)
    for (table, name), fields in sorted(entries.items()):
        required = TABLE_REQUIRED.get(table)
        if required and required not in fields:
            raise ConfigError(
                f"{where}: {table}.{name} has no {required!r} (set {table}.{name}.{required} first)"
            )


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def home(environ: Mapping[str, str] | None = None) -> Path | None:
    value = _env(environ).get("SUPERVISOR_HOME")
    return Path(value).expanduser() if value else None


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where state lives: the database, keys, logs, the socket."""
    explicit = home(environ)
    if explicit is not None:
        return explicit
    from platformdirs import user_data_path

    return user_data_path(APP, appauthor=False)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = _env(environ)
    if env.get("SUPERVISOR_CONFIG"):
        return Path(env["SUPERVISOR_CONFIG"]).expanduser()
    explicit = home(environ)
    if explicit is not None:
        return explicit / "config.toml"
    from platformdirs import user_config_path

    return user_config_path(APP, appauthor=False) / "config.toml"


def db_path(environ: Mapping[str, str] | None = None) -> Path:
    return data_dir(environ) / "supervisor.db"


def ensure_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Create the data directory owner-only, or say clearly why it cannot be used."""
    path = data_dir(environ)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"data directory {path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data directory {path} is not writable")
    # mkdir leaves an existing folder (SUPERVISOR_HOME made beforehand) as it was: the
    # data directory is owner-only all the same, as documented.
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def coerce(setting: Setting, value: Any, where: str) -> Any:
    """Check (and for strings from the command line or environment, parse) a value."""
    t = setting.type
    if isinstance(value, str) and t is not str:
        value = _parse_text(setting, value, where)
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if t is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if type(value) is not t:
        raise ConfigError(
            f"{where}: {setting.key} must be {_type_name(t)}, got {_type_name(type(value))} "
            f"{value!r}"
        )
    problem = setting.check(value) if setting.check else None
    if problem:
        raise ConfigError(f"{where}: {setting.key} must be {problem}, got {value!r}")
    return value


def _parse_text(setting: Setting, text: str, where: str) -> Any:
    t = setting.type
    try:
        if t is int:
            return int(text)
        if t is float:
            return float(text)
        if t is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if t is list:
            return [part.strip() for part in text.split(",") if part.strip()]
    except ValueError:
        pass
    raise ConfigError(f"{where}: {setting.key} must be {_type_name(t)}, got {text!r}")


def _type_name(t: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list of strings",
    }.get(t, t.__name__)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and setting_for(dotted) is None:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def read_file(path: Path) -> dict[str, Any]:
    """The settings stored in ``path`` (flattened to dotted keys), validated."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        setting = setting_for(key)
        if setting is None:
            raise ConfigError(f"{path}: unknown setting {key!r}{_suggest(key)}")
        values[key] = coerce(setting, value, str(path))
    check_tables(values, str(path))
    return values


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, SETTINGS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def write_file(path: Path, values: Mapping[str, Any]) -> None:
    """Write ``values`` (dotted keys) as nested TOML, atomically."""
    import tomli_w

    nested: dict[str, Any] = {}
    for key in sorted(values):
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    # Owner-only from the first byte: the file names endpoints and key variables.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(tomli_w.dumps(nested))
    os.replace(tmp, path)


@dataclass
class Config:
    """Resolved settings, with where each value came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    path: Path

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def load(environ: Mapping[str, str] | None = None) -> Config:
    env = _env(environ)
    path = config_path(environ)
    values = {key: s.default for key, s in SETTINGS.items()}
    sources = dict.fromkeys(SETTINGS, "default")
    for key, value in read_file(path).items():
        values[key] = value
        sources[key] = str(path)
    for key, setting in SETTINGS.items():
        if setting.env in env:
            values[key] = coerce(setting, env[setting.env], f"environment {setting.env}")
            sources[key] = f"env {setting.env}"
    return Config(values=values, sources=sources, path=path)


def set_value(key: str, text: str, environ: Mapping[str, str] | None = None) -> Any:
    """Parse ``text`` for ``key`` and store it in the config file; returns the value."""
    setting = setting_for(key)
    if setting is None:
        raise ConfigError(f"unknown setting {key!r}{_suggest(key)}")
    value = coerce(setting, text, "value")
    path = config_path(environ)
    current = read_file(path)
    current[key] = value
    check_tables(current, key)
    write_file(path, current)
    return value


def unset_value(key: str, environ: Mapping[str, str] | None = None) -> bool:
    """Remove ``key`` from the config file; returns whether it was there."""
    if setting_for(key) is None:
        raise ConfigError(f"unknown setting {key!r}{_suggest(key)}")
    path = config_path(environ)
    current = read_file(path)
    if key not in current:
        return False
    del current[key]
    check_tables(current, f"unset {key}")
    write_file(path, current)
    return True
