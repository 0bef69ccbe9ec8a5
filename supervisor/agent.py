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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from supervisor.api import AgentInfo, Finished
from supervisor.events import Event, EventType, exit_code
from supervisor.models import Completion, ContextOverflow, ModelError, RetryInfo, ToolCallOut
from supervisor.status import AgentStatus
from supervisor.types import Tool, ToolCall

if TYPE_CHECKING:
    from supervisor.api import ToolContext
    from supervisor.sandbox.base import Sandbox
    from supervisor.types import ModelSpec

MAX_TOOL_OUTPUT = 12_000  # characters of one tool result shown to the model
NO_TOOL_NUDGES = 3  # replies without a tool call tolerated before the text is taken as final
COMPACT_AT = 0.75  # fraction of the context window that triggers compaction
INTERRUPTED_CALL = "error: interrupted (the supervisor stopped while this ran); check its effect"
KEEP_RECENT = 6  # messages kept verbatim when older turns are compacted


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


class DeltaSink(Protocol):
    def add(self, text: str) -> None: ...

    def flush(self) -> None: ...


class Runtime(Protocol):
    """What the loop needs from whoever runs it (the engine implements this). The agent
    never sees more of the engine than this."""

    def emit(
        self, type: str, agent: Agent | None, data: dict[str, Any], text: str = ""
    ) -> Event: ...

    def delta_stream(self, agent: Agent) -> DeltaSink: ...

    async def complete(
        self,
        agent: Agent,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        on_retry: Callable[[RetryInfo], Awaitable[None]] | None = None,
    ) -> Completion: ...

    def context_window(self, spec: ModelSpec) -> int: ...

    def record_cost(self, agent: Agent, completion: Completion) -> None: ...

    async def ask_approval(self, agent: Agent, call: ToolCall, pattern: str) -> str: ...

    def before_tool_call(self, agent: Agent, call: ToolCall) -> Verdict: ...

    def tool_context(self, agent: Agent) -> ToolContext: ...

    def save_artifact(self, agent: Agent, kind: str, name: str, text: str) -> Path: ...

    async def wait_while_paused(self, agent: Agent) -> None: ...

    async def wait_within_budget(self, agent: Agent) -> None: ...

    def agent_status(self, agent: Agent, status: str, doing: str) -> None: ...

    def agent_finished(self, agent: Agent, status: str) -> None: ...

    def recall(self, query: str, scope_key: str, limit: int = 5) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Verdict:
    """What the ``before_tool_call`` plugins decided: ``refused`` (a reason), a
    ``rewritten`` call, or neither; ``plugin`` names the plugin that decided."""

    plugin: str = ""
    refused: str = ""
    rewritten: ToolCall | None = None


