"""Tool calls (runtime/tools.py): tools and messages checked, the model asked in its template's
format (Hermes' <tool_call> blocks, gpt-oss's harmony messages to functions.NAME, or the generic JSON
reply for any other template), its reply parsed into tool_calls, and the server answering as OpenAI's,
Ollama's and Anthropic's APIs do."""

from __future__ import annotations

import json

import numpy as np

import pytest
import test_server
from test_server import call

from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.gbnf import parse
from kvrun.runtime.tools import Generic, Harmony, Hermes, check_messages, check_tools, harmony_reply, tool_format

server = test_server.server  # test_server.py's fixture, serving this file's model


@pytest.fixture(scope="module")
def model(tiny_llama_path):
    """The tiny model (ChatML: the generic format), its whole context: a byte per token, the tools fill ~500."""
    return Model(Engine(tiny_llama_path, n_ctx=1024, n_batch=256))

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]}}}  # fmt: skip
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}  # fmt: skip
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "weather in Paris?"}]

HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
# Tools
<tools>
{% for t in tools %}{{ t.function | tojson }}
{% endfor %}</tools>
Call a function with <tool_call></tool_call> tags.<|im_end|>
{% endif %}
{%- for m in messages %}{% if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def _is_call(c: dict) -> bool:
    """A call to one of TOOLS with arguments its schema allows."""
    args = c["arguments"]
    if c["name"] == "get_weather":
        return isinstance(args.get("city"), str) and set(args) <= {"city", "unit"} and args.get("unit", "C") in ("C", "F")
    return c["name"] == "add" and set(args) == {"a", "b"} and all(type(v) is int for v in args.values())


@pytest.mark.parametrize("tools,choice,says", [
    ({"name": "f"}, None, "tools must be a list"),
    ([{"type": "function"}], None, "tools[0] must be"),
    ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name must be"),
    ([ADD, ADD], None, "same name"),
    ([ADD], "always", "tool_choice must be"),
    ([ADD], {"type": "function", "function": {"name": "sub"}}, "names 'sub', which is not in tools"),
    ([], "required", "needs tools"),
])  # fmt: skip
def test_bad_tools_are_refused_in_one_line(tools, choice, says):
    with pytest.raises(ValueError) as e:
        check_tools(tools, choice)
    assert says in str(e.value)


def test_messages_carry_calls_and_results_as_openai_and_ollama_write_them():
    msgs = check_messages([
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},  # Ollama's
        {"role": "tool", "tool_name": "add", "content": "3"},
    ])  # fmt: skip
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[2]["tool_calls"] == [{"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}}] and msgs[2]["content"] == ""
    assert msgs[3]["name"] == "get_weather" and msgs[5]["name"] == "add"  # (found by the call's id)
    for bad, says in (([{"role": "assistant", "content": "x"}], "messages must end with the user's message or a tool result"),
                      ([{"role": "robot", "content": "x"}], "role 'robot' is not supported"),
                      ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}, {"role": "user", "content": "x"}],
                       "arguments is not JSON")):  # fmt: skip
        with pytest.raises(ValueError) as e:
            check_messages(bad)
        assert says in str(e.value)


def test_hermes_replies_are_parsed_into_calls_and_the_text_around_them():
    h = Hermes()
    content, calls = h.parse('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                             '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}')  # (the last one unclosed: cut at the end)  # fmt: skip
    assert content == "Let me look."
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
    assert h.parse("<tool_call>{broken</tool_call>") == ("<tool_call>{broken</tool_call>", [])  # (left as text)


def test_the_generic_format_asks_in_a_system_message_and_writes_the_history_as_json():
    tools = check_tools(TOOLS)
    msgs = check_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        {"role": "tool", "tool_call_id": "c1", "content": "windy"},
    ])  # fmt: skip
    out, extra = Generic().template_messages(msgs, tools)
    assert extra == {} and out[0]["role"] == "system" and '"get_weather"' in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]  # (two results: one user turn, for templates that alternate)
    assert out[3]["content"].count("tool_response") == 2
    assert Generic().parse('{"response": "It is cold."}') == ("It is cold.", [])
    assert Generic().parse('{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}')[1][0]["arguments"] == {"a": 1, "b": 2}


