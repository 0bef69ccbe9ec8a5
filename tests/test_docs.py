"""docs/hooks.md documents every hook with its exact signature, and each hook is tested."""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import REPO

from supervisor import docgen, hookspecs

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
    assert any(f"def test_hook_{name}" in p.read_text() for p in tests), (
        f"no test is named test_hook_{name}"
    )


def test_hooks_page_is_made_from_the_hookspecs() -> None:
    assert (REPO / "docs" / "hooks.md").read_text() == docgen.hooks_markdown(), (
        "docs/hooks.md is stale: run `python -m supervisor.docgen`"
    )


def test_event_catalogue_in_plugin_guide_is_current() -> None:
    page = (REPO / "docs" / "plugins.md").read_text()
    assert page == docgen.with_events(page), (
        "docs/plugins.md's event catalogue is stale: run `python -m supervisor.docgen`"
    )


def test_every_event_type_is_in_the_catalogue() -> None:
    from supervisor.events import CATALOGUE, EventType

    assert [str(t) for t in EventType] == list(CATALOGUE)


def test_readme_quickstart_is_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```(?:sh|bash)?\n(.*?)```", readme, flags=re.S)
    assert block, "README.md has no Quickstart code block"
    commands = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands == ["./dev quickstart", "./dev test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "./dev test" in (REPO / ".ci" / "run").read_text()
