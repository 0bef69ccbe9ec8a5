"""The steps of ``recipes/video-dashboard.md``: a model server, a bench, the video service
and its dashboard on a host added with ``supervisor hosts add``, checked, with a report.

Every step is idempotent (the deploy API changes only what differs), so ``supervisor recipe
resume`` after a crash runs the unfinished steps again from the last finished one. Each
step carries a ``plan(params)`` that ``recipe run --dry-run`` prints: what would be
installed, written and enabled, read from the host's facts without changing anything.

The paths the recipe chooses:

- ``-p inference=URL``: an existing OpenAI-compatible vision endpoint, used as is (no model
  server is installed);
- an NVIDIA GPU (and not ``-p engine=llama.cpp``): vLLM in a venv serving Qwen3-VL, the
  size chosen from free GPU memory unless ``-p model=``;
- otherwise llama.cpp's OpenAI-compatible server (llama-cpp-python) serving the GGUF named
  by ``-p gguf=``; it answers the video service only with ``-p mmproj=`` (a vision
  projector), else the service uses its CPU detector path, and the report says so;
- no GPU, no GGUF, no endpoint: the CPU path alone (motion plus OpenCV's people detector).

A test-only setting, the environment variable :data:`TEST_VISION_ENV`, points the video
service at a scripted vision server; the run records it as a test run (an event, the
service's ``test_run``, the report's first lines).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import InputError, Sandbox, StepContext
from supervisor.deploy import Deployer, DeployError, Service, systemd_unit

from supervisor_video_dashboard import SERVICE_DIR

TEST_VISION_ENV = "SUPERVISOR_VIDEO_TEST_VISION"
"""Test-only: the base URL of a scripted vision server the video service is pointed at."""

VLLM = "vllm>=0.11.1"  # Qwen3-VL's per-request fps needs 0.11.1 (vllm#27104)
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"
MODEL_UNIT = "video-model"
SERVICE_UNIT = "video-dashboard"
HOST_LABEL = "supervisor.host"  # the ssh backend's label naming the host

# Qwen3-VL sizes (weights, GiB) largest first; a size fits when its weights take at most
# 60% of the free memory (the rest is KV cache, activations and the media encoder).
QWEN3_VL: tuple[tuple[str, float], ...] = (
    ("Qwen/Qwen3-VL-30B-A3B-Instruct-FP8", 31.0),
    ("Qwen/Qwen3-VL-8B-Instruct", 17.0),
    ("Qwen/Qwen3-VL-4B-Instruct", 8.4),
    ("Qwen/Qwen3-VL-2B-Instruct", 4.4),
)
WEIGHTS_SHARE = 0.6
FRAMES = 6  # frames per analysis: --limit-mm-per-prompt leaves room for 8


# -- the host and what the recipe will do there


@dataclass(frozen=True)
class Layout:
    """Where everything goes on the host and which path the recipe takes."""

    host: str
    home: str
    prefix: str
    engine: str  # vllm | llama.cpp | external | none
    model: str  # what the model server serves (vLLM: the HF id; llama.cpp: the GGUF path)
    served_name: str
    model_port: int
    port: int
    gpu_note: str

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.model_port}/v1"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def supervisor_command() -> list[str]:
    """The supervisor CLI of this environment (the hosts commands are its public face)."""
    beside = Path(sys.executable).with_name("supervisor")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("supervisor")
    if found is None:
        raise InputError("video-dashboard: the supervisor command is not on PATH")
    return [found]


def host_facts(host: str) -> dict[str, Any]:
    """Check the host now (reachable, key login) and return its facts (GPUs, memory, home)."""
    if not host:
        raise InputError("video-dashboard: -p host=NAME is required (supervisor hosts add NAME)")
    cli = supervisor_command()
    check = subprocess.run(
        [*cli, "hosts", "check", host, "--json"], capture_output=True, text=True, timeout=180
    )
    if check.returncode == 2 or not check.stdout.strip():
        raise InputError(
            f"video-dashboard: host {host!r}: {check.stderr.strip().splitlines()[-1:] or 'unknown'}"
        )
    outcome = json.loads(check.stdout)[0]
    if not outcome["ok"]:
        raise InputError(f"video-dashboard: host {host!r} is unreachable: {outcome['detail']}")
    listing = subprocess.run(
        [*cli, "hosts", "ls", "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    for entry in json.loads(listing.stdout):
        if entry.get("name") == host:
            return dict(entry.get("facts") or {})
    raise InputError(f"video-dashboard: host {host!r} is not registered")


def free_gib(gpu: dict[str, Any]) -> float:
    """A GPU's free memory (unified memory: the host's available RAM, as the facts say)."""
    return float((gpu.get("memory_total_mb") or 0) - (gpu.get("memory_used_mb") or 0)) / 1024


def choose_model(gpus: list[dict[str, Any]]) -> tuple[str, str]:
    """The largest Qwen3-VL whose weights fit the free memory of the freest GPU, and why."""
    free = [((g.get("memory_total_mb") or 0) - (g.get("memory_used_mb") or 0)) / 1024 for g in gpus]
    best = max(free) if free else 0.0
    for name, weights in QWEN3_VL:
        if weights <= WEIGHTS_SHARE * best:
            return name, f"{best:.1f} GiB free on the freest GPU; {name} needs ~{weights:g} GiB"
    raise InputError(
        f"video-dashboard: the host's freest GPU has {best:.1f} GiB free, too little for "
        f"Qwen3-VL-2B (~4.4 GiB); free memory or pass -p engine=llama.cpp"
    )


def layout(params: dict[str, Any], facts: dict[str, Any]) -> Layout:
    host = str(params["host"])
    home = str(facts.get("home") or "")
    if not home.startswith("/"):
        raise InputError(f"video-dashboard: host {host!r}: its facts name no home folder")
    prefix = str(params.get("prefix") or f"{home}/video-dashboard").rstrip("/")
    if not prefix.startswith("/"):
        raise InputError(f"video-dashboard: -p prefix={prefix!r} must be an absolute path")
    gpus = [g for g in facts.get("gpus") or [] if "nvidia" in str(g.get("name", "")).lower()]
    engine = str(params.get("engine") or "auto")
    inference = str(params.get("inference") or "")
    gguf = str(params.get("gguf") or "")
    model = str(params.get("model") or "")
    if inference:
        note = f"an existing vision endpoint ({inference}) is used as is; no model server"
        return Layout(host, home, prefix, "external", model, model or "default", 0,
                      int(params["port"]), note)  # fmt: skip
    if engine in ("auto", "vllm") and gpus:
        note = ", ".join(
            f"{g['name']} ({free_gib(g):.1f} GiB free"
            f"{', unified memory' if g.get('memory_unified') else ''})"
            for g in gpus
        )
        if not model:
            model, why = choose_model(gpus)
            note += f"; {why}"
        return Layout(host, home, prefix, "vllm", model, model.split("/")[-1].lower(),
                      int(params["model_port"]), int(params["port"]), note)  # fmt: skip
    if engine == "vllm":
        raise InputError(f"video-dashboard: host {host!r} has no NVIDIA GPU; vLLM needs one")
    why = "no NVIDIA GPU on the host" if not gpus else "-p engine=llama.cpp"
    if not gguf:
        note = f"{why} and no -p gguf=: the CPU path (motion + OpenCV's people detector) alone"
        return Layout(host, home, prefix, "none", "", "", 0, int(params["port"]), note)
    note = f"{why}: llama.cpp's server on the CPU serving {gguf}"
    return Layout(host, home, prefix, "llama.cpp", gguf, Path(gguf).stem,
                  int(params["model_port"]), int(params["port"]), note)  # fmt: skip


_FACTS: dict[str, dict[str, Any]] = {}


def _planned_layout(params: dict[str, Any]) -> Layout:
    """The layout for a dry run; the host is checked once per process."""
    host = str(params.get("host") or "")
    if host not in _FACTS:
        _FACTS[host] = host_facts(host)
    return layout(params, _FACTS[host])


# -- what gets installed


def model_service(lay: Layout, params: dict[str, Any]) -> Service:
    venv = lay.path("model-venv")
    if lay.engine == "vllm":
        weights = str(params.get("weights") or "") or lay.model
        media = json.dumps({"image": 8, "video": {"count": 1, "num_frames": 16}})
        command: list[str] = [
            f"{venv}/bin/vllm", "serve", weights,
            "--served-model-name", lay.served_name,
            "--host", "127.0.0.1", "--port", str(lay.model_port),
            "--max-model-len", str(params.get("max_model_len") or 16384),
            "--limit-mm-per-prompt", media,
            "--allowed-local-media-path", lay.path("clips"),
            "--gpu-memory-utilization", str(params.get("gpu_memory_utilization") or 0.85),
            "--max-num-seqs", str(params.get("max_num_seqs") or 8),
        ]  # fmt: skip
        env = {"HF_HOME": lay.path("hf")}
    else:
        command = [
            f"{venv}/bin/python", "-m", "llama_cpp.server",
            "--model", lay.model, "--model_alias", lay.served_name,
            "--host", "127.0.0.1", "--port", str(lay.model_port),
            "--n_ctx", str(params.get("max_model_len") or 4096),
            # By default a new request interrupts the one streaming: concurrent clients
            # (the bench, the service beside a person's tests) would see dropped replies.
            "--interrupt_requests", "false",
        ]  # fmt: skip
        if params.get("chat_format"):
            command += ["--chat_format", str(params["chat_format"])]
        if params.get("mmproj"):
            command += ["--clip_model_path", str(params["mmproj"])]
        env = {}
    return Service(
        MODEL_UNIT, command, workdir=lay.prefix, env=env,
        description=f"video-dashboard model server ({lay.engine}: {lay.served_name})",
    )  # fmt: skip


def model_packages(lay: Layout) -> list[str]:
    return [VLLM] if lay.engine == "vllm" else [LLAMA_CPP]


def inference_config(lay: Layout, params: dict[str, Any]) -> dict[str, Any] | None:
    """The video service's ``inference`` (None: the CPU detector path)."""
    test_url = os.environ.get(TEST_VISION_ENV, "")
    if test_url:
        return {"base_url": test_url, "model": "scripted", "test_run": True}
    if lay.engine == "external":
        return {"base_url": str(params["inference"]), "model": lay.served_name}
    if lay.engine == "vllm" or (lay.engine == "llama.cpp" and params.get("mmproj")):
        return {"base_url": lay.model_url, "model": lay.served_name}
    return None


