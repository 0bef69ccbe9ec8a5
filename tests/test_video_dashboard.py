"""The video dashboard in a real browser: Debian's chromium, headless, driven by Playwright
(no browser download). The service runs as on a host, with two fake cameras and events from
the scripted vision server; the page must show the camera grid and the events, and every
filter must change what it lists. A screenshot is kept and checked to be a real picture."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from supervisor_video_dashboard import kit

from supervisor.testing import Reply, ScriptedModelServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs/video-dashboard/dashboard.png"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def review(
    title: str, summary: str, threat: int, *cats: str, concerns: tuple[str, ...] = ()
) -> Reply:
    categories = {c: c in cats for c in ("people", "vehicles", "animals", "packages")}
    body = {
        "title": title,
        "scene": "Front of a house, daylight",
        "shortSummary": summary,
        "observations": [summary],
        "confidence": 0.7,
        "potential_threat_level": threat,
        "other_concerns": list(concerns),
        "categories": categories,
    }
    return Reply(json.dumps(body))


REVIEWS = [
    review("Parcel delivered", "A courier leaves a parcel by the door.", 1, "people", "packages"),
    review("No activity", "Nothing happens in the yard.", 0),
    review("Car in the driveway", "A car pulls into the driveway and parks.", 0, "vehicles"),
    review(
        "Someone climbs the gate",
        "A person climbs over the side gate at the back.",
        2,
        "people",
        concerns=("the gate was closed",),
    ),
]


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    clips = tmp_path / "clips"
    clips.mkdir()
    kit.still_photo(clips / "person.mp4", kit.astronaut_png(clips / "astronaut.png"))
    kit.moving_shapes(clips / "shapes.mp4")
    kit.moving_shapes(clips / "idle.mp4", move=False)
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "model": "Qwen3-VL-4B-Instruct (test run: scripted)",
                "engine": "vLLM 0.11.1",
                "levels": [
                    {"concurrency": 1, "req_per_s": 0.9, "out_tok_per_s": 61.2, "ttft_ms_p50": 412},
                    {
                        "concurrency": 4,
                        "req_per_s": 2.7,
                        "out_tok_per_s": 180.4,
                        "ttft_ms_p50": 655,
                    },
                ],
            }
        )
    )
    replies = iter(REVIEWS)
    cameras = [kit.fake_camera(clips / "person.mp4"), kit.fake_camera(clips / "idle.mp4")]
    try:
        with ScriptedModelServer(lambda _m: next(replies), require_vision=True) as model:
            config = {
                "data_dir": str(tmp_path / "data"),
                "media_dirs": [str(clips)],
                "bench_file": str(bench),
                "inference": {"base_url": model.base_url, "model": "qwen3-vl", "test_run": True},
                "cameras": [
                    {
                        "name": "front-door",
                        "kind": "stream",
                        "url": cameras[0][1],
                        "interval_s": 0.5,
                    },
                    {"name": "yard", "kind": "stream", "url": cameras[1][1], "interval_s": 0.5},
                ],
            }
            with kit.RunningService(tmp_path / "svc", config) as service:
                import time

                deadline = time.monotonic() + 30
                for name in ("front-door", "yard"):
                    while True:  # until the camera has sent a frame
                        status = json.loads(urllib.request.urlopen(f"{service.url}/health").read())
                        if status["cameras"][name]["counts"]["frames"] >= 4:
                            break
                        assert time.monotonic() < deadline, f"no frames from {name}"
                        time.sleep(0.25)
                post(f"{service.url}/analyze", {"camera": "front-door", "seconds": 3})
                post(f"{service.url}/analyze", {"camera": "yard", "seconds": 3})
                post(
                    f"{service.url}/analyze", {"clip": str(clips / "shapes.mp4"), "camera": "yard"}
                )
                post(
                    f"{service.url}/analyze",
                    {"clip": str(clips / "person.mp4"), "camera": "front-door"},
                )
                yield service.url
    finally:
        for process, _url in cameras:
            process.kill()
            process.wait()


def test_the_dashboard_shows_cameras_and_events_and_filters_them(
    dashboard: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(dashboard)
            rows = page.locator("#events li.event")

            # The camera grid: both cameras, each with its latest frame and description.
            cards = page.locator("#cameras .camera")
            expect(cards).to_have_count(2)
            for name, text in (("front-door", "climbs over the side gate"), ("yard", "car pulls")):
                card = page.locator(f'.camera[data-camera="{name}"]')
                expect(card.locator("img")).to_have_count(1)
                expect(card).to_contain_text(text)
            page.wait_for_function(
                "[...document.querySelectorAll('#cameras img')].every(i => i.naturalWidth > 0)"
            )

            # The timeline: all four events, newest first (a clip's events date from the
            # clip, older than the cameras' latest seconds), with threat badges.
            expect(rows).to_have_count(4)
            expect(rows.last).to_contain_text("Someone climbs the gate")
            expect(rows.last.locator(".badge")).to_have_text("threat 2")
            expect(page.locator("#mode")).to_contain_text("vision model: qwen3-vl (test run)")

            # Every filter changes what is listed.
            page.check("#f-hide")
            expect(rows).to_have_count(3)
            expect(page.locator("#events")).not_to_contain_text("No activity")
            page.uncheck("#f-hide")
            expect(rows).to_have_count(4)
            page.select_option("#f-category", "vehicles")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("Car in the driveway")
            page.select_option("#f-category", "")
            page.select_option("#f-threat", "2")
            expect(rows).to_have_count(1)
            page.select_option("#f-threat", "1")
            expect(rows).to_have_count(2)
            page.select_option("#f-threat", "")
            page.select_option("#f-camera", "yard")
            expect(rows).to_have_count(2)
            page.select_option("#f-camera", "")
            page.fill("#f-search", "parcel")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("Parcel delivered")
            page.fill("#f-search", "")
            page.fill("#f-hours", "1")
            expect(rows).to_have_count(4)
            page.fill("#f-hours", "")

            # An event's frames and JSON.
            rows.filter(has_text="Parcel delivered").click()
            expect(page.locator("#detail-frames img")).to_have_count(6)
            expect(page.locator("#detail-json")).to_contain_text('"shortSummary"')
            expect(page.locator("#detail-title .badge")).to_have_text("threat 1")

            # The health panel with the bench figures the recipe wrote.
            expect(page.locator("#health")).to_contain_text("vision language model")
            expect(page.locator("#bench")).to_contain_text("180.4")
            expect(page.locator("#bench")).to_contain_text("vLLM 0.11.1")

            page.wait_for_function(
                "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []  # the page's script ran without an error
        finally:
            browser.close()

    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 1400
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert image.std() > 20 and colours > 500, (image.std(), colours)  # a page, not a blank
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_the_guide_example_screenshot_is_a_real_picture() -> None:
    image = cv2.imread(str(DOCS_SCREENSHOT), cv2.IMREAD_COLOR)
    assert image is not None, f"{DOCS_SCREENSHOT} is missing (UPDATE_DOCS_SCREENSHOTS=1 remakes it)"
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500
