"""The scripted model server, exercised over real HTTP as its users (our tests, plugin
authors, the benchmark) would: with bare httpx, and through litellm itself."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx
import pytest

from supervisor.testing import Fault, Reply, ScriptedModelServer

USER = {"role": "user", "content": "list the files"}


def body(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"model": "scripted", "messages": messages or [USER], **extra}


async def stream(
    client: httpx.AsyncClient, base_url: str, payload: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[float], bool]:
    """POST a streaming request; returns the parsed chunks, their arrival times (seconds
    after the request was sent) and whether ``data: [DONE]`` arrived."""
    chunks: list[dict[str, Any]] = []
    times: list[float] = []
    done = False
    start = time.monotonic()
    async with client.stream("POST", f"{base_url}/chat/completions", json=payload) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunks.append(json.loads(data))
            times.append(time.monotonic() - start)
    return chunks, times, done


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def tool_calls_of(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Tool calls reassembled from raw SSE chunks by their ``index``."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.get("id") or ""
                function = delta.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
    return calls


# -- plain HTTP ----------------------------------------------------------------------------


async def test_streamed_text_arrives_in_chunks_with_usage() -> None:
    text = "The quick brown fox jumps over the lazy dog, twice, then rests."
    with ScriptedModelServer([Reply(text, usage=(12, 7))]) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            chunks, _, done = await stream(
                client,
                server.base_url,
                body(stream=True, stream_options={"include_usage": True}),
            )
    assert done
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3
    assert text_of(chunks) == text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert server.requests == [body(stream=True, stream_options={"include_usage": True})]


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    with ScriptedModelServer([Reply("hello there")]) as server:
        async with httpx.AsyncClient() as client:
            chunks, _, done = await stream(client, server.base_url, body(stream=True))
    assert done
    assert all(c["choices"] for c in chunks)
    assert "usage" not in chunks[-1]
    assert text_of(chunks) == "hello there"


async def test_non_streaming_reply_with_text_and_estimated_usage() -> None:
    with ScriptedModelServer([Reply("Done: 3 files.")]) as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.base_url}/chat/completions", json=body())
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Done: 3 files."}
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["prompt_tokens"] >= 1 and usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_non_streaming_tool_calls() -> None:
    reply = Reply(tool_calls=[("shell", {"command": "ls -la"}), ("read", '{"path": "a.txt"}')])
    with ScriptedModelServer([reply]) as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.base_url}/chat/completions", json=body())
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["shell", "read"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"command": "ls -la"}
    assert calls[1]["function"]["arguments"] == '{"path": "a.txt"}'
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


async def test_streamed_tool_calls_are_fragmented_and_keyed_by_index() -> None:
    reply = Reply(
        "Let me look.", tool_calls=[("shell", {"command": "ls"}), ("shell", {"command": "pwd"})]
    )
    with ScriptedModelServer([reply]) as server:
        async with httpx.AsyncClient() as client:
            chunks, _, _ = await stream(client, server.base_url, body(stream=True))
    calls = tool_calls_of(chunks)
    assert sorted(calls) == [0, 1]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"command": "ls"},
        {"command": "pwd"},
    ]
    assert all(calls[i]["name"] == "shell" and calls[i]["id"].startswith("call_") for i in (0, 1))
    fragments = [
        d
        for c in chunks
        for d in c["choices"][0]["delta"].get("tool_calls") or []
        if d["index"] == 0
    ]
    # The first delta names the call with empty arguments; the arguments follow in 2+ pieces.
    assert fragments[0]["function"] == {"name": "shell", "arguments": ""}
    assert len([f for f in fragments[1:] if f["function"]["arguments"]]) >= 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_models_endpoint_lists_one_model() -> None:
    with ScriptedModelServer([]) as server:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.base_url}/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["scripted"]


async def test_bad_json_body_is_a_400_and_the_server_keeps_serving() -> None:
    with ScriptedModelServer([Reply("still here")]) as server:
        async with httpx.AsyncClient() as client:
            bad = await client.post(
                f"{server.base_url}/chat/completions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            not_object = await client.post(f"{server.base_url}/chat/completions", json=[1, 2])
            no_messages = await client.post(f"{server.base_url}/chat/completions", json={})
            good = await client.post(f"{server.base_url}/chat/completions", json=body())
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert not_object.status_code == 400 and no_messages.status_code == 400
    assert good.json()["choices"][0]["message"]["content"] == "still here"


# -- script advancement --------------------------------------------------------------------


async def test_script_advances_with_assistant_messages_and_exhausts_with_500() -> None:
    script = [Reply(tool_calls=[("shell", {"command": "ls"})]), Reply("Two files.")]
    second_turn = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"},
    ]
    third_turn = [*second_turn, {"role": "assistant", "content": "Two files."}]
    with ScriptedModelServer(script) as server:
        async with httpx.AsyncClient() as client:
            url = f"{server.base_url}/chat/completions"
            first = await client.post(url, json=body())
            second = await client.post(url, json=body(second_turn))
            # Stateless: asking for turn one again gets reply #1 again.
            again = await client.post(url, json=body())
            exhausted = await client.post(url, json=body(third_turn))
    assert first.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "shell"
    assert second.json()["choices"][0]["message"]["content"] == "Two files."
    assert again.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert exhausted.status_code == 500
    message = exhausted.json()["error"]["message"]
    assert "exhausted" in message and "index 2" in message
    assert len(server.requests) == 4


async def test_callable_script_sees_the_messages() -> None:
    def script(messages: list[dict[str, Any]]) -> Reply:
        return Reply(f"echo: {messages[-1]['content']}")

    with ScriptedModelServer(script) as server:
        async with httpx.AsyncClient() as client:
            chunks, _, _ = await stream(
                client, server.base_url, body([{"role": "user", "content": "ping"}], stream=True)
            )
    assert text_of(chunks) == "echo: ping"


async def test_start_stop_and_restart() -> None:
    server = ScriptedModelServer([Reply("hi")])
    with pytest.raises(RuntimeError):
        _ = server.base_url
    base_url = server.start()
    assert base_url == server.base_url and base_url.endswith("/v1")
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.base_url
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"{base_url}/chat/completions", json=body())


# -- faults --------------------------------------------------------------------------------


async def test_rate_limit_then_the_retry_succeeds() -> None:
    with ScriptedModelServer([Reply("ok", fault=Fault.rate_limit(retry_after=2.5))]) as server:
        async with httpx.AsyncClient() as client:
            url = f"{server.base_url}/chat/completions"
            limited = await client.post(url, json=body())
            retried = await client.post(url, json=body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2.5"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert retried.status_code == 200
    assert retried.json()["choices"][0]["message"]["content"] == "ok"


async def test_server_error_and_overloaded() -> None:
    script = [Reply("a", fault=Fault.server_error(503)), Reply("b", fault=Fault.overloaded())]
    later = [USER, {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}]
    with ScriptedModelServer(script) as server:
        async with httpx.AsyncClient() as client:
            url = f"{server.base_url}/chat/completions"
            unavailable = await client.post(url, json=body(stream=True))
            overloaded = await client.post(url, json=body(later, stream=True))
            recovered = await client.post(url, json=body(later))
    assert unavailable.status_code == 503
    assert "message" in unavailable.json()["error"]
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert recovered.json()["choices"][0]["message"]["content"] == "b"


async def test_fault_times_counts_each_conversation_separately() -> None:
    script = [Reply("ok", fault=Fault.server_error(times=2))]
    other = [{"role": "user", "content": "another task"}]
    with ScriptedModelServer(script) as server:
        async with httpx.AsyncClient() as client:
            url = f"{server.base_url}/chat/completions"
            statuses = [(await client.post(url, json=body())).status_code for _ in range(3)]
            other_status = (await client.post(url, json=body(other))).status_code
    assert statuses == [500, 500, 200]
    assert other_status == 500


async def test_stall_keeps_the_connection_open_then_finishes() -> None:
    text = "one two three four five six seven eight nine"
    with ScriptedModelServer(
        [Reply(text, fault=Fault.stall(after_chunks=1, seconds=1.0))]
    ) as server:
        async with httpx.AsyncClient() as client:
            chunks, times, done = await stream(client, server.base_url, body(stream=True))
            _, retry_times, _ = await stream(client, server.base_url, body(stream=True))
    assert done and text_of(chunks) == text
    assert times[0] < 0.8
    assert times[1] - times[0] >= 0.8
    assert retry_times[-1] < 0.8  # the stall hit only the first attempt


async def test_drop_breaks_the_stream_mid_response() -> None:
    text = "one two three four five six seven eight nine"
    with ScriptedModelServer([Reply(text, fault=Fault.drop(after_chunks=2))]) as server:
        async with httpx.AsyncClient() as client:
            received: list[str] = []
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream(
                    "POST", f"{server.base_url}/chat/completions", json=body(stream=True)
                ) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line:
                            received.append(line)
            chunks, _, done = await stream(client, server.base_url, body(stream=True))
    assert len(received) == 2 and "[DONE]" not in received[-1]
    assert done and text_of(chunks) == text


async def test_drop_of_a_non_streaming_request() -> None:
    with ScriptedModelServer([Reply("ok", fault=Fault.drop())]) as server:
        async with httpx.AsyncClient() as client:
            url = f"{server.base_url}/chat/completions"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url, json=body())
            retried = await client.post(url, json=body())
    assert retried.json()["choices"][0]["message"]["content"] == "ok"


async def test_slow_first_token() -> None:
    with ScriptedModelServer([Reply("hi there", fault=Fault.slow_first_token(1.0))]) as server:
        async with httpx.AsyncClient() as client:
            _, times, _ = await stream(client, server.base_url, body(stream=True))
            _, retry_times, _ = await stream(client, server.base_url, body(stream=True))
    assert times[0] >= 0.8
    assert times[-1] - times[0] < 0.8  # once started, it streams at full speed
    assert retry_times[0] < 0.8  # the delay hit only the first attempt


async def test_delay_is_think_time() -> None:
    with ScriptedModelServer([Reply("hm", delay_s=0.3)]) as server:
        async with httpx.AsyncClient() as client:
            start = time.monotonic()
            await client.post(f"{server.base_url}/chat/completions", json=body())
    assert time.monotonic() - start >= 0.25


async def test_tokens_per_s_paces_the_text_word_by_word() -> None:
    text = " ".join(f"word{i}" for i in range(60)) + "."
    paced = Reply(text, tool_calls=[("shell", {"command": "echo hi"})], tokens_per_s=30)
    with ScriptedModelServer([paced]) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            start = time.monotonic()
            chunks, times, done = await stream(client, server.base_url, body(stream=True))
            elapsed = time.monotonic() - start
    assert done
    assert text_of(chunks) == text  # every word, in order
    assert json.loads(tool_calls_of(chunks)[0]["arguments"]) == {"command": "echo hi"}
    assert 1.5 <= elapsed <= 4.0  # 60 tokens at 30 tokens/s: about 2 s
    text_times = [t for c, t in zip(chunks, times, strict=True) if text_of([c])]
    assert len(text_times) == 60  # one word a chunk, so a client sees it grow
    assert text_times[0] < 0.5  # the first word comes at once, not after a pause
    assert text_times[30] - text_times[0] >= 0.6  # spread out, not sent in a burst


async def test_malformed_tool_call_arguments_arrive_verbatim() -> None:
    broken = '{"command": "ls", '
    with ScriptedModelServer([Reply(tool_calls=[("shell", broken)])]) as server:
        async with httpx.AsyncClient() as client:
            chunks, _, _ = await stream(client, server.base_url, body(stream=True))
    assert tool_calls_of(chunks)[0]["arguments"] == broken


# -- concurrency ---------------------------------------------------------------------------


async def test_200_concurrent_streaming_conversations() -> None:
    n = 200
    script = [
        Reply(tool_calls=[("shell", {"command": "ls"})]),
        Reply("all done, nothing left to do"),
    ]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with ScriptedModelServer(script) as server:
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def conversation(i: int) -> tuple[str, str]:
                messages = [{"role": "user", "content": f"task {i}"}]
                first, _, _ = await stream(client, server.base_url, body(messages, stream=True))
                call = tool_calls_of(first)[0]
                messages += [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["name"], "arguments": call["arguments"]},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": call["id"], "content": f"file-{i}"},
                ]
                second, _, done = await stream(client, server.base_url, body(messages, stream=True))
                assert done
                return call["arguments"], text_of(second)

            start = time.monotonic()
            results = await asyncio.gather(*(conversation(i) for i in range(n)))
            elapsed = time.monotonic() - start
    assert all(json.loads(args) == {"command": "ls"} for args, _ in results)
    assert all(text == "all done, nothing left to do" for _, text in results)
    assert len(server.requests) == 2 * n
    assert elapsed < 20


# -- through litellm -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm() -> Any:
    # Before the import: litellm otherwise fetches a price map from the internet.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.suppress_debug_info = True
    return litellm


SHELL_TOOL = {
    "type": "function",
    "function": {
        "name": "shell",
        "description": "Run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
}


async def test_litellm_streams_two_tool_calls(litellm: Any) -> None:
    reply = Reply(
        "Checking.",
        tool_calls=[("shell", {"command": "ls -la /tmp"}), ("shell", {"command": "uname -a"})],
        usage=(40, 9),
    )
    with ScriptedModelServer([reply]) as server:
        response = await litellm.acompletion(
            model="openai/scripted",
            api_base=server.base_url,
            api_key="test",
            messages=[USER],
            tools=[SHELL_TOOL],
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
        )
        chunks = [chunk async for chunk in response]
    calls: dict[int, dict[str, str]] = {}
    text = ""
    usage = None
    for chunk in chunks:
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert text == "Checking."
    assert sorted(calls) == [0, 1]
    assert [c["name"] for c in calls.values()] == ["shell", "shell"]
    assert json.loads(calls[0]["arguments"]) == {"command": "ls -la /tmp"}
    assert json.loads(calls[1]["arguments"]) == {"command": "uname -a"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (40, 9)
    assert server.requests[0]["model"] == "scripted"
    assert server.requests[0]["tools"][0]["function"]["name"] == "shell"


async def test_litellm_sees_a_rate_limit_as_a_rate_limit_error(litellm: Any) -> None:
    with ScriptedModelServer([Reply("fine", fault=Fault.rate_limit(0.1))]) as server:
        kwargs: dict[str, Any] = {
            "model": "openai/scripted",
            "api_base": server.base_url,
            "api_key": "test",
            "messages": [USER],
            "max_retries": 0,
        }
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(**kwargs)
        response = await litellm.acompletion(**kwargs)
    assert response.choices[0].message.content == "fine"
