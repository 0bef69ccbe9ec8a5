"""The litellm boundary: the one place a model is called.

- litellm is imported lazily (it takes seconds and reaches for the network at import
  unless told not to; see REFERENCE.md).
- Completions are always streamed; tool calls are reassembled from their fragments by
  index; usage and cost come from the final chunk.
- Exactly one retry layer, ours: the OpenAI SDK's own retries are turned off. 429, 5xx and
  529 answers, dropped connections and streams that stall are retried with exponential
  backoff that honours ``Retry-After``. Bad requests, unknown models and missing
  credentials are not retried: they are the user's to fix.
- Concurrency is bounded per model (``max_concurrent``, ``rpm``) and for all models.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor.errors import InputError, SupervisorError
from supervisor.types import PROVIDER_KEYS, ModelSpec

if TYPE_CHECKING:
    from supervisor.plugins import Plugins

_litellm: Any = None


def litellm() -> Any:
    """The litellm module, imported on first use with its network lookups turned off."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm as module

        module.suppress_debug_info = True
        module.telemetry = False
        _litellm = module
    return _litellm


class ModelError(SupervisorError):
    """A model call that cannot succeed as asked (bad request, auth, unknown model)."""


class ModelConfigError(ModelError, InputError):
    """An unknown model or missing credentials: the user's to fix; exit code 2."""


class ContextOverflow(ModelError):
    """The conversation no longer fits the model's context window."""


class ModelUnavailable(ModelError):
    """Retries are exhausted: the model kept failing or stalling."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, partial: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.partial = partial


@dataclass
class ToolCallOut:
    """A tool call as the model sent it; ``error`` says why ``arguments`` could not be
    parsed (the raw text is kept so the model can be shown what it sent)."""

    id: str
    name: str
    raw_arguments: str
    arguments: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCallOut]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    finish_reason: str
    model: str
    attempts: int = 1
    duration_s: float = 0.0

    def assistant_message(self) -> dict[str, Any]:
        """The reply as an OpenAI-format assistant message, for the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.raw_arguments or "{}"},
                }
                for c in self.tool_calls
            ]
        return message


@dataclass
class RetryInfo:
    attempt: int
    delay_s: float
    reason: str
    partial_text: str


# -- the registry of models


@dataclass
class ModelRegistry:
    """Aliases and endpoints from the config file and the ``register_models`` hook."""

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # alias: (concurrent, rpm)

    @classmethod
    def load(cls, plugins: Plugins | None = None) -> ModelRegistry:
        """From the engine's plugin manager when given (else the process-wide one)."""
        from supervisor import config
        from supervisor.plugins import get_plugins

        registry = cls()
        for _, spec in (plugins or get_plugins()).collect("register_models"):
            registry.specs[spec.alias] = spec
        values = config.load().values
        tables: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key.startswith("models."):
                alias, _, name = key[len("models.") :].rpartition(".")
                tables.setdefault(alias, {})[name] = value
        for alias, fields in tables.items():
            if "model" not in fields:
                raise ModelConfigError(f"config: models.{alias} has no 'model' (litellm name)")
            registry.specs[alias] = ModelSpec(
                alias=alias,
                model=fields["model"],
                api_base=fields.get("api_base"),
                api_key_env=fields.get("api_key_env"),
                input_per_mtok=fields.get("input_per_mtok"),
                output_per_mtok=fields.get("output_per_mtok"),
                context_window=fields.get("context_window"),
            )
            registry.limits[alias] = (fields.get("max_concurrent", 0), fields.get("rpm", 0))
        return registry

    def resolve(self, name: str) -> ModelSpec:
        """The spec for an alias, or a spec for a plain litellm model string."""
        if name in self.specs:
            return self.specs[name]
        if not name:
            raise ModelConfigError(
                "no model given: pass --model, or `supervisor config set model NAME`"
            )
        return ModelSpec(alias=name, model=name)