@pytest.mark.parametrize("choice,parallel,yes,no", [
    ("auto", True, ['{"response": "hi"}', '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]}'],
     ['{"tool_calls": [{"name": "sub", "arguments": {}}]}', '{"tool_calls": [{"name": "add", "arguments": {"a": 1}}]}', '{"tool_calls": []}']),
    ("required", False, ['{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}]}'],
     ['{"response": "hi"}', '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]}']),
])  # fmt: skip
def test_the_generic_grammar_allows_exactly_the_calls_the_tools_declare(choice, parallel, yes, no):
    g = parse(Generic().grammar(check_tools(TOOLS, choice, parallel)))
    assert all(g.accepts(t) for t in yes) and not any(g.accepts(t) for t in no)


def test_hermes_required_is_constrained_to_call_blocks():
    g = parse(Hermes().grammar(check_tools(TOOLS, {"type": "function", "function": {"name": "add"}})))
    assert g.accepts('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert not g.accepts('<tool_call>\n{"name": "get_weather", "arguments": {"city": "x"}}\n</tool_call>')  # (not the named one)
    assert Hermes().trigger(check_tools(TOOLS, "required")) is None  # required: from the first byte
    assert Hermes().trigger(check_tools(TOOLS)) == "<tool_call>"  # auto: free until the model opens a block


def test_hermes_auto_is_free_until_the_model_opens_a_call_then_held_to_the_block(model):
    from kvrun.runtime.grammar import GrammarConstraint

    tools = check_tools(TOOLS)
    tok, n = model.tokenizer, model.config.n_vocab
    c = GrammarConstraint(tok, n, Hermes().grammar(tools), Hermes().trigger(tools))
    logits = np.arange(n, dtype=np.float32)
    for t in tok.encode("Let me look it up. <tool_", add_bos=False):
        assert np.array_equal(c.mask(logits), logits)  # free text: nothing masked
        c.accept(t)
    for t in tok.encode('call>\n{"name": "', add_bos=False):
        c.accept(t)
    ok = [tok.token_bytes(int(i)) for i in np.flatnonzero(np.isfinite(c.mask(logits)))]
    assert ok and all(b"get_weather".startswith(b) or b"add".startswith(b) for b in ok), ok  # only a tool's name


def test_a_model_without_a_tool_template_calls_through_the_generic_json_reply(model):
    ended = 0
    for seed in range(3):
        r = model.chat(ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, max_tokens=200)
        if model.last_stats.stop_reason == "eos":
            ended += 1
            assert r["tool_calls"] and all(_is_call(c) for c in r["tool_calls"]), r
        r = model.chat(ASK, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=200)
        if model.last_stats.stop_reason == "eos":
            ended += 1
            assert all(_is_call(c) for c in r.get("tool_calls", [])) and isinstance(r["content"], str), r
    assert ended >= 3  # (a random model: some replies run to max_tokens)


@pytest.fixture(scope="module")
def hermes_model(tmp_path_factory):
    from tinymodel import write_tiny_model

    return Model(Engine(write_tiny_model(tmp_path_factory.mktemp("hermes") / "t.gguf", "llama", chat_template=HERMES_TEMPLATE), n_ctx=1024, n_batch=256))


def test_a_hermes_template_gets_the_tools_and_the_history_as_it_writes_them(hermes_model):
    s = hermes_model.session()
    s.tools = check_tools(TOOLS)
    msgs = check_messages(ASK + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])  # fmt: skip
    text = hermes_model.tokenizer.decode(s._render(msgs))
    assert '{"name": "get_weather", "description": "The weather in a city"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    ended = 0
    for seed in range(4):
        r = hermes_model.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=1.0,
                              seed=seed, max_tokens=300, parallel_tool_calls=False)  # fmt: skip
        if hermes_model.last_stats.stop_reason == "eos":
            ended += 1
            assert r["tool_calls"] and all(c["name"] == "get_weather" and _is_call(c) for c in r["tool_calls"]), r
    assert ended  # (a random model: some replies run to max_tokens)


