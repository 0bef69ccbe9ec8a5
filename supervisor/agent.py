"""The agent loop — one readable file.

An agent takes a task in English and works it through tools in its sandbox:

    run()   build the system prompt, then step until finish() or a limit
    step()  ask the model (streaming), then run the tool calls it made, concurrently
    call()  one tool call: policy → plugin veto/rewrite → the tool → its output, cut if long

Control flow uses a few exceptions: :class:`Finished` (the agent called ``finish``),
:class:`LimitReached` (steps, tokens, cost or wall time), :class:`Stopped` (a person
stopped it). Bad tool arguments, unknown tools and tool errors never end the agent: they go
back to the model as the tool's result. The agent's status is always recorded in
``finally``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor.events import Event, EventType, exit_code
from supervisor.models import Completion, ContextOverflow, ModelError, RetryInfo, ToolCallOut
from supervisor.types import Tool, ToolCall

if TYPE_CHECKING:
    from supervisor.engine import Engine
    from supervisor.sandbox.base import Sandbox
    from supervisor.types import ModelSpec

MAX_TOOL_OUTPUT = 12_000  # characters of one tool result shown to the model
NO_TOOL_NUDGES = 3  # replies without a tool call tolerated before the text is taken as final
COMPACT_AT = 0.75  # fraction of the context window that triggers compaction
INTERRUPTED_CALL = "error: interrupted (the supervisor stopped while this ran); check its effect"
KEEP_RECENT = 6  # messages kept verbatim when older turns are compacted


class Finished(Exception):
    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


class LimitReached(Exception):
    pass


class Stopped(Exception):
    pass


@dataclass
class Limits:
    max_steps: int = 100
    max_tokens: int = 0  # 0: no limit
    max_cost_usd: float = 0.0
    max_wall_s: float = 0.0


@dataclass
class Policy:
    """Which tool calls run at once, wait for a person, or are refused.

    Patterns are ``tool`` or ``tool:glob`` where the glob is matched against the call's
    main argument (the command for ``shell``, the path for file tools).
    """

    ask: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    always: list[str] = field(default_factory=list)  # patterns a person allowed for good

    def decide(self, call: ToolCall) -> tuple[str, str]:
        """``(auto|ask|deny, pattern)`` for a call; deny wins over ask, allowed wins over ask."""
        subject = _subject(call)
        for pattern in self.deny:
            if _matches(pattern, call.name, subject):
                return "deny", pattern
        for pattern in self.ask:
            if _matches(pattern, call.name, subject) and not any(
                _matches(p, call.name, subject) for p in self.always
            ):
                return "ask", pattern
        return "auto", ""


def _subject(call: ToolCall) -> str:
    for key in ("command", "path", "query", "task", "agent"):
        value = call.arguments.get(key)
        if isinstance(value, str):
            return value
    return ""


def _matches(pattern: str, tool: str, subject: str) -> bool:
    name, _, glob = pattern.partition(":")
    if not fnmatch.fnmatchcase(tool, name):
        return False
    return not glob or fnmatch.fnmatchcase(subject.strip(), glob)


@dataclass
class ToolContext:
    """What a tool sees: its agent (and through it the engine and the sandbox)."""

    agent: Agent

    @property
    def sandbox(self) -> Sandbox:
        return self.agent.sandbox

    @property
    def engine(self) -> Engine:
        return self.agent.engine


class Agent:
    def __init__(
        self,
        engine: Engine,
        *,
        id: str,
        run_id: str,
        name: str,
        task: str,
        model: ModelSpec,
        sandbox: Sandbox,
        tools: dict[str, Tool],
        limits: Limits,
        policy: Policy,
        role: str = "worker",
        parent_id: str | None = None,
        scope_key: str = "",
    ) -> None:
        self.engine = engine
        self.id = id
        self.run_id = run_id
        self.name = name
        self.task = task
        self.model = model
        self.sandbox = sandbox
        self.tools = tools
        self.limits = limits
        self.policy = policy
        self.role = role
        self.parent_id = parent_id
        self.scope_key = scope_key  # which project's notes this agent reads and writes
        self.messages: list[dict[str, Any]] = []
        self.owns_sandbox = True  # released when the agent ends (unless the run keeps it)
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.steps = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.status = "starting"
        self.summary = ""
        self.started = time.monotonic()
        self._no_tool_replies = 0
        self._last_prompt_tokens = 0

    # -- the loop

    async def run(self) -> str:
        """Work the task until done; returns the final status."""
        status = "failed"
        try:
            history = self.messages
            doing = "picking up its transcript" if history else "reading the task"
            self.set_status("running", doing)
            self.messages = [
                {"role": "system", "content": await self.system_prompt()},
                {"role": "user", "content": self.task},
                *history,
            ]
            while True:
                await self.step()
        except Finished as done:
            self.summary = done.summary
            status = "done"
        except LimitReached as limit:
            self.summary = f"stopped: {limit}"
            status = "stopped"
        except Stopped:
            status = "stopped"
        except ModelError as exc:
            self.summary = str(exc)
            status = "failed"
        except asyncio.CancelledError:
            status = "stopped"
            raise
        except Exception as exc:
            # A bug in a tool or plugin: record it; the engine and other agents keep going.
            self.summary = f"internal error: {type(exc).__name__}: {exc}"
            status = "failed"
        finally:
            self.status = status
            self.engine.agent_finished(self, status)
        return status

    async def step(self) -> None:
        await self.check_limits()
        while not self.inbox.empty():
            self.messages.append({"role": "user", "content": self.inbox.get_nowait()})
        self.steps += 1
        self.set_status("running", "thinking")
        completion = await self.ask_model()
        self.messages.append(completion.assistant_message())
        if completion.text:
            self.engine.emit(EventType.MESSAGE, self, {"step": self.steps}, completion.text)
        if not completion.tool_calls:
            self._no_tool_replies += 1
            if self._no_tool_replies >= NO_TOOL_NUDGES:
                raise Finished(completion.text)
            self.messages.append(
                {
                    "role": "user",
                    "content": "Continue with a tool call. Call finish(summary) "
                    "when the task is done.",
                }
            )
            return
        self._no_tool_replies = 0
        results = await asyncio.gather(
            *(self.call(c) for c in completion.tool_calls), return_exceptions=True
        )
        finished: Finished | None = None
        for call, result in zip(completion.tool_calls, results, strict=True):
            if isinstance(result, Finished):
                finished = result
                text = "finished"
            elif isinstance(result, BaseException):
                raise result
            else:
                text = result
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
        if finished is not None:
            raise finished

    async def ask_model(self) -> Completion:
        if self._last_prompt_tokens > COMPACT_AT * self.engine.context_window(self.model):
            await self.compact()
        tools = [_schema(t) for t in self.tools.values()]
        stream = self.engine.delta_stream(self)

        async def on_retry(info: RetryInfo) -> None:
            stream.flush()
            self.engine.emit(
                EventType.LOG,
                self,
                {
                    "retry": info.attempt,
                    "delay_s": info.delay_s,
                    "reason": info.reason,
                    "incomplete": info.partial_text,
                },
                f"model call failed ({info.reason}); retry {info.attempt} in {info.delay_s:.1f}s",
            )

        try:
            completion = await self.engine.models.complete(
                self.model, self.messages, tools, on_delta=stream.add, on_retry=on_retry
            )
        except ContextOverflow:
            stream.flush()
            await self.compact()
            completion = await self.engine.models.complete(
                self.model, self.messages, tools, on_delta=stream.add, on_retry=on_retry
            )
        finally:
            stream.flush()
        self._last_prompt_tokens = completion.input_tokens
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.cost_usd += completion.cost_usd
        self.engine.record_cost(self, completion)
        return completion

    async def compact(self) -> None:
        """Replace older turns by a summary the model writes, keeping the recent ones."""
        if len(self.messages) <= KEEP_RECENT + 2:
            return
        cut = len(self.messages) - KEEP_RECENT
        # Never split a tool call from its results.
        while cut > 2 and self.messages[cut]["role"] == "tool":
            cut -= 1
        old = self.messages[2:cut]
        request = [
            self.messages[0],
            {
                "role": "user",
                "content": "Summarize this work log for your own later use: "
                "what was done, what was learned, what remains. Be specific and brief.\n\n"
                + json.dumps(old, default=str)[-200_000:],
            },
        ]
        summary = await self.engine.models.complete(self.model, request, None)
        self.messages = [
            self.messages[0],
            self.messages[1],
            {"role": "user", "content": f"Summary of earlier work:\n{summary.text}"},
            *self.messages[cut:],
        ]
        self.engine.emit(
            EventType.LOG, self, {"compacted": len(old)}, f"compacted {len(old)} earlier messages"
        )

    # -- one tool call

    async def call(self, out: ToolCallOut) -> str:
        """Run one tool call; whatever happens, return text for the model (or Finished)."""
        if out.name not in self.tools:
            return f"error: unknown tool {out.name!r}; available: {', '.join(self.tools)}"
        if out.error is not None or out.arguments is None:
            return f"error: {out.error}; you sent: {out.raw_arguments[:500]}"
        call = ToolCall(out.name, out.arguments, out.id)
        decision, pattern = self.policy.decide(call)
        if decision == "deny":
            self.engine.emit(
                EventType.TOOL_FINISHED,
                self,
                {"tool": call.name, "id": call.id, "denied": pattern},
                "",
            )
            return f"error: refused by policy ({pattern}); do not try this again"
        if decision == "ask":
            verdict = await self.engine.ask_approval(self, call, pattern)
            if verdict == "deny":
                return "error: a person denied this call; choose another way"
        verdict_hook = self.engine.plugins.call(
            "before_tool_call", firstresult=True, call=call, agent=self
        )
        if verdict_hook:
            result = verdict_hook[0]
            if isinstance(result, str):
                return f"error: refused by a plugin: {result}"
            if isinstance(result, ToolCall):
                call = result
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: unknown tool {call.name!r}"
        started = time.perf_counter()
        self.set_status("running", f"{call.name} {_subject(call)[:80]}".strip())
        self.engine.emit(
            EventType.TOOL_STARTED,
            self,
            {"tool": call.name, "id": call.id, "arguments": call.arguments},
            f"{call.name} {_subject(call)}",
        )
        try:
            text = await tool.run(ToolContext(self), **call.arguments)
            error = False
        except Finished:
            self.engine.emit(
                EventType.TOOL_FINISHED,
                self,
                {"tool": call.name, "id": call.id, "duration_s": time.perf_counter() - started},
                "",
            )
            raise
        except TypeError as exc:
            text, error = f"error: bad arguments for {call.name}: {exc}", True
        except (Stopped, LimitReached, asyncio.CancelledError):
            raise
        except Exception as exc:
            text, error = f"error: {type(exc).__name__}: {exc}", True
        text = self.cut(text, call)
        self.engine.emit(
            EventType.TOOL_FINISHED,
            self,
            {
                "tool": call.name,
                "id": call.id,
                "error": error,
                # The shell's outcome, so a failed command never shows as a success.
                "exit_code": exit_code(text) if call.name == "shell" and not error else None,
                "duration_s": round(time.perf_counter() - started, 4),
            },
            # Whole (already cut to MAX_TOOL_OUTPUT): a restarted agent replays it.
            text,
        )
        return text

    def cut(self, text: str, call: ToolCall) -> str:
        """Long output: keep head and tail, save the whole, and say where."""
        if len(text) <= MAX_TOOL_OUTPUT:
            return text
        path = self.engine.save_artifact(self, "output", f"{call.name}-{call.id}.txt", text)
        half = MAX_TOOL_OUTPUT // 2
        return (
            f"{text[:half]}\n[... {len(text) - MAX_TOOL_OUTPUT} characters cut; the full "
            f"output is saved at {path} ...]\n{text[-half:]}"
        )

    # -- limits, status, prompt

    async def check_limits(self) -> None:
        await self.engine.wait_while_paused(self)
        lim = self.limits
        if lim.max_steps and self.steps >= lim.max_steps:
            raise LimitReached(f"step limit ({lim.max_steps}) reached")
        if lim.max_tokens and self.input_tokens + self.output_tokens >= lim.max_tokens:
            raise LimitReached(f"token limit ({lim.max_tokens}) reached")
        if lim.max_wall_s and time.monotonic() - self.started >= lim.max_wall_s:
            raise LimitReached(f"time limit ({lim.max_wall_s:g}s) reached")
        await self.engine.wait_within_budget(self)

    def set_status(self, status: str, doing: str = "") -> None:
        if status != self.status or doing:
            self.status = status
            self.engine.agent_status(self, status, doing)

    async def system_prompt(self) -> str:
        parts = [
            f"You are {self.name}, a {self.role} agent run by supervisor. You work inside a "
            f"sandbox: a Linux machine whose working folder is {self.sandbox.workdir}. "
            "Work the task through your tools, step by step; check your work by running it. "
            "When the task is done, call finish(summary) with a short summary of the result.",
        ]
        notes = self.engine.recall(self.task, self.scope_key, limit=5)
        if notes:
            parts.append(
                "Notes from earlier work (memory):\n"
                + "\n".join(f"- [{n['scope']}] {n['body']}" for n in notes)
            )
        try:
            instructions = await self.sandbox.read_file(f"{self.sandbox.workdir}/AGENTS.md")
            parts.append(
                "The workspace's instructions (AGENTS.md):\n"
                + instructions.decode("utf-8", errors="replace")[:20_000]
            )
        except Exception:
            pass  # no AGENTS.md: nothing to add
        return "\n\n".join(parts)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "steps": self.steps,
            "cost_usd": round(self.cost_usd, 6),
            "summary": self.summary,
            "parent_id": self.parent_id,
        }


def _schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def messages_from_events(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Rebuild an agent's conversation (after the task) from its recorded events.

    A restarted agent — after a crash of the supervisor process, or a person's restart —
    continues from this. Steps start at the status "thinking"; a step's text and tool calls
    become one assistant message, each finished call a tool message. A call that never
    finished (the process died under it) is answered with a note saying so.
    """
    messages: list[dict[str, Any]] = []
    step_text: list[str] = []
    calls: dict[str, dict[str, Any]] = {}
    results: dict[str, str] = {}
    said: list[str] = []  # a person's messages, read by the agent at its next step

    def close_step() -> None:
        if step_text or calls:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(step_text) or None}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for cid, c in calls.items()
                ]
            messages.append(message)
            for cid in calls:
                content = results.get(cid, INTERRUPTED_CALL)
                messages.append({"role": "tool", "tool_call_id": cid, "content": content})
        step_text.clear()
        calls.clear()
        results.clear()
        messages.extend({"role": "user", "content": text} for text in said)
        said.clear()

    for event in events:
        t, d = event.type, event.data
        if t == EventType.AGENT_STATUS and d.get("doing") == "thinking":
            close_step()
        elif t == EventType.MESSAGE:
            step_text.append(event.text)
        elif t == EventType.TOOL_STARTED:
            arguments = d.get("arguments", {})
            calls[d.get("id", "")] = {"name": d.get("tool", ""), "arguments": arguments}
        elif t == EventType.TOOL_FINISHED:
            cid = d.get("id", "")
            calls.setdefault(cid, {"name": d.get("tool", ""), "arguments": {}})
            if d.get("denied"):
                results[cid] = f"error: refused by policy ({d['denied']}); do not try this again"
            else:
                results[cid] = event.text or "finished"
        elif t == EventType.HUMAN_MESSAGE:
            said.append(event.text)
    close_step()
    return messages
