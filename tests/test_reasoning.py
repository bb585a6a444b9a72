"""A thinking model's reply (runtime/reasoning.py): what it writes between <think> and </think> comes
back apart from its answer, as llama-server's reasoning_content and Ollama's thinking, whole or
streamed piece by piece.  (The tiny model is made to think by a grammar.)"""

from __future__ import annotations

import json

import pytest
import test_server
from test_server import CHAT, call

from kvrun.runtime.reasoning import ThinkSplitter, split

model, server = test_server.model, test_server.server

THINKS = 'root ::= "<think>" [a-d]{3,6} "</think>" [ ]? [e-h]{2,5}'


@pytest.mark.parametrize("text,want", [
    ("<think>hmm, 2+2</think>\n\nIt is 4.", ("hmm, 2+2", "It is 4.")),
    ("  <think>\nx\n</think>y", ("\nx\n", "y")),
    ("It is 4.", (None, "It is 4.")),
    ("<think>cut short", ("cut short", "")),
    ("<thin", (None, "<thin")),
])  # fmt: skip
def test_a_reply_splits_into_its_thinking_and_its_answer(text, want):
    assert split(text) == want


def test_pieces_split_as_the_whole_does_wherever_the_tags_are_cut():
    text = "<think>abc</think>\n\ndone"
    for cut in range(1, len(text)):
        s = ThinkSplitter()
        parts = s.push(text[:cut]) + s.push(text[cut:]) + s.flush()
        assert "".join(t for k, t in parts if k == "reasoning") == "abc", cut
        assert "".join(t for k, t in parts if k == "content") == "done", cut


def test_the_openai_api_returns_reasoning_content(server):
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 40, "grammar": THINKS})
    msg = json.loads(text)["choices"][0]["message"]
    assert status == 200 and set(msg["reasoning_content"]) <= set("abcd") and set(msg["content"]) <= set("efgh"), msg
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 40, "grammar": THINKS, "stream": True})
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in text.splitlines() if line.startswith("data: {")]
    thought = "".join(d.get("reasoning_content", "") for d in deltas)
    said = "".join(d.get("content") or "" for d in deltas)
    assert set(thought) <= set("abcd") and len(thought) >= 3 and set(said) <= set("efgh") and len(said) >= 2, deltas


def test_ollama_returns_thinking(model, monkeypatch):
    from kvrun.runtime import ollama
    from kvrun.runtime.server import Server

    translate = ollama._translate
    monkeypatch.setattr(ollama, "_translate", lambda body, chat, bad: ({**translate(body, chat, bad)[0], "grammar": THINKS}, True))
    srv = Server(model, "tiny")
    status, r = ollama.handle(srv, "POST", "/api/chat", {"messages": CHAT, "stream": False, "options": {"num_predict": 40}})
    assert status == 200 and set(r["message"]["thinking"]) <= set("abcd") and set(r["message"]["content"]) <= set("efgh"), r
    status, lines = ollama.handle(srv, "POST", "/api/chat", {"messages": CHAT, "options": {"num_predict": 40}})
    msgs = [x["message"] for x in lines if not x["done"]]
    assert "".join(m.get("thinking", "") for m in msgs) == r["message"]["thinking"] or len("".join(m.get("thinking", "") for m in msgs)) >= 3
    monkeypatch.setattr(ollama, "_translate", translate)
    status, r = ollama.handle(srv, "POST", "/api/chat", {"messages": CHAT, "stream": False, "options": {"num_predict": 5}})
    assert "thinking" not in r["message"]  # (a reply that does not think reports none)


# ------------------------------------------------------------------ gpt-oss's harmony messages
HARMONY = "<|channel|>analysis<|message|>They ask 2+2. It is 4.<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4."


def test_a_harmony_reply_splits_into_its_analysis_and_its_final_answer():
    assert split(HARMONY) == ("They ask 2+2. It is 4.", "2 + 2 = 4.")
    assert split("<|channel|>final<|message|>Hi!") == (None, "Hi!")  # (no analysis channel: no thinking)
    assert split("<|channel|>final<|message|>Hi!<|return|>") == (None, "Hi!")


def test_harmony_pieces_split_as_the_whole_does_wherever_they_are_cut():
    for cut in range(1, len(HARMONY)):
        s = ThinkSplitter()
        parts = s.push(HARMONY[:cut]) + s.push(HARMONY[cut:]) + s.flush()
        got = ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))
        assert got == ("They ask 2+2. It is 4.", "2 + 2 = 4."), cut


def test_a_chat_keeps_a_harmony_reply_as_its_answer_and_its_thinking(tmp_path):
    from tinymodel import write_tiny_model

    from kvrun.runtime.api import Session, load

    model = load(str(write_tiny_model(tmp_path / "m.gguf")), n_ctx=256)
    msg = Session(model)._reply_message(HARMONY)
    assert msg == {"role": "assistant", "content": "2 + 2 = 4.", "thinking": "They ask 2+2. It is 4."}
