"""`kvrun serve`: the OpenAI-compatible endpoints answer as an OpenAI client expects, with the model's own
text (the Python API's, token for token), and a bad request is a 4xx with one line, never a dead server."""

from __future__ import annotations

import http.client
import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from kvrun.cli import main
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.server import make_server

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def model(tiny_llama_path):
    return Model(Engine(tiny_llama_path, n_ctx=256, n_batch=64))


@pytest.fixture(scope="module")
def server(model):
    httpd = make_server(model, "127.0.0.1", 0, "tiny")
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def call(port: int, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, text


def events(text: str) -> list[object]:
    """The payloads of a server-sent event stream, [DONE] last."""
    out = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    return [json.loads(x) if x != "[DONE]" else x for x in out]


def test_health_and_models(server):
    assert call(server, "GET", "/health") == (200, '{"status": "ok", "slots_idle": 1, "slots_processing": 0}')
    status, text = call(server, "GET", "/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["id"] == "tiny"


def test_chat_completion_is_the_models_own_reply_with_usage(server, model):
    want = model.chat(CHAT, max_tokens=12, temperature=0)
    status, text = call(server, "POST", "/v1/chat/completions", {"model": "x", "messages": CHAT, "max_tokens": 12, "temperature": 0})
    assert status == 200, text
    r = json.loads(text)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"] == {"role": "assistant", "content": want}
    n_prompt = len(model.tokenize(model.render(CHAT), add_bos=None))
    u = r["usage"]
    assert u["prompt_tokens"] == n_prompt and 0 < u["completion_tokens"] <= 12 and u["total_tokens"] == n_prompt + u["completion_tokens"]
    assert r["choices"][0]["finish_reason"] == ("length" if u["completion_tokens"] == 12 else "stop")


def test_streamed_chat_pieces_join_to_the_whole_reply(server):
    body = {"messages": CHAT, "max_tokens": 12, "temperature": 0}
    whole = json.loads(call(server, "POST", "/v1/chat/completions", body)[1])["choices"][0]["message"]["content"]
    status, text = call(server, "POST", "/v1/chat/completions", dict(body, stream=True))
    ev = events(text)
    assert status == 200 and ev[-1] == "[DONE]"
    chunks = ev[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in chunks[-1]


def test_completion_reuses_the_cached_prefix_and_still_equals_a_fresh_one(server, model):
    prompt = "the cat sat on the mat and"
    want = model.complete(prompt, max_tokens=8, temperature=0)
    for _ in range(2):  # the second request shares the whole prompt with the first: its prefill is one token
        status, text = call(server, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert status == 200 and json.loads(text)["choices"][0]["text"] == want, text
    ids = model.tokenize(prompt)
    status, text = call(server, "POST", "/v1/completions", {"prompt": ids, "max_tokens": 8, "temperature": 0})  # token ids
    assert status == 200 and json.loads(text)["choices"][0]["text"] == want


@pytest.mark.parametrize(
    "method, path, body, status, says",
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "the body is not JSON"),
        ("POST", "/v1/chat/completions", {"messages": []}, 400, "messages must be a non-empty list"),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role 'robot' is not supported"),
        ("POST", "/v1/chat/completions", {"messages": CHAT, "temperature": -1}, 400, "temperature must be >= 0"),
        ("POST", "/v1/chat/completions", {"messages": CHAT, "n": 0}, 400, "n must be an integer in 1..16"),
        ("POST", "/v1/completions", {"prompt": "hi", "_laid": {"ids": [1]}}, 400, "_laid is not a request field"),
        ("POST", "/v1/chat/completions", {"messages": CHAT, "n": 2, "id_slot": 0}, 400, "send n 1 with it"),
        ("POST", "/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools[0] must be"),
        ("POST", "/v1/completions", {"prompt": "the " * 400, "max_tokens": 2}, 400, "the prompt is"),
        ("POST", "/v1/completions", {"prompt": [10**9]}, 400, "prompt token ids must be in"),
        ("GET", "/v2/everything", None, 404, "no endpoint GET /v2/everything"),
    ],
)
def test_a_bad_request_is_a_4xx_with_one_line_and_the_server_goes_on(server, method, path, body, status, says):
    got, text = call(server, method, path, None if isinstance(body, bytes) else body, raw=body if isinstance(body, bytes) else None)
    err = json.loads(text)["error"]
    assert got == status and says in err["message"] and "\n" not in err["message"], text
    assert call(server, "GET", "/health")[0] == 200


def test_a_streamed_request_too_long_fails_before_the_stream_starts(server):
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "the " * 400}], "stream": True, "max_tokens": 2})
    assert status == 400 and "raise --ctx-size" in json.loads(text)["error"]["message"]


