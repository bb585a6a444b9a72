"""Two more native tool-call forms (runtime/toolformats.py), held to llama.cpp's parsers on its own test strings:

* Llama 3.1 / 3.3's built-in tools (:class:`Llama3x` with ``builtins``): ``<|python_tag|>code_interpreter.call(code=...)``
  beside the JSON form, the template's system turn naming them (``Environment: ipython``, ``Tools: brave_search``),
  earlier such calls rendered back that way, the grammar taking either form, a built-in's name with other
  parameters refused as llama.cpp refuses it; Llama 3.2's template (no python tag) has no built-ins;
* Mistral's newer ``[TOOL_CALLS]NAME[ARGS]{...}`` (:class:`MistralArgs`: Ministral 3, Magistral, Mistral Small 3.2 with
  its ``[CALL_ID]``, Devstral), chosen before Nemo's JSON array, a leading ``[THINK]`` the reasoning;
* the server calls tools through both on a tiny model.

LLAMA_CPP_CASES are llama.cpp's tests/test-chat.cpp strings and the calls it expects of them: Llama 3.1
(test_template_output_parsers, meta-llama-Llama-3.1-8B-Instruct.jinja: ``llama_3_1_tools`` = special_function +
code_interpreter, ``tools`` = special_function + python), Ministral-3-14B-Reasoning-2512, Mistral-Small-3.2-24B-Instruct-2506
and unsloth-mistral-Devstral-Small-2507 (test_template_output_peg_parsers).  llama-cpp-python exposes no chat parser,
so these are taken from the test source rather than run through the oracle.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_server import call

from kvrun.loaders.chat_template import render_chat
from kvrun.runtime.gbnf import parse
from kvrun.runtime.toolformats import Llama3x, MistralArgs, MistralNemo, nine_char_id
from kvrun.runtime.tools import check_messages, check_tools, tool_format

LLAMA31 = Path(__file__).parent / "fixtures/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"


def _tool(name: str, props: dict, required: list[str], description: str = "") -> dict:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props, "required": required}}}  # fmt: skip


# test-chat.cpp's tools
SPECIAL = _tool("special_function", {"arg1": {"type": "integer", "description": "The arg."}}, ["arg1"], "I'm special")
SPECIAL_OPT = _tool("special_function_with_opt", {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}, ["arg1"])
PYTHON = _tool("python", {"code": {"type": "string", "description": "Python code to execute."}}, ["code"], "an ipython interpreter")
CODE_INTERPRETER = _tool("code_interpreter", {"code": {"type": "string", "description": "Python code to execute."}}, ["code"], "an ipython interpreter")
# kvrun's own
BRAVE = _tool("brave_search", {"query": {"type": "string"}}, ["query"], "search the web")
WEATHER = _tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}, ["city"], "The weather in a city")

LLAMA_CPP_CASES = [  # (format, the tools it knows, reply, content, [(name, arguments)])
    (Llama3x(builtins=True), [SPECIAL, CODE_INTERPRETER], "<|python_tag|>code_interpreter.call(code=\"print('hey')\")", "",
     [("code_interpreter", {"code": "print('hey')"})]),
    (Llama3x(builtins=True), [SPECIAL, PYTHON], "<|python_tag|>python.call(code=\"print('hey')\")", "", [("python", {"code": "print('hey')"})]),
    (Llama3x(builtins=True), [SPECIAL, PYTHON], '{"name": "special_function", "parameters": {"arg1": 1}}', "", [("special_function", {"arg1": 1})]),
    (Llama3x(builtins=True), [SPECIAL], "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (MistralArgs(), [SPECIAL], '[TOOL_CALLS]special_function[ARGS]{"arg1":1}', "", [("special_function", {"arg1": 1})]),
    (MistralArgs(), [SPECIAL], "[THINK]I'm\nthinking[/THINK]" '[TOOL_CALLS]special_function[ARGS]{"arg1":1}', "<think>I'm\nthinking</think>",
     [("special_function", {"arg1": 1})]),
    (MistralArgs(), [SPECIAL, SPECIAL_OPT], '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2": 2}',
     "", [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (MistralArgs(), [], "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (MistralArgs(), [], "[THINK]I'm\nthinking[/THINK]Hello, world!\nWhat's up?", "<think>I'm\nthinking</think>Hello, world!\nWhat's up?", []),
    (MistralArgs(call_id=True), [SPECIAL], '[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{"arg1": 1}', "", [("special_function", {"arg1": 1})]),
    (MistralArgs(), [SPECIAL], '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', "", [("special_function", {"arg1": 1})]),
]  # fmt: skip


@pytest.mark.parametrize("fmt,tools,reply,content,calls", LLAMA_CPP_CASES)
def test_llama_cpps_test_strings_parse_into_its_calls(fmt, tools, reply, content, calls):
    if tools and hasattr(fmt, "know"):
        fmt.know(check_tools(tools))
    got_content, got = fmt.parse(reply)
    assert got_content == content and [(c["name"], c["arguments"]) for c in got] == calls


def test_call_ids_are_nine_letters_or_digits_the_given_one_kept():
    _, [c] = MistralArgs(call_id=True).parse('[TOOL_CALLS]f[CALL_ID]123456789[ARGS]{}')
    assert c["id"] == "123456789"
    _, [c] = MistralArgs().parse('[TOOL_CALLS]f[ARGS]{}')
    assert len(c["id"]) == 9 and c["id"].isalnum()


def test_a_python_tag_call_is_a_call_only_where_built_ins_are_offered():
    """llama.cpp reads ``<|python_tag|>NAME.call(...)`` only in its with-built-in-tools format (the template knows the
    tag and a built-in is among the tools); else, or when malformed, the reply stays content.  Text before the tag is
    the content; several arguments, JSON values, are read."""
    reply = '<|python_tag|>brave_search.call(query="paris")'
    assert Llama3x(builtins=True).parse(reply) == (reply, [])  # (no tools known yet)
    fmt = Llama3x(builtins=False)
    fmt.know(check_tools([BRAVE]))
    assert fmt.parse(reply) == (reply, [])
    fmt = Llama3x(builtins=True)
    fmt.know(check_tools([BRAVE, WEATHER]))
    content, [c] = fmt.parse('Let me look.<|python_tag|>brave_search.call(query="paris", count=3)')
    assert content == "Let me look." and (c["name"], c["arguments"]) == ("brave_search", {"query": "paris", "count": 3})
    assert fmt.parse('<|python_tag|>brave_search.call(query="paris"')[1] == []  # (unclosed)
    _, [c] = fmt.parse('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}')  # (the JSON form after the tag)
    assert (c["name"], c["arguments"]) == ("get_weather", {"city": "Oslo"})


def test_templates_are_detected_as_llama_cpp_detects_them():
    t31 = LLAMA31.read_text()
    fmt = tool_format(t31)
    assert type(fmt) is Llama3x and fmt.builtins
    fmt = tool_format(t31.replace("<|python_tag|>", "<|unused|>"))  # (3.2's template: ipython turns, no python tag)
    assert type(fmt) is Llama3x and not fmt.builtins
    fmt = tool_format("[SYSTEM_PROMPT][TOOL_CALLS] [ARGS]")  # (Ministral 3)
    assert type(fmt) is MistralArgs and not fmt.call_id and fmt.name == "mistral-args"
    assert tool_format("[TOOL_CALLS] [CALL_ID] [ARGS]").call_id  # (Mistral Small 3.2)
    assert type(tool_format("[TOOL_CALLS] [AVAILABLE_TOOLS]")) is MistralNemo
    assert type(tool_format("[TOOL_CALLS] [ARGS] <tool_call>")) is MistralArgs  # (llama.cpp checks [ARGS] first of all)


def _render(template: str, msgs: list, tools) -> str:
    fmt = tool_format(template)
    out, extra = fmt.template_messages(check_messages(msgs), tools)
    return render_chat(template, out, bos_token="<s>", eos_token="</s>", add_generation_prompt=True, **extra)


BRAVE_HISTORY = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {"name": "brave_search", "arguments": {"query": "paris weather"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]  # fmt: skip


def test_built_ins_are_named_in_the_system_turn_and_their_calls_rendered_as_the_model_writes_them():
    """llama.cpp's variables: builtin_tools (code_interpreter the template leaves out of "Tools:"), the tools in the
    system turn (tools_in_user_message false), the date; an earlier built-in call as <|python_tag|>...<|eom_id|>."""
    text = _render(LLAMA31.read_text(), BRAVE_HISTORY, check_tools([BRAVE, CODE_INTERPRETER, WEATHER]))
    system = text.split("<|eot_id|>")[0]
    assert "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nTools: brave_search\n\nCutting Knowledge" in system
    assert '"name": "get_weather"' in system and "Given the following functions" not in text
    assert '<|python_tag|>brave_search.call(query="paris weather")<|eom_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n\"sunny\"<|eot_id|>" in text
    text = _render(LLAMA31.read_text(), BRAVE_HISTORY, check_tools([WEATHER]))  # (no built-in offered: the JSON form)
    assert "Tools:" not in text and '{"name": "brave_search", "parameters": {"query": "paris weather"}}<|eot_id|>' in text


#: a Mistral layout with [CALL_ID] (after Mistral Small 3.2's: ids of nine, arguments as JSON), written for this test
MISTRAL_ARGS_TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}{%- if m.role == 'user' %}"
    "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{%- endif %}[INST]{{ m.content }}[/INST]"
    "{%- elif m.role == 'assistant' %}{%- if m.tool_calls %}{%- for c in m.tool_calls %}"
    "{%- if c.id|length != 9 %}{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}"
    "[TOOL_CALLS]{{ c.function.name }}[CALL_ID]{{ c.id }}[ARGS]{{ c.function.arguments|tojson }}{%- endfor %}{{ eos_token }}"
    "{%- else %}{{ m.content }}{{ eos_token }}{%- endif %}"
    "{%- elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.tool_call_id }}[TOOL_CONTENT]{{ m.content }}[/TOOL_RESULTS]{%- endif %}{%- endfor %}"
)


def test_mistral_args_history_renders_with_nine_character_ids():
    history = [BRAVE_HISTORY[0], {**BRAVE_HISTORY[1], "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               BRAVE_HISTORY[2]]  # fmt: skip
    text = _render(MISTRAL_ARGS_TEMPLATE, history, check_tools([WEATHER]))
    cid = nine_char_id("call_1")
    assert f'[TOOL_CALLS]get_weather[CALL_ID]{cid}[ARGS]{{"city": "Paris"}}</s>[TOOL_RESULTS]{cid}[TOOL_CONTENT]sunny[/TOOL_RESULTS]' in text


@pytest.mark.parametrize("fmt,tools,good,bad", [
    (Llama3x(builtins=True), [BRAVE, WEATHER],
     ['<|python_tag|>brave_search.call(query="paris weather")', '{"name": "brave_search", "parameters": {"query": "x"}}',
      '{"name": "get_weather", "parameters": {"city": "Paris"}}'],
     ['<|python_tag|>get_weather.call(city="Paris")', '<|python_tag|>brave_search.call(q="x")', '<|python_tag|>brave_search.call(query=1)']),
    (Llama3x(builtins=False), [BRAVE], ['{"name": "brave_search", "parameters": {"query": "x"}}'], ['<|python_tag|>brave_search.call(query="x")']),
    (MistralArgs(), [WEATHER], ['[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 2}'],
     ['[TOOL_CALLS]get_weather[ARGS]{"days": 2}', '[TOOL_CALLS]get_time[ARGS]{}', '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "P"}}]',
      '[TOOL_CALLS]get_weather[CALL_ID]123456789[ARGS]{"city": "Paris"}']),
    (MistralArgs(call_id=True), [WEATHER], ['[TOOL_CALLS]get_weather[CALL_ID]abc123XYZ[ARGS]{"city": "Paris"}', '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'],
     ['[TOOL_CALLS]get_weather[CALL_ID]abc[ARGS]{"city": "Paris"}']),
])  # fmt: skip
def test_the_grammar_takes_either_form_and_refuses_others(fmt, tools, good, bad):
    g = parse(fmt.grammar(check_tools(tools, "required", parallel=False)))
    for text in good:
        assert g.accepts(text), text
        assert fmt.parse(text)[1], text
    for text in bad:
        assert not g.accepts(text), text


def test_a_built_ins_name_with_other_parameters_is_refused_as_llama_cpp_refuses_it():
    odd = _tool("python", {"code": {"type": "string"}, "timeout": {"type": "integer"}}, ["code"])
    with pytest.raises(ValueError, match="Parameters of tool python must be an object whose one property") as e:
        Llama3x(builtins=True).grammar(check_tools([odd], "required"))
    assert "\n" not in str(e.value)
    Llama3x(builtins=False).grammar(check_tools([odd], "required"))  # (3.2: no built-ins, an ordinary function)


@pytest.fixture(scope="module", params=["llama3x-builtin", "mistral-args"])
def served(request, tmp_path_factory):
    from tinymodel import write_tiny_model

    from kvrun.runtime.api import Model
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.server import make_server

    template = LLAMA31.read_text() if request.param == "llama3x-builtin" else MISTRAL_ARGS_TEMPLATE
    path = write_tiny_model(tmp_path_factory.mktemp(request.param) / "t.gguf", "llama", chat_template=template)
    httpd = make_server(Model(Engine(path, n_ctx=4096, n_batch=512)), "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield request.param, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


ADD = _tool("add", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"], "a + b")
RUN = _tool("code_interpreter", {"code": {"type": "string"}}, ["code"], "run Python")


def test_the_server_calls_tools_through_both(served):
    """tool_choice required on a random model: every reply that ends is a call the format parses (a built-in's
    either form), streamed or not; a built-in's name with other parameters is a 400."""
    name, port = served
    tools = [RUN] if name == "llama3x-builtin" else [ADD]
    body = {"messages": [{"role": "user", "content": "go"}], "tools": tools, "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 200, "temperature": 1.0}  # fmt: skip
    ended = 0
    for seed in range(6):
        status, text = call(port, "POST", "/v1/chat/completions", {**body, "seed": seed})
        assert status == 200, text
        ch = json.loads(text)["choices"][0]
        if ch["finish_reason"] == "tool_calls":
            ended += 1
            [c] = ch["message"]["tool_calls"]
            args = json.loads(c["function"]["arguments"])
            if name == "llama3x-builtin":
                assert c["function"]["name"] == "code_interpreter" and list(args) == ["code"] and isinstance(args["code"], str), c
            else:
                assert c["function"]["name"] == "add" and set(args) <= {"a", "b"} and all(type(v) is int for v in args.values()), c
    assert ended, name  # (a random model: a reply may run to max_tokens, but not every one)
    if name == "llama3x-builtin":
        odd = _tool("python", {"code": {"type": "string"}, "timeout": {"type": "integer"}}, ["code"])
        status, text = call(port, "POST", "/v1/chat/completions", {**body, "tools": [odd]})
        assert status == 400 and "Parameters of tool python" in json.loads(text)["error"]["message"], text
