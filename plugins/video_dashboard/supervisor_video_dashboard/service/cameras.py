"""Cameras polled on a schedule, with motion gating: a frame every ``interval_s``, compared
with the one before; only when enough of the picture changed does an analysis run (after a
few more frames, so the model sees the motion unfold). An idle camera costs one small
decode and a subtraction per frame.

Analyses run on one worker thread: a model server answers one at a time best anyway, and
the detector would only contend for the same cores. A camera whose previous analysis is
still waiting does not queue another; the skip is counted and shown on /health.
"""

from __future__ import annotations

import collections
import concurrent.futures
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import media, motion
from .analysis import Analyser, AnalysisFailed
from .config import Camera, Config
from .store import Store

RING = 32  # frames kept per camera for "analyse the latest seconds" and the pre-roll
RETRY_S = (2, 4, 8, 16, 30, 60)  # back-off when a stream or URL fails


class CameraWorker:
    def __init__(
        self,
        camera: Camera,
        config: Config,
        analyser: Analyser,
        store: Store,
        pool: concurrent.futures.Executor,
    ) -> None:
        self.camera = camera
        self.config = config
        self.analyser = analyser
        self.store = store
        self.pool = pool
        self.ring: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=RING)
        self.status = "starting"
        self.error: str | None = None
        self.counts = {"frames": 0, "motion": 0, "analyses": 0, "skipped_busy": 0, "failures": 0}
        self.last_motion = 0.0
        self._lock = threading.Lock()
        self._prev: motion.Gray | None = None
        self._armed_at: int | None = None  # frame count at which a pending trigger fires
        self._busy = False
        self._last_analysis = 0.0
        self._stop = threading.Event()
        self._failures = 0
        self._reader: media.StreamReader | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"cam-{camera.name}")

    # -- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.stop()
        self._thread.join(timeout=10)

    def _set_status(self, status: str, error: str | None = None) -> None:
        if status != self.status or error != self.error:
            line = f"video-dashboard: camera {self.camera.name}: {status}"
            print(line + (f": {error}" if error else ""), file=sys.stderr, flush=True)
        self.status, self.error = status, error

    def _backoff(self) -> None:
        wait = RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1
        self._stop.wait(wait)

    def _run(self) -> None:
        kind = self.camera.kind
        if kind == "stream":
            self._run_stream()
        elif kind == "snapshot":
            self._run_snapshot()
        else:
            self._run_folder()

    def _run_stream(self) -> None:
        while not self._stop.is_set():
            ended = threading.Event()
            reason: list[str] = []

            def on_end(
                why: str, reason: list[str] = reason, ended: threading.Event = ended
            ) -> None:
                reason.append(why)
                ended.set()

            c = self.camera
            self._reader = media.StreamReader(
                self.config.ffmpeg, c.url, c.interval_s, c.width, self.on_frame, on_end,
                keyframes_only=c.keyframes_only, on_redate=self._redate,
            )  # fmt: skip
            with self._lock:
                self.ring.clear()  # frames from before an outage are not the latest seconds
            try:
                self._reader.start()
            except OSError as exc:
                reason.append(f"cannot start ffmpeg: {exc}")
                ended.set()
            while not ended.wait(0.5):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            self._set_status("offline", reason[0] if reason else "the stream ended")
            self._backoff()

    def _run_snapshot(self) -> None:
        while not self._stop.is_set():
            clock = time.monotonic()
            try:
                jpeg = media.fetch_snapshot(self.camera.url)
            except media.MediaError as exc:
                self._set_status("offline", str(exc))
                self._backoff()
                continue
            self.on_frame(jpeg, time.time())
            self._stop.wait(max(0.0, self.camera.interval_s - (time.monotonic() - clock)))

    def _run_folder(self) -> None:
        folder = Path(self.camera.path)
        sizes: dict[Path, int] = {}
        while not self._stop.is_set():
            try:
                clips = sorted(
                    p for p in folder.iterdir() if p.suffix.lower() in media.CLIP_SUFFIXES
                )
                self._set_status("ok")
            except OSError as exc:
                self._set_status("offline", f"{folder}: {exc.strerror or exc}")
                clips = []
            for clip in clips:
                if self._stop.is_set():
                    return
                try:
                    st = clip.stat()
                except OSError:
                    continue
                # A clip still being written changes size between two listings.
                if sizes.get(clip) != st.st_size:
                    sizes[clip] = st.st_size
                    continue
                if self.store.clip_seen(str(clip), st.st_mtime, st.st_size):
                    continue
                self._folder_clip(clip, st.st_mtime, st.st_size)
            self._stop.wait(self.camera.interval_s)

    def _folder_clip(self, clip: Path, mtime: float, size: int) -> None:
        try:
            frames = media.sample_clip(
                self.config.ffmpeg, clip, self.config.frames_per_analysis, self.camera.width
            )
        except (media.MediaError, OSError) as exc:
            print(f"video-dashboard: camera {self.camera.name}: {exc}", file=sys.stderr)
            self.counts["failures"] += 1
            self.store.mark_clip(str(clip), mtime, size, None)
            return
        with self._lock:
            self.counts["frames"] += len(frames)
            self.ring.extend((mtime - frames[-1][0] + t, j) for t, j in frames)
        moved = motion.max_motion([j for _, j in frames])
        event_id = None
        if moved >= self.camera.motion_threshold or not self.camera.motion_gating:
            self.counts["motion"] += 1
            self.last_motion = time.time()
            try:
                event = self.analyser.analyse(
                    self.camera.name, frames, started=mtime - frames[-1][0], clip=str(clip)
                )
                event_id = event["id"]
                self.counts["analyses"] += 1
            except AnalysisFailed as exc:
                event_id = exc.event["id"]
                self.counts["failures"] += 1
        self.store.mark_clip(str(clip), mtime, size, event_id)

    # -- frames

    def on_frame(self, jpeg: bytes, at: float) -> None:
        """A new frame from the camera (any thread): keep it, gate on motion, maybe analyse."""
        gray = motion.small_gray(jpeg)
        trigger = False
        chosen: list[tuple[float, bytes]] = []
        with self._lock:
            self._failures = 0
            self.ring.append((at, jpeg))
            self.counts["frames"] += 1
            moved = motion.changed(self._prev, gray)
            self._prev = gray
            frames = self.counts["frames"]
            if not self.camera.motion_gating:
                trigger = not self._busy
                if self._busy:
                    self.counts["skipped_busy"] += 1
            elif moved >= self.camera.motion_threshold:
                self.counts["motion"] += 1
                self.last_motion = at
                cooled = at - self._last_analysis >= self.camera.cooldown_s
                if self._armed_at is None and cooled:
                    if self._busy:
                        self.counts["skipped_busy"] += 1
                    else:
                        # Never fewer frames than an analysis sends (a camera just started).
                        self._armed_at = max(
                            frames + self.camera.post_roll, self.config.frames_per_analysis
                        )
            if self._armed_at is not None and frames >= self._armed_at:
                self._armed_at = None
                trigger = True
            if trigger:
                self._busy = True
                self._last_analysis = at
                count = self.config.frames_per_analysis
                chosen = list(self.ring)[-count:]
        if self.status != "ok":
            self._set_status("ok")
        if trigger:
            self.pool.submit(self._analyse, chosen)

    def _redate(self, delta: float) -> None:
        with self._lock:
            self.ring = collections.deque(((t + delta, j) for t, j in self.ring), maxlen=RING)

    def _analyse(self, frames: list[tuple[float, bytes]]) -> None:
        start = frames[0][0]
        outcome = "failures"
        try:
            self.analyser.analyse(
                self.camera.name, [(t - start, j) for t, j in frames], started=start
            )
            outcome = "analyses"
        except AnalysisFailed:
            pass  # stored as an event that says why, and logged
        except Exception as exc:  # a worker thread has no one else to tell
            print(
                f"video-dashboard: camera {self.camera.name}: analysis crashed: {exc!r}",
                file=sys.stderr,
            )
        finally:
            with self._lock:
                self.counts[outcome] += 1
                self._busy = False

    def latest(self, seconds: float) -> list[tuple[float, bytes]]:
        with self._lock:
            frames = list(self.ring)
        if not frames:
            return []
        newest = frames[-1][0]
        return [f for f in frames if f[0] >= newest - seconds]

    def info(self) -> dict[str, Any]:
        with self._lock:
            last = self.ring[-1][0] if self.ring else None
        return {
            "name": self.camera.name,
            "kind": self.camera.kind,
            "status": self.status,
            "error": self.error,
            "interval_s": self.camera.interval_s,
            "motion_gating": self.camera.motion_gating,
            "last_frame": last,
            "last_motion": self.last_motion or None,
            "counts": dict(self.counts),
            "reader_pid": self._reader.pid if self._reader is not None else None,
        }

    def latest_jpeg(self) -> bytes | None:
        with self._lock:
            return self.ring[-1][1] if self.ring else None
