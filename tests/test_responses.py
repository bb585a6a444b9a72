"""OpenAI's Responses API on kvrun serve (runtime/responses.py), as llama-server offers it: ``input`` (a string or
items: messages, function calls and their outputs, reasoning) in, a ``response`` of output items out (message,
function_call, reasoning) or its typed server-sent events, bad requests answered with a one-line 400.  (The
``openai`` client is no dependency: raw HTTP, the wire format it reads.)"""

from __future__ import annotations

import http.client
import json

import pytest
import test_tools
from test_server import call

from kvrun.runtime.responses import translate
from kvrun.runtime.server import BadRequest

model, server = test_tools.model, test_tools.server  # a tiny model (the generic tool format) with its whole context

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip
THINKS = 'root ::= "<think>" [a-d]{3,6} "</think>" [ ]? [e-h]{2,5}'  # (the tiny model made to think, as test_reasoning.py)


def _respond(port: int, body: dict) -> dict:
    status, text = call(port, "POST", "/v1/responses", body)
    assert status == 200, text
    return json.loads(text)


def _events(port: int, body: dict) -> list[tuple[str, dict]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/responses", body=json.dumps({**body, "stream": True}).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    text = r.read().decode()
    conn.close()
    out = []
    for chunk in text.strip().split("\n\n"):
        kind, data = chunk.split("\n", 1)
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def _text(r: dict) -> str:
    """What the SDKs' ``response.output_text`` gives: the message items' output_text parts."""
    return "".join(p["text"] for it in r["output"] if it["type"] == "message" for p in it["content"] if p["type"] == "output_text")


def test_a_string_input_gets_a_response_with_a_message(server):
    r = _respond(server, {"model": "x", "input": "weather in Paris?", "instructions": "be brief", "max_output_tokens": 6})
    assert r["object"] == "response" and r["id"].startswith("resp_") and r["status"] in ("completed", "incomplete")
    msg = r["output"][-1]
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["id"].startswith("msg_")
    assert msg["content"][0]["type"] == "output_text" and isinstance(msg["content"][0]["text"], str)
    u = r["usage"]
    assert u["input_tokens"] > 0 and 0 < u["output_tokens"] <= 6 and u["total_tokens"] == u["input_tokens"] + u["output_tokens"]


def test_a_reply_cut_by_max_output_tokens_is_incomplete(server):
    r = _respond(server, {"input": "count to a hundred", "max_output_tokens": 1, "temperature": 0, "ignore_eos": True})
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"} and r["usage"]["output_tokens"] == 1


def test_a_streamed_response_is_the_typed_event_sequence(server):
    body = {"input": "weather in Paris?", "max_output_tokens": 6, "temperature": 0}
    ev = _events(server, body)
    kinds = [k for k, _ in ev]
    assert all(k == d["type"] for k, d in ev) and [d["sequence_number"] for _, d in ev] == list(range(len(ev)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if ev[-1][1]["response"]["status"] == "completed" else "response.incomplete"]  # fmt: skip
    assert ev[0][1]["response"]["status"] == "in_progress" and ev[0][1]["response"]["output"] == []
    streamed = "".join(d["delta"] for k, d in ev if k == "response.output_text.delta")
    final = ev[-1][1]["response"]
    assert streamed == ev[-4][1]["text"] == _text(final) == _text(_respond(server, body))  # (the same text, whole)
    assert final["usage"]["output_tokens"] > 0 and final["output"][0]["id"] == ev[2][1]["item"]["id"]


def test_tools_are_called_with_function_call_items_and_answered_with_their_outputs(server):
    body = {"input": "weather in Paris?", "max_output_tokens": 300, "temperature": 0, "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"}}  # fmt: skip
    r = _respond(server, body)
    calls = [it for it in r["output"] if it["type"] == "function_call"]
    assert calls and calls[0]["name"] == "get_weather" and isinstance(json.loads(calls[0]["arguments"])["city"], str), r
    assert calls[0]["id"].startswith("fc_") and calls[0]["call_id"] and calls[0]["status"] == "completed"
    ev = _events(server, body)  # streamed: the same call, its arguments in one delta
    done = [d["item"] for k, d in ev if k == "response.output_item.done" and d["item"]["type"] == "function_call"]
    assert [c["name"] for c in done] == ["get_weather"] and "response.function_call_arguments.delta" in [k for k, _ in ev]
    # the next turn carries the call and its output, as a client replays them
    turn = [{"role": "user", "content": "weather in Paris?"}, calls[0],
            {"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "sunny"}]  # fmt: skip
    r2 = _respond(server, {"input": turn, "max_output_tokens": 20, "tools": [WEATHER]})
    assert r2["output"] and r2["usage"]["input_tokens"] > r["usage"]["input_tokens"]


def test_text_format_json_schema_constrains_the_reply(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = _respond(server, {"input": "ok?", "max_output_tokens": 60, "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema}}})
    assert isinstance(json.loads(_text(r))["ok"], bool), r


@pytest.mark.parametrize("grammar", [THINKS, 'root ::= "\\n" ' + THINKS.removeprefix("root ::= ")])  # (spaces before it too)
def test_a_thinking_reply_has_a_reasoning_item_before_its_message(server, grammar):
    r = _respond(server, {"input": "2+2?", "max_output_tokens": 40, "grammar": grammar})
    kinds = [it["type"] for it in r["output"]]
    assert kinds == ["reasoning", "message"], r
    assert set(r["output"][0]["content"][0]["text"]) <= set("abcd") and r["output"][0]["content"][0]["type"] == "reasoning_text"
    assert set(_text(r).strip()) <= set("efgh")
    ev = _events(server, {"input": "2+2?", "max_output_tokens": 40, "grammar": grammar})
    thought = "".join(d["delta"] for k, d in ev if k == "response.reasoning_text.delta")
    said = "".join(d["delta"] for k, d in ev if k == "response.output_text.delta")
    assert len(thought) >= 3 and set(thought) <= set("abcd") and len(said) >= 2 and set(said.strip()) <= set("efgh"), ev
    assert [it["type"] for it in ev[-1][1]["response"]["output"]] == ["reasoning", "message"]


def test_input_items_translate_to_the_chat_kvrun_runs():
    body = {"instructions": "be brief", "max_output_tokens": 5, "temperature": 0.5, "tools": [WEATHER], "tool_choice": "required",
            "reasoning": {"effort": "none"}, "input": [
        {"role": "developer", "content": "answer in French"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look: "},
                                                        {"type": "input_image", "image_url": "data:image/png;base64,aGk="}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "They want the weather."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "sunny"}]}]}  # fmt: skip
    out = translate(body, BadRequest)
    assert [m["role"] for m in out["messages"]] == ["system", "developer", "user", "assistant", "tool"]
    assert out["messages"][0] == {"role": "system", "content": "be brief"}
    assert out["messages"][2]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    turn = out["messages"][3]  # (reasoning, text and call: one assistant turn, as llama-server joins them)
    assert turn["content"] == "Let me see." and turn["reasoning_content"] == "They want the weather."
    assert turn["tool_calls"] == [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert out["messages"][4] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert out["tools"][0] == {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
    assert out["tool_choice"] == "required" and out["max_tokens"] == 5 and out["temperature"] == 0.5
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert translate({"input": "hi"}, BadRequest)["messages"] == [{"role": "user", "content": "hi"}]


def test_input_tokens_counts_the_prompt_a_response_takes(server):
    body = {"input": "weather in Paris?", "instructions": "be brief", "tools": [WEATHER]}
    status, text = call(server, "POST", "/v1/responses/input_tokens", body)
    r = _respond(server, {**body, "max_output_tokens": 2})
    assert status == 200 and json.loads(text) == {"object": "response.input_tokens", "input_tokens": r["usage"]["input_tokens"]}


@pytest.mark.parametrize("body,says", [
    ({"model": "x"}, "input is required"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id is not supported"),
    ({"input": 42}, "input must be a string or a non-empty list"),
    ({"input": [{"role": "tool", "content": "x"}]}, "role must be user, system, developer or assistant"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "items of type 'item_reference' are not supported"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file parts are not supported"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "a function_call item needs"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "only function tools are supported"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice must be"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format json_schema needs"),
    ({"input": "hi", "max_output_tokens": "many"}, "max_output_tokens must be a positive integer"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,aGk="}]}]},
     "images are not supported without the model's projector"),
])  # fmt: skip
def test_a_bad_request_is_a_one_line_400(server, body, says):
    status, text = call(server, "POST", "/v1/responses", body)
    err = json.loads(text)["error"]
    assert status == 400 and says in err["message"] and "\n" not in err["message"] and err["type"] == "invalid_request_error", text


def test_responses_are_not_kept(server):
    status, text = call(server, "GET", "/v1/responses/resp_123")
    assert status == 404 and "keeps no responses" in json.loads(text)["error"]["message"]
