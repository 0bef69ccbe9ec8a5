"""The public API holds: plugins import only `supervisor` (a lint rule enforces it, and it
covers every internal module), the agent loop knows nothing of the engine, supervisor's
modules import each other without a circle, and the core names no plugin."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from conftest import REPO

import supervisor

PACKAGE = REPO / "supervisor"
PUBLIC = {"supervisor", "supervisor.deploy"}  # the deploy API is a documented submodule


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not those under TYPE_CHECKING, nor the
    lazy ones inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "supervisor"}


def test_every_public_name_is_importable() -> None:
    for name in supervisor.__all__:
        assert getattr(supervisor, name) is not None
    assert (PACKAGE / "py.typed").exists()


def test_the_plugin_lint_rule_covers_every_internal_module() -> None:
    config = tomllib.loads((REPO / "plugins" / "ruff.toml").read_text())
    banned = set(config["lint"]["flake8-tidy-imports"]["banned-api"])
    internal = {
        f"supervisor.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert internal - PUBLIC - banned == set(), "add these to plugins/ruff.toml's banned-api"
    assert not PUBLIC & banned
    assert "textual" in banned


def test_built_in_plugins_import_only_the_public_api() -> None:
    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "supervisor":
                    assert name in PUBLIC, f"{path.relative_to(REPO)} imports {name}"


def test_the_agent_loop_does_not_know_the_engine() -> None:
    source = (PACKAGE / "agent.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("supervisor.engine")


def test_no_import_circle_among_supervisors_modules() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in top_level_imports(path) if m in files and m != name}
        for name, path in files.items()
    }
    # A package's modules import their package first: that edge is not a circle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                circle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])


def test_the_core_names_no_plugin() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert "autoresearch" not in path.read_text().lower(), path.relative_to(REPO)