def service_config(lay: Layout, params: dict[str, Any]) -> dict[str, Any]:
    cameras = []
    for i, spec in enumerate(x for x in str(params.get("cameras") or "").split(",") if x):
        name, _, url = (
            spec.partition("=") if "=" in spec.split("://")[0] else (f"cam{i + 1}", "", spec)
        )
        kind = (
            "folder"
            if url.startswith("/")
            else "snapshot"
            if url.endswith((".jpg", ".jpeg"))
            else "stream"
        )
        cameras.append({"name": name, "kind": kind, ("path" if kind == "folder" else "url"): url,
                        "interval_s": 2})  # fmt: skip
    config: dict[str, Any] = {
        "listen": "127.0.0.1",
        "port": lay.port,
        "data_dir": lay.path("data"),
        "media_dirs": [lay.path("clips")],
        "bench_file": lay.path("data/bench.json"),
        "frames_per_analysis": FRAMES,
        "cameras": cameras,
    }
    inference = inference_config(lay, params)
    if inference is not None:
        config["inference"] = inference
    return config


def video_service(lay: Layout) -> Service:
    return Service(
        SERVICE_UNIT,
        [lay.path("venv/bin/python"), "-m", "service", "--config", lay.path("config.json")],
        workdir=lay.prefix,
        description="video-dashboard: video analysis endpoint and dashboard",
        after=[f"{MODEL_UNIT}.service"] if lay.engine in ("vllm", "llama.cpp") else [],
    )


