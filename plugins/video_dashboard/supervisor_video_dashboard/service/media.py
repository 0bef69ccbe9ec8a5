"""Frames from clips, streams and snapshot URLs, sampled with ffmpeg (an external binary).

A clip is read by one ffmpeg run that emits its N frames as JPEGs on a pipe; a stream camera
by one long-lived ffmpeg that emits a JPEG every ``interval_s`` (never a process per frame:
starting ffmpeg and opening the stream cost more than decoding).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2

CLIP_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".ts", ".webm", ".m4v")
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


class MediaError(Exception):
    """A clip, stream or URL could not be read; the message says which and why."""


def _scale(width: int) -> str:
    # Never upscale; -2 keeps the aspect with an even height; full-range YUV for mjpeg.
    return f"scale=w='min({width},iw)':h=-2,format=yuvj420p"


def split_jpegs(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole JPEGs at the start of ``buffer`` and what is left over. ffmpeg's mjpeg encoder
    writes no thumbnails, and 0xFF in entropy-coded data is stuffed, so an EOI marker after
    an SOI ends the image."""
    frames: list[bytes] = []
    start = buffer.find(_SOI)
    while start != -1:
        end = buffer.find(_EOI, start + 2)
        if end == -1:
            return frames, buffer[start:]
        frames.append(buffer[start : end + 2])
        start = buffer.find(_SOI, end + 2)
    return frames, b""


def ffprobe_for(ffmpeg: str) -> str:
    found = shutil.which(ffmpeg)
    if found is not None:
        beside = Path(found).with_name("ffprobe")
        if beside.exists():
            return str(beside)
    return "ffprobe"


