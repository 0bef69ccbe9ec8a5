"""A scripted OpenAI-compatible model server, for our tests and for plugin authors.

It speaks the real protocol over real HTTP, so whatever talks to it (litellm with
``model="openai/<anything>"`` and ``api_base=server.base_url``, the OpenAI SDK, httpx) goes
through the same code paths as against a hosted model: SSE streaming, tool-call deltas keyed
by ``index``, ``stream_options.include_usage``, HTTP errors with ``Retry-After``::

    from supervisor.testing import Fault, Reply, ScriptedModelServer

    script = [
        Reply(tool_calls=[("shell", {"command": "ls"})], fault=Fault.rate_limit(0.1)),
        Reply("All done."),
    ]
    with ScriptedModelServer(script) as server:
        litellm.completion(model="openai/scripted", api_base=server.base_url, api_key="test",
                           messages=[{"role": "user", "content": "list files"}])

A sequence script is followed statelessly: the reply for a request is the one at the index
given by how many assistant messages the request already holds. Any number of concurrent
conversations each walk through the script on their own, and a retried request gets the same
reply again. A callable script receives the request's messages and returns the Reply; it runs
on the server's own thread, so it should be quick and must not block.

The server runs its own asyncio loop in a daemon thread, so it serves synchronous and
asynchronous clients alike (including a client on the test's own event loop). Importing this
module does not import litellm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

__all__ = ["Fault", "Reply", "ScriptedModelServer", "VisionRequest", "vision_request"]

FaultKind = Literal["rate_limit", "server_error", "overloaded", "stall", "drop", "slow_first_token"]

# Roughly how many words go in one streamed text chunk: enough chunks that a client's
# reassembly is exercised, few enough that hundreds of concurrent streams stay cheap.
_WORDS_PER_CHUNK = 3
_WORDS = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Fault:
    """A failure injected into one scripted reply; build it with the classmethods.

    A fault hits only the first ``times`` attempts of the same request (same ``messages``);
    later attempts get the normal reply, so a client's retry logic can be tested end to end.
    """

    kind: FaultKind
    times: int = 1
    status: int = 500
    retry_after: float = 1.0
    after_chunks: int = 1
    seconds: float = 0.0

    @classmethod
    def rate_limit(cls, retry_after: float = 1.0, *, times: int = 1) -> Fault:
        """HTTP 429 with a ``Retry-After`` header (seconds) and an OpenAI-style error body."""
        return cls("rate_limit", times=times, status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500, *, times: int = 1) -> Fault:
        """HTTP ``status`` (500 unless told) with an OpenAI-style error body."""
        return cls("server_error", times=times, status=status)

    @classmethod
    def overloaded(cls, *, times: int = 1) -> Fault:
        """HTTP 529 with an ``overloaded_error`` body, as Anthropic sends when it is busy."""
        return cls("overloaded", times=times, status=529)

    @classmethod
    def stall(cls, after_chunks: int = 1, seconds: float = 30.0, *, times: int = 1) -> Fault:
        """Stream ``after_chunks`` chunks, then send nothing for ``seconds`` (the connection
        stays open), then finish normally. A non-streaming request waits ``seconds`` first."""
        return cls("stall", times=times, after_chunks=after_chunks, seconds=seconds)

    @classmethod
    def drop(cls, after_chunks: int = 1, *, times: int = 1) -> Fault:
        """Stream ``after_chunks`` chunks, then close the connection without ending the
        response. A non-streaming request is dropped before any response is sent."""
        return cls("drop", times=times, after_chunks=after_chunks)

    @classmethod
    def slow_first_token(cls, seconds: float = 2.0, *, times: int = 1) -> Fault:
        """Wait ``seconds`` before the response starts, then answer normally."""
        return cls("slow_first_token", times=times, seconds=seconds)


@dataclass(frozen=True)
class Reply:
    """One scripted model answer.

    ``tool_calls`` items are ``(function name, arguments)``; a dict is JSON-encoded, a string
    is sent verbatim (which is how a test sends malformed JSON). ``usage`` is
    ``(prompt_tokens, completion_tokens)``; when None a plausible count is made up from the
    lengths of the request and the reply. ``delay_s`` is think time before answering.

    ``tokens_per_s`` paces the text as a real model generates it: when above zero, a
    streamed reply sends its text one word (about one token) per chunk, spaced so the text
    arrives at that rate (60 words at 30 tokens/s take about 2 s, the first word at once);
    the tool calls follow without pacing. A non-streaming request waits as long before
    answering. Zero (the default) sends everything as fast as the client reads it.
    """

    text: str = ""
    tool_calls: Sequence[tuple[str, dict[str, Any] | str]] = ()
    usage: tuple[int, int] | None = None
    fault: Fault | None = None
    delay_s: float = 0.0
    tokens_per_s: float = 0.0


Script = Sequence[Reply] | Callable[[list[dict[str, Any]]], Reply]


class _ScriptError(Exception):
    """The script cannot answer this request; served as an HTTP 500 with the message."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ScriptedModelServer:
    """An OpenAI-compatible chat-completions server that answers from a script.

    ``start()`` binds 127.0.0.1 on a free port and returns :attr:`base_url` (ending in
    ``/v1``); ``stop()`` shuts it down. It is also a context manager. Every request body it
    receives is appended to :attr:`requests` (parsed JSON, in arrival order).
    """

    def __init__(
        self, script: Script, *, model: str = "scripted", require_vision: bool = False
    ) -> None:
        # A sequence is copied so that a caller mutating its list cannot change a running
        # script under concurrent requests.
        self._script: Script = script if callable(script) else tuple(script)
        self._model = model
        # As a vision model's server refuses what it cannot read (Qwen3-VL answers
        # data:video/jpeg with a 500), refuse requests without image parts or a schema.
        self._require_vision = require_vision
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._base_url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``; only valid while the server is running."""
        if self._base_url is None:
            raise RuntimeError("ScriptedModelServer is not running; call start() first")
        return self._base_url

    def start(self) -> str:
        """Start serving in a background thread; returns :attr:`base_url`."""
        if self._thread is not None:
            raise RuntimeError("ScriptedModelServer is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"scripted-model-{port}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"ScriptedModelServer failed to start: {self._startup_error}")
        self._base_url = f"http://127.0.0.1:{port}/v1"
        return self._base_url

    def stop(self) -> None:
        """Stop serving; in-flight requests are cut off after a short grace period."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            # RuntimeError: the loop already finished on its own (a failed serve).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        self._base_url = None

    def __enter__(self) -> ScriptedModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._main(sock))
        except BaseException as exc:  # reported to start(); a daemon thread has no one else
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
        finally:
            sock.close()

    async def _main(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # Conversations in a benchmark grow long; aiohttp's default 1 MiB body cap is too small.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_post("/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/models", self._handle_models)
        # handler_cancellation: a client that gives up on a stalled stream frees its handler
        # at once instead of leaving it asleep for the rest of the stall. A short shutdown
        # timeout keeps stop() quick even while streams are stalled.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25
        )
        await runner.setup()
        try:
            # A deep backlog: hundreds of agents connect at once, and a full SYN queue would
            # cost each late one a 1 s retransmission.
            site = web.SockSite(runner, sock, backlog=1024)
            await site.start()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- handlers ------------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self._model, "object": "model", "created": 0, "owned_by": "supervisor"}
                ],
            }
        )

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        with self._lock:
            self.requests.append(body)
        messages = body.get("messages")
        if not isinstance(messages, list):
            return _error(400, "'messages' must be a list", "invalid_request_error")
        if self._require_vision:
            problems = vision_request(body).problems
            if problems:
                return _error(400, "; ".join(problems), "invalid_request_error")

        try:
            reply = self._choose(messages)
        except _ScriptError as exc:
            return _error(500, str(exc), exc.code)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)

        fault = (
            reply.fault if reply.fault is not None and self._hits(reply.fault, messages) else None
        )
        if fault is not None:
            if fault.kind == "rate_limit":
                return _error(
                    429,
                    "Rate limit reached (scripted fault); retry later",
                    "rate_limit_exceeded",
                    headers={"Retry-After": f"{fault.retry_after:g}"},
                )
            if fault.kind == "server_error":
                return _error(fault.status, f"HTTP {fault.status} (scripted fault)", "server_error")
            if fault.kind == "overloaded":
                return web.json_response(
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                    status=529,
                )
            if fault.kind == "slow_first_token":
                await asyncio.sleep(fault.seconds)
                fault = None

        model = str(body.get("model") or self._model)
        usage = self._usage(reply, messages)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await self._stream(request, reply, model, usage, include_usage, fault)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        elif fault is not None and fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never reaches the client: its connection is gone
        if reply.tokens_per_s > 0:
            words = len(_text_pieces(reply.text, 1))
            await asyncio.sleep(max(0, words - 1) / reply.tokens_per_s)
        return web.json_response(_completion(reply, model, usage))

    async def _stream(
        self,
        request: web.Request,
        reply: Reply,
        model: str,
        usage: dict[str, int],
        include_usage: bool,
        fault: Fault | None,
    ) -> web.StreamResponse:
        paced = reply.tokens_per_s > 0
        events, text_events = _sse_events(
            reply, model, usage, include_usage, words_per_chunk=1 if paced else _WORDS_PER_CHUNK
        )
        # Never fault after [DONE]: a stream too short for after_chunks faults just before it.
        fault_at = min(fault.after_chunks, len(events) - 1) if fault is not None else -1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i, event in enumerate(events):
            if paced and 0 < i < text_events:
                # Against the start, not the previous chunk: timer lateness does not add up.
                wait = started + i / reply.tokens_per_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            if i == fault_at and fault is not None:
                if fault.kind == "drop":
                    # close(), not abort(): the chunks already written must reach the client
                    # before the connection ends without the chunked terminator.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await asyncio.sleep(fault.seconds)
            await response.write(event)
        await response.write_eof()
        return response

    # -- script --------------------------------------------------------------------------

    def _choose(self, messages: list[Any]) -> Reply:
        if callable(self._script):
            try:
                reply = self._script(messages)
            except Exception as exc:
                raise _ScriptError(
                    f"script function raised {type(exc).__name__}: {exc}", "script_error"
                ) from exc
            if not isinstance(reply, Reply):
                raise _ScriptError(
                    f"script function returned {type(reply).__name__}, not a Reply",
                    "script_error",
                )
            return reply
        index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        if index >= len(self._script):
            raise _ScriptError(
                f"script exhausted: reply index {index} was asked for (the request holds "
                f"{index} assistant messages) but the script has {len(self._script)} replies",
                "script_exhausted",
            )
        return self._script[index]

    def _hits(self, fault: Fault, messages: list[Any]) -> bool:
        """Whether this attempt of the request gets the fault (the first ``times`` do)."""
        canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), default=str)
        key = hashlib.sha256(canonical.encode()).hexdigest()
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        return attempt < fault.times

    @staticmethod
    def _usage(reply: Reply, messages: list[Any]) -> dict[str, int]:
        if reply.usage is not None:
            prompt, completion = reply.usage
        else:
            # About four characters a token, as for English text with common tokenizers.
            prompt = max(1, _prompt_chars(messages) // 4)
            completion_chars = len(reply.text) + sum(
                len(name) + len(_arguments(args)) for name, args in reply.tool_calls
            )
            completion = max(1, completion_chars // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


# -- protocol helpers ----------------------------------------------------------------------


def _error(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """An error response shaped as OpenAI's, which the OpenAI SDK and litellm parse."""
    kind = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _arguments(args: dict[str, Any] | str) -> str:
    return args if isinstance(args, str) else json.dumps(args)


def _prompt_chars(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
        for call in message.get("tool_calls") or []:
            function = call.get("function", {}) if isinstance(call, dict) else {}
            total += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return total


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _completion(reply: Reply, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": _call_id(),
                "type": "function",
                "function": {"name": name, "arguments": _arguments(args)},
            }
            for name, args in reply.tool_calls
        ]
    elif not reply.text:
        message["content"] = ""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": usage,
    }


def _text_pieces(text: str, words_per_chunk: int = _WORDS_PER_CHUNK) -> list[str]:
    words = _WORDS.findall(text)
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def _argument_pieces(arguments: str) -> list[str]:
    """Split into at least two fragments (when there are two characters to split), as real
    servers do, so that clients must concatenate them."""
    if len(arguments) < 2:
        return [arguments] if arguments else []
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _sse_events(
    reply: Reply,
    model: str,
    usage: dict[str, int],
    include_usage: bool,
    *,
    words_per_chunk: int = _WORDS_PER_CHUNK,
) -> tuple[list[bytes], int]:
    """Every SSE event of a streamed reply, ``data: [DONE]`` included, ready to write, and
    how many of the first events carry the text."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    deltas: list[tuple[dict[str, Any], str | None]] = []
    for piece in _text_pieces(reply.text, words_per_chunk):
        deltas.append(({"content": piece}, None))
    text_events = len(deltas)
    for index, (name, args) in enumerate(reply.tool_calls):
        header = {
            "index": index,
            "id": _call_id(),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        deltas.append(({"tool_calls": [header]}, None))
        for fragment in _argument_pieces(_arguments(args)):
            deltas.append(
                ({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}, None)
            )
    if not deltas:
        deltas.append(({"content": ""}, None))
    # The role rides on the first delta rather than a chunk of its own, so every chunk a
    # fault's after_chunks counts carries content a client can see.
    first = deltas[0][0]
    deltas[0] = ({"role": "assistant", "content": first.pop("content", None), **first}, None)
    deltas.append(({}, "tool_calls" if reply.tool_calls else "stop"))

    def chunk(choices: list[dict[str, Any]], usage_value: dict[str, int] | None) -> bytes:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage_value
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    events = [
        chunk([{"index": 0, "delta": delta, "finish_reason": reason}], None)
        for delta, reason in deltas
    ]
    if include_usage:
        events.append(chunk([], usage))
    events.append(b"data: [DONE]\n\n")
    return events, text_events


# -- vision requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class VisionRequest:
    """What one chat request asked of a vision model, read from its body.

    ``images`` are the decoded bytes of every ``image_url`` part sent as a base64 data URL, in
    the order the request holds them (time order, for frames of a clip); ``image_types`` their
    media types as the URLs name them; ``videos`` the URLs of ``video_url`` parts (``file://``
    or ``data:video/mp4``). ``schema`` is the JSON schema of a ``response_format``
    of type ``json_schema`` (None when the request asked for none). ``problems`` says, one
    sentence each, what a vision server would refuse; ``ScriptedModelServer(...,
    require_vision=True)`` answers such a request with HTTP 400 and those sentences.
    """

    images: tuple[bytes, ...]
    image_types: tuple[str, ...]
    videos: tuple[str, ...]
    text: str
    schema: dict[str, Any] | None
    schema_name: str | None
    problems: tuple[str, ...]


_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)
_IMAGE_MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG"}


def vision_request(body: dict[str, Any]) -> VisionRequest:
    """Read a chat-completions request body as a vision model's server would."""
    import base64
    import binascii

    images: list[bytes] = []
    types: list[str] = []
    videos: list[str] = []
    texts: list[str] = []
    problems: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for n, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind in ("image_url", "video_url"):
                value = part.get(kind)
                url = str(value.get("url", "") if isinstance(value, dict) else value or "")
                match = _DATA_URL.fullmatch(url)
                if url.startswith("data:video/jpeg"):
                    problems.append(
                        f"part {n}: data:video/jpeg is not a video (Qwen3-VL refuses it); "
                        "send the frames as image_url parts"
                    )
                elif kind == "video_url":
                    videos.append(url)  # a file:// or data:video/mp4 video is a valid option
                elif match is None:
                    problems.append(f"part {n}: image_url is not a base64 data URL: {url[:40]!r}")
                else:
                    try:
                        data = base64.b64decode(match["data"], validate=True)
                    except (binascii.Error, ValueError):
                        problems.append(f"part {n}: image_url's base64 does not decode")
                        continue
                    magic = _IMAGE_MAGIC.get(match["type"])
                    if magic is None or not data.startswith(magic):
                        problems.append(f"part {n}: image_url is not a {match['type']} image")
                        continue
                    images.append(data)
                    types.append(match["type"])
    if not images and not videos:
        problems.append("the request carries no image_url parts (nor a video_url)")
    schema: dict[str, Any] | None = None
    name: str | None = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            schema, name = spec["schema"], spec.get("name")
    if schema is None:
        problems.append("the request asks for no response_format json_schema")
    return VisionRequest(
        images=tuple(images),
        image_types=tuple(types),
        videos=tuple(videos),
        text="\n".join(texts),
        schema=schema,
        schema_name=name,
        problems=tuple(problems),
    )
