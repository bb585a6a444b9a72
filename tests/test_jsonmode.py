"""JSON mode (runtime/grammar.py's JSON_OBJECT grammar): the reply stays a prefix of one JSON object,
ends only when the object is closed; Ollama's format "json" and OpenAI's json_object ask for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_server
from test_server import CHAT, call

from kvrun.runtime.gbnf import parse
from kvrun.runtime.grammar import JSON_OBJECT, GrammarConstraint

model, server = test_server.model, test_server.server  # the fixtures of test_server.py: a tiny model served


def run(text: str) -> tuple[bool, bool]:
    """(is a JSON-object prefix, is a whole JSON object), by the grammar's reference matcher."""
    g = parse(JSON_OBJECT)
    return g.accepts_prefix(text), g.accepts(text)


@pytest.mark.parametrize("text,prefix,whole", [
    ('{}', True, True),
    ('{"a":1}', True, True),
    ('{\n  "a": {\n    "b": 1\n  }\n}', True, True),
    ('  {"a": 1}', False, False),  # (nothing around the object)
    ('{"a": [1, -0.5, 2e10, 3E-2, true, false, null, {"b": "x\\u00e9\\n"}, []]}', True, True),
    ('{"a": "caf\xc3\xa9"}', True, True),
    ('{"a": tr', True, False),
    ('{"a": -', True, False),
    ('{"a": 1.', True, False),
    ('{"a": 01}', False, False),
    ('{"a": 1,}', False, False),
    ('{"a" 1}', False, False),
    ('{a: 1}', False, False),
    ('[1, 2]', False, False),
    ('{"a": "\n"}', False, False),
    ('{"a": "\\x"}', False, False),
    ('{"a": 1} ', False, False),
    ('{' + ' ' * 17 + '}', False, False),
])  # fmt: skip
def test_the_automaton_knows_a_json_object_and_its_prefixes(text, prefix, whole):
    assert run(text) == (prefix, whole)


def test_the_token_mask_is_every_token_run_from_the_state(model):
    c = GrammarConstraint(model.tokenizer, model.config.n_vocab, JSON_OBJECT)
    g = parse(JSON_OBJECT)
    for pre in ("", '{"name": "Fe', '{"n": 12', '{"a": [1, {"b": ', '{"a": "x\\'):
        c.state = c.matcher.advance(c.matcher.start, pre.encode())
        masked = c.mask(np.zeros(model.config.n_vocab, np.float32))
        for t in range(model.config.n_vocab):
            text = model.tokenizer.token_bytes(t, special=False)
            try:
                want = bool(text) and g.accepts_prefix(pre + text.decode())
            except UnicodeDecodeError:
                continue  # (a partial character: test_grammar.py)
            assert (masked[t] == 0) == want, (pre, t, text)
        assert np.isneginf(masked[sorted(model.tokenizer.eot_ids)]).all()  # no end before the object closes


def test_a_json_mode_reply_is_a_json_object_prefix_and_ends_only_closed(model):
    for seed in range(3):
        out = model.chat(CHAT, max_tokens=40, temperature=1.0, seed=seed, json_mode=True)
        prefix, whole = run(out)
        assert prefix, out
        assert whole == (model.last_stats.stop_reason == "eos"), (out, model.last_stats.stop_reason)


@pytest.mark.real_model
def test_smollm2_answers_a_json_object_in_json_mode(smollm2_path):
    import kvrun

    m = kvrun.load(str(smollm2_path), n_ctx=512)
    out = m.chat([{"role": "user", "content": "Describe a cat as a JSON object with a name and an age."}], max_tokens=150, temperature=0, json_mode=True)
    assert m.last_stats.stop_reason == "eos" and isinstance(json.loads(out), dict), out


def test_the_server_asks_for_it_as_openai_and_ollama_do(server):
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 20, "response_format": {"type": "json_object"}})
    assert status == 200 and run(json.loads(text)["choices"][0]["message"]["content"])[0], text
    status, text = call(server, "POST", "/api/chat", {"messages": CHAT, "format": "json", "stream": False, "options": {"num_predict": 20}})
    assert status == 200 and run(json.loads(text)["message"]["content"])[0], text
    for path, body, says in (
        ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema"}}, "json_schema needs"),
        ("/v1/chat/completions", {"messages": CHAT, "response_format": "json"}, "response_format type must be"),
        ("/api/chat", {"messages": CHAT, "format": 42}, "format must be \"json\" or a JSON schema"),
    ):
        status, text = call(server, "POST", path, body)
        err = json.loads(text)["error"]
        assert status == 400 and says in (err if isinstance(err, str) else err["message"]), text


def test_kvrun_run_and_chat_take_format_json(tiny_llama_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", "-n", "12", "--seed", "1", "--format", "json", "--no-stats"])
    assert r.exit_code == 0 and run(r.output.strip()[len("the"):].strip())[0], r.output
    r = CliRunner().invoke(main, ["chat", str(tiny_llama_path), "-n", "12", "--seed", "1", "--format", "json"], input="hi\n")
    assert r.exit_code == 0, r.output
