"""The HTTP side: the dashboard (static files, no build step), the events JSON API,
``POST /analyze``, the daily summary and ``/health``.

    GET  /                       the dashboard
    GET  /health                 {"status": "ok", mode, cameras, inference, events, ...}
    GET  /api/cameras            every camera with its status, latest frame time and event
    GET  /api/cameras/NAME/latest.jpg
    GET  /api/events?camera=&category=&threat=&hours=&hide_no_activity=1&q=&limit=&before=
    GET  /api/events/ID          one event; /api/events/ID/frames/N.jpg its frames
    GET  /api/bench              the bench figures the recipe wrote (bench_file)
    GET  /summary.md?date=YYYY-MM-DD   the daily Markdown summary (today by default)
    POST /analyze  {"clip": PATH} or {"camera": NAME, "seconds": S}  -> the stored event
"""

from __future__ import annotations

import json
import mimetypes
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import __version__, media, summary
from .analysis import Analyser, AnalysisFailed
from .cameras import CameraWorker
from .config import Config
from .store import CATEGORIES, Filters, Store

STATIC = Path(__file__).parent / "static"


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Service:
    """Everything the handlers reach: the config, the store, the analyser, the cameras."""

    def __init__(
        self, config: Config, store: Store, analyser: Analyser, cameras: dict[str, CameraWorker]
    ) -> None:
        self.config = config
        self.store = store
        self.analyser = analyser
        self.cameras = cameras
        self.started = time.time()
        self._lock = threading.Lock()
        self._model_check: tuple[float, float, str | None] = (-1e9, 0, None)

    def health(self) -> dict[str, Any]:
        inference = self.config.inference
        cams = {name: w.info() for name, w in self.cameras.items()}
        offline = sorted(n for n, c in cams.items() if c["status"] == "offline")
        model_error = self.model_error()
        return {
            "status": "degraded" if offline or model_error else "ok",
            "version": __version__,
            "mode": self.analyser.mode,
            "analyser": "vision language model" if inference else "people detector (CPU path)",
            "inference": None
            if inference is None
            else {
                "base_url": inference.base_url,
                "model": inference.model,
                "test_run": inference.test_run,
                "reachable": model_error is None,
                "error": model_error,
            },
            "uptime_s": round(time.time() - self.started, 1),
            "events": self.store.count(),
            "analysis": dict(self.analyser.stats),
            "cameras_offline": offline,
            "cameras": cams,
        }

    def model_error(self) -> str | None:
        """Why the model server does not answer ``GET /models`` (None: it does). Asked at
        most every 10 s (the dashboard polls /health every 5), and again at once after an
        analysis failed."""
        inference = self.config.inference
        if inference is None:
            return None
        with self._lock:
            checked, failures, error = self._model_check
            fresh = time.monotonic() - checked < 10
            if fresh and failures == self.analyser.stats["failures"]:
                return error
            failures = self.analyser.stats["failures"]
            url = inference.base_url.rstrip("/") + "/models"
            headers = {"Authorization": f"Bearer {inference.api_key}"} if inference.api_key else {}
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=3) as response:
                    response.read()
                error = None
            except urllib.error.HTTPError as exc:
                error = f"{url}: HTTP {exc.code} {exc.reason}"
            except OSError as exc:
                error = f"{url}: {getattr(exc, 'reason', exc)}"
            self._model_check = (time.monotonic(), failures, error)
            return error

    def bench(self) -> dict[str, Any] | None:
        path = self.config.bench_file
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return {"error": f"{path}: cannot read bench figures: {exc}"}
        return data if isinstance(data, dict) else {"error": f"{path}: not a JSON object"}

    def analyse_request(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with 'clip' or 'camera'")
        count = self.config.frames_per_analysis
        if "clip" in body:
            clip = Path(str(body["clip"])).resolve()
            allowed = self.config.allowed_media()
            if not any(clip.is_relative_to(a) for a in allowed):
                where = ", ".join(map(str, allowed)) or "none configured (media_dirs)"
                raise BadRequest(f"clip {clip} is outside the allowed media folders: {where}", 403)
            if not clip.is_file():
                raise BadRequest(f"clip {clip} does not exist", 404)
            try:
                frames = media.sample_clip(self.config.ffmpeg, clip, count)
            except media.MediaError as exc:
                raise BadRequest(str(exc), 422) from None
            camera = str(body.get("camera") or "clip")
            started = clip.stat().st_mtime - frames[-1][0]
            return self.analyser.analyse(camera, frames, started=started, clip=str(clip))
        if "camera" in body:
            name = str(body["camera"])
            worker = self.cameras.get(name)
            if worker is None:
                raise BadRequest(
                    f"no camera named {name!r} (cameras: {', '.join(self.cameras)})", 404
                )
            seconds = body.get("seconds", 10)
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not 0 < seconds <= 3600
            ):
                raise BadRequest("'seconds' must be a number of seconds, 0 < seconds <= 3600")
            recent = worker.latest(float(seconds))
            if not recent:
                raise BadRequest(f"camera {name!r} has sent no frames yet ({worker.status})", 409)
            # Evenly spread over the window, oldest first.
            if len(recent) > count:
                step = (len(recent) - 1) / (count - 1)
                recent = [recent[round(i * step)] for i in range(count)]
            start = recent[0][0]
            return self.analyser.analyse(name, [(t - start, j) for t, j in recent], started=start)
        raise BadRequest("the body must name a 'clip' (a path on this host) or a 'camera'")