def test_cli_serve_refuses_a_bad_port_in_one_line(tiny_llama_path):
    r = CliRunner().invoke(main, ["serve", str(tiny_llama_path), "--port", "70000"])
    assert r.exit_code == 2 and r.output.endswith("kvrun: error: --port must be in 0..65535, got 70000\n")


def test_a_client_gone_mid_stream_stops_its_generation_and_the_next_request_is_whole(server, model):
    import socket

    want = model.chat(CHAT, max_tokens=6, temperature=0)  # (before: the model must not run beside the server's generation)
    body = json.dumps({"messages": CHAT, "max_tokens": 200, "temperature": 0, "stream": True, "stop": ["zzzz"]}).encode()
    s = socket.create_connection(("127.0.0.1", server), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    got = b""
    while b"data: " not in got:  # the headers and the first event may come in separate reads
        part = s.recv(4096)
        assert part, got
        got += part
    s.close()  # gone after the first chunk
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 6, "temperature": 0})
    assert status == 200 and json.loads(text)["choices"][0]["message"]["content"] == want


def test_a_long_prompt_without_max_tokens_is_answered_not_cut_to_half_the_context(server, model):
    """A client sending a document with no max_tokens: the reply may run to the context's end, but the
    prompt is not held to half the context (what Session keeps for an unlimited reply in a chat)."""
    words = 1
    while len(model.tokenize(model.render([{"role": "user", "content": "the " * words}]), add_bos=None)) < 160:
        words += 8
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "the " * words}], "temperature": 0})
    assert status == 200, text
    r = json.loads(text)
    assert r["usage"]["prompt_tokens"] >= 160 > model.engine.n_ctx // 2 + 16 and r["usage"]["total_tokens"] <= model.engine.n_ctx + 1  # (the last token sampled, not fed back)


def _log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_logprobs_are_the_models_own_for_each_reply_token(server, model):
    """OpenAI's logprobs: each generated token's log-probability under the model (teacher-forced logits
    of prompt + reply agree), the N likeliest in order; chat's and the legacy completions' shapes, and
    streamed chunks carry the same entries as one answer."""
    body = {"messages": CHAT, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    status, text = call(server, "POST", "/v1/chat/completions", body)
    assert status == 200, text
    r = json.loads(text)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] > 0
    prompt = model.tokenize(model.render(CHAT), add_bos=None)
    reply = [c["id"] for c in content]
    assert model.tokenizer.decode(reply) == r["choices"][0]["message"]["content"]
    logits = model.logits(prompt + reply)
    for i, c in enumerate(content):
        lp = _log_softmax(logits[len(prompt) - 1 + i])
        assert abs(c["logprob"] - lp[reply[i]]) < 1e-3
        tops = c["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == c["token"]  # greedy: the chosen one is the likeliest
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert bytes(c["bytes"]).decode() == c["token"]
    status, text = call(server, "POST", "/v1/chat/completions", body | {"stream": True})
    chunks = [e["choices"][0]["logprobs"] for e in events(text)[:-1] if e["choices"][0].get("logprobs")]
    assert sum(bool(ch["content"]) for ch in chunks) > 1  # they come with their tokens, not all at the end
    streamed = [c for ch in chunks for c in ch["content"]]  # (its prompt came from the cached prefix: rounding apart)
    assert [c["id"] for c in streamed] == [c["id"] for c in content]
    assert all(abs(a["logprob"] - b["logprob"]) < 1e-4 for a, b in zip(streamed, content))

    status, text = call(server, "POST", "/v1/completions", {"prompt": "the cat", "max_tokens": 5, "temperature": 0, "logprobs": 2})
    lp = json.loads(text)["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 5
    assert "".join(lp["tokens"]) == json.loads(text)["choices"][0]["text"]
    assert all(len(t) == 2 and max(t.values()) == pytest.approx(x) for t, x in zip(lp["top_logprobs"], lp["token_logprobs"]))
    assert call(server, "POST", "/v1/completions", {"prompt": "the cat", "max_tokens": 2})[1].count('"logprobs": null') == 1


@pytest.mark.parametrize("body,says", [
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"messages": CHAT, "logprobs": True, "top_logprobs": 30}, "logprobs must be in 0..20"),
    ({"messages": CHAT, "logprobs": 3}, "logprobs must be true or false"),
    ({"messages": CHAT, "logprobs": True, "top_logprobs": -1}, "top_logprobs must be in 0..20"),
    ({"prompt": "x", "logprobs": "many"}, "logprobs must be an integer"),
])  # fmt: skip
def test_a_bad_logprobs_request_is_a_400(server, body, says):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    status, text = call(server, "POST", path, body)
    assert status == 400 and says in json.loads(text)["error"]["message"], text