def clip_duration(ffmpeg: str, clip: Path) -> float:
    # OpenCV reads the container's header in-process (its wheel bundles FFmpeg's libraries)
    # in a few milliseconds, where starting ffprobe costs a hundred or more; ffprobe stays
    # for containers whose header gives no frame count (MPEG-TS, some cameras' files).
    capture = cv2.VideoCapture(str(clip))
    try:
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    if frames > 0 and 0 < fps < 1000:
        return float(frames / fps)
    result = subprocess.run(
        [ffprobe_for(ffmpeg), "-v", "error", "-print_format", "json", "-show_format", str(clip)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return float(json.loads(result.stdout)["format"]["duration"])
    except (ValueError, KeyError, TypeError):
        why = result.stderr.strip().splitlines()[-1:] or ["no duration"]
        raise MediaError(f"{clip}: not a readable video: {why[0]}") from None


def sample_clip(ffmpeg: str, clip: Path, count: int, width: int = 640) -> list[tuple[float, bytes]]:
    """``count`` JPEG frames spread evenly over the clip, in time order, each with its time
    in seconds from the clip's start."""
    duration = clip_duration(ffmpeg, clip)
    if duration <= 0:
        raise MediaError(f"{clip}: the clip has no duration")
    step = duration / count
    # Each frame from the middle of its slice of the clip, not the first or last instant.
    times = [step * (i + 0.5) for i in range(count)]
    select = "+".join(f"lt(prev_pts*TB,{t:.3f})*gte(pts*TB,{t:.3f})" for t in times)
    result = subprocess.run(
        [
            ffmpeg, "-nostdin", "-v", "error", "-i", str(clip), "-an",
            "-vf", f"select='{select}',{_scale(width)}", "-fps_mode", "passthrough",
            "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "4", "pipe:1",
        ],
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    frames, _ = split_jpegs(result.stdout)
    if result.returncode != 0 or not frames:
        why = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no frames"]
        raise MediaError(f"{clip}: ffmpeg could not sample frames: {why[0]}")
    return list(zip(times, frames[:count], strict=False))


def fetch_snapshot(url: str, timeout: float = 10.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: bytes = response.read(32 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise MediaError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except OSError as exc:
        raise MediaError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if not data.startswith(_SOI):
        raise MediaError(f"{url}: the answer is not a JPEG image")
    return data


class StreamReader:
    """One ffmpeg reading a stream and emitting a JPEG every ``interval_s`` to ``on_frame``
    (called on the reader's thread). When ffmpeg ends, ``on_end`` gets the reason."""

    def __init__(
        self,
        ffmpeg: str,
        url: str,
        interval_s: float,
        width: int,
        on_frame: Callable[[bytes, float], None],
        on_end: Callable[[str], None],
        keyframes_only: bool = False,
        on_redate: Callable[[float], None] | None = None,
    ) -> None:
        args = [ffmpeg, "-nostdin", "-v", "error"]
        if url.startswith(("rtsp://", "rtsps://")):
            args += ["-rtsp_transport", "tcp", "-timeout", "10000000"]
        elif url.startswith(("http://", "https://")):
            args += ["-rw_timeout", "10000000"]
        if keyframes_only:
            args += ["-skip_frame", "nokey"]
        args += [
            "-i", url, "-an", "-vf", f"fps=1/{interval_s:g},{_scale(width)}",
            "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "4", "pipe:1",
        ]  # fmt: skip
        self._args = args
        self._interval_s = interval_s
        self._on_redate = on_redate
        self._on_frame = on_frame
        self._on_end = on_end
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="ffmpeg-reader")
        self._thread.start()

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None and process.stderr is not None
        buffer = b""
        # The fps filter emits exactly one frame per interval of stream time, but ffmpeg
        # first buffers seconds of the stream to probe it and then emits those frames in a
        # burst. Frame k is dated anchor + k * interval, the anchor being the earliest that
        # no frame arrived before its date; when a burst moves it back, frames already
        # delivered are re-dated by the same amount (on_redate).
        anchor = float("inf")
        count = 0
        while True:
            chunk = process.stdout.read1(1 << 20)  # type: ignore[attr-defined]
            if not chunk:
                break
            frames, buffer = split_jpegs(buffer + chunk)
            for jpeg in frames:
                earliest = time.time() - count * self._interval_s
                if earliest < anchor:
                    if count and self._on_redate is not None:
                        self._on_redate(earliest - anchor)
                    anchor = earliest
                self._on_frame(jpeg, anchor + count * self._interval_s)
                count += 1
        code = process.wait()
        err = process.stderr.read().decode(errors="replace").strip().splitlines()
        if not self._stopped:
            reason = err[-1] if err else "the stream ended"
            self._on_end(f"ffmpeg exited with {code}: {reason}")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        self._stopped = True
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)


def run_ffmpeg(ffmpeg: str, *args: str) -> None:
    result = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-y", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise MediaError(f"ffmpeg failed: {result.stderr.strip()[-300:]}")


def h264(fps: int) -> list[str]:
    # A key frame every second: a camera-like stream that can be joined at any second.
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]


def make_test_clip(
    ffmpeg: str,
    path: Path,
    seconds: float = 4,
    size: tuple[int, int] = (640, 360),
    fps: int = 10,
    move: bool = True,
    noise: int = 0,
) -> Path:
    """A clip of an orange box crossing a grey background at 80 px/s (``move=False``:
    standing still), made by ffmpeg alone: the host's own end-to-end check needs nothing
    else. ``noise`` adds a camera sensor's grain (0-100) that changes every frame."""
    w, h = size
    x = "mod(80*t,W)" if move else "W/3"
    grain = f",noise=alls={noise}:allf=t+u" if noise else ""
    run_ffmpeg(
        ffmpeg,
        "-f", "lavfi", "-i", f"color=c=0x4a4f57:s={w}x{h}:r={fps}:d={seconds}",
        "-f", "lavfi", "-i", f"color=c=orange:s={w // 8}x{h // 6}:r={fps}:d={seconds}",
        "-filter_complex", f"[0][1]overlay=x='{x}':y={h // 3}:shortest=1{grain}",
        *h264(fps), str(path),
    )  # fmt: skip
    return path