class Agent:
    def __init__(
        self,
        runtime: Runtime,
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
        self.runtime = runtime
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
        self.status: str = AgentStatus.STARTING
        self.summary = ""
        self.started = time.monotonic()
        self._no_tool_replies = 0
        self._last_prompt_tokens = 0

    # -- the loop

    async def run(self) -> str:
        """Work the task until done; returns the final status."""
        status: str = AgentStatus.FAILED
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
            status = AgentStatus.DONE
        except LimitReached as limit:
            self.summary = f"stopped: {limit}"
            status = AgentStatus.STOPPED
        except Stopped:
            status = AgentStatus.STOPPED
        except ModelError as exc:
            self.summary = str(exc)
            status = AgentStatus.FAILED
        except asyncio.CancelledError:
            status = AgentStatus.STOPPED
            raise
        except Exception as exc:
            # A bug in a tool or plugin: record it; the engine and other agents keep going.
            self.summary = f"internal error: {type(exc).__name__}: {exc}"
            status = AgentStatus.FAILED
        finally:
            self.status = status
            self.runtime.agent_finished(self, status)
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
            self.runtime.emit(EventType.MESSAGE, self, {"step": self.steps}, completion.text)
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
        if self._last_prompt_tokens > COMPACT_AT * self.runtime.context_window(self.model):
            await self.compact()
        tools = [_schema(t) for t in self.tools.values()]
        stream = self.runtime.delta_stream(self)

        async def on_retry(info: RetryInfo) -> None:
            stream.flush()
            self.runtime.emit(
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
            completion = await self.runtime.complete(
                self, self.messages, tools, on_delta=stream.add, on_retry=on_retry
            )
        except ContextOverflow:
            stream.flush()
            await self.compact()
            completion = await self.runtime.complete(
                self, self.messages, tools, on_delta=stream.add, on_retry=on_retry
            )
        finally:
            stream.flush()
        self._last_prompt_tokens = completion.input_tokens
        self._charge(completion)
        return completion

    def _charge(self, completion: Completion) -> None:
        """Count a model call's tokens and cost against the agent, its run and budgets."""
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.cost_usd += completion.cost_usd
        self.runtime.record_cost(self, completion)

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
        summary = await self.runtime.complete(self, request, None)
        self._charge(summary)  # a summary is a model call like any other: budgets count it
        self.messages = [
            self.messages[0],
            self.messages[1],
            {"role": "user", "content": f"Summary of earlier work:\n{summary.text}"},
            *self.messages[cut:],
        ]
        self.runtime.emit(
            EventType.LOG, self, {"compacted": len(old)}, f"compacted {len(old)} earlier messages"
        )

    # -- one tool call

    async def call(self, out: ToolCallOut) -> str:
        """Run one tool call; whatever happens, return text for the model (or Finished).

        Every outcome leaves a ``tool.finished`` event whose text is exactly what the model
        was told, so the transcript shows it and a resumed agent replays it: refusals
        (unknown tool, arguments that are not JSON, policy, a person, a plugin) included.
        """
        if out.name not in self.tools:
            return self._refused(
                out,
                "unknown_tool",
                f"error: unknown tool {out.name!r}; available: {', '.join(self.tools)}",
            )
        if out.error is not None or out.arguments is None:
            return self._refused(
                out, "malformed", f"error: {out.error}; you sent: {out.raw_arguments[:500]}"
            )
        asked = ToolCall(out.name, out.arguments, out.id)
        call, refusal = await self._admit(out, asked)
        if refusal is not None:
            return refusal
        tool = self.tools.get(call.name)
        if tool is None:
            return self._refused(out, "unknown_tool", f"error: unknown tool {call.name!r}")
        started = time.perf_counter()
        self.set_status(AgentStatus.RUNNING, f"{call.name} {_subject(call)[:80]}".strip())
        data: dict[str, Any] = {"tool": call.name, "id": call.id, "arguments": call.arguments}
        if call != asked:
            # What the model asked for stays in the record beside what ran.
            data["asked"] = {"tool": asked.name, "arguments": asked.arguments}
        self.runtime.emit(EventType.TOOL_STARTED, self, data, f"{call.name} {_subject(call)}")
        try:
            text = await tool.run(self.runtime.tool_context(self), **call.arguments)
            error = False
        except Finished:
            self.runtime.emit(
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
        if not isinstance(text, str):
            text, error = f"error: tool {call.name} returned {type(text).__name__}, not text", True
        text = self.cut(text, call)
        self.runtime.emit(
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

    async def _admit(self, out: ToolCallOut, call: ToolCall) -> tuple[ToolCall, str | None]:
        """The policy, then the plugins; a rewritten call faces the policy again (a plugin
        cannot launder a denied command). Returns the call to run, or a refusal."""
        rewrites = 0
        while True:
            decision, pattern = self.policy.decide(call)
            if decision == "deny":
                text = f"error: refused by policy ({pattern}); do not try this again"
                return call, self._refused(out, "policy", text, denied=pattern, ran=call)
            if decision == "ask":
                verdict = await self.runtime.ask_approval(self, call, pattern)
                if verdict == "deny":
                    text = "error: a person denied this call; choose another way"
                    return call, self._refused(out, "person", text, ran=call)
            plugin = self.runtime.before_tool_call(self, call)
            if plugin.refused:
                text = f"error: refused by a plugin: {plugin.refused}"
                return call, self._refused(out, "plugin", text, plugin=plugin.plugin, ran=call)
            if plugin.rewritten is None or plugin.rewritten == call:
                return call, None
            rewritten = ToolCall(plugin.rewritten.name, plugin.rewritten.arguments, call.id)
            self.runtime.emit(
                EventType.TOOL_REWRITTEN,
                self,
                {
                    "id": call.id,
                    "plugin": plugin.plugin,
                    "from": {"tool": call.name, "arguments": call.arguments},
                    "to": {"tool": rewritten.name, "arguments": rewritten.arguments},
                },
                f"{plugin.plugin} rewrote {call.name} {_subject(call)} → "
                f"{rewritten.name} {_subject(rewritten)}",
            )
            call = rewritten
            rewrites += 1
            if rewrites > 3:  # plugins rewriting each other's rewrites: stop, refuse
                text = "error: refused: plugins kept rewriting this call"
                return call, self._refused(out, "plugin", text, ran=call)

    def _refused(
        self,
        out: ToolCallOut,
        reason: str,
        text: str,
        *,
        denied: str = "",
        plugin: str = "",
        ran: ToolCall | None = None,
    ) -> str:
        """Record a call that never ran (and what the model was told), then return it."""
        data: dict[str, Any] = {
            "tool": out.name,
            "id": out.id,
            "error": True,
            "refused": reason,
        }
        if out.arguments is not None:
            data["arguments"] = out.arguments
        else:
            data["raw_arguments"] = out.raw_arguments[:4000]
        if denied:
            data["denied"] = denied
        if plugin:
            data["plugin"] = plugin
        if ran is not None and (ran.name, ran.arguments) != (out.name, out.arguments):
            data["rewritten_to"] = {"tool": ran.name, "arguments": ran.arguments}
        self.runtime.emit(EventType.TOOL_FINISHED, self, data, text)
        return text

    def cut(self, text: str, call: ToolCall) -> str:
        """Long output: keep head and tail, save the whole, and say where."""
        if len(text) <= MAX_TOOL_OUTPUT:
            return text
        path = self.runtime.save_artifact(self, "output", f"{call.name}-{call.id}.txt", text)
        half = MAX_TOOL_OUTPUT // 2
        return (
            f"{text[:half]}\n[... {len(text) - MAX_TOOL_OUTPUT} characters cut; the full "
            f"output is saved at {path} ...]\n{text[-half:]}"
        )

    # -- limits, status, prompt

    async def check_limits(self) -> None:
        await self.runtime.wait_while_paused(self)
        lim = self.limits
        if lim.max_steps and self.steps >= lim.max_steps:
            raise LimitReached(f"step limit ({lim.max_steps}) reached")
        if lim.max_tokens and self.input_tokens + self.output_tokens >= lim.max_tokens:
            raise LimitReached(f"token limit ({lim.max_tokens}) reached")
        if lim.max_wall_s and time.monotonic() - self.started >= lim.max_wall_s:
            raise LimitReached(f"time limit ({lim.max_wall_s:g}s) reached")
        await self.runtime.wait_within_budget(self)

    def set_status(self, status: str, doing: str = "") -> None:
        if status != self.status or doing:
            self.status = status
            self.runtime.agent_status(self, status, doing)

    async def system_prompt(self) -> str:
        parts = [
            f"You are {self.name}, a {self.role} agent run by supervisor. You work inside a "
            f"sandbox: a Linux machine whose working folder is {self.sandbox.workdir}. "
            "Work the task through your tools, step by step; check your work by running it. "
            "When the task is done, call finish(summary) with a short summary of the result.",
        ]
        notes = self.runtime.recall(self.task, self.scope_key, limit=5)
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

    def info(self) -> AgentInfo:
        """What plugins see of this agent (a snapshot)."""
        return AgentInfo(
            id=self.id,
            name=self.name,
            run_id=self.run_id,
            role=self.role,
            task=self.task,
            model=self.model.alias,
            backend=self.sandbox.backend,
            parent_id=self.parent_id,
            scope_key=self.scope_key,
            status=str(self.status),
            steps=self.steps,
            cost_usd=self.cost_usd,
            summary=self.summary,
        )

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
                        "function": {
                            "name": c["name"],
                            "arguments": c["raw"]
                            if c.get("raw") is not None
                            else json.dumps(c["arguments"]),
                        },
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
            # The model's own words: what it asked for, even if a plugin rewrote it.
            asked = d.get("asked") or {}
            calls[d.get("id", "")] = {
                "name": asked.get("tool", d.get("tool", "")),
                "arguments": asked.get("arguments", d.get("arguments", {})),
            }
        elif t == EventType.TOOL_FINISHED:
            cid = d.get("id", "")
            # A refused call has no tool.started: its arguments (or the unparsable text the
            # model sent) are on this event.
            calls.setdefault(
                cid,
                {
                    "name": d.get("tool", ""),
                    "arguments": d.get("arguments", {}),
                    "raw": d.get("raw_arguments"),
                },
            )
            if d.get("denied") and not event.text:  # recorded before refusals kept their text
                results[cid] = f"error: refused by policy ({d['denied']}); do not try this again"
            else:
                results[cid] = event.text or "finished"
        elif t == EventType.HUMAN_MESSAGE:
            said.append(event.text)
    close_step()
    return messages