def check_usable(spec: ModelSpec, environ: dict[str, str] | None = None) -> None:
    """Fail early, in one line, for an unknown provider or missing credentials."""
    env = dict(os.environ) if environ is None else environ
    try:
        _, provider, _, _ = litellm().get_llm_provider(model=spec.model, api_base=spec.api_base)
    except Exception:
        raise ModelConfigError(
            f"unknown model {spec.model!r}: use a litellm model string such as "
            "anthropic/claude-sonnet-4-5, openai/gpt-4.1 or hosted_vllm/NAME with an api_base"
        ) from None
    if spec.api_key_env and not env.get(spec.api_key_env):
        raise ModelConfigError(f"model {spec.alias}: ${spec.api_key_env} is not set")
    if spec.api_base or spec.api_key_env:
        return
    names = PROVIDER_KEYS.get(provider)
    if names and not any(env.get(n) for n in names):
        raise ModelConfigError(
            f"model {spec.model}: no credentials for {provider}; set {' or '.join(names)}"
        )


# -- calling


class _RateGate:
    """Spaces requests to at most ``rpm`` per minute."""

    def __init__(self, rpm: int) -> None:
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ModelClient:
    """Streams completions with retries, limits and cost accounting."""

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        max_concurrent: int = 64,
        retries: int = 6,
        stall_timeout_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        self.registry = registry or ModelRegistry()
        self.retries = retries
        self.stall_timeout_s = stall_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._global = asyncio.Semaphore(max_concurrent)
        # alias -> the (concurrent, rpm) its gate and semaphore were made for
        self._made_for: dict[str, tuple[int, int]] = {}
        self._per_model: dict[str, asyncio.Semaphore] = {}
        self._gates: dict[str, _RateGate] = {}

    def _limits(self, spec: ModelSpec) -> tuple[asyncio.Semaphore | None, _RateGate]:
        limits = self.registry.limits.get(spec.alias, (0, 0))
        if self._made_for.get(spec.alias) != limits:
            # New, or the person changed the model's limits (the registry is reloaded on a
            # settings change): later calls obey the new ones; calls in flight finish.
            concurrent, rpm = limits
            self._made_for[spec.alias] = limits
            self._gates[spec.alias] = _RateGate(rpm)
            self._per_model.pop(spec.alias, None)
            if concurrent > 0:
                self._per_model[spec.alias] = asyncio.Semaphore(concurrent)
        return self._per_model.get(spec.alias), self._gates[spec.alias]

    async def complete(
        self,
        model: str | ModelSpec,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        on_delta: Callable[[str], None] | None = None,
        on_retry: Callable[[RetryInfo], Awaitable[None] | None] | None = None,
    ) -> Completion:
        spec = model if isinstance(model, ModelSpec) else self.registry.resolve(model)
        semaphore, gate = self._limits(spec)
        start = time.perf_counter()
        for attempt in range(1, self.retries + 2):
            try:
                await gate.wait()
                async with self._global:
                    if semaphore is None:
                        result = await self._stream(spec, messages, tools, on_delta)
                    else:
                        async with semaphore:
                            result = await self._stream(spec, messages, tools, on_delta)
                result.attempts = attempt
                result.duration_s = time.perf_counter() - start
                return result
            except _Retryable as exc:
                if attempt > self.retries:
                    raise ModelUnavailable(
                        f"model {spec.alias}: gave up after {attempt} attempts ({exc.reason})"
                    ) from None
                delay = self._delay(attempt, exc.retry_after)
                if on_retry is not None:
                    maybe = on_retry(RetryInfo(attempt, delay, exc.reason, exc.partial))
                    if maybe is not None:
                        await maybe
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        # Full jitter: many agents backing off from one outage must not return in step.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))

    async def _stream(
        self,
        spec: ModelSpec,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_delta: Callable[[str], None] | None,
    ) -> Completion:
        lib = litellm()
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_retries": 0,  # one retry layer: ours
        }
        if tools:
            kwargs["tools"] = tools
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
            kwargs["api_key"] = os.environ.get(spec.api_key_env or "", "") or "none"
        elif spec.api_key_env:
            kwargs["api_key"] = os.environ.get(spec.api_key_env, "")
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: Any = None
        finish = ""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
            # that arrives as the awaited chunk completes, so stopping a streaming agent
            # (run.stop, server shutdown) could hang. A stall is a TimeoutError either way.
            async with asyncio.timeout(self.stall_timeout_s):
                stream = await lib.acompletion(**kwargs)
            iterator = stream.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.stall_timeout_s):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        if on_delta is not None:
                            on_delta(delta.content)
                    for tc in (getattr(delta, "tool_calls", None) or []) if delta else []:
                        slot = calls.setdefault(tc.index or 0, {"id": "", "name": "", "args": []})
                        if tc.id:
                            slot["id"] = tc.id
                        fn = tc.function
                        if fn is not None:
                            if fn.name:
                                slot["name"] = fn.name
                            if fn.arguments:
                                slot["args"].append(fn.arguments)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except TimeoutError:
            raise _Retryable(
                f"stream stalled for {self.stall_timeout_s:g}s", partial="".join(text)
            ) from None
        except Exception as exc:
            raise self._classify(exc, spec, "".join(text)) from None
        input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            text="".join(text),
            tool_calls=[_parse_call(i, slot) for i, slot in sorted(calls.items())],
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=self.cost(spec, input_tokens, output_tokens),
            finish_reason=finish or ("tool_calls" if calls else "stop"),
            model=spec.alias,
        )

    def _classify(self, exc: Exception, spec: ModelSpec, partial: str) -> Exception:
        lib = litellm()
        status = getattr(exc, "status_code", None)
        message = _first_line(exc)
        if isinstance(exc, lib.ContextWindowExceededError):
            return ContextOverflow(f"model {spec.alias}: context window exceeded: {message}")
        if isinstance(exc, lib.AuthenticationError):
            return ModelConfigError(f"model {spec.alias}: credentials refused: {message}")
        if isinstance(exc, lib.NotFoundError):
            return ModelConfigError(f"model {spec.alias}: not found: {message}")
        if (
            isinstance(exc, lib.Timeout | lib.APIConnectionError)
            or status
            in (
                408,
                409,
                425,
                429,
                500,
                502,
                503,
                504,
                529,
            )
            or (isinstance(status, int) and status >= 500)
        ):
            return _Retryable(
                f"{status or type(exc).__name__}: {message[:200]}", _retry_after(exc), partial
            )
        if isinstance(exc, lib.BadRequestError | lib.UnprocessableEntityError):
            return ModelError(f"model {spec.alias}: request refused: {message[:300]}")
        if isinstance(exc, lib.APIError | OSError) or "connection" in message.lower():
            return _Retryable(f"{type(exc).__name__}: {message[:200]}", None, partial)
        return ModelError(f"model {spec.alias}: {type(exc).__name__}: {message[:300]}")

    def cost(self, spec: ModelSpec, input_tokens: int, output_tokens: int) -> float:
        if spec.input_per_mtok is not None or spec.output_per_mtok is not None:
            return (
                input_tokens * (spec.input_per_mtok or 0.0)
                + output_tokens * (spec.output_per_mtok or 0.0)
            ) / 1e6
        try:
            prompt, completion = litellm().cost_per_token(
                model=spec.model, prompt_tokens=input_tokens, completion_tokens=output_tokens
            )
            return float(prompt + completion)
        except Exception:
            return 0.0  # a self-hosted model with no configured price costs nothing known


def _parse_call(index: int, slot: dict[str, Any]) -> ToolCallOut:
    raw = "".join(slot["args"])
    call = ToolCallOut(id=slot["id"] or f"call_{index}", name=slot["name"], raw_arguments=raw)
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        call.error = f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
        return call
    if not isinstance(parsed, dict):
        call.error = "arguments must be a JSON object"
        return call
    call.arguments = parsed
    return call


def _retry_after(exc: Exception) -> float | None:
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    for source in (
        headers,
        getattr(exc, "headers", None),
        getattr(exc, "litellm_response_headers", None),
    ):
        if not source:
            continue
        try:
            value = source.get("retry-after") or source.get("Retry-After")
        except Exception:
            continue
        if value:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