def _filters(query: dict[str, list[str]]) -> Filters:
    def one(key: str) -> str | None:
        values = query.get(key)
        return values[-1] if values and values[-1] != "" else None

    def number(key: str, low: float, high: float) -> float | None:
        value = one(key)
        if value is None:
            return None
        try:
            n = float(value)
        except ValueError:
            raise BadRequest(f"{key}={value!r} is not a number") from None
        if not low <= n <= high:
            raise BadRequest(f"{key}={value} is outside {low:g}..{high:g}")
        return n

    category = one("category")
    if category is not None and category not in CATEGORIES:
        raise BadRequest(f"category={category!r} is not one of {', '.join(CATEGORIES)}")
    before = number("before", 0, 2**62)
    return Filters(
        camera=one("camera"),
        category=category,
        min_threat=int(number("threat", 0, 2) or 0),
        hours=number("hours", 0, 24 * 366),
        hide_no_activity=one("hide_no_activity") in ("1", "true", "on", "yes"),
        search=one("q"),
        limit=int(number("limit", 1, 1000) or 100),
        before_id=None if before is None else int(before),
    )


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"video-dashboard/{__version__}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a dashboard polls every few seconds; the journal would drown in it

        def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def do_GET(self) -> None:
            try:
                self._get()
            except BadRequest as exc:
                self._error(exc.status, str(exc))
            except BrokenPipeError:
                pass

        do_HEAD = do_GET

        def do_POST(self) -> None:
            try:
                self._post()
            except BadRequest as exc:
                self._error(exc.status, str(exc))
            except BrokenPipeError:
                pass

        def _get(self) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            parts = [p for p in path.split("/") if p]
            if path in ("/", "/index.html"):
                self._static("index.html")
            elif parts[:1] == ["static"] and len(parts) == 2:
                self._static(parts[1])
            elif path == "/health":
                self._json(service.health())
            elif path == "/api/bench":
                self._json({"bench": service.bench()})
            elif path == "/api/cameras":
                latest = service.store.latest_by_camera()
                self._json(
                    {
                        "cameras": [
                            w.info() | {"event": latest.get(n)} for n, w in service.cameras.items()
                        ]
                    }
                )
            elif parts[:2] == ["api", "cameras"] and len(parts) == 4 and parts[3] == "latest.jpg":
                worker = service.cameras.get(parts[2])
                jpeg = worker.latest_jpeg() if worker is not None else None
                if jpeg is None:
                    raise BadRequest(f"no frame from camera {parts[2]!r} yet", 404)
                self._send(200, jpeg, "image/jpeg")
            elif path == "/api/events":
                self._json({"events": service.store.events(_filters(query))})
            elif parts[:2] == ["api", "events"] and len(parts) >= 3:
                self._event(parts[2:])
            elif path == "/summary.md":
                day_text = (query.get("date") or [""])[-1]
                try:
                    day = date.fromisoformat(day_text) if day_text else date.today()
                except ValueError:
                    raise BadRequest(f"date={day_text!r} is not YYYY-MM-DD") from None
                text = summary.daily(service.store, day)
                self._send(200, text.encode(), "text/markdown; charset=utf-8")
            else:
                raise BadRequest(f"no such page: {path}", 404)

        def _event(self, rest: list[str]) -> None:
            try:
                event_id = int(rest[0])
            except ValueError:
                raise BadRequest(f"event id {rest[0]!r} is not a number", 404) from None
            if len(rest) == 1:
                event = service.store.event(event_id)
                if event is None:
                    raise BadRequest(f"no event {event_id}", 404)
                self._json(event)
            elif len(rest) == 3 and rest[1] == "frames" and rest[2].removesuffix(".jpg").isdigit():
                frame = service.store.frame_path(event_id, int(rest[2].removesuffix(".jpg")))
                if not frame.is_file():
                    raise BadRequest(f"event {event_id} has no frame {rest[2]}", 404)
                self._send(200, frame.read_bytes(), "image/jpeg", cache=True)
            else:
                raise BadRequest(f"no such page: {self.path}", 404)

        def _static(self, name: str) -> None:
            file = STATIC / name
            if "/" in name or not file.is_file():
                raise BadRequest(f"no such file: {name}", 404)
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            self._send(200, file.read_bytes(), kind)

        def _post(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if 0 < length <= 1 << 20 else b""
            if path != "/analyze":
                raise BadRequest(f"no such endpoint: POST {path}", 404)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise BadRequest("the body is not JSON") from None
            try:
                event = service.analyse_request(body)
            except AnalysisFailed as exc:
                self._json({"error": str(exc), "event": exc.event}, 502)
                return
            self._json(event)

    return Handler


def serve(service: Service, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    host_bound, port_bound = server.server_address[:2]
    print(f"video-dashboard: listening on http://{host_bound!s}:{port_bound}", flush=True)
    print(
        f"video-dashboard: analysing with {service.health()['analyser']}",
        file=sys.stderr,
        flush=True,
    )
    return server
