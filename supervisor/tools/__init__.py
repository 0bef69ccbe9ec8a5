"""Built-in tools. Each module here is a plugin registering its tools through
``register_tools``; ``obj(...)`` builds the JSON Schema of a tool's arguments."""

from __future__ import annotations

from typing import Any


def obj(required: list[str] | None = None, **properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema object with these properties (all required unless listed)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def integer(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}
