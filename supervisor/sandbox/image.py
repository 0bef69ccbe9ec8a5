"""The default sandbox image: where its sources live and the tag that names them.

The tag carries a hash of the image's sources, so an image built from unchanged sources
is found and reused, and any change to them names a new image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

IMAGE_REPOSITORY = "supervisor-sandbox"


def sandboxes_dir() -> Path:
    """The ``sandboxes/`` folder: beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "sandboxes", here / "_sandboxes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("supervisor's sandboxes/ folder is missing from this installation")


def source_hash(directory: Path) -> str:
    """A short hash over every file's relative path and bytes, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def default_image_tag(name: str = "default") -> str:
    return f"{IMAGE_REPOSITORY}:{name}-{source_hash(sandboxes_dir() / name)}"