def test_the_server_answers_tool_calls_as_openai_does(server):
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 300, "seed": 3}
    status, text = call(server, "POST", "/v1/chat/completions", body)
    ch = json.loads(text)["choices"][0]
    assert status == 200, text
    if ch["finish_reason"] == "tool_calls":
        [c] = ch["message"]["tool_calls"]
        assert c["type"] == "function" and c["id"].startswith("call_") and ch["message"]["content"] is None
        assert _is_call({"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}), c
    status, text = call(server, "POST", "/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    if chunks[-1]["choices"][0]["finish_reason"] == "tool_calls":
        [tc] = [d["tool_calls"] for d in deltas if "tool_calls" in d]
        assert tc[0]["index"] == 0 and tc[0]["function"]["name"] in ("add", "get_weather"), tc
    for bad, says in (({"tools": [{"type": "function"}]}, "tools[0] must be"), ({"tool_choice": "required"}, "tool_choice needs tools"),
                      ({"tools": TOOLS, "response_format": {"type": "json_object"}, "tool_choice": "required"}, "tools constrain the reply")):  # fmt: skip
        status, text = call(server, "POST", "/v1/chat/completions", {"messages": ASK, **bad})
        assert status == 400 and says in json.loads(text)["error"]["message"], text


def test_the_server_answers_tool_calls_as_ollama_does(server):
    msgs = ASK + [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]  # fmt: skip
    status, text = call(server, "POST", "/api/chat", {"messages": msgs, "tools": TOOLS, "stream": False, "options": {"num_predict": 200, "seed": 1}})
    assert status == 200, text
    msg = json.loads(text)["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert all(_is_call(c["function"]) and isinstance(c["function"]["arguments"], dict) for c in msg.get("tool_calls", [])), msg


# ------------------------------------------------------------------ gpt-oss's harmony format
# (a stand-in for gpt-oss's template: the parts that render tools, calls, results and thinking)
HARMONY_TEMPLATE = """\
<|start|>system<|message|>Reasoning: medium<|end|>
{%- if tools %}<|start|>developer<|message|># Tools

namespace functions {
{% for t in tools %}// {{ t.function.description }}
type {{ t.function.name }} = (_: {{ t.function.parameters | tojson }}) => any;
{% endfor %}} // namespace functions<|end|>
{%- endif %}
{%- set last = namespace(name=none) %}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.tool_calls %}
{%- if m.content and m.thinking %}{{ raise_exception("Cannot pass both content and thinking in an assistant message with tool calls!") }}{% endif %}
{%- if m.thinking or m.content %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking or m.content }}<|end|>{% endif %}
{%- set c = m.tool_calls[0].function %}<|start|>assistant to=functions.{{ c.name }}<|channel|>commentary json<|message|>{{ c.arguments | tojson }}<|call|>
{%- set last.name = c.name %}
{%- elif m.role == 'assistant' %}
{%- if "<|channel|>" in m.content %}{{ raise_exception("You have passed a message containing <|channel|> tags in the content field.") }}{% endif %}
<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>
{%- elif m.role == 'tool' %}<|start|>functions.{{ last.name }} to=assistant<|channel|>commentary<|message|>{{ m.content | tojson }}<|end|>
{%- else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""

THOUGHT = "<|channel|>analysis<|message|>They want Paris's weather.<|end|><|start|>assistant"
PARIS = {"city": "Paris"}


@pytest.mark.parametrize("text,want", [
    # the recipient in the channel (gpt-oss's usual), <|call|> kept or not (an end of generation: the stream leaves it out)
    (THOUGHT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}', ("They want Paris's weather.", "", [("get_weather", PARIS)])),
    (THOUGHT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>', ("They want Paris's weather.", "", [("get_weather", PARIS)])),
    # the recipient in the role, after <|start|>assistant, or opening the reply (the prompt ends with <|start|>assistant)
    (THOUGHT + ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>', ("They want Paris's weather.", "", [("get_weather", PARIS)])),
    (' to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}', (None, "", [("add", {"a": 1, "b": 2})])),
    # a preamble to the user first: the answer
    ('<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Paris"}',
     (None, "Let me check.", [("get_weather", PARIS)])),
    # no call: the final channel, as reasoning.split reads it
    (THOUGHT + "<|channel|>final<|message|>It is sunny.<|return|>", ("They want Paris's weather.", "It is sunny.", [])),
    ("It is sunny.", (None, "It is sunny.", [])),  # (not harmony at all)
    # cut by max_tokens: in a call's arguments, or in a header: nothing of it
    (THOUGHT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Par', ("They want Paris's weather.", "", [])),
    (THOUGHT + "<|channel|>comm", ("They want Paris's weather.", "", [])),
])  # fmt: skip
def test_harmony_replies_are_parsed_into_their_thinking_answer_and_calls(text, want):
    thinking, content, calls = harmony_reply(text)
    assert (thinking, content, [(c["name"], c["arguments"]) for c in calls]) == want
    content2, calls2 = Harmony().parse(text)
    assert (content2, [(c["name"], c["arguments"]) for c in calls2]) == want[1:] and all(c["id"].startswith("call_") for c in calls)
    if not calls and "to=" not in text:
        from kvrun.runtime.reasoning import split

        assert split(text) == (thinking, content)  # (what a reply without tools gives)


def test_a_harmony_template_is_asked_in_harmony_and_its_grammar_allows_exactly_a_call():
    from kvrun.runtime.gbnf import parse as gbnf

    assert isinstance(tool_format(HARMONY_TEMPLATE), Harmony) and isinstance(tool_format(HERMES_TEMPLATE), Hermes)
    auto, required = check_tools(TOOLS), check_tools(TOOLS, "required")
    assert Harmony().trigger(auto) == " to=functions." and Harmony().trigger(required) is None
    g = gbnf(Harmony().grammar(auto))  # (from the trigger on: either header order)
    assert g.accepts(' to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}')
    assert g.accepts(' to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}')
    assert not g.accepts(' to=functions.add<|channel|>commentary json<|message|>{"city": "Paris"}')  # (another function's arguments)
    assert not g.accepts(' to=functions.sub<|channel|>commentary json<|message|>{}')
    g = gbnf(Harmony().grammar(required))
    call = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    assert g.accepts(call) and g.accepts(THOUGHT + call) and g.accepts(' to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}')
    assert g.accepts("<|channel|>analysis<|message|>a<b<|end|><|start|>assistant<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant" + call)
    assert not g.accepts(THOUGHT + "<|channel|>final<|message|>It is sunny.")  # (required: a call, not an answer)
    named = gbnf(Harmony().grammar(check_tools(TOOLS, {"type": "function", "function": {"name": "add"}})))
    assert not named.accepts(call) and named.accepts(' to=functions.add json<|message|>{"a": 1, "b": 2}')


def test_harmony_auto_is_free_until_the_model_addresses_a_function(model):
    from kvrun.runtime.grammar import GrammarConstraint

    tools = check_tools(TOOLS)
    tok, n = model.tokenizer, model.config.n_vocab
    c = GrammarConstraint(tok, n, Harmony().grammar(tools), Harmony().trigger(tools))
    logits = np.arange(n, dtype=np.float32)
    for t in tok.encode(THOUGHT + "<|channel|>commentary to=fun", add_bos=False):
        assert np.array_equal(c.mask(logits), logits)  # free text: nothing masked
        c.accept(t)
    for t in tok.encode("ctions.", add_bos=False):
        c.accept(t)
    ok = [tok.token_bytes(int(i)) for i in np.flatnonzero(np.isfinite(c.mask(logits)))]
    assert ok and all(b"get_weather".startswith(b) or b"add".startswith(b) for b in ok), ok  # only a tool's name


@pytest.fixture(scope="module")
def harmony_model(tmp_path_factory):
    from tinymodel import write_tiny_model

    return Model(Engine(write_tiny_model(tmp_path_factory.mktemp("harmony") / "t.gguf", "llama", chat_template=HARMONY_TEMPLATE), n_ctx=1024, n_batch=256))


def test_a_harmony_template_gets_the_tools_and_one_call_a_message_each_followed_by_its_result(harmony_model):
    s = harmony_model.session()
    s.tools = check_tools(TOOLS)
    msgs = check_messages(ASK + [
        {"role": "assistant", "content": None, "reasoning_content": "Two tools.", "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "3"},  # (results in another order than the calls')
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])  # fmt: skip
    text = harmony_model.tokenizer.decode(s._render(msgs))
    assert "namespace functions {\n// The weather in a city\ntype get_weather = " in text
    assert text.endswith('<|start|>assistant<|channel|>analysis<|message|>Two tools.<|end|>'
                         '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
                         '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"<|end|>'
                         '<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}<|call|>'
                         '<|start|>functions.add to=assistant<|channel|>commentary<|message|>"3"<|end|><|start|>assistant')  # fmt: skip
    # the session keeps a harmony reply's calls (and its thinking apart), which the template renders back
    reply = THOUGHT + ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}'
    msg = s._reply_message(reply)
    assert msg["content"] == "" and msg["thinking"] == "They want Paris's weather." and msg["tool_calls"][0]["arguments"] == {"city": "Oslo"}
    text = harmony_model.tokenizer.decode(s._render(ASK + [msg, {"role": "tool", "name": "get_weather", "content": "cold"}]))
    assert '<|message|>They want Paris\'s weather.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>' in text
    s.tools = check_tools(TOOLS, "none")  # (no tools offered: the answer, never a call)
    assert s._reply_message(reply) == {"role": "assistant", "content": "", "thinking": "They want Paris's weather."}


def _canned(monkeypatch, text: str) -> None:
    """Every generation writes ``text`` (a tiny model cannot write harmony), in pieces, then ends."""
    from kvrun.runtime import api

    def stream_text(tokenizer, ids, stop, stats):
        stats.stop_reason = "eos"
        for i in range(0, len(text), 7):
            yield text[i : i + 7]

    monkeypatch.setattr(api, "stream_text", stream_text)


HARMONY_CALL = THOUGHT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}'


def test_a_harmony_call_comes_back_as_tool_calls_from_every_api(harmony_model, monkeypatch):
    from kvrun.runtime.server import Server

    _canned(monkeypatch, HARMONY_CALL)
    r = harmony_model.chat(ASK, tools=TOOLS)
    assert r["tool_calls"][0]["name"] == "get_weather" and r["content"] == "" and r["thinking"] == "They want Paris's weather."
    srv = Server(harmony_model, "tiny")
    status, r = srv.handle("POST", "/v1/chat/completions", {"messages": ASK, "tools": TOOLS})
    ch = r["choices"][0]
    assert status == 200 and ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None, r
    assert ch["message"]["reasoning_content"] == "They want Paris's weather."
    [c] = ch["message"]["tool_calls"]
    assert c["function"]["name"] == "get_weather" and json.loads(c["function"]["arguments"]) == PARIS
    status, chunks = srv.handle("POST", "/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "stream": True})
    chunks = list(chunks)
    deltas = [x["choices"][0]["delta"] for x in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "They want Paris's weather."
    assert [d["tool_calls"][0]["function"]["name"] for d in deltas if "tool_calls" in d] == ["get_weather"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    status, r = srv.handle("POST", "/api/chat", {"messages": ASK, "tools": TOOLS, "stream": False})
    assert r["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": PARIS}}] and r["message"]["thinking"], r
    status, r = srv.handle("POST", "/v1/messages", {"max_tokens": 100, "messages": ASK, "tools": [
        {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]})  # fmt: skip
    assert r["stop_reason"] == "tool_use" and [b["type"] for b in r["content"]] == ["tool_use"] and r["content"][0]["input"] == PARIS, r
    _canned(monkeypatch, THOUGHT + "<|channel|>final<|message|>It is sunny.")  # (an answer: no calls)
    status, r = srv.handle("POST", "/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "tool_choice": "required"})
    ch = r["choices"][0]
    assert ch["finish_reason"] == "stop" and ch["message"]["content"] == "It is sunny." and "tool_calls" not in ch["message"], r