def service_requirements() -> list[str]:
    lines = (SERVICE_DIR / "requirements.txt").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def bench_command(lay: Layout, params: dict[str, Any]) -> str:
    levels = str(params.get("bench_concurrency") or "1,2,4")
    n = int(params.get("bench_requests") or 8)
    if lay.engine == "vllm":
        # vLLM's own bench with multimodal random data, at each concurrency level.
        return " && ".join(
            f"{shlex.quote(lay.path('model-venv/bin/vllm'))} bench serve --backend openai-chat "
            f"--endpoint /v1/chat/completions --base-url http://127.0.0.1:{lay.model_port} "
            f"--model {shlex.quote(lay.served_name)} --tokenizer {shlex.quote(lay.model)} "
            f"--dataset-name random-mm --num-prompts {n} --max-concurrency {c} "
            f"--random-mm-base-items-per-request 4 "
            f"--random-mm-bucket-config '{{(640, 360, 1): 1.0}}' --save-result "
            f"--result-dir {shlex.quote(lay.path('bench'))} --result-filename c{c}.json"
            for c in levels.split(",")
        )
    return (
        f"cd {shlex.quote(lay.prefix)} && {shlex.quote(lay.path('venv/bin/python'))} -m "
        f"service.loadgen --base-url {lay.model_url} --model {shlex.quote(lay.served_name)} "
        f"--concurrency {shlex.quote(levels)} --requests {n} "
        f"--max-tokens {int(params.get('bench_max_tokens') or 64)}"
    )


def dashboard_bench(lay: Layout, figures: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The bench as the dashboard's health panel shows it: a few columns per level."""
    return {
        "model": lay.served_name,
        "engine": f"{lay.engine} {model.get('version', '')}".strip(),
        "tool": figures.get("tool", ""),
        "levels": [
            {
                "concurrency": f.get("max_concurrency"),
                "req_per_s": f.get("request_throughput"),
                "out_tok_per_s": f.get("output_throughput"),
                "ttft_ms_p50": f.get("median_ttft_ms"),
                "tpot_ms_p50": f.get("median_tpot_ms"),
                "e2el_ms_p99": f.get("p99_e2el_ms"),
            }
            for f in figures.get("levels", [])
        ],
    }


# -- the steps


async def _on_host(ctx: StepContext, fn: Callable[[Deployer, Sandbox], Awaitable[Any]]) -> Any:
    """Run ``fn`` with a deployer on the host (a folder sandbox over ssh), then let go."""
    host = str(ctx.params["host"])
    box = ctx.new_sandbox("video-dashboard", backend="ssh", labels={HOST_LABEL: host}, network=True)
    await box.start()
    try:
        deployer = Deployer(
            box,
            host=host,
            run_id=ctx.run_id,
            emit=lambda e: ctx.events.emit(e.type, e.data, e.text),
        )
        return await fn(deployer, box)
    finally:
        await box.destroy()


def _layout(ctx: StepContext) -> Layout:
    return Layout(**ctx.outputs["host"]["layout"])


async def host(ctx: StepContext) -> dict[str, Any]:
    facts = await asyncio.to_thread(host_facts, str(ctx.params["host"]))
    lay = layout(ctx.params, facts)
    ctx.emit(f"host {lay.host}: {lay.gpu_note}")
    if os.environ.get(TEST_VISION_ENV):
        ctx.emit(
            f"TEST RUN: vision requests go to the scripted server at {os.environ[TEST_VISION_ENV]} "
            f"({TEST_VISION_ENV}); the service marks its events test_run",
            test_run=True,
        )
    gpus = [g.get("name") for g in facts.get("gpus") or []]
    return {
        "layout": lay.__dict__,
        "facts": {k: facts.get(k) for k in ("os", "arch", "cpus", "ram_mb", "python", "systemd")}
        | {"gpus": gpus},
        "test_run": bool(os.environ.get(TEST_VISION_ENV)),
    }


def _host_plan(params: dict[str, Any]) -> list[str]:
    lay = _planned_layout(params)
    lines = [f"host {lay.host}: {lay.gpu_note}", f"install under {lay.prefix}"]
    if os.environ.get(TEST_VISION_ENV):
        lines.append(f"TEST RUN: vision answered by {os.environ[TEST_VISION_ENV]}")
    return lines


host.plan = _host_plan  # type: ignore[attr-defined]


async def model_server(ctx: StepContext) -> dict[str, Any]:
    lay = _layout(ctx)
    if lay.engine in ("external", "none"):
        ctx.emit(f"no model server to install: {lay.gpu_note}")
        return {"engine": lay.engine}

    async def work(d: Deployer, box: Sandbox) -> dict[str, Any]:
        pip_args: list[str] = []
        wheels = str(ctx.params.get("wheels") or "")
        if wheels:
            if not Path(wheels).is_dir():
                raise InputError(f"video-dashboard: -p wheels={wheels}: not a folder here")
            await d.put_directory(Path(wheels), lay.path("wheels"))
            pip_args = ["--find-links", lay.path("wheels")]
        ctx.emit(f"installing {', '.join(model_packages(lay))} into {lay.path('model-venv')}")
        installed = await d.pip_install(
            lay.path("model-venv"), model_packages(lay), pip_args=pip_args
        )
        if lay.engine == "llama.cpp":
            found = await d.run(f"test -r {shlex.quote(lay.model)}")
            if not found.ok:
                raise InputError(
                    f"video-dashboard: -p gguf={lay.model}: no such file on {lay.host}"
                )
        svc = await d.service(model_service(lay, ctx.params), restart=installed)
        plainly = {
            "fallback": "no systemd on the host: kept alive by the deploy API's fallback "
            "supervisor (setsid loop); it does NOT start again after a reboot",
        }.get(svc.manager, f"a {svc.manager} unit, enabled")
        ctx.emit(f"model server {MODEL_UNIT}: {plainly}")
        health = f"http://127.0.0.1:{lay.model_port}/" + (
            "health" if lay.engine == "vllm" else "v1/models"
        )
        await d.wait_http(health, deadline_s=float(ctx.params.get("model_wait_s") or 900))
        version = await d.run(
            f"{shlex.quote(lay.path('model-venv/bin/python'))} -m pip show "
            f"{'vllm' if lay.engine == 'vllm' else 'llama-cpp-python'} | sed -n 's/^Version: //p'"
        )
        return {"engine": lay.engine, "manager": svc.manager, "manager_note": plainly,
                "version": version.stdout.strip(), "health": health}  # fmt: skip

    result: dict[str, Any] = await _on_host(ctx, work)
    return result


def _model_plan(params: dict[str, Any]) -> list[str]:
    lay = _planned_layout(params)
    if lay.engine in ("external", "none"):
        return [f"no model server: {lay.gpu_note}"]
    svc = model_service(lay, params)
    lines = [
        f"venv {lay.path('model-venv')} with {', '.join(model_packages(lay))}"
        + (f" (wheels from {params['wheels']})" if params.get("wheels") else ""),
        f"model: {lay.model} served as {lay.served_name} on 127.0.0.1:{lay.model_port}",
    ]
    if lay.engine == "vllm":
        lines.append(
            "weights: "
            + (params.get("weights") or f"fetched from Hugging Face into {lay.path('hf')}")
        )
    lines.append(f"unit {MODEL_UNIT} (systemd, else the deploy API's fallback supervisor):")
    lines += ["  " + x for x in systemd_unit(svc).splitlines()]
    return lines


model_server.plan = _model_plan  # type: ignore[attr-defined]


async def bench(ctx: StepContext) -> dict[str, Any]:
    lay = _layout(ctx)
    if lay.engine in ("external", "none"):
        ctx.emit("no model server of ours to bench")
        return {"levels": []}

    async def work(d: Deployer, box: Sandbox) -> dict[str, Any]:
        # The load generator travels in the service folder, uploaded here if not yet.
        await d.put_directory(SERVICE_DIR, lay.path("service"))
        await d.pip_install(lay.path("venv"), service_requirements())
        command = bench_command(lay, ctx.params)
        ctx.emit(f"bench: {command}")
        result = await d.run(command, timeout=1800, op="bench")
        if not result.ok:
            raise DeployError(
                f"bench failed on {lay.host}: {(result.stderr or result.stdout)[-300:]}"
            )
        if lay.engine == "vllm":
            files = await d.run(f"cat {shlex.quote(lay.path('bench'))}/c*.json")
            levels = [json.loads(x) for x in files.stdout.splitlines() if x.strip()]
            figures = {"tool": "vllm bench serve", "levels": levels}
        else:
            figures = json.loads(result.stdout.strip().splitlines()[-1])
        await d.run(f"mkdir -p {shlex.quote(lay.path('data'))}")
        summary = dashboard_bench(lay, figures, (ctx.outputs.get("model_server") or {}))
        await box.write_file(lay.path("data/bench.json"), json.dumps(summary).encode())
        return dict(figures)

    figures: dict[str, Any] = await _on_host(ctx, work)
    for f in figures.get("levels", []):
        ctx.events.metric("output_tok_s", float(f.get("output_throughput", 0)),
                          concurrency=f.get("max_concurrency"))  # fmt: skip
    return figures


bench.plan = lambda params: (  # type: ignore[attr-defined]
    [] if _planned_layout(params).engine in ("external", "none")
    else [bench_command(_planned_layout(params), params)]
)  # fmt: skip


async def service(ctx: StepContext) -> dict[str, Any]:
    lay = _layout(ctx)

    async def work(d: Deployer, box: Sandbox) -> dict[str, Any]:
        code = await d.put_directory(SERVICE_DIR, lay.path("service"))
        packages = await d.pip_install(lay.path("venv"), service_requirements())
        config = await d.put_file(
            lay.path("config.json"),
            json.dumps(service_config(lay, ctx.params), indent=2),
            mode=0o600,
        )
        await d.run(f"mkdir -p {shlex.quote(lay.path('clips'))} {shlex.quote(lay.path('data'))}")
        svc = await d.service(video_service(lay), restart=[code, packages, config])
        await d.wait_http(lay.service_url + "/health", deadline_s=120)
        return {"manager": svc.manager, "url": lay.service_url}

    result: dict[str, Any] = await _on_host(ctx, work)
    return result


def _service_plan(params: dict[str, Any]) -> list[str]:
    lay = _planned_layout(params)
    config = service_config(lay, params)
    return [
        f"upload {SERVICE_DIR.name}/ to {lay.path('service')}",
        f"venv {lay.path('venv')} with {', '.join(service_requirements())}",
        f"write {lay.path('config.json')}: {json.dumps(config)}",
        f"unit {SERVICE_UNIT} on 127.0.0.1:{lay.port} (after {MODEL_UNIT}), enabled:",
        *("  " + x for x in systemd_unit(video_service(lay)).splitlines()),
    ]


service.plan = _service_plan  # type: ignore[attr-defined]


async def _checks(d: Deployer, lay: Layout) -> list[tuple[str, bool, str]]:
    """Health of both services, one analysis of a generated clip, the dashboard with events."""
    results: list[tuple[str, bool, str]] = []
    py = shlex.quote(lay.path("venv/bin/python"))

    async def fetch(url: str, body: str = "") -> tuple[bool, str]:
        data = (
            f", data={body!r}.encode(), headers={{'Content-Type': 'application/json'}}"
            if body
            else ""
        )
        script = (
            "import urllib.request,sys\n"
            f"r=urllib.request.urlopen(urllib.request.Request({url!r}{data}),timeout=600)\n"
            "sys.stdout.write(r.read().decode('utf-8','replace'))"
        )
        out = await d.run(f"{py} -c {shlex.quote(script)}", timeout=660, op="check")
        return out.ok, out.stdout if out.ok else out.stderr[-2000:]

    if lay.engine in ("vllm", "llama.cpp"):
        path = "/health" if lay.engine == "vllm" else "/v1/models"
        ok, text = await fetch(f"http://127.0.0.1:{lay.model_port}{path}")
        results.append(("model server answers", ok, text[:300]))
    ok, text = await fetch(lay.service_url + "/health")
    healthy = ok and json.loads(text).get("status") in ("ok", "degraded")
    results.append(("video service /health", healthy, text[:300]))
    clip = lay.path("clips/recipe-check.mp4")
    made = await d.run(
        f"cd {shlex.quote(lay.prefix)} && {py} -m service "
        f"--config {shlex.quote(lay.path('config.json'))} "
        f"--make-test-clip {shlex.quote(clip)}"
    )
    results.append(("test clip generated", made.ok, (made.stdout + made.stderr)[-300:]))
    if made.ok:
        ok, text = await fetch(
            lay.service_url + "/analyze", json.dumps({"clip": clip, "camera": "recipe-check"})
        )
        event = json.loads(text) if ok else {}
        analysed = ok and not event.get("error") and bool(event.get("frames"))
        said = f"{event.get('source')}: {event.get('title')!r}" if ok else text[-300:]
        results.append(("end-to-end analysis", analysed, said))
    ok, page = await fetch(lay.service_url + "/")
    results.append(("dashboard loads", ok and "<html" in page.lower(), page[:120]))
    ok, text = await fetch(lay.service_url + "/api/events")
    events = json.loads(text).get("events", []) if ok else []
    results.append(("dashboard has events", bool(events), f"{len(events)} events"))
    return results


async def test(ctx: StepContext) -> dict[str, Any]:
    lay = _layout(ctx)

    async def work(d: Deployer, box: Sandbox) -> dict[str, Any]:
        results = await _checks(d, lay)
        fixes: list[str] = []
        failed = [r for r in results if not r[1]]
        if failed:
            logs = "\n\n".join(
                [f"## {name}\n{await _logs(d, name)}" for name in (MODEL_UNIT, SERVICE_UNIT)]
            )
            report = "\n".join(
                f"- {n}: {'ok' if ok else 'FAILED'} ({why})" for n, ok, why in results
            )
            ctx.emit(
                f"checks failed: {', '.join(r[0] for r in failed)}; "
                "an agent gets the playbook and logs"
            )
            ctx.check_model()  # no usable model: the person reads the failure (InputError)
            task = (
                f"The video-dashboard checks failed on host {lay.host} (install under "
                f"{lay.prefix}; services {MODEL_UNIT} and {SERVICE_UNIT}).\n\nChecks:\n{report}\n\n"
                f"Logs:\n{logs}\n\nFind the cause and fix it on the host, then finish with "
                f"what you did.\n\nThe playbook (video-dashboard):\n{ctx.playbook}"
            )
            agent = await ctx.run_agent(task, box, name="video-fixer", max_steps=40)
            fixes.append(agent.summary if hasattr(agent, "summary") else str(agent.status))
            results = await _checks(d, lay)  # the checks run again
        for name, ok, detail in results:
            ctx.emit(f"{'✓' if ok else '✗'} {name}: {detail[:160]}")
        if not all(ok for _, ok, _ in results):
            raise DeployError(
                "video-dashboard checks failed: " + ", ".join(n for n, ok, _ in results if not ok)
            )
        return {
            "checks": [{"name": n, "ok": ok, "detail": x} for n, ok, x in results],
            "fixes": fixes,
        }

    result: dict[str, Any] = await _on_host(ctx, work)
    return result


async def _logs(d: Deployer, name: str) -> str:
    try:
        return await d.logs(name, lines=60)
    except DeployError as exc:
        return str(exc)


test.plan = lambda params: [  # type: ignore[attr-defined]
    "check: model server answers, video service /health, one analysis of a generated clip, "
    "dashboard with events; a failure goes to an agent with the playbook and logs, then again"
]


async def report(ctx: StepContext) -> dict[str, Any]:
    from supervisor_video_dashboard.report import chart, write_report

    lay = _layout(ctx)
    bench_figures = ctx.outputs.get("bench") or {}
    png = chart(bench_figures, ctx.run_dir / "bench.png", title=f"{lay.served_name} on {lay.host}")
    text = write_report(
        lay,
        host_out=ctx.outputs["host"],
        model_out=ctx.outputs.get("model_server") or {},
        bench_figures=bench_figures,
        checks=(ctx.outputs.get("test") or {}).get("checks", []),
        chart_name=png.name if png else "",
        supervisor=" ".join(supervisor_command()),
        manager=str((ctx.outputs.get("service") or {}).get("manager", "")),
    )
    path = ctx.run_dir / "report.md"
    path.write_text(text)
    memory = ctx.memory(lay.host)

    async def note(text: str) -> None:
        # Host notes: what any later work on this host recalls.
        await memory.remember(text, scope="host")

    model = ctx.outputs.get("model_server") or {}
    await note(
        f"video-dashboard on host {lay.host}: installed under {lay.prefix}; dashboard "
        f"127.0.0.1:{lay.port} (unit {SERVICE_UNIT}); model server {lay.engine} "
        f"{model.get('version', '')} serving {lay.served_name} on 127.0.0.1:{lay.model_port} "
        f"(unit {MODEL_UNIT}, {model.get('manager', '-')}); config {lay.path('config.json')}."
    )
    levels = bench_figures.get("levels") or []
    if levels:
        best = max(levels, key=lambda f: f.get("output_throughput", 0))
        await note(
            f"video-dashboard bench on {lay.host} ({lay.served_name}): best "
            f"{best['output_throughput']} output tok/s at concurrency {best['max_concurrency']}; "
            f"median TTFT {levels[0].get('median_ttft_ms')} ms at concurrency 1."
        )
    for fix in (ctx.outputs.get("test") or {}).get("fixes", []):
        await note(f"video-dashboard on {lay.host}: a failed check was fixed: {fix}")
    ctx.emit(f"report: {path}")
    return {"report": str(path), "chart": str(png) if png else ""}


report.plan = lambda params: [  # type: ignore[attr-defined]
    "write report.md, bench.png and memory notes (ports, paths, versions)"
]

STEPS: dict[str, Callable[..., Any]] = {
    "video.host": host,
    "video.model_server": model_server,
    "video.bench": bench,
    "video.service": service,
    "video.test": test,
    "video.report": report,
}
