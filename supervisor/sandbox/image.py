"""The default sandbox image: where its sources live and the tag that names them.

The tag carries a hash of the image's sources, so an image built from unchanged sources
is found and reused, and any change to them names a new image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError

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


def default_image_tag(name: str = "default", directory: Path | None = None) -> str:
    directory = directory or sandboxes_dir() / name
    return f"{IMAGE_REPOSITORY}:{name}-{source_hash(directory)}"


# -- building


class ImageBuildError(SupervisorError):
    """The image could not be built; the message names the failing step and its log tail."""


Progress = Callable[[str], None]


def _dockerfile(directory: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in (directory / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def base_suite(directory: Path) -> str:
    """The Debian suite of the Dockerfile's ``FROM debian:SUITE[-slim]``."""
    for word, rest in _dockerfile(directory):
        if word == "FROM":
            image = rest.split()[0]
            if image.startswith("debian:"):
                return image.split(":", 1)[1].removesuffix("-slim")
            raise ImageBuildError(f"offline build needs a debian base image, not {image!r}")
    raise ImageBuildError(f"{directory / 'Dockerfile'}: no FROM line")


def image_changes(directory: Path) -> list[str]:
    """The Dockerfile's ENV, USER, WORKDIR and CMD lines, for ``docker import``."""
    return [
        f"{word} {rest}"
        for word, rest in _dockerfile(directory)
        if word in {"ENV", "USER", "WORKDIR", "CMD", "ENTRYPOINT", "LABEL"}
    ]


def packages(directory: Path) -> list[str]:
    lines = (directory / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (a local mirror is used offline too)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            uri = match.group(1)
            if "security" not in uri and "debian" in uri:
                return uri
    return "http://deb.debian.org/debian"


def build(
    client: Any,
    *,
    name: str = "default",
    mode: str = "auto",
    progress: Progress = print,
    force: bool = False,
    directory: Path | None = None,
) -> str:
    """Build the sandbox image ``name`` unless an image with its source hash exists.

    ``mode``: ``online`` (docker build, pulling the base), ``offline`` (debootstrap a root
    filesystem and import it), or ``auto`` (online, falling back to offline when the base
    image cannot be pulled). Returns the tag.
    """
    with _build_lock:  # many agents starting at once must not build the image many times
        return _build(client, name, mode, progress, force, directory)


_build_lock = threading.Lock()


def _build(
    client: Any, name: str, mode: str, progress: Progress, force: bool, directory: Path | None
) -> str:
    import docker.errors

    directory = directory or sandboxes_dir() / name
    tag = default_image_tag(name, directory)
    if not force:
        try:
            client.images.get(tag)
            progress(f"image {tag} is up to date")
            return tag
        except docker.errors.ImageNotFound:
            pass
    if mode not in {"auto", "online", "offline"}:
        raise ImageBuildError(f"unknown build mode {mode!r} (auto, online or offline)")
    if mode in {"auto", "online"}:
        try:
            _build_online(client, directory, tag, progress)
            return tag
        except _BaseUnavailable as exc:
            if mode == "online":
                raise ImageBuildError(f"base image cannot be pulled: {exc}") from None
            progress(f"base image cannot be pulled ({exc}); building offline from Debian")
    _build_offline(client, directory, tag, progress)
    return tag


class _BaseUnavailable(Exception):
    pass


def _build_online(client: Any, directory: Path, tag: str, progress: Progress) -> None:
    import docker.errors

    base = next(rest.split()[0] for word, rest in _dockerfile(directory) if word == "FROM")
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        progress(f"pulling {base}")
        try:
            client.images.pull(base)
        except docker.errors.APIError as exc:
            raise _BaseUnavailable(str(exc).splitlines()[0][:200]) from None
    log: list[str] = []
    for chunk in client.api.build(
        path=str(directory), tag=tag, rm=True, forcerm=True, decode=True, pull=False
    ):
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                if line.strip():
                    log.append(line)
                    progress(line)
        if "error" in chunk:
            tail = "\n".join(log[-15:])
            raise ImageBuildError(f"docker build failed: {chunk['error'].strip()}\n{tail}")


def _run_logged(cmd: list[str], step: str, progress: Progress) -> None:
    """Run ``cmd``, streaming its output as progress; fail with the step and log tail."""
    log: list[str] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        log.append(line)
        if line:
            progress(f"{step}: {line}")
    if proc.wait() != 0:
        tail = "\n".join(log[-15:])
        raise ImageBuildError(f"{step} failed (exit {proc.returncode}):\n{tail}")


def _build_offline(client: Any, directory: Path, tag: str, progress: Progress) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "the offline build runs debootstrap, which needs root: "
            "run `sudo supervisor sandbox build --offline`"
        )
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "the offline build needs debootstrap (Debian/Ubuntu: apt-get install debootstrap)"
        )
    suite = base_suite(directory)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="supervisor-rootfs-") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {suite} from {mirror} ({len(packages(directory))} packages)")
        _run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(packages(directory)),
                suite,
                str(root),
                mirror,
            ],
            "debootstrap",
            progress,
        )
        target = root / "opt" / "supervisor"
        target.mkdir(parents=True, exist_ok=True)
        for item in ("packages.txt", "setup.sh"):
            shutil.copy2(directory / item, target / item)
        _run_logged(["chroot", str(root), "sh", "/opt/supervisor/setup.sh"], "setup", progress)
        archive = Path(tmp) / "rootfs.tar"
        progress("packing the root filesystem")
        _run_logged(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(archive), "."], "tar", progress
        )
        progress(f"importing as {tag}")
        repository, _, version = tag.partition(":")
        changes = [*image_changes(directory), "LABEL supervisor.build=offline"]
        client.api.import_image(
            src=str(archive), repository=repository, tag=version, changes=changes
        )
    progress(f"built {tag}")


