"""The video-dashboard service as a host runs it: its folder copied elsewhere and started as
its own process, fed clips and fake cameras made by ffmpeg, asked over loopback HTTP. The
vision model is the scripted OpenAI-compatible server; everything else is real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from supervisor_video_dashboard import kit

from supervisor.testing import Reply, ScriptedModelServer, vision_request

FIELDS = {
    "title",
    "scene",
    "shortSummary",
    "observations",
    "confidence",
    "potential_threat_level",
    "other_concerns",
    "categories",
}


def answer(**overrides: Any) -> str:
    base = {
        "title": "Person at the door",
        "scene": "A front porch in daylight",
        "shortSummary": "A person walks up to the door and leaves a parcel.",
        "observations": ["a person approaches", "a parcel is left by the door"],
        "confidence": 0.8,
        "potential_threat_level": 1,
        "other_concerns": [],
        "categories": {"people": True, "vehicles": False, "animals": False, "packages": True},
    }
    return json.dumps(base | overrides)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of clips for the module: moving shapes (nobody), a box standing still, and
    scikit-image's photo of a person held still in a wider frame."""
    folder = tmp_path_factory.mktemp("clips")
    kit.moving_shapes(folder / "shapes.mp4")
    kit.moving_shapes(folder / "idle.mp4", move=False)
    kit.still_photo(folder / "person.mp4", kit.astronaut_png(folder / "astronaut.png"))
    return folder


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url: str, body: Any, timeout: float = 120) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., kit.RunningService]]:
    running: list[kit.RunningService] = []

    def make(config: dict[str, Any], name: str = "svc") -> kit.RunningService:
        config = {"data_dir": str(tmp_path / name / "data")} | config
        service = kit.RunningService(tmp_path / name, config)
        running.append(service)
        return service

    yield make
    for service in running:
        service.stop()


