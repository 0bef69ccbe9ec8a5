"""A load generator for an OpenAI-compatible chat server, with ``vllm bench serve``'s names.

Run on the host beside the model server (it listens on 127.0.0.1 there)::

    python -m service.loadgen --base-url http://127.0.0.1:8000/v1 --model NAME \
        --concurrency 1,2,4 --requests 8 --max-tokens 64

Each level sends ``--requests`` streamed chat completions, at most ``--concurrency`` at a
time, and measures what ``vllm bench serve`` reports: request and output-token throughput,
TTFT (time to the first token), TPOT (time per output token after the first), ITL (the gaps
between tokens) and E2EL (the whole request), each as mean, median and p99 in ms. Output
tokens are the server's ``usage`` when it sends one, else the streamed chunks that carry
text (llama.cpp's server sends one token a chunk). Prints one JSON object: ``levels``, a
list of per-level figures. Standard library only: it runs in any Python 3.10+.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORDS = [
    "camera",
    "door",
    "yard",
    "person",
    "walks",
    "parcel",
    "car",
    "bicycle",
    "cat",
    "dog",
    "night",
    "light",
    "rain",
    "gate",
    "street",
    "window",
    "garden",
    "path",
    "delivery",
    "van",
    "truck",
    "motion",
    "shadow",
    "tree",
    "fence",
    "porch",
]


def _one(base_url: str, model: str, max_tokens: int, seed: int, timeout: float) -> dict[str, Any]:
    rnd = random.Random(seed)
    prompt = "Describe a security camera scene with: " + " ".join(rnd.choices(WORDS, k=24))
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    stamps: list[float] = []
    usage_tokens = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            usage = chunk.get("usage") or {}
            usage_tokens = int(usage.get("completion_tokens") or usage_tokens)
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    end = time.perf_counter()
    if not stamps:
        raise RuntimeError("the server streamed no text")
    tokens = usage_tokens or len(stamps)
    ttft = stamps[0] - start
    return {
        "ttft": ttft,
        "e2el": end - start,
        "tpot": (end - stamps[0]) / (tokens - 1) if tokens > 1 else 0.0,
        "itl": [b - a for a, b in itertools.pairwise(stamps)],
        "tokens": tokens,
    }


def _stats(name: str, values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values) or [0.0]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return {
        f"mean_{name}_ms": round(statistics.fmean(ms), 2),
        f"median_{name}_ms": round(statistics.median(ms), 2),
        f"p99_{name}_ms": round(p99, 2),
    }


def level(
    base_url: str, model: str, concurrency: int, requests: int, max_tokens: int, timeout: float
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        try:
            r = _one(base_url, model, max_tokens, seed=concurrency * 1000 + i, timeout=timeout)
        except Exception as exc:  # counted and named: a bench reports failures, not stops
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            results.append(r)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(task, range(requests)))
    duration = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    out: dict[str, Any] = {
        "max_concurrency": concurrency,
        "completed": len(results),
        "failed": len(failures),
        "duration": round(duration, 3),
        "request_throughput": round(len(results) / duration, 3),
        "output_throughput": round(tokens / duration, 2),
        "total_output_tokens": tokens,
    }
    out.update(_stats("ttft", [r["ttft"] for r in results]))
    out.update(_stats("tpot", [r["tpot"] for r in results]))
    out.update(_stats("itl", [gap for r in results for gap in r["itl"]]))
    out.update(_stats("e2el", [r["e2el"] for r in results]))
    if failures:
        out["errors"] = sorted(set(failures))[:5]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True, help="the server's /v1 URL")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--concurrency", default="1,2,4", help="levels, comma-separated")
    parser.add_argument("--requests", type=int, default=8, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        print(f"loadgen: --concurrency {args.concurrency!r}: not numbers", file=sys.stderr)
        return 2
    figures = []
    for c in levels:
        figures.append(
            level(args.base_url, args.model, c, args.requests, args.max_tokens, args.timeout)
        )
        print(
            f"loadgen: concurrency {c}: {figures[-1]['output_throughput']} tok/s", file=sys.stderr
        )
    print(json.dumps({"backend": "openai-chat", "tool": "loadgen", "levels": figures}))
    return 0 if all(f["completed"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