DERIVED_REPOSITORY = "supervisor-derived"
_derive_lock = threading.Lock()  # loops starting at once must not build one image twice


def derive(
    base: str,
    *,
    requirements: list[str],
    wheels: dict[str, bytes],
    mode: str,
    progress: Callable[[str], None],
    name: str = "",
) -> str:
    """A sandbox image with Python packages on top of ``base`` (the default image when
    empty), built once per content hash — the base image's id, the requirements, the
    wheels' bytes — and reused; its tag. Wheels install without network; requirements are
    fetched from the package index while building.
    """
    import docker.errors

    from supervisor.errors import InputError
    from supervisor.sandbox.docker import docker_client, home_label

    client = docker_client()
    if not base:
        base = build(client, mode=mode, progress=progress)
    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise InputError(f"{name or 'sandbox image'}: the image {base} does not exist") from None
    if not requirements and not wheels:
        return base
    digest = hashlib.sha256(
        json.dumps([base_image.id, requirements, sorted(wheels)]).encode()
        + b"".join(wheels[w] for w in sorted(wheels))
    ).hexdigest()[:16]
    tag = f"{DERIVED_REPOSITORY}:{digest}"
    shown = ", ".join([*requirements, *sorted(wheels)])
    with _derive_lock:
        try:
            client.images.get(tag)
            progress(f"reusing image {tag} ({shown})")
            return tag
        except docker.errors.ImageNotFound:
            pass
        progress(f"building image {tag} from {base} with {shown}")
        user = (base_image.attrs.get("Config") or {}).get("User") or "root"
        stream = client.api.build(
            fileobj=_derived_context(base, user, wheels, requirements),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            # Wheels alone need no network; requirements are fetched from the index.
            network_mode="bridge" if requirements else "none",
            labels={"supervisor.home": home_label(), "supervisor.derived": name or "-"},
        )
        for chunk in stream:
            if "error" in chunk:
                raise InputError(
                    f"{name or 'sandbox image'}: building the image failed: "
                    f"{chunk['error'].strip()}"
                )
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    progress(line.strip()[:200])
        progress(f"built image {tag}")
    return tag


def _derived_context(
    base: str, user: str, wheels: dict[str, bytes], requirements: list[str]
) -> io.BytesIO:
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
        files.update({f"wheels/{n}": data for n, data in wheels.items()})
        for n, data in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer
