"""Anthropic's Messages API on kvrun serve (runtime/anthropic.py): messages with text, tool_use and
tool_result blocks in, a message of content blocks out (or its named server-sent events), bad
requests answered with Anthropic's error object."""

from __future__ import annotations

import http.client
import json

import pytest
import test_tools
from test_server import call

from kvrun.runtime.anthropic import _translate
from kvrun.runtime.server import BadRequest

model, server = test_tools.model, test_tools.server  # a tiny model (the generic tool format) with its whole context

ASK = [{"role": "user", "content": "weather in Paris?"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip


def _events(port: int, body: dict) -> list[tuple[str, dict]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/messages", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    text = conn.getresponse().read().decode()
    conn.close()
    out = []
    for chunk in text.strip().split("\n\n"):
        kind, data = chunk.split("\n", 1)
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_a_reply_is_a_message_of_content_blocks(server):
    status, text = call(server, "POST", "/v1/messages", {"model": "x", "max_tokens": 6, "system": "be brief", "messages": ASK})
    r = json.loads(text)
    assert status == 200 and r["type"] == "message" and r["role"] == "assistant" and r["id"].startswith("msg_")
    assert r["content"][0]["type"] == "text" and r["stop_reason"] in ("end_turn", "max_tokens")
    assert r["usage"]["input_tokens"] > 0 and 0 < r["usage"]["output_tokens"] <= 6


def test_a_streamed_reply_is_anthropics_event_sequence(server):
    ev = _events(server, {"model": "x", "max_tokens": 6, "stream": True, "messages": ASK})
    kinds = [k for k, _ in ev]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"} and ev[0][1]["message"]["usage"]["input_tokens"] > 0
    text = "".join(d["delta"]["text"] for k, d in ev if k == "content_block_delta")
    status, plain = call(server, "POST", "/v1/messages", {"model": "x", "max_tokens": 6, "temperature": 0, "messages": ASK})
    streamed = _events(server, {"model": "x", "max_tokens": 6, "temperature": 0, "stream": True, "messages": ASK})
    assert "".join(d["delta"]["text"] for k, d in streamed if k == "content_block_delta") == json.loads(plain)["content"][0]["text"]
    assert isinstance(text, str)


def test_tools_are_called_with_tool_use_blocks(server):
    body = {"model": "x", "max_tokens": 300, "temperature": 0, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}, "messages": ASK}
    r = json.loads(call(server, "POST", "/v1/messages", body)[1])
    use = [b for b in r["content"] if b["type"] == "tool_use"]
    assert r["stop_reason"] == "tool_use" and use[0]["name"] == "get_weather" and isinstance(use[0]["input"]["city"], str), r
    assert use[0]["id"].startswith("toolu_")
    # the next turn carries the call and its result
    turn = ASK + [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]  # fmt: skip
    status, text = call(server, "POST", "/v1/messages", {"model": "x", "max_tokens": 20, "tools": [WEATHER], "messages": turn})
    assert status == 200, text


def test_messages_translate_to_the_chat_kvrun_runs():
    body = {"max_tokens": 5, "system": [{"type": "text", "text": "be brief"}], "stop_sequences": ["x"], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "let me see"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]},
                                     {"type": "text", "text": "so?"}]}]}  # fmt: skip
    out = _translate(body, BadRequest)
    assert out["stop"] == ["x"] and out["max_tokens"] == 5
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert out["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "42"}


@pytest.mark.parametrize("body,says", [
    ({"messages": ASK}, "max_tokens is required"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role must be user or assistant"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "aGk="}}]}]}, "images are not supported without the model's projector"),
    ({"max_tokens": 5, "tools": [WEATHER], "tool_choice": {"type": "sometimes"}, "messages": ASK}, "tool_choice must be"),
])  # fmt: skip
def test_a_bad_request_is_anthropics_error_object(server, body, says):
    status, text = call(server, "POST", "/v1/messages", body)
    err = json.loads(text)
    assert status == 400 and err["type"] == "error" and says in err["error"]["message"], text


def test_count_tokens_is_the_prompt_the_reply_would_take(server):
    status, text = call(server, "POST", "/v1/messages/count_tokens", {"model": "x", "messages": ASK})
    n = json.loads(text)["input_tokens"]
    r = json.loads(call(server, "POST", "/v1/messages", {"model": "x", "max_tokens": 2, "messages": ASK})[1])
    assert status == 200 and n == r["usage"]["input_tokens"]
