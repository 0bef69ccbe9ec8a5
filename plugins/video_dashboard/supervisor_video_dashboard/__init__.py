"""The video-dashboard plugin: the code behind ``recipes/video-dashboard.md``.

Its ``service`` folder is the program the recipe uploads to a host and runs there (under
systemd, or the deploy API's fallback): a video-inference endpoint plus a web dashboard,
standalone Python that needs only ffmpeg, and OpenCV + numpy for frames, motion and the CPU
path (``service/requirements.txt``). It never imports supervisor, so the same files run on a
host that has none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import hookimpl

SERVICE_DIR = Path(__file__).parent / "service"
"""The folder to upload; on the host run ``python -m service --config FILE`` beside it."""


@hookimpl
def register_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from supervisor_video_dashboard.recipe import STEPS

    for name, fn in STEPS.items():
        register(name, fn)


__all__ = ["SERVICE_DIR"]
