"""Ollama's API on ``kvrun serve`` (runtime/ollama.py): an app written for Ollama gets the same replies
as kvrun's own API, streamed as newline-delimited JSON, with Ollama's counts and errors."""

from __future__ import annotations

import json

import pytest
import test_server
from test_server import CHAT, call

model, server = test_server.model, test_server.server  # the fixtures of test_server.py: a tiny model served

OPTS = {"temperature": 0, "num_predict": 8}


def lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_version_tags_ps_and_show(server, model):
    status, text = call(server, "GET", "/api/version")
    assert status == 200 and json.loads(text)["version"]
    for path in ("/api/tags", "/api/ps"):
        m = json.loads(call(server, "GET", path)[1])["models"][0]
        assert m["name"] == "tiny" and m["size"] > 0 and m["details"]["family"] == "llama" and m["details"]["format"] == "gguf"
    show = json.loads(call(server, "POST", "/api/show", {"model": "tiny"})[1])
    assert show["template"] == model.chat_template() and show["model_info"]["general.architecture"] == "llama"


def test_chat_streams_the_models_own_reply_as_ndjson(server, model):
    want = model.chat(CHAT, max_tokens=8, temperature=0)
    status, text = call(server, "POST", "/api/chat", {"model": "tiny", "messages": CHAT, "options": OPTS})
    assert status == 200, text
    out = lines(text)
    assert all(not x["done"] for x in out[:-1]) and out[-1]["done"]
    assert "".join(x["message"]["content"] for x in out) == want
    last = out[-1]
    assert 1 <= last["eval_count"] <= 8 and (last["eval_count"] == 8) == (last["done_reason"] == "length")
    assert last["prompt_eval_count"] == len(model.tokenize(model.render(CHAT), add_bos=None))
    assert last["done_reason"] in ("stop", "length") and last["eval_duration"] > 0 and last["total_duration"] >= last["eval_duration"]
    one = json.loads(call(server, "POST", "/api/chat", {"messages": CHAT, "options": OPTS, "stream": False})[1])
    assert one["done"] and one["message"] == {"role": "assistant", "content": want}


def test_generate_wraps_the_prompt_in_the_template_unless_raw(server, model):
    r = json.loads(call(server, "POST", "/api/generate", {"prompt": "the cat sat", "system": "be brief", "options": OPTS, "stream": False})[1])
    assert r["response"] == model.chat(CHAT, max_tokens=8, temperature=0)
    raw = lines(call(server, "POST", "/api/generate", {"prompt": "the cat", "raw": True, "options": OPTS})[1])
    assert "".join(x["response"] for x in raw) == model.complete("the cat", max_tokens=8, temperature=0)
    assert raw[-1]["prompt_eval_count"] == len(model.tokenize("the cat"))
    load = json.loads(call(server, "POST", "/api/generate", {"model": "tiny"})[1])  # Ollama's "load the model"
    assert load["done"] and load["done_reason"] == "load"


@pytest.mark.parametrize("path,body,says", [
    ("/api/chat", {"messages": []}, "messages must be a non-empty list"),
    ("/api/chat", {"messages": CHAT, "options": [1]}, "options must be an object"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "images are not supported"),
    ("/api/generate", {"prompt": 5}, "prompt must be a string"),
    ("/api/generate", {"prompt": "x", "options": {"num_predict": "x"}}, "options.num_predict must be an integer"),
    ("/api/chat", {"messages": CHAT, "options": {"temperature": -1}}, "temperature must be >= 0"),
    ("/api/pull", {"model": "x"}, "no endpoint POST /api/pull"),
    ("/api/chat", {"messages": CHAT, "tools": {"name": "f"}}, "tools must be a list"),
])  # fmt: skip
def test_a_bad_request_is_ollamas_error_object(server, path, body, says):
    status, text = call(server, "POST", path, body)
    err = json.loads(text)["error"]
    assert status in (400, 404) and isinstance(err, str) and says in err and "\n" not in err, text