def test_cpu_path_finds_the_person_and_nothing_in_the_empty_scene(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    service = start({"media_dirs": [str(clips)]})
    assert get(f"{service.url}/health")["mode"] == "detector"

    status, person = post(f"{service.url}/analyze", {"clip": str(clips / "person.mp4")})
    assert status == 200, person
    assert person["categories"] == ["people"]
    assert person["source"] == "detector" and person["analyser"] == "opencv-hog-people"
    assert person["title"] == "1 person detected"
    assert "not a language model" in person["analysis"]["scene"]
    assert person["activity"] and 0 < person["confidence"] <= 1
    assert len(person["frames"]) == 6

    status, empty = post(f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4")})
    assert status == 200, empty
    assert empty["categories"] == [] and not empty["activity"]
    assert empty["title"] == "Motion, no person recognised"
    assert empty["analysis"]["detector"]["people_max"] == 0

    # The frames the detector looked at are served as JPEGs.
    with urllib.request.urlopen(service.url + person["frames"][0]["url"]) as response:
        frame = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert frame is not None and frame.shape[1] == 640

    # The events API's filters.
    events = f"{service.url}/api/events"
    # Newest first by when it happened: the person clip was made after the shapes clip.
    assert [e["id"] for e in get(events)["events"]] == [person["id"], empty["id"]]
    assert [e["id"] for e in get(f"{events}?hide_no_activity=1")["events"]] == [person["id"]]
    assert [e["id"] for e in get(f"{events}?category=people")["events"]] == [person["id"]]
    assert get(f"{events}?category=vehicles")["events"] == []
    assert [e["id"] for e in get(f"{events}?q=recognised")["events"]] == [empty["id"]]
    assert get(f"{events}?threat=1")["events"] == []
    assert len(get(f"{events}?hours=1")["events"]) == 2
    # A clip recorded three hours ago dates its event then: "last hour" leaves it out.
    old = clips / f"old-{time.monotonic_ns()}.mp4"
    old.write_bytes((clips / "shapes.mp4").read_bytes())
    os.utime(old, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    status, earlier = post(f"{service.url}/analyze", {"clip": str(old)})
    assert status == 200 and earlier["started"] < time.time() - 2.9 * 3600
    assert earlier["id"] not in [e["id"] for e in get(f"{events}?hours=1")["events"]]
    assert earlier["id"] in [e["id"] for e in get(f"{events}?hours=4")["events"]]
    assert get(f"{events}?limit=1")["events"][0]["id"] == person["id"]
    after = get(f"{events}?before={person['id']}")["events"]
    assert [e["id"] for e in after] == [empty["id"], earlier["id"]]
    assert get(f"{events}?camera=front")["events"] == []

    summary = urllib.request.urlopen(f"{service.url}/summary.md").read().decode()
    assert "## Overview" in summary and "## Timeline" in summary and "## In one line" in summary
    assert "1 person detected" in summary and "people detector (CPU path)" in summary


def test_bad_requests_say_what_is_wrong(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    service = start({"media_dirs": [str(clips / "nowhere")]})
    status, body = post(f"{service.url}/analyze", {"clip": str(clips / "person.mp4")})
    assert status == 403 and "outside the allowed media folders" in body["error"]
    status, body = post(f"{service.url}/analyze", {"camera": "door"})
    assert status == 404 and "no camera named 'door'" in body["error"]
    status, body = post(f"{service.url}/analyze", {"nothing": 1})
    assert status == 400 and "'clip'" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{service.url}/api/events?category=cats")
    assert caught.value.code == 400
    assert "cats" in json.loads(caught.value.read())["error"]
    assert get(f"{service.url}/health")["events"] == 0  # nothing was stored


def test_a_clip_analysed_by_the_vision_endpoint(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    replies = iter([answer(), "I think someone is there."])

    def script(messages: list[dict[str, Any]]) -> Reply:
        return Reply(next(replies))

    with ScriptedModelServer(script, require_vision=True) as model:
        inference = {"base_url": model.base_url, "model": "qwen3-vl-test", "test_run": True}
        service = start({"media_dirs": [str(clips)], "inference": inference})
        assert get(f"{service.url}/health")["mode"] == "model"

        status, event = post(
            f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4"), "camera": "porch"}
        )
        assert status == 200, event
        assert event["source"] == "model" and event["analyser"] == "qwen3-vl-test"
        assert event["title"] == "Person at the door" and event["threat"] == 1
        assert event["categories"] == ["people", "packages"] and event["test_run"]
        assert event["camera"] == "porch" and set(event["analysis"]) == FIELDS

        # The request carried the frames as JPEG image parts, in time order, and the schema.
        seen = vision_request(model.requests[0])
        assert seen.problems == ()
        assert len(seen.images) == 6 and set(seen.image_types) == {"image/jpeg"}
        assert set(seen.schema["required"]) == FIELDS  # type: ignore[index]
        assert seen.schema["properties"]["potential_threat_level"]["enum"] == [0, 1, 2]  # type: ignore[index]
        assert "data:video/jpeg" not in json.dumps(model.requests[0])
        xs = []
        for jpeg in seen.images:
            frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            orange = cv2.inRange(frame, (0, 100, 200), (80, 200, 255))
            xs.append(float(np.nonzero(orange)[1].mean()))
        assert xs == sorted(xs) and xs[-1] - xs[0] > 150, xs  # the box moves right over time

        # An answer outside the schema is refused, kept as an event that says why, not lost.
        status, body = post(f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4")})
        assert status == 502 and "not JSON" in body["error"]
        failed = get(f"{service.url}/api/events/{body['event']['id']}")
        assert failed["title"] == "Analysis failed" and "not JSON" in failed["error"]
        health = get(f"{service.url}/health")
        assert health["analysis"]["failures"] == 1 and health["inference"]["reachable"]
        assert "analysis of clip failed" in service.log()
    # The model server gone: the analysis fails with the reason, and /health says so.
    status, body = post(f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4")})
    assert status == 502 and "Connection refused" in body["event"]["error"]
    health = get(f"{service.url}/health")
    assert health["status"] == "degraded" and not health["inference"]["reachable"]
    assert "Connection refused" in health["inference"]["error"]


def test_the_scripted_server_refuses_what_a_vision_model_would(clips: Path) -> None:
    with ScriptedModelServer([Reply(answer())], require_vision=True) as model:
        body = {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64,AAAA"}}
                    ],
                }
            ],
        }
        status, reply = post(f"{model.base_url}/chat/completions", body)
    assert status == 400
    message = reply["error"]["message"]
    assert "data:video/jpeg" in message and "no image_url parts" in message
    assert "no response_format json_schema" in message


def test_cameras_are_polled_and_motion_gates_the_analysis(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    moving, moving_url = kit.fake_camera(clips / "shapes.mp4")
    idle, idle_url = kit.fake_camera(clips / "idle.mp4")
    folder = clips.parent / f"drop-{time.monotonic_ns()}"
    folder.mkdir()
    try:
        service = start(
            {
                "cameras": [
                    {"name": "road", "kind": "stream", "url": moving_url, "interval_s": 0.5},
                    {
                        "name": "hall",
                        "kind": "stream",
                        "url": idle_url,
                        "interval_s": 0.5,
                        "keyframes_only": True,  # decodes one frame a second here
                    },
                    {"name": "drop", "kind": "folder", "path": str(folder), "interval_s": 0.3},
                ]
            }
        )
        events = f"{service.url}/api/events"
        road = wait_for(lambda: get(f"{events}?camera=road")["events"], 30, "a road event")[0]
        assert road["title"] == "Motion, no person recognised" and road["source"] == "detector"
        assert len(road["frames"]) == 6

        def cameras() -> dict[str, Any]:
            return {c["name"]: c for c in get(f"{service.url}/api/cameras")["cameras"]}

        # The idle camera is read and watched but costs no analysis.
        wait_for(lambda: cameras()["hall"]["counts"]["frames"] >= 8, 30, "frames from the hall")
        cams = cameras()
        assert cams["hall"]["status"] == "ok"
        assert cams["hall"]["counts"]["motion"] == 0 and cams["hall"]["counts"]["analyses"] == 0
        assert get(f"{events}?camera=hall")["events"] == []
        assert cams["road"]["event"]["id"] == road["id"]
        with urllib.request.urlopen(f"{service.url}/api/cameras/hall/latest.jpg") as response:
            assert response.read(2) == b"\xff\xd8"

        # A camera's latest seconds, on request, idle or not.
        status, latest = post(f"{service.url}/analyze", {"camera": "hall", "seconds": 3})
        assert status == 200 and latest["camera"] == "hall" and 4 <= len(latest["frames"]) <= 6

        # A clip dropped into a folder camera becomes an event once, and only once; a clip
        # in which nothing moves costs no analysis.
        (folder / "a-still.mp4").write_bytes((clips / "idle.mp4").read_bytes())
        (folder / "b-moving.mp4").write_bytes((clips / "shapes.mp4").read_bytes())
        drop = wait_for(lambda: get(f"{events}?camera=drop")["events"], 30, "a folder event")
        assert drop[0]["title"] == "Motion, no person recognised"
        assert drop[0]["clip"] == str(folder / "b-moving.mp4")
        time.sleep(1)
        assert len(get(f"{events}?camera=drop")["events"]) == 1
        counts = cameras()["drop"]["counts"]
        assert counts["frames"] == 12 and counts["motion"] == 1 and counts["analyses"] == 1

        # The camera going away is shown, not hidden.
        moving.kill()
        wait_for(
            lambda: get(f"{service.url}/health")["cameras_offline"] == ["road"], 30, "road offline"
        )
        assert "camera road: offline" in service.log()
    finally:
        for process in (moving, idle):
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cameras": [{"name": "a", "kind": "webcam"}]}, "cameras[0].kind: 'webcam' is not one of"),
        ({"cameras": [{"name": "a", "kind": "folder", "path": "/nonexistent"}]}, "cameras[0].path"),
        ({"cameras": [{"name": "a", "kind": "stream", "url": "ftp://x"}]}, "cameras[0].url"),
        ({"frames_per_analysis": 12}, "frames_per_analysis: 12 is outside 4..8"),
        ({"inference": {"base_url": "http://x/v1"}}, "inference.model: expected a string"),
        ({"colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_a_wrong_configuration_is_one_line_and_exit_2(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    from supervisor_video_dashboard import SERVICE_DIR

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data")} | config))
    result = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(path)],
        cwd=SERVICE_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or written


def test_a_snapshot_camera_is_polled_and_its_failures_shown(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    """An HTTP snapshot camera (one JPEG per GET) whose picture changes, and one whose URL
    fails: the first makes an event, the second is shown offline with the reason."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    still = cv2.imread(str(clips / "astronaut.png"))
    shots = []
    for x in (0, 120, 240, 360):  # the photo moving across a wider picture
        canvas = np.full((360, 640, 3), 80, np.uint8)
        canvas[40:296, x : x + 256] = cv2.resize(still, (256, 256))
        shots.append(cv2.imencode(".jpg", canvas)[1].tobytes())
    served = [0]

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/snap.jpg":
                self.send_error(404)
                return
            body = shots[served[0] % len(shots)]
            served[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    camera = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=camera.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{camera.server_address[1]}"
    try:
        service = start(
            {
                "cameras": [
                    {
                        "name": "gate",
                        "kind": "snapshot",
                        "url": f"{base}/snap.jpg",
                        "interval_s": 0.3,
                    },
                    {"name": "broken", "kind": "snapshot", "url": f"{base}/gone.jpg"},
                ]
            }
        )
        events = f"{service.url}/api/events?camera=gate"
        gate = wait_for(lambda: get(events)["events"], 30, "an event from the snapshot camera")
        assert gate[0]["source"] == "detector" and gate[0]["analysis"]["detector"]["motion"] > 0
        health = get(f"{service.url}/health")
        assert health["cameras"]["gate"]["status"] == "ok"
        assert health["cameras_offline"] == ["broken"] and health["status"] == "degraded"
        assert "HTTP 404" in health["cameras"]["broken"]["error"]
    finally:
        camera.shutdown()
        camera.server_close()


def test_events_and_seen_clips_survive_a_restart(
    clips: Path, start: Callable[..., kit.RunningService], tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "moving.mp4").write_bytes((clips / "shapes.mp4").read_bytes())
    config = {
        "data_dir": str(tmp_path / "kept"),
        "cameras": [{"name": "uploads", "kind": "folder", "path": str(folder), "interval_s": 0.2}],
    }
    first = start(config, name="first")
    events = f"{first.url}/api/events"
    found = wait_for(lambda: get(events)["events"], 30, "the clip's event")
    assert first.stop() == 0 and "video-dashboard: stopped" in first.log()

    second = start(config, name="second")
    wait_for(lambda: get(f"{second.url}/health")["cameras"]["uploads"]["status"] == "ok", 10, "ok")
    time.sleep(1)  # five listings of the folder
    assert get(f"{second.url}/api/events")["events"] == found
    assert get(f"{second.url}/health")["cameras"]["uploads"]["counts"]["analyses"] == 0


def test_a_clip_can_go_as_a_file_video_instead_of_frames(
    clips: Path, start: Callable[..., kit.RunningService]
) -> None:
    with ScriptedModelServer([Reply(answer())], require_vision=True) as model:
        inference = {"base_url": model.base_url, "model": "m", "clip_media": "video_url"}
        service = start({"media_dirs": [str(clips)], "inference": inference})
        status, event = post(f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4")})
        assert status == 200, event
        seen = vision_request(model.requests[0])
        assert seen.problems == () and seen.images == ()
        assert seen.videos == ((clips / "shapes.mp4").resolve().as_uri(),)
        assert model.requests[0]["mm_processor_kwargs"] == {"fps": 2.0, "do_sample_frames": True}
        assert len(event["frames"]) == 6  # still sampled here, for the dashboard


def test_the_service_stands_alone_and_the_plugin_loads() -> None:
    """The recipe uploads the service folder to hosts without supervisor: it imports only
    the standard library, OpenCV, numpy and itself (service/requirements.txt)."""
    import ast

    from supervisor_video_dashboard import SERVICE_DIR

    from supervisor.plugins import Plugins

    allowed = {"cv2", "numpy"} | set(sys.stdlib_module_names)
    for path in SERVICE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
    requirements = (SERVICE_DIR / "requirements.txt").read_text()
    assert "opencv-python-headless>=4.8,<5" in requirements and "numpy" in requirements
    info = Plugins().info["video-dashboard"]
    assert info.error is None, info.error


def test_the_host_makes_its_own_test_clip(tmp_path: Path) -> None:
    """The recipe's end-to-end check on a host needs a clip; the service makes one with the
    host's ffmpeg, and it has motion in it."""
    from supervisor_video_dashboard import SERVICE_DIR
    from supervisor_video_dashboard.service import media, motion

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    clip = tmp_path / "selftest.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(config), "--make-test-clip", str(clip)],
        cwd=SERVICE_DIR.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frames = media.sample_clip("ffmpeg", clip, 6)
    assert len(frames) == 6 and motion.max_motion([j for _, j in frames]) > 0.01
