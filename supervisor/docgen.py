"""The reference parts of docs/, made from the code: the hooks (docs/hooks.md) and the
event catalogue (in docs/plugins.md). ``python -m supervisor.docgen`` rewrites them; a test
fails when the checked-in pages differ from what this makes.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from supervisor import hookspecs
from supervisor.events import CATALOGUE

HOOKS_HEADER = """# Hook reference

Every hook supervisor calls, in the order of `supervisor/hookspecs.py`, made from its
docstrings (`python -m supervisor.docgen`; a test fails when this page is stale). Implement
one by defining a function of the same name in your plugin module, decorated with
`@supervisor.hookimpl`; it may take fewer arguments than listed. See
[plugins.md](plugins.md) for examples, packaging and testing.
"""

EVENTS_BEGIN = "<!-- events: made by python -m supervisor.docgen -->"
EVENTS_END = "<!-- /events -->"


def hook_names() -> list[str]:
    return [
        name
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "supervisor_spec")
    ]


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    params = ", ".join(f"{p}: {ann}" for p, ann in fn.__annotations__.items() if p != "return")
    return f"def {name}({params}) -> {fn.__annotations__['return']}"


def _body(doc: str) -> str:
    text = inspect.cleandoc(doc)
    # ":param x: text" (with indented continuation lines) becomes a list item.
    return re.sub(r"^:param (\w+):", r"- `\1`:", text, flags=re.M)


def hooks_markdown() -> str:
    parts = [HOOKS_HEADER]
    for name in hook_names():
        fn = getattr(hookspecs, name)
        first = fn.supervisor_spec.get("firstresult")
        parts.append(
            f"## {name}\n\n```python\n{signature(name)}\n```\n\n{_body(fn.__doc__ or '')}\n\n"
            "*First non-None result wins:* "
            + ("yes." if first else "no (every implementation is called).")
            + "\n"
        )
    return "\n".join(parts)


def events_markdown() -> str:
    lines = [EVENTS_BEGIN, "", "| type | what it means | `data` keys |", "|---|---|---|"]
    for type_, (meaning, keys) in CATALOGUE.items():
        shown = ", ".join(f"`{k}` ({v})" for k, v in keys.items()) or "—"
        lines.append(f"| `{type_}` | {meaning} | {shown} |")
    lines += ["", EVENTS_END]
    return "\n".join(lines)


def with_events(page: str) -> str:
    """``page`` with its event catalogue block replaced by the current one."""
    start, end = page.index(EVENTS_BEGIN), page.index(EVENTS_END) + len(EVENTS_END)
    return page[:start] + events_markdown() + page[end:]


def main(docs: Path) -> int:
    (docs / "hooks.md").write_text(hooks_markdown())
    plugins = docs / "plugins.md"
    plugins.write_text(with_events(plugins.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