def test_an_api_key_guards_every_endpoint_but_health(model):
    httpd = make_server(model, "127.0.0.1", 0, "tiny", api_key="s3cret")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]

    def get(path, key=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        r = conn.getresponse()
        out = r.status, r.read().decode()
        conn.close()
        return out

    try:
        assert get("/health")[0] == 200
        for path in ("/v1/models", "/api/tags"):
            status, text = get(path)
            assert status == 401 and "API key" in text, text
            assert get(path, "wrong")[0] == 401
            assert get(path, "s3cret")[0] == 200
        assert json.loads(get("/api/tags")[1])["error"].startswith("a valid API key")  # Ollama's error shape there
    finally:
        httpd.shutdown()
        httpd.server_close()
    r = CliRunner().invoke(main, ["serve", "x.gguf", "--api-key", " "])
    assert r.exit_code == 2 and "--api-key is empty" in r.output


def test_n_choices_with_one_slot_are_each_a_seeded_reply_in_turn(server, model):
    """OpenAI's n: n choices, indexed, each the reply its own seed gives (a stated seed moved on by the choice's
    index); with one slot they are written in turn; the usage counts the prompt once and every choice's tokens."""
    hot = {"temperature": 3.0, "min_p": 0.0, "top_k": 0, "top_p": 1.0}  # (the tiny model is sure of its next token otherwise)
    body = {"messages": CHAT, "max_tokens": 6, "seed": 11, "n": 3, **hot}
    status, text = call(server, "POST", "/v1/chat/completions", body)
    assert status == 200, text
    r = json.loads(text)
    want = [model.chat(CHAT, max_tokens=6, seed=11 + i, **hot) for i in range(3)]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in r["choices"]] == want and len(set(want)) > 1
    n_prompt = len(model.tokenize(model.render(CHAT), add_bos=None))
    assert r["usage"]["prompt_tokens"] == n_prompt
    one = [json.loads(call(server, "POST", "/v1/chat/completions", {**body, "n": 1, "seed": 11 + i})[1]) for i in range(3)]
    assert [o["choices"][0]["message"]["content"] for o in one] == want
    assert r["usage"]["completion_tokens"] == sum(o["usage"]["completion_tokens"] for o in one)


def test_n_streamed_choices_carry_their_index_and_each_joins_to_its_reply(server, model):
    body = {"prompt": "the cat sat", "max_tokens": 6, "temperature": 3.0, "min_p": 0.0, "top_k": 0, "top_p": 1.0, "seed": 5, "n": 2}
    whole = json.loads(call(server, "POST", "/v1/completions", body)[1])["choices"]
    status, text = call(server, "POST", "/v1/completions", dict(body, stream=True))
    ev = events(text)
    assert status == 200 and ev[-1] == "[DONE]"
    chunks = ev[:-1]
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == whole[i]["text"] and mine[-1]["finish_reason"] in ("stop", "length")
    assert "usage" in chunks[-1] and all("usage" not in c for c in chunks[:-1])
