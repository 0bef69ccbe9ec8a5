"""The service's configuration: one JSON file, checked whole before anything starts.

    {
      "listen": "127.0.0.1", "port": 8090,
      "data_dir": "/var/lib/video-dashboard",
      "ffmpeg": "ffmpeg",
      "inference": {"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen3-VL-4B-Instruct",
                    "api_key": null, "timeout_s": 120, "max_tokens": 800, "test_run": false},
      "frames_per_analysis": 6,
      "media_dirs": ["/srv/clips"],
      "bench_file": "/var/lib/video-dashboard/bench.json",
      "cameras": [
        {"name": "door", "kind": "stream", "url": "rtsp://cam/stream1", "interval_s": 2},
        {"name": "yard", "kind": "snapshot", "url": "http://cam2/snap.jpg"},
        {"name": "clips", "kind": "folder", "path": "/srv/clips/yard"}
      ]
    }

``inference`` null (or absent) selects the CPU path: motion plus OpenCV's HOG people
detector. ``test_run`` marks a configuration whose vision model is a scripted test server;
every event and ``/health`` say so. Every camera key and its default is in :class:`Camera`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("stream", "snapshot", "folder")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ConfigError(Exception):
    """The configuration is wrong; the message says what and where, in one line."""


@dataclass(frozen=True)
class Camera:
    """One camera. ``stream``: RTSP or an HTTP stream read by one long-lived ffmpeg;
    ``snapshot``: an HTTP URL answering one JPEG per GET; ``folder``: new clips dropped in
    ``path``."""

    name: str
    kind: str
    url: str = ""
    path: str = ""
    interval_s: float = 2.0  # one frame every interval (a folder: how often it is listed)
    # Share of pixels (at a quarter of the size) that must change between two frames.
    motion_threshold: float = 0.004
    motion_gating: bool = True  # False: every frame is analysed (costly; for comparison)
    cooldown_s: float = 30.0  # after an analysis, motion starts the next one no sooner
    post_roll: int = 2  # frames waited for after motion before analysing
    keyframes_only: bool = False  # decode only key frames (cheap for high-resolution streams)
    width: int = 640  # frames are scaled down to this width (never up)


@dataclass(frozen=True)
class Inference:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_tokens: int = 800
    test_run: bool = False
    # "frames": JPEG image parts (any vision server). "video_url": a clip goes as a file://
    # video part instead (vLLM with --allowed-local-media-path covering the clips; the
    # model server must run on the same machine); a camera's latest seconds stay frames.
    clip_media: str = "frames"
    video_fps: float = 2.0


@dataclass(frozen=True)
class Config:
    data_dir: Path
    listen: str = "127.0.0.1"
    port: int = 8090
    ffmpeg: str = "ffmpeg"
    inference: Inference | None = None
    frames_per_analysis: int = 6
    media_dirs: tuple[Path, ...] = ()
    bench_file: Path | None = None
    cameras: tuple[Camera, ...] = field(default=())

    def allowed_media(self) -> tuple[Path, ...]:
        """Folders whose clips ``POST /analyze`` may read (as vLLM's
        ``--allowed-local-media-path``): ``media_dirs`` and every folder camera's path."""
        folders = [*self.media_dirs, *(Path(c.path) for c in self.cameras if c.kind == "folder")]
        return tuple(p.resolve() for p in folders)


def _typed(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int to Python; a person who wrote true for a number made a mistake.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where}: expected {what}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {what}, got {json.dumps(value)[:60]}")
    return value


