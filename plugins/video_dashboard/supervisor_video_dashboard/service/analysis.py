"""Frames in, an event out: from the vision model when one is configured, else from motion
plus the people detector (the CPU path). A failed analysis is stored as an event too, with
its error, so that the dashboard shows it rather than nothing."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import detect, motion, vision
from .config import Config
from .store import CATEGORIES, Store


class AnalysisFailed(Exception):
    def __init__(self, message: str, event: dict[str, Any]) -> None:
        super().__init__(message)
        self.event = event


class Analyser:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self.stats: dict[str, float] = {
            "analyses": 0,
            "failures": 0,
            "model_s": 0.0,
            "detector_s": 0.0,
        }

    @property
    def mode(self) -> str:
        return "model" if self.config.inference is not None else "detector"

    def _count(self, key: str, amount: float = 1) -> None:
        with self._lock:
            self.stats[key] += amount

    def analyse(
        self,
        camera: str,
        frames: list[tuple[float, bytes]],
        *,
        started: float,
        clip: str | None = None,
    ) -> dict[str, Any]:
        """Analyse frames (time order; times in seconds from ``started``) and store the event.
        Raises :class:`AnalysisFailed` (carrying the stored error event) when it fails."""
        inference = self.config.inference
        rel = [(t - frames[0][0], jpeg) for t, jpeg in frames]
        event: dict[str, Any] = {
            "camera": camera,
            "started": started + frames[0][0],
            "ended": started + frames[-1][0],
            "frames": [{"n": n, "t": round(t, 3)} for n, (t, _) in enumerate(rel)],
            "clip": clip,
            "test_run": bool(inference and inference.test_run),
        }
        jpegs = [jpeg for _, jpeg in frames]
        self._count("analyses")
        if inference is None:
            clock = time.monotonic()
            analysis = _detector_analysis(jpegs)
            self._count("detector_s", time.monotonic() - clock)
            event |= {"source": "detector", "analyser": detect.NAME, "analysis": analysis}
        else:
            try:
                video = Path(clip) if clip and inference.clip_media == "video_url" else None
                analysis, took = vision.analyse(inference, camera, rel, video)
            except vision.VisionError as exc:
                self._count("failures")
                print(f"video-dashboard: analysis of {camera} failed: {exc}", file=sys.stderr)
                failed = {
                    "title": "Analysis failed",
                    "scene": "",
                    "shortSummary": str(exc),
                    "observations": [],
                    "confidence": 0.0,
                    "potential_threat_level": 0,
                    "other_concerns": [],
                    "categories": dict.fromkeys(CATEGORIES, False),
                }
                event |= {
                    "source": "model",
                    "analyser": inference.model,
                    "analysis": failed,
                    "activity": True,  # a person should see that it failed
                    "error": str(exc),
                }
                stored = self.store.add_event(event, jpegs)
                raise AnalysisFailed(str(exc), stored) from None
            self._count("model_s", took)
            event |= {"source": "model", "analyser": inference.model, "analysis": analysis}
        analysis = event["analysis"]
        event["activity"] = (
            any(analysis["categories"].values()) or analysis["potential_threat_level"] > 0
        )
        return self.store.add_event(event, jpegs)


def _detector_analysis(jpegs: list[bytes]) -> dict[str, Any]:
    """An answer in the model's schema, from motion and the HOG people detector, saying
    plainly that a detector (which sees only people) made it."""
    found = [detect.people(j) for j in jpegs]
    frames_with = sum(1 for f in found if f)
    most = max((len(f) for f in found), default=0)
    best = max((w for f in found for w in f), default=0.0)
    moved = motion.max_motion(jpegs)
    if most:
        noun = "person" if most == 1 else "people"
        title = f"{most} {noun} detected"
        summary = (
            f"The people detector found {most} {noun} in {frames_with} of {len(jpegs)} "
            f"frames; {moved:.1%} of the picture changed between frames."
        )
    elif moved > 0:
        title = "Motion, no person recognised"
        summary = (
            f"{moved:.1%} of the picture changed between frames; the people detector "
            "found no one. It does not recognise vehicles, animals or packages."
        )
    else:
        title = "No activity"
        summary = "Nothing moved and the people detector found no one."
    observations = [
        f"frame {n}: {len(f)} {'person' if len(f) == 1 else 'people'}"
        + (f" (best weight {max(f):.2f})" if f else "")
        for n, f in enumerate(found)
    ]
    return {
        "title": title,
        "scene": (
            "Seen by OpenCV's HOG people detector with frame differencing, not a language "
            "model: no scene description."
        ),
        "shortSummary": summary,
        "observations": observations,
        # The SVM margin mapped to 0..1: about 0.5 at the detection floor, 0.9 at weight 2.
        "confidence": round(min(1.0, best / 2.2), 2) if most else 0.0,
        "potential_threat_level": 0,
        "other_concerns": [],
        "categories": {"people": most > 0, "vehicles": False, "animals": False, "packages": False},
        "detector": {
            "name": detect.NAME,
            "people_max": most,
            "frames_with_people": frames_with,
            "motion": round(moved, 5),
        },
    }
