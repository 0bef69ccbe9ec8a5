"""A target's environment: the sandbox image its experiments run in.

A spec may name Python packages (``packages``: pip requirements, or paths of wheel files
in the target) and/or a base ``image``. supervisor builds the image once per content hash
(the base image's id, the requirements, the wheels' bytes) from the sandbox image, with its
build output shown as progress, and reuses it for every loop and every later run:
installing packages in ``setup`` instead would repeat the install in every sandbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from supervisor import InputError

if TYPE_CHECKING:
    from supervisor import StepContext

    from supervisor_autoresearch.spec import Spec


async def ensure(ctx: StepContext, spec: Spec, source: Path) -> str:
    """The image tag for this target's sandboxes ('' : the configured default)."""
    if not spec.packages and not spec.image:
        return ""
    wheels, requirements = _split(spec, source)
    return await ctx.sandbox_image(
        requirements=requirements, wheels=wheels, base=spec.image, name=spec.name
    )


def _split(spec: Spec, source: Path) -> tuple[dict[str, bytes], list[str]]:
    wheels: dict[str, bytes] = {}
    requirements: list[str] = []
    for entry in spec.packages:
        if entry.endswith(".whl"):
            path = source / entry
            if not path.is_file():
                raise InputError(f"{spec.name}: package {entry} is not a file in {source}")
            wheels[path.name] = path.read_bytes()
        else:
            requirements.append(entry)
    return wheels, requirements
