"""Model-native tool-call formats (runtime/toolformats.py): each chosen from its real chat template
(tests/fixtures/templates/, from llama.cpp's models/templates) as llama.cpp's common/chat.cpp chooses it,
the tools and earlier calls and results rendered through that template, replies parsed into calls
(llama.cpp's test-chat.cpp strings), the grammar taking valid calls and refusing others, and the
server answering through each on a tiny model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_server import call

from kvrun.loaders.chat_template import render_chat
from kvrun.runtime.gbnf import parse
from kvrun.runtime.toolformats import CommandR7B, DeepSeek, Gemma4, Glm45, Llama3x, MistralNemo, Qwen3Coder, gemma_value, nine_char_id
from kvrun.runtime.tools import Generic, Harmony, Hermes, check_messages, check_tools, tool_format

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = {
    "llama3x": FIXTURES / "templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral-nemo": FIXTURES / "templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "gemma4": FIXTURES / "chat_template_gemma4.jinja",
    "qwen3-coder": FIXTURES / "templates/Qwen3-Coder.jinja",
    "glm-4.5": FIXTURES / "templates/glm_4_5.jinja",
    "deepseek-r1": FIXTURES / "templates/llama-cpp-deepseek-r1.jinja",
    "deepseek-v3.1": FIXTURES / "templates/deepseek-ai-DeepSeek-V3.1.jinja",
    "command-r7b": FIXTURES / "templates/CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}  # fmt: skip
ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}  # fmt: skip
TOOLS = [WEATHER]
ASK = [{"role": "user", "content": "weather in Paris?"}]
HISTORY = ASK + [
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]  # fmt: skip


def _template(name: str) -> str:
    return TEMPLATES[name].read_text()


def _render(name: str, msgs: list, tools=None) -> str:
    fmt = tool_format(_template(name))
    out, extra = fmt.template_messages(check_messages(msgs), tools)
    return render_chat(_template(name), out, bos_token="<s>", eos_token="</s>", **extra)


@pytest.mark.parametrize("name,cls", [("llama3x", Llama3x), ("mistral-nemo", MistralNemo), ("gemma4", Gemma4),
                                      ("qwen3-coder", Qwen3Coder), ("glm-4.5", Glm45), ("deepseek-r1", DeepSeek),
                                      ("deepseek-v3.1", DeepSeek), ("command-r7b", CommandR7B)])  # fmt: skip
def test_each_template_is_detected_as_llama_cpp_detects_it(name, cls):
    fmt = tool_format(_template(name))
    assert type(fmt) is cls and fmt.name == name


def test_detection_keeps_llama_cpps_order():
    # Hermes 3 (a Llama 3.1 with <tool_call>) stays Hermes; a plain template stays generic; gpt-oss harmony
    assert isinstance(tool_format("<|start_header_id|>ipython<|end_header_id|> <tool_call>"), Hermes)
    assert isinstance(tool_format("[TOOL_CALLS] <tool_call>"), Hermes)
    assert isinstance(tool_format("{{ messages }}"), Generic)
    assert isinstance(tool_format("<|channel|>x<|message|>"), Harmony)
    assert isinstance(tool_format("[gMASK]<sop> <tool_call> <arg_key> <arg_value>"), Glm45)


def test_the_tools_and_history_are_rendered_through_each_template():
    tools = check_tools(TOOLS)
    text = _render("llama3x", HISTORY, tools)
    assert '"name": "get_weather"' in text and "Today Date:" in text
    assert '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}<|eot_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n\"sunny\"<|eot_id|>" in text
    text = _render("mistral-nemo", HISTORY, tools)  # (ids: nine characters, the call's and its result's the same)
    cid = nine_char_id("call_1")
    assert "[AVAILABLE_TOOLS]" in text and f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {{"city": "Paris", "days": 2}}, "id": "{cid}"}}]' in text
    assert f'[TOOL_RESULTS]{{"content": sunny, "call_id": "{cid}"}}[/TOOL_RESULTS]' in text
    text = _render("gemma4", HISTORY, tools)
    assert "<|tool>declaration:get_weather{" in text
    assert "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,days:2}<tool_call|><|tool_response>response:get_weather{value:<|\"|>sunny<|\"|>}<tool_response|>" in text
    text = _render("qwen3-coder", HISTORY, tools)
    assert "<name>get_weather</name>" in text
    assert "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>" in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    text = _render("deepseek-r1", HISTORY, tools)  # (arguments as JSON text, as its template concatenates them)
    assert "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n" in text
    assert '{"city": "Paris", "days": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>' in text and "<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>" in text
    text = _render("deepseek-v3.1", HISTORY, tools)
    assert '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "days": 2}<｜tool▁call▁end｜>' in text
    text = _render("command-r7b", HISTORY, tools)
    assert '{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris", "days": 2}}' in text
    assert '"tool_call_id": "0",\n        "results": {\n            "0": "sunny"' in text  # (its result found by the call's id)
    text = _render("glm-4.5", HISTORY, tools)
    assert "<tool_call>get_weather<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>" in text and "<|observation|>\n<tool_response>\nsunny" in text


@pytest.mark.parametrize("fmt,reply,content,calls", [
    # llama.cpp's tests/test-chat.cpp strings
    (Llama3x(), '{"name": "special_function", "parameters": {"arg1": 1}}', "", [("special_function", {"arg1": 1})]),
    (Llama3x(), '<|python_tag|>{"type": "function", "name": "special_function", "parameters": {"arg1": 1}}', "", [("special_function", {"arg1": 1})]),
    (Llama3x(), "Hello, world!", "Hello, world!", []),
    (MistralNemo(), '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]', "", [("special_function", {"arg1": 1})]),
    (MistralNemo(), 'Hi[TOOL_CALLS][{"name": "a", "arguments": {}, "id": "123456789"}, {"name": "b", "arguments": {"x": "y"}, "id": "abcdefghi"}]', "Hi",
     [("a", {}), ("b", {"x": "y"})]),
    (Qwen3Coder(), "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>", "",
     [("special_function", {"arg1": 1})]),
    (Qwen3Coder(), "Let me look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew\nYork\n</parameter>\n</function>\n</tool_call>", "Let me look.",
     [("get_weather", {"city": "New\nYork"})]),
    (Glm45(), "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", "", [("special_function", {"arg1": 1})]),
    (Glm45(), "\n<think>hmm</think>\nok<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>{\"b\": [1]}</arg_value>\n</tool_call>",
     "<think>hmm</think>\nok", [("f", {"a": {"b": [1]}})]),
    (Gemma4(), 'Sure.<|tool_call>call:get_weather{city:<|"|>Paris, FR<|"|>,days:2,opts:{deep:true,l:[1,<|"|>x<|"|>]}}<tool_call|>', "Sure.",
     [("get_weather", {"city": "Paris, FR", "days": 2, "opts": {"deep": True, "l": [1, "x"]}})]),
    (DeepSeek(), "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n{\"arg1\": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
     "", [("special_function", {"arg1": 1})]),
    (DeepSeek(), "I'm\nthinking</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n{\"arg1\": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
     "I'm\nthinking</think>", [("special_function", {"arg1": 1})]),
    (DeepSeek(v31=True), "REASONING</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"city\": \"Tokyo\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
     "REASONING</think>", [("get_time", {"city": "Tokyo"})]),
    (DeepSeek(v31=True), "Hello, world!", "Hello, world!", []),
    (CommandR7B(), "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n    {\"tool_call_id\": \"0\", \"tool_name\": \"special_function\", \"parameters\": {\"arg1\": 1}}\n]<|END_ACTION|>",
     "<think>I'm\nthinking</think>", [("special_function", {"arg1": 1})]),
    (CommandR7B(), "<|START_RESPONSE|>Hello, world!\nWhat's up?<|END_RESPONSE|>", "Hello, world!\nWhat's up?", []),
    (Gemma4(), "<|tool_call>call:f{a:<|\"|>open}<tool_call|>", "<|tool_call>call:f{a:<|\"|>open}<tool_call|>", []),  # (malformed: left as text)
])  # fmt: skip
def test_replies_are_parsed_into_calls_and_content(fmt, reply, content, calls):
    got_content, got = fmt.parse(reply)
    assert got_content == content and [(c["name"], c["arguments"]) for c in got] == calls


def test_mistral_calls_keep_nine_char_ids_and_gemma_values_round_trip():
    _, [c] = MistralNemo().parse('[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "123456789"}]')
    assert c["id"] == "123456789"
    _, [c] = MistralNemo().parse('[TOOL_CALLS][{"name": "f", "arguments": {}}]')
    assert len(c["id"]) == 9 and c["id"].isalnum()
    v = {"a": "x, y", "b": [1, 2.5, None], "c": {"d": False}}
    _, [c] = Gemma4().parse(f"<|tool_call>call:f{gemma_value(v)}<tool_call|>")
    assert c["arguments"] == v


@pytest.mark.parametrize("fmt,good,bad", [
    (Llama3x(), ['{"name": "get_weather", "parameters": {"city": "Paris"}}'],
     ['{"name": "get_time", "parameters": {}}', '{"name": "get_weather", "parameters": {"days": 1}}']),
    (MistralNemo(), ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123XYZ"}]'],
     ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "short"}]', '[{"name": "get_weather"}]']),
    (Qwen3Coder(), ["<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"],
     ["<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\nthree\n</parameter>\n</function>\n</tool_call>",
      "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",  # (city is required)
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>",
      "<tool_call>\n<function=rm>\n</function>\n</tool_call>"]),
    (Glm45(), ["<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"],
     ["<tool_call>get_weather\n<arg_key>town</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"]),
    (Gemma4(), ['<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>', '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'],
     ['<|tool_call>call:get_weather{town:<|"|>Paris<|"|>}<tool_call|>', '<|tool_call>call:get_weather{city:Paris}<tool_call|>',
      '<|tool_call>call:get_weather{days:2}<tool_call|>', '<|tool_call>call:get_weather{city:<|"|>P<|"|>,days:<|"|>2<|"|>}<tool_call|>',
      '<|tool_call>call:get_weather{city:<|"|>P<|"|>,city:<|"|>Q<|"|>}<tool_call|>']),
    (DeepSeek(), ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"],
     ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"days\": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"]),
    (DeepSeek(v31=True), ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"],
     ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"]),
    (CommandR7B(), ['<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}]<|END_ACTION|>'],
     ['<|START_ACTION|>[{"tool_call_id": "x", "tool_name": "get_weather", "parameters": {"city": "Paris"}}]<|END_ACTION|>',
      '<|START_ACTION|>[{"tool_name": "get_weather", "parameters": {"city": "Paris"}}]<|END_ACTION|>']),
])  # fmt: skip
def test_the_grammar_takes_valid_calls_and_refuses_others(fmt, good, bad):
    tools = check_tools(TOOLS, "required", parallel=False)
    g = parse(fmt.grammar(tools))
    assert fmt.trigger(tools) is None and fmt.trigger(check_tools(TOOLS)) is not None
    for text in good:
        assert g.accepts(text), text
        assert [c["name"] for c in fmt.parse(text)[1]] == ["get_weather"], text
    for text in bad:
        assert not g.accepts(text), text
    auto = check_tools(TOOLS)  # (auto: the grammar starts at the trigger, which is where a call starts)
    assert all(t.lstrip().startswith(fmt.trigger(auto)) or t.startswith("<|python_tag|>") for t in good)


@pytest.fixture(scope="module", params=list(TEMPLATES))
def served(request, tmp_path_factory):
    from tinymodel import write_tiny_model

    from kvrun.runtime.api import Model
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.server import make_server

    name = request.param
    path = write_tiny_model(tmp_path_factory.mktemp(name) / "t.gguf", "llama", chat_template=_template(name))
    n_ctx = 8192 if name == "command-r7b" else 4096  # (a byte a token: R7B's preamble alone is 5k)
    httpd = make_server(Model(Engine(path, n_ctx=n_ctx, n_batch=512)), "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield name, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_the_server_calls_tools_through_each_format(served):
    name, port = served
    # (integer arguments: a random model's free text, a string parameter's value in the XML formats, runs long)
    body = {"messages": [{"role": "user", "content": "1 + 2?"}], "tools": [ADD], "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 300, "temperature": 1.0}
    status, text = call(port, "POST", "/apply-template", {"messages": HISTORY, "tools": TOOLS})
    assert status in (200, 404), text  # (llama-server's endpoint where this server has it)
    ended = 0
    for seed in range(4):
        status, text = call(port, "POST", "/v1/chat/completions", {**body, "seed": seed})
        assert status == 200, text
        ch = json.loads(text)["choices"][0]
        if ch["finish_reason"] == "tool_calls":
            ended += 1
            [c] = ch["message"]["tool_calls"]
            args = json.loads(c["function"]["arguments"])
            assert c["function"]["name"] == "add" and set(args) <= {"a", "b"} and all(type(v) is int for v in args.values()), (name, c)
    status, text = call(port, "POST", "/v1/chat/completions", {**body, "seed": 0, "stream": True})
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    if chunks[-1]["choices"][0]["finish_reason"] == "tool_calls":  # (streamed: the call in a delta)
        [tc] = [d["tool_calls"] for d in (c["choices"][0]["delta"] for c in chunks) if "tool_calls" in d]
        assert tc[0]["function"]["name"] == "add", tc
    # earlier calls and results go back through the template without error
    status, text = call(port, "POST", "/v1/chat/completions", {"messages": HISTORY, "tools": TOOLS, "max_tokens": 8})
    assert status == 200, text
    assert ended, name  # (a random model: a reply may run to max_tokens, but not every one)


def test_an_xml_format_keeps_a_string_parameters_value_as_text_once_it_knows_the_tools():
    reply = "<tool_call>\n<function=get_weather>\n<parameter=city>\n1984\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
    fmt = Qwen3Coder()
    assert fmt.parse(reply)[1][0]["arguments"] == {"city": 1984, "days": 2}  # (not knowing: JSON where it is JSON)
    fmt.know(check_tools(TOOLS))
    assert fmt.parse(reply)[1][0]["arguments"] == {"city": "1984", "days": 2}
