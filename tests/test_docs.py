"""docs/hooks.md documents every hook with its exact signature, and each hook is tested."""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import REPO

from supervisor import hookspecs

HOOKS = [
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "supervisor_spec")
]


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    params = ", ".join(f"{p}: {ann}" for p, ann in fn.__annotations__.items() if p != "return")
    return f"def {name}({params}) -> {fn.__annotations__['return']}"


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 8


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_exact_signature(name: str) -> None:
    doc = (REPO / "docs" / "hooks.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", doc, flags=re.S | re.M))
    assert name in sections, f"docs/hooks.md has no '## {name}' heading"
    assert f"```python\n{signature(name)}\n```" in sections[name], (
        f"docs/hooks.md shows a wrong signature for {name}; expected {signature(name)}"
    )


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name: str) -> None:
    tests = [p for p in (REPO / "tests").glob("test_*.py") if p.name != "test_docs.py"]
    assert any(name in p.read_text() for p in tests), f"no test mentions the hook {name}"


def test_readme_quickstart_is_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```(?:sh|bash)?\n(.*?)```", readme, flags=re.S)
    assert block, "README.md has no Quickstart code block"
    commands = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands == ["./dev quickstart", "./dev test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "./dev test" in (REPO / ".ci" / "run").read_text()
