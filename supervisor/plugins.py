"""The plugin manager: built-in plugins, entry points, and the allow-list.

Built-in plugins are modules listed in :data:`BUILTIN_PLUGINS`; third-party plugins are
entry points in the group ``supervisor``. Both go through :meth:`Plugins._add`, so a
built-in is loaded, validated and reported exactly as a third-party plugin is.

``SUPERVISOR_LOAD_PLUGINS`` (comma-separated names) is an allow-list for entry-point
plugins: set it to ``""`` to load none. ``plugins.disabled`` in the config turns any
plugin off, built-ins included. ``SUPERVISOR_TRACE_HOOKS=1`` prints every hook call to
stderr.

A plugin that fails to import, declares an unknown hook, or raises inside a hook is
recorded with its error; the rest keep working.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from supervisor import hookspecs
from supervisor.types import PluginInfo

# name: "module" or "module:attribute" (an object holding hook implementations). Order
# matters only for display; later plugins are called first (pluggy's LIFO).
BUILTIN_PLUGINS: dict[str, str] = {
    "checks": "supervisor.checks",
    "docker": "supervisor.sandbox.plugins:docker",
    "local": "supervisor.sandbox.plugins:local",
    "ssh": "supervisor.sandbox.plugins:ssh",
    "tools": "supervisor.tools.builtin",
    "team": "supervisor.tools.team",
}

# Built-in plugins shipped as separate packages of this workspace (plugins/*): found
# through their entry points like any plugin, but always loaded and shown as built-in.
BUILTIN_DISTRIBUTIONS = ("supervisor-autoresearch",)

ENTRY_POINT_GROUP = "supervisor"


class Plugins:
    """A pluggy manager plus the record of every plugin's state."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        disabled: Iterable[str] = (),
        builtins: Mapping[str, str] | None = None,
        entry_points: bool = True,
    ) -> None:
        env = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager("supervisor")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.trace = env.get("SUPERVISOR_TRACE_HOOKS", "") not in ("", "0")
        self._disabled = set(disabled)
        allow = env.get("SUPERVISOR_LOAD_PLUGINS")
        self._allow = None if allow is None else {n.strip() for n in allow.split(",") if n}
        for name, target in (BUILTIN_PLUGINS if builtins is None else builtins).items():
            if name not in self._disabled:
                self._add(name, "built-in", lambda t=target: _load_target(t), module=target)
        if entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._disabled:
                continue
            ours = ep.dist is not None and ep.dist.name in BUILTIN_DISTRIBUTIONS
            if self._allow is not None and ep.name not in self._allow and not ours:
                continue
            version = ep.dist.version if ep.dist is not None else ""
            source = "built-in" if ours else "entry point"
            self._add(ep.name, source, ep.load, version=version, module=ep.value)

    def _add(
        self,
        name: str,
        source: Any,
        load: Any,
        *,
        version: str = "",
        module: str = "",
    ) -> None:
        info = PluginInfo(name=name, source=source, version=version, module=module)
        if name in self.info:
            info.error = f"another plugin is already named {name!r}"
            self.info[f"{name} ({module or source})"] = info
            return
        self.info[name] = info
        try:
            plugin = load()
        except BaseException as exc:  # a plugin may even call sys.exit at import
            info.error = f"failed to import: {_describe(exc)}"
            return
        if isinstance(plugin, ModuleType):
            info.module = info.module or plugin.__name__
        if not info.version and source == "built-in":
            from supervisor import __version__

            info.version = __version__
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            info.error = _describe(exc)
            return
        problems = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                problems.append(f"unknown hook {caller.name!r}")
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    problems.append(f"{caller.name}: wrapper implementations are not supported")
        if problems:
            self.pm.unregister(plugin)
            info.error = "; ".join(problems)
            return
        info.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])

    # -- calling hooks

    def call(self, hook_name: str, *, firstresult: bool = False, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook_name``, isolating failures.

        A plugin that raises is marked failed (with the hook and the error) and skipped;
        the others still run. With ``firstresult``, stops at the first non-None result.
        """
        caller = getattr(self.pm.hook, hook_name)
        results: list[Any] = []
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name
            args = {a: kwargs[a] for a in impl.argnames}
            start = time.perf_counter()
            try:
                result = impl.function(**args)
            except Exception as exc:
                self._record_failure(plugin_name, hook_name, exc)
                continue
            finally:
                if self.trace:
                    ms = (time.perf_counter() - start) * 1000
                    print(f"hook {hook_name} -> {plugin_name} ({ms:.1f} ms)", file=sys.stderr)
            if result is not None:
                results.append(result)
                if firstresult:
                    break
        return results

    def _record_failure(self, plugin_name: str, hook_name: str, exc: Exception) -> None:
        info = self.info.get(plugin_name)
        message = f"raised in {hook_name}: {_describe(exc)}"
        if info is not None and info.error is None:
            info.error = message

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a ``register_*`` hook; return ``(plugin name, registered item)`` pairs."""
        items: list[tuple[str, Any]] = []
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            name = impl.plugin_name
            staged: list[tuple[str, Any]] = []

            def register(*args: Any, _name: str = name, _staged: list[Any] = staged) -> None:
                # register(item), or register(key, value) for hooks that register pairs.
                _staged.append((_name, args[0] if len(args) == 1 else args))

            if self.trace:
                print(f"hook {hook_name} -> {name}", file=sys.stderr)
            try:
                impl.function(
                    **{a: register if a == "register" else kwargs[a] for a in impl.argnames}
                )
            except Exception as exc:
                # Nothing from a plugin that failed half-way is kept: half a registration
                # is harder to understand than none.
                self._record_failure(name, hook_name, exc)
                continue
            items.extend(staged)
        return items

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.info.values() if i.error is not None]


def _load_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


_default: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, built on first use from the current config."""
    global _default
    if _default is None:
        from supervisor import config

        try:
            disabled = config.load()["plugins.disabled"]
        except Exception:
            # A broken config is reported by whoever loads it for real; plugins still load.
            disabled = []
        _default = Plugins(disabled=disabled)
    return _default


def reset() -> None:
    """Forget the process-wide manager (tests that change the environment use this)."""
    global _default
    _default = None