def _fields(where: str, raw: Any, allowed: set[str]) -> dict[str, Any]:
    obj = _typed(where, raw, dict, "an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return dict(obj)


def _number(where: str, value: Any, low: float, high: float) -> float:
    number = float(_typed(where, value, (int, float), "a number"))
    if not low <= number <= high:
        raise ConfigError(f"{where}: {number:g} is outside {low:g}..{high:g}")
    return number


def _camera(where: str, raw: Any) -> Camera:
    names = set(Camera.__dataclass_fields__)
    obj = _fields(where, raw, names)
    for key in ("name", "kind"):
        if key not in obj:
            raise ConfigError(f"{where}: missing {key!r}")
    name = _typed(f"{where}.name", obj["name"], str, "a string")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '_', '.', '-'")
    kind = obj["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "folder":
        path = _typed(f"{where}.path", obj.get("path", ""), str, "a folder path")
        if not path or not Path(path).is_dir():
            raise ConfigError(f"{where}.path: {path!r} is not a folder")
    else:
        url = _typed(f"{where}.url", obj.get("url", ""), str, "a URL")
        schemes = (
            ("http://", "https://")
            if kind == "snapshot"
            else ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")
        )
        if not url.startswith(schemes):
            raise ConfigError(f"{where}.url: {url!r} does not start with {' or '.join(schemes)}")
    checks = {
        "interval_s": (0.2, 3600.0),
        "motion_threshold": (0.0, 1.0),
        "cooldown_s": (0.0, 86400.0),
        "post_roll": (0, 16),
        "width": (64, 3840),
    }
    for key, (low, high) in checks.items():
        if key in obj:
            number = _number(f"{where}.{key}", obj[key], low, high)
            obj[key] = int(number) if key in ("post_roll", "width") else number
    for key in ("motion_gating", "keyframes_only"):
        if key in obj:
            _typed(f"{where}.{key}", obj[key], bool, "true or false")
    return Camera(**obj)


def parse(raw: Any, where: str = "config") -> Config:
    """Check a parsed configuration; raises :class:`ConfigError` naming the key at fault."""
    obj = _fields(where, raw, set(Config.__dataclass_fields__))
    if "data_dir" not in obj:
        raise ConfigError(f"{where}: missing 'data_dir'")
    out: dict[str, Any] = {
        "data_dir": Path(_typed(f"{where}.data_dir", obj["data_dir"], str, "a folder path"))
    }
    if "listen" in obj:
        out["listen"] = _typed(f"{where}.listen", obj["listen"], str, "an address")
    if "port" in obj:
        out["port"] = int(_number(f"{where}.port", obj["port"], 0, 65535))
    if "ffmpeg" in obj:
        out["ffmpeg"] = _typed(f"{where}.ffmpeg", obj["ffmpeg"], str, "a command")
    if obj.get("inference") is not None:
        inf = _fields(f"{where}.inference", obj["inference"], set(Inference.__dataclass_fields__))
        for key in ("base_url", "model"):
            _typed(f"{where}.inference.{key}", inf.get(key), str, "a string")
        if not inf["base_url"].startswith(("http://", "https://")):
            raise ConfigError(
                f"{where}.inference.base_url: {inf['base_url']!r} is not an http(s) URL"
            )
        if "timeout_s" in inf:
            inf["timeout_s"] = _number(f"{where}.inference.timeout_s", inf["timeout_s"], 1, 3600)
        if "max_tokens" in inf:
            inf["max_tokens"] = int(
                _number(f"{where}.inference.max_tokens", inf["max_tokens"], 64, 32768)
            )
        if inf.get("api_key") is not None:
            _typed(f"{where}.inference.api_key", inf["api_key"], str, "a string")
        if inf.get("clip_media", "frames") not in ("frames", "video_url"):
            raise ConfigError(
                f"{where}.inference.clip_media: {inf['clip_media']!r} "
                "is not 'frames' or 'video_url'"
            )
        if "video_fps" in inf:
            inf["video_fps"] = _number(f"{where}.inference.video_fps", inf["video_fps"], 0.1, 30)
        if "test_run" in inf:
            _typed(f"{where}.inference.test_run", inf["test_run"], bool, "true or false")
        out["inference"] = Inference(**inf)
    if "frames_per_analysis" in obj:
        # 4-8 frames: enough to see motion, few enough for a small model's context.
        out["frames_per_analysis"] = int(
            _number(f"{where}.frames_per_analysis", obj["frames_per_analysis"], 4, 8)
        )
    if "media_dirs" in obj:
        dirs = _typed(f"{where}.media_dirs", obj["media_dirs"], list, "a list of folders")
        for i, d in enumerate(dirs):
            _typed(f"{where}.media_dirs[{i}]", d, str, "a folder path")
        out["media_dirs"] = tuple(Path(d) for d in dirs)
    if obj.get("bench_file") is not None:
        out["bench_file"] = Path(_typed(f"{where}.bench_file", obj["bench_file"], str, "a path"))
    cameras = _typed(f"{where}.cameras", obj.get("cameras", []), list, "a list of cameras")
    parsed = tuple(_camera(f"{where}.cameras[{i}]", c) for i, c in enumerate(cameras))
    seen: set[str] = set()
    for i, camera in enumerate(parsed):
        if camera.name in seen:
            raise ConfigError(f"{where}.cameras[{i}].name: {camera.name!r} is used twice")
        seen.add(camera.name)
    out["cameras"] = parsed
    return Config(**out)


def load(path: Path) -> Config:
    """Read and check the JSON file at ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    return parse(raw, where=str(path))
