"""A target's environment: the sandbox image its experiments run in.

A spec may name Python packages (``packages``: pip requirements, or paths of wheel files
in the target) and/or a base ``image``. The image is built once per content hash (the base
image's id, the requirements, the wheels' bytes) from the default sandbox image, with its
build output shown as progress, and reused by every loop and every later run: installing
packages in ``setup`` instead would repeat the install in every sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisor.recipes import StepContext
    from supervisor_autoresearch.spec import Spec

REPOSITORY = "supervisor-autoresearch-env"
_lock = threading.Lock()  # loops starting at once must not build the same image twice


async def ensure(ctx: StepContext, spec: Spec, source: Path) -> str:
    """The image tag for this target's sandboxes ('' : the configured default)."""
    if not spec.packages and not spec.image:
        return ""
    backend = ctx.params.get("sandbox") or ctx.engine.settings["sandbox.backend"]
    if backend != "docker":
        raise InputError(
            f"{spec.name}: the spec's packages/image need the docker sandbox backend, not "
            f"{backend!r}"
        )
    loop = asyncio.get_running_loop()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(ctx.emit, f"environment: {line}")

    base = spec.image or ctx.engine.settings["sandbox.image"]
    mode = ctx.engine.settings["sandbox.build"]
    return await asyncio.to_thread(build, spec, source, base, mode, progress)


def build(spec: Spec, source: Path, base: str, mode: str, progress: Callable[[str], None]) -> str:
    import docker.errors

    from supervisor.sandbox.docker import docker_client, home_label
    from supervisor.sandbox.image import build as build_default

    client = docker_client()
    if not base:
        base = build_default(client, mode=mode, progress=progress)
    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise InputError(f"{spec.name}: the spec's image {base} does not exist") from None
    if not spec.packages:
        return base
    wheels, requirements = _split(spec, source)
    digest = hashlib.sha256(
        json.dumps([base_image.id, requirements, sorted(wheels)]).encode()
        + b"".join(wheels[name] for name in sorted(wheels))
    ).hexdigest()[:16]
    tag = f"{REPOSITORY}:{digest}"
    with _lock:
        try:
            client.images.get(tag)
            progress(f"reusing image {tag} ({', '.join(spec.packages)})")
            return tag
        except docker.errors.ImageNotFound:
            pass
        progress(f"building image {tag} from {base} with {', '.join(spec.packages)}")
        user = (base_image.attrs.get("Config") or {}).get("User") or "root"
        context = _context(base, user, wheels, requirements)
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            # Wheels alone need no network; requirements are fetched from the index.
            network_mode="bridge" if requirements else "none",
            labels={"supervisor.home": home_label(), "supervisor.autoresearch.env": spec.name},
        )
        for chunk in stream:
            if "error" in chunk:
                raise InputError(
                    f"{spec.name}: building the environment failed: {chunk['error'].strip()}"
                )
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    progress(line.strip()[:200])
        progress(f"built image {tag}")
    return tag


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


def _context(base: str, user: str, wheels: dict[str, bytes], requirements: list[str]) -> Any:
    pip = "python3 -m pip install --no-cache-dir --break-system-packages --no-warn-script-location"
    lines = [f"FROM {base}", "USER root"]
    if wheels:
        lines += ["COPY wheels /tmp/wheels"]
        lines += [f"RUN {pip} --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels"]
    if requirements:
        lines += [f"RUN {pip} " + " ".join(json.dumps(r) for r in requirements)]
    lines += [f"USER {user}"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {"Dockerfile": ("\n".join(lines) + "\n").encode()}
        files.update({f"wheels/{name}": data for name, data in wheels.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer
