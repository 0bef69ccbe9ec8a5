"""Clips, fake cameras and a running service, for the recipe's self-check, the tests and the
bench: everything made with ffmpeg on the spot, nothing downloaded.

- :func:`moving_shapes`: a box sliding over a plain background (motion, nobody in it);
- :func:`still_photo`: a photo held still, placed in a larger frame as a camera would see a
  person a few metres away (:func:`astronaut_png` writes scikit-image's photo of a person);
- :func:`fake_camera`: an HTTP MPEG-TS stream of a clip, looped, as one camera;
- :class:`RunningService`: the service folder copied elsewhere and started as on a host.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from supervisor_video_dashboard import SERVICE_DIR
from supervisor_video_dashboard.service import media


def moving_shapes(
    path: Path,
    seconds: float = 4,
    size: tuple[int, int] = (640, 360),
    fps: int = 10,
    move: bool = True,
    noise: int = 0,
) -> Path:
    """See :func:`service.media.make_test_clip` (with the ffmpeg on PATH)."""
    return media.make_test_clip("ffmpeg", path, seconds, size, fps, move, noise)


def astronaut_png(path: Path) -> Path:
    """scikit-image's photo of a person (Eileen Collins), as a PNG."""
    import cv2
    from skimage import data

    photo = data.astronaut()  # type: ignore[no-untyped-call]
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return path


def still_photo(
    path: Path, photo: Path, seconds: float = 4, size: tuple[int, int] = (640, 480), fps: int = 10
) -> Path:
    """``photo`` held still for ``seconds``, two thirds of the frame high, on a grey ground."""
    w, h = size
    media.run_ffmpeg(
        "ffmpeg",
        "-loop", "1", "-framerate", str(fps), "-t", str(seconds), "-i", str(photo),
        "-vf", f"scale=-2:{h * 2 // 3},pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=0x4a4f57",
        *media.h264(fps), str(path),
    )  # fmt: skip
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fake_camera(clip: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Serve ``clip`` looped in real time as ``http://127.0.0.1:PORT/cam.ts`` (one client)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/cam.ts"
    process = subprocess.Popen(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
            "-c", "copy", "-f", "mpegts", "-listen", "1", url,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # listening once a connect would succeed
        if process.poll() is not None:
            raise RuntimeError(f"fake camera on port {port} exited with {process.returncode}")
        # A test connect would use up the one client -listen 1 serves: look, don't touch.
        if _listening(port):
            return process, url
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"fake camera on port {port} did not start listening")


def _listening(port: int) -> bool:
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    # Local address 0100007F:PORT in state 0A (LISTEN).
    return any(
        f":{port:04X}" in line.split()[1] and line.split()[3] == "0A" for line in table if line
    )


class RunningService:
    """The service as a host runs it: the folder copied to ``workdir/app/service`` and started
    with ``python -m service --config FILE --port 0`` from ``workdir/app``."""

    def __init__(self, workdir: Path, config: dict[str, Any], python: str = sys.executable) -> None:
        import json

        self.workdir = workdir
        app = workdir / "app"
        if not (app / "service").exists():
            shutil.copytree(
                SERVICE_DIR, app / "service", ignore=shutil.ignore_patterns("__pycache__")
            )
        self.config_path = workdir / "config.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.stderr_path = workdir / "service.log"
        self._stderr = self.stderr_path.open("ab")
        self.process = subprocess.Popen(
            [python, "-m", "service", "--config", str(self.config_path), "--port", "0"],
            cwd=app,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.url = self._wait_listening()

    def _wait_listening(self, timeout: float = 30) -> str:
        found: list[str] = []
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def read() -> None:
            for raw in stdout:
                line = raw.decode(errors="replace")
                if "listening on " in line:
                    found.append(line.split("listening on ", 1)[1].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"the service did not start: {self.log()[-1000:]}")
        return found[0]

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    def __enter__(self) -> RunningService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
