"""One request to an OpenAI-compatible vision endpoint (vLLM, llama.cpp, any /v1 server).

The frames go as JPEG ``image_url`` parts (base64 data URLs) in time order, never as
``data:video/jpeg`` (Qwen3-VL answers that with a 500), and ``response_format`` json_schema
holds the model to the shape of Frigate's review summaries plus our categories. The answer
is checked against the same schema here: a server that ignores ``response_format`` does not
get a malformed event into the store.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import Inference
from .store import CATEGORIES

SCHEMA_NAME = "video_review"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "description": "A few words: what happened"},
        "scene": {"type": "string", "description": "The place and its lasting features"},
        "shortSummary": {"type": "string", "description": "One or two sentences"},
        "observations": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "potential_threat_level": {"type": "integer", "enum": [0, 1, 2]},
        "other_concerns": {"type": "array", "items": {"type": "string"}},
        "categories": {
            "type": "object",
            "properties": {c: {"type": "boolean"} for c in CATEGORIES},
            "required": list(CATEGORIES),
            "additionalProperties": False,
        },
    },
    "required": [
        "title",
        "scene",
        "shortSummary",
        "observations",
        "confidence",
        "potential_threat_level",
        "other_concerns",
        "categories",
    ],
    "additionalProperties": False,
}

PROMPT = (
    "You review security camera footage from camera '{camera}': {media}, spanning about "
    "{span:.0f} seconds. Describe what happens "
    "across them. potential_threat_level: 0 normal activity (residents, deliveries, "
    "passers-by, animals, nothing), 1 unusual and worth a look (lingering, trying doors, "
    "someone at night), 2 a likely threat (break-in, weapon, violence, fire). categories: "
    "whether people, vehicles, animals or packages appear. confidence: 0 to 1, how sure you "
    "are of the description. Report only what the frames show; when nothing happens say so "
    "in the title. Answer with JSON only."
)


class VisionError(Exception):
    """The endpoint failed or answered outside the schema; the message says which."""


def build_request(
    inference: Inference,
    camera: str,
    frames: list[tuple[float, bytes]],
    video: Path | None = None,
) -> dict[str, Any]:
    """The chat request: the frames as JPEG image parts, or, given ``video`` (a clip on the
    model server's machine, inside its ``--allowed-local-media-path``), one ``file://``
    video part that the server samples itself at ``video_fps``."""
    span = frames[-1][0] - frames[0][0] if len(frames) > 1 else 0.0
    media = f"{len(frames)} frames in time order" if video is None else "a video clip"
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": PROMPT.format(media=media, camera=camera, span=span)}
    ]
    extra: dict[str, Any] = {}
    if video is not None:
        parts.append({"type": "video_url", "video_url": {"url": video.resolve().as_uri()}})
        # vLLM's per-request sampling for Qwen3-VL (vLLM >= 0.11.1).
        extra["mm_processor_kwargs"] = {"fps": inference.video_fps, "do_sample_frames": True}
    else:
        for _t, jpeg in frames:
            url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return extra | {
        "model": inference.model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": inference.max_tokens,
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": SCHEMA, "strict": True},
        },
    }


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """Check ``value`` against the subset of JSON schema that SCHEMA uses."""
    kind = str(schema["type"])
    types: dict[str, Any] = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    ok = isinstance(value, types[kind]) and not (
        kind in ("integer", "number") and isinstance(value, bool)
    )
    if not ok:
        raise VisionError(f"{where}: expected {kind}, got {json.dumps(value)[:60]}")
    if "enum" in schema and value not in schema["enum"]:
        raise VisionError(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        raise VisionError(f"{where}: {value} is below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise VisionError(f"{where}: {value} is above {schema['maximum']}")
    if kind == "array":
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")
    if kind == "object":
        for key in schema.get("required", []):
            if key not in value:
                raise VisionError(f"{where}: missing {key!r}")
        for key, item in value.items():
            if key not in schema["properties"]:
                raise VisionError(f"{where}: unexpected key {key!r}")
            _check(item, schema["properties"][key], f"{where}.{key}")


def parse_answer(content: str) -> dict[str, Any]:
    try:
        answer = json.loads(content)
    except json.JSONDecodeError as exc:
        raise VisionError(f"the model's answer is not JSON ({exc.msg}): {content[:80]!r}") from None
    _check(answer, SCHEMA, "answer")
    result: dict[str, Any] = answer
    return result


def analyse(
    inference: Inference,
    camera: str,
    frames: list[tuple[float, bytes]],
    video: Path | None = None,
) -> tuple[dict[str, Any], float]:
    """The model's checked answer and the seconds the endpoint took."""
    body = json.dumps(build_request(inference, camera, frames, video)).encode()
    headers = {"Content-Type": "application/json"}
    if inference.api_key:
        headers["Authorization"] = f"Bearer {inference.api_key}"
    url = inference.base_url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=inference.timeout_s) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise VisionError(f"{url} answered HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise VisionError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    took = time.monotonic() - started
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise VisionError(f"{url}: the reply holds no message: {json.dumps(reply)[:120]}") from None
    if not isinstance(content, str):
        raise VisionError(f"{url}: the reply's message has no text content")
    return parse_answer(content), took
