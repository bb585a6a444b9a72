"""Model-native tool-call formats beyond Hermes' (``runtime/tools.py``), each chosen from the chat
template as llama.cpp's ``common/chat.cpp`` chooses it, in its order (:func:`native_format`):

* :class:`DeepSeek` (V3.1: its template's ``message['prefix'] ... and thinking``; R1: ``<｜tool▁calls▁begin｜>``):
  ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>[function<｜tool▁sep｜>]NAME...<｜tool▁call▁end｜><｜tool▁calls▁end｜>``;
* :class:`CommandR7B` (``<|END_THINKING|><|START_ACTION|>``): ``<|START_ACTION|>[{"tool_call_id", "tool_name",
  "parameters"}]<|END_ACTION|>``;
* :class:`Glm45` (``[gMASK]<sop>`` with ``<arg_key>`` / ``<arg_value>``): ``<tool_call>NAME
  <arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>``;
* :class:`Qwen3Coder` (``<tool_call>`` with ``<function=`` and ``<parameter=``): ``<tool_call>
  <function=NAME><parameter=K>V</parameter>...</function></tool_call>``;
* :class:`Gemma4` (``<|tool_call>`` / ``<tool_call|>``; llama.cpp reads it with its generic
  auto-parser, so this follows the template's own convention): ``<|tool_call>call:NAME{k:v,...}<tool_call|>``,
  strings quoted ``<|"|>...<|"|>``, results as the calling turn's ``tool_responses``;
* then Hermes' ``<tool_call>`` (llama.cpp checks it before the two below);
* :class:`Llama3x` (``<|start_header_id|>ipython<|end_header_id|>``): the reply one JSON object
  ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>`` before it allowed), one call a reply;
  where the template knows ``<|python_tag|>`` (3.1, 3.3), a built-in tool (brave_search, wolfram_alpha,
  code_interpreter, ...) also ``<|python_tag|>brave_search.call(query="...")``;
* :class:`MistralNemo` (``[TOOL_CALLS]``): ``[TOOL_CALLS][{"name", "arguments", "id"}, ...]``, ids
  nine letters or digits, which its template insists on for earlier calls and results too.
* :class:`MistralArgs` (``[TOOL_CALLS]`` and ``[ARGS]``: Ministral 3, Magistral, Mistral Small 3.2, Devstral; llama.cpp
  checks it first of all): ``[TOOL_CALLS]NAME[ARGS]{...}`` a call (``[CALL_ID]ID`` before ``[ARGS]`` where the
  template has it), a leading ``[THINK]...[/THINK]`` the reasoning.

Each has the interface of ``tools.py``'s formats: ``template_messages`` (the tools as the template's
``tools`` variable, earlier calls and results as it renders them), ``grammar`` and ``trigger`` (auto:
free text until the trigger, then held to the call syntax, llama.cpp's lazy grammar; required: the
grammar from the first byte), ``parse`` (the reply's calls out, the rest its content).  A reply's
``<think>...</think>`` is left in the content (the server splits it off) and never searched for calls
(Command R7B's ``<|START_THINKING|>`` plan comes back as one).
Values in the XML-like formats are raw text where the parameter's schema says string, else JSON, as
llama.cpp reads them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from .jsonschema import SchemaError, schema_to_gbnf
from .tools import ANY_OBJECT, Tools, _calls_schema, _new_id, _parsed_call, _prefixed, _result_owner


def _gbnf_str(s: str) -> str:
    """``s`` as a GBNF literal."""
    return json.dumps(s, ensure_ascii=False)


def _openai_calls(m: dict[str, Any]) -> dict[str, Any]:
    """A normalised message with its calls as OpenAI's (arguments an object, as these templates iterate them)."""
    m = dict(m)
    if "tool_calls" in m:
        m["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                           for c in m["tool_calls"]]  # fmt: skip
    return m


def _tools_var(tools: Tools | None) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": f} for f in tools.offered()]} if tools and tools.active else {}


def _split_think(text: str) -> tuple[str, str]:
    """(a leading ``<think>...</think>``, kept as it is; the rest, where calls are looked for).  A prompt
    that opens the thinking itself (DeepSeek R1's ``<｜Assistant｜><think>``) leaves only the ``</think>``."""
    m = re.match(r"\s*<think>.*?</think>", text, re.S) or re.match(r"(?:(?!<think>).)*?</think>", text, re.S)
    return (text[: m.end()], text[m.end() :]) if m else ("", text)


def _schema_rules(schema: dict[str, Any], prefix: str) -> str:
    """The GBNF of a JSON value ``schema`` allows, its rules renamed ``prefix`` + name (root: ``prefix + "root"``)."""
    try:
        g = schema_to_gbnf(schema)
    except SchemaError:
        g = schema_to_gbnf({})
    return _prefixed(g, prefix)


def _is_string(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string"


def _value(raw: str, schema: Any) -> Any:
    """An XML-format argument: the text itself for a string parameter, else its JSON (the text if it is none)."""
    if _is_string(schema):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


class _Xml:
    """The XML-like formats (Qwen3-Coder, GLM-4.5): a call's name, then its parameters one by one."""

    name = "xml"
    TRIGGER = "<tool_call>"

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}  # name -> its parameters' schemas (from the last grammar / tools)

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        self.know(tools)
        return [_openai_calls(m) for m in msgs], _tools_var(tools)

    def know(self, tools: Tools | None) -> None:
        """Learn the tools' parameter schemas, so that :meth:`parse` keeps a string parameter's value as text."""
        if tools is not None:
            self.schemas = {f["name"]: f["parameters"].get("properties", {}) for f in tools.functions}

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    # the parts of a call, as GBNF: (call open, name end, parameter open, key end, value end, call close)
    PARTS: tuple[str, str, str, str, str, str] = ("", "", "", "", "", "")

    def grammar(self, tools: Tools) -> str:
        """One call (several where parallel): a function's name, then its parameters in the schema's order,
        the required ones required, each value free text (up to the closing tag) where its schema says
        string, else JSON that schema allows."""
        opn, name_end, p_open, key_end, val_end, close = self.PARTS
        fns, rules = [], []
        for i, f in enumerate(tools.offered()):
            props = f["parameters"].get("properties") or {}
            required = set(f["parameters"].get("required") or ())
            seq = []
            for j, (k, sch) in enumerate(props.items()):  # (llama.cpp's order: the schema's, each once)
                value = "text" if _is_string(sch) else f"f{i}p{j}-root"
                if not _is_string(sch):
                    rules.append(_schema_rules(sch, f"f{i}p{j}-"))
                rules.append(f"f{i}p{j} ::= {_gbnf_str(p_open + k + key_end)} {value} {_gbnf_str(val_end)}\n")
                seq.append(f"f{i}p{j}" + ("" if k in required else "?"))
            if not props:  # (a schema without properties: any keys, their values as text)
                rules.append(f"f{i}p ::= {_gbnf_str(p_open)} [A-Za-z0-9_.-]+ {_gbnf_str(key_end)} text {_gbnf_str(val_end)}\n")
                seq.append(f"f{i}p*")
            rules.append(f"fn{i} ::= {_gbnf_str(f['name'] + name_end)} {' '.join(seq)}\n")
            fns.append(f"fn{i}")
        many = "+" if tools.parallel else ""
        head = f'root ::= (call "\\n"?){many}\ncall ::= {_gbnf_str(opn)} ({" | ".join(fns)}) {_gbnf_str(close)}\n'
        text = 'text ::= ([^<] | "<" [^/])*\n'  # (a value runs to the closing tag: no "</" inside)
        self.know(tools)
        return head + text + "".join(rules)

    CALL: re.Pattern[str]
    PARAM: re.Pattern[str]

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        think, rest = _split_think(text)
        calls, keep, at = [], [], 0
        for m in self.CALL.finditer(rest):
            name = m.group(1).strip()
            props = self.schemas.get(name, {})
            args = {p.group(1).strip(): _value(p.group(2), props.get(p.group(1).strip())) for p in self.PARAM.finditer(m.group(2))}
            calls.append({"id": _new_id(), "name": name, "arguments": args})
            keep.append(rest[at : m.start()])
            at = m.end()
        keep.append(rest[at:])
        return (think + "".join(keep)).strip() if calls else text, calls


class Qwen3Coder(_Xml):
    """Qwen3-Coder: ``<tool_call>\\n<function=NAME>\\n<parameter=K>\\nV\\n</parameter>\\n</function>\\n</tool_call>``."""

    name = "qwen3-coder"
    PARTS = ("<tool_call>\n<function=", ">\n", "<parameter=", ">\n", "\n</parameter>\n", "</function>\n</tool_call>")
    CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*(?:</tool_call>|$)", re.S)
    PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


class Glm45(_Xml):
    """GLM-4.5 / 4.6: ``<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>``."""

    name = "glm-4.5"
    PARTS = ("<tool_call>", "\n", "<arg_key>", "</arg_key>\n<arg_value>", "</arg_value>\n", "</tool_call>")
    CALL = re.compile(r"<tool_call>\s*([^<\n]+?)\s*(?:\n|(?=<arg_key>)|(?=</tool_call>))(.*?)(?:</tool_call>|$)", re.S)
    PARAM = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


# ---------------------------------------------------------------- Gemma 4
QUOTE = '<|"|>'  #: Gemma 4's string quote


def gemma_value(v: Any) -> str:
    """A JSON value in Gemma 4's notation (its template's ``format_argument``): keys bare, strings in ``<|"|>``."""
    if isinstance(v, str):
        return QUOTE + v + QUOTE
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{gemma_value(x)}" for k, x in sorted(v.items())) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(gemma_value, v)) + "]"
    return json.dumps(v)


class _GemmaReader:
    """Gemma 4's value notation read back into JSON values (ValueError where it is not one)."""

    NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
    KEY = re.compile(r"[^:{}\[\],<\s]+")

    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def value(self) -> Any:
        s, i = self.s, self.i
        if s.startswith(QUOTE, i):
            end = s.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise ValueError("unclosed string")
            self.i = end + len(QUOTE)
            return s[i + len(QUOTE) : end]
        if s.startswith("{", i):
            return self.obj()
        if s.startswith("[", i):
            self.i += 1
            out = []
            while not s.startswith("]", self.i):
                out.append(self.value())
                if s.startswith(",", self.i):
                    self.i += 1
                elif not s.startswith("]", self.i):
                    raise ValueError("expected , or ]")
            self.i += 1
            return out
        for word, v in (("true", True), ("false", False), ("null", None)):
            if s.startswith(word, i):
                self.i += len(word)
                return v
        m = self.NUM.match(s, i)
        if not m:
            raise ValueError(f"unexpected {s[i:i + 10]!r}")
        self.i = m.end()
        return json.loads(m.group())

    def obj(self) -> dict[str, Any]:
        s = self.s
        self.i += 1  # "{"
        out = {}
        while not s.startswith("}", self.i):
            m = self.KEY.match(s, self.i)
            if not m or not s.startswith(":", m.end()):
                raise ValueError("expected key:")
            self.i = m.end() + 1
            out[m.group()] = self.value()
            if s.startswith(",", self.i):
                self.i += 1
            elif not s.startswith("}", self.i):
                raise ValueError("expected , or }")
        self.i += 1
        return out


#: a Gemma argument's value rule by its schema's type (others: any value)
_GEMMA_TYPED = {"string": "str", "integer": "int", "number": "num", "boolean": "bool", "object": "obj", "array": "arr"}


class Gemma4:
    """Gemma 4: ``<|tool_call>call:NAME{k:v,...}<tool_call|>``; a result goes back into the calling turn
    as its ``tool_responses`` (the template then leaves the turn open and the model goes on in it)."""

    name = "gemma4"
    TRIGGER = "<|tool_call>"
    CALL = re.compile(r"<\|tool_call>call:([A-Za-z0-9_.\-]+)(\{.*?\})<tool_call\|>", re.S)

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in msgs:
            if m["role"] == "tool":
                prev = out[-1] if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1] else None
                if prev is None:  # (a result without its call: a turn of its own)
                    prev = {"role": "assistant", "content": ""}
                    out.append(prev)
                prev.setdefault("tool_responses", []).append({"name": m.get("name") or "unknown", "response": _gemma_response(m["content"])})
                continue
            out.append(_openai_calls(m))
        return out, _tools_var(tools)

    def grammar(self, tools: Tools) -> str:
        """A call to an offered function: its parameters in the template's (sorted) order, each once, the
        required ones required, each value of its schema's top-level type in Gemma's notation (deeper
        than that, any value)."""
        fns = []
        rules = []
        for i, f in enumerate(tools.offered()):
            props = f["parameters"].get("properties") or {}
            required = set(f["parameters"].get("required") or ())
            if not props:
                rules.append(f"fn{i} ::= {_gbnf_str(f['name'])} obj\n")
            else:  # (the template's order: keys sorted, each once, the required ones required)
                keys = sorted(props)
                part = [f"{_gbnf_str(k + ':')} {_GEMMA_TYPED.get(props[k].get('type') if isinstance(props[k], dict) else None, 'value')}" for k in keys]
                n = len(keys)
                for j, k in enumerate(keys):  # fI-sJ: keys J.. with none written yet; fI-rJ: after one
                    nxt_s, nxt_r = (f"f{i}-s{j + 1}", f"f{i}-r{j + 1}") if j + 1 < n else ("", "")
                    if k in required:
                        rules.append(f"f{i}-s{j} ::= {part[j]} {nxt_r}\nf{i}-r{j} ::= \",\" {part[j]} {nxt_r}\n")
                    else:
                        first = f"{part[j]} {nxt_r} | {nxt_s}" if nxt_s else f"({part[j]})?"  # (no "|" ending a line: it goes on)
                        rules.append(f"f{i}-s{j} ::= {first}\nf{i}-r{j} ::= (\",\" {part[j]})? {nxt_r}\n")
                rules.append(f"fn{i} ::= {_gbnf_str(f['name'])} \"{{\" f{i}-s0 \"}}\"\n")
            fns.append(f"fn{i}")
        many = "+" if tools.parallel else ""
        return (f'root ::= call{many}\ncall ::= "<|tool_call>call:" ({" | ".join(fns)}) "<tool_call|>"\n' + "".join(rules)
                + 'value ::= str | num | "true" | "false" | "null" | obj | arr\n'
                + 'str ::= "<|\\"|>" ([^<] | "<" [^|])* "<|\\"|>"\n'
                + 'num ::= "-"? [0-9]{1,16} ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?\nint ::= "-"? [0-9]{1,16}\nbool ::= "true" | "false"\n'
                + 'obj ::= "{" (key ":" value ("," key ":" value)*)? "}"\nkey ::= [A-Za-z_] [A-Za-z0-9_]*\n'
                + 'arr ::= "[" (value ("," value)*)? "]"\n')  # fmt: skip

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        calls, keep, at = [], [], 0
        for m in self.CALL.finditer(text):
            r = _GemmaReader(m.group(2))
            try:
                args = r.obj()
            except ValueError:
                continue
            if r.i != len(r.s):
                continue
            calls.append({"id": _new_id(), "name": m.group(1), "arguments": args})
            keep.append(text[at : m.start()])
            at = m.end()
        keep.append(text[at:])
        return "".join(keep).strip() if calls else text, calls


def _gemma_response(content: str) -> Any:
    """A result as the template wants it: a JSON object's content as that object, else the text."""
    try:
        v = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return content
    return v if isinstance(v, dict) else content


# ---------------------------------------------------------------- Llama 3.x
#: Llama 3.1's built-in tools as llama.cpp's common/chat.cpp knows them: name -> the one parameter it must have
BUILTIN_TOOLS = {"wolfram_alpha": "query", "web_search": "query", "brave_search": "query", "python": "code", "code_interpreter": "code"}
PYTHON_TAG = "<|python_tag|>"


def builtin_param_error(f: dict[str, Any]) -> str | None:
    """Why a function named as a built-in tool cannot be one (llama.cpp's ``expect_tool_parameters``: an object
    whose only property is the built-in's parameter, required), or None when it can."""
    want, params = BUILTIN_TOOLS[f["name"]], f["parameters"]
    props, required = params.get("properties"), params.get("required")
    if params.get("type") != "object" or not isinstance(props, dict) or not isinstance(required, list):
        return f"Parameters of tool {f['name']} must be an object w/ required properties"
    if want not in props or want not in required or len(props) != 1:
        return f"Parameters of tool {f['name']} must be an object whose one property, required, is {want!r}"
    return None


class Llama3x:
    """Llama 3.1 / 3.2 / 3.3: the reply one ``{"name": ..., "parameters": {...}}`` object (the template's
    own instruction), ``<|python_tag|>`` before it allowed; results in ``ipython`` turns (the template's).

    Built-in tools (``builtins``: a template that knows ``<|python_tag|>``, 3.1's and 3.3's, as llama.cpp
    decides): a function named as one of :data:`BUILTIN_TOOLS`, whose parameters are just that tool's, is
    also called ``<|python_tag|>brave_search.call(query="...")`` (keyword arguments, JSON values), the reply
    then ending in ``<|eom_id|>``; the template's system turn names them (``Environment: ipython``,
    ``Tools: brave_search, wolfram_alpha``: its ``builtin_tools``) and renders earlier such calls that way."""

    name = "llama3x"
    TRIGGER = '{"name":'
    CALL = re.compile(r'(?:<\|python_tag\|>)?\s*\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"([^"]+)"\s*,\s*"parameters"\s*:\s*')
    # llama.cpp's common_chat_parse_llama_3_1 (with_builtin_tools): NAME.call( then ARG=JSON, ...  then )
    BUILTIN_CALL = re.compile(r"\s*(\w+)\s*\.\s*call\(")
    BUILTIN_ARG = re.compile(r"\s*(\w+)\s*=\s*")

    def __init__(self, builtins: bool = False) -> None:
        self.builtins = builtins
        self.builtin: list[str] = []  # the built-in tools of the last tools seen (know / template_messages / grammar)

    def know(self, tools: Tools | None) -> None:
        """Learn which of the tools are built-ins, so that :meth:`parse` reads ``<|python_tag|>NAME.call(...)``."""
        self.builtin = self.builtin_tools(tools.functions if tools is not None and tools.active else [])

    def builtin_tools(self, functions: list[dict[str, Any]]) -> list[str]:
        """The names among ``functions`` that are built-in tools here (none where the template knows no python tag)."""
        if not self.builtins:
            return []
        return [f["name"] for f in functions if f["name"] in BUILTIN_TOOLS and builtin_param_error(f) is None]

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        self.know(tools)
        out = []
        for m in msgs:  # (the template takes one call a turn: a turn of several becomes one a call)
            if "tool_calls" in m and self.builtin:  # (the template writes a built-in's arguments as text: NAME="VALUE")
                m = {**m, "tool_calls": [{**c, "arguments": {k: v if isinstance(v, str) else json.dumps(v) for k, v in c["arguments"].items()}}
                                         if c["name"] in self.builtin else c for c in m["tool_calls"]]}  # fmt: skip
            if len(m.get("tool_calls", ())) > 1:
                out += [{**_openai_calls({**m, "tool_calls": [c]}), "content": m["content"] if j == 0 else ""} for j, c in enumerate(m["tool_calls"])]
            else:
                out.append(_openai_calls(m))
        # (llama.cpp passes the date the template prints in its system turn, the tools in that turn, and the built-ins)
        extra: dict[str, Any] = {"date_string": time.strftime("%d %b %Y"), "tools_in_user_message": False}
        if self.builtin:
            extra["builtin_tools"] = list(self.builtin)
        return out, {**_tools_var(tools), **extra}

    def grammar(self, tools: Tools) -> str:
        """One call: the JSON object for any offered function, or ``<|python_tag|>NAME.call(ARG=VALUE)`` for a
        built-in (each value as its schema says); ValueError for a function named as a built-in whose parameters
        are not that built-in's, as llama.cpp refuses it."""
        alts, builtin_rules = [], []
        for f in tools.offered():
            if self.builtins and f["name"] in BUILTIN_TOOLS:
                if (why := builtin_param_error(f)) is not None:
                    raise ValueError(why)
                arg = BUILTIN_TOOLS[f["name"]]
                i = len(builtin_rules)
                builtin_rules.append((f"b{i} ::= {_gbnf_str(PYTHON_TAG + f['name'] + '.call(' + arg + '=')} b{i}v-root \")\"\n"
                                      + _schema_rules(f["parameters"]["properties"][arg], f"b{i}v-")))  # fmt: skip
            params = f["parameters"]
            try:
                schema_to_gbnf(params)
            except SchemaError:
                params = ANY_OBJECT
            alts.append({"type": "object", "properties": {"name": {"const": f["name"]}, "parameters": params}, "required": ["name", "parameters"]})
        self.know(tools)
        json_call = schema_to_gbnf(alts[0] if len(alts) == 1 else {"anyOf": alts})
        if not builtin_rules:
            return json_call
        names = " | ".join(f"b{i}" for i in range(len(builtin_rules)))
        return f"root ::= j-root | {names}\n" + _prefixed(json_call, "j-") + "".join(builtin_rules)

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        think, rest = _split_think(text)
        if self.builtin and (at := rest.find(PYTHON_TAG)) >= 0 and (call := self._builtin_call(rest, at + len(PYTHON_TAG))):
            (name, args), end = call
            content = (think + rest[:at] + rest[end:]).strip()
            return content, [{"id": _new_id(), "name": name, "arguments": args}]
        m = self.CALL.search(rest)
        if m is None:
            return text, []
        try:
            args, end = json.JSONDecoder().raw_decode(rest, m.end())
        except json.JSONDecodeError:
            return text, []
        close = re.match(r"\s*\}", rest[end:])
        if not isinstance(args, dict) or close is None:
            return text, []
        content = (think + rest[: m.start()] + rest[end + close.end() :]).strip()
        return content, [{"id": _new_id(), "name": m.group(1), "arguments": args}]

    def _builtin_call(self, text: str, i: int) -> tuple[tuple[str, dict[str, Any]], int] | None:
        """``NAME.call(ARG=JSON, ...)`` at ``text[i:]`` as llama.cpp reads it: ((name, arguments), where it ends,
        the spaces after it included), or None where it is not one (then the JSON form is tried)."""
        m = self.BUILTIN_CALL.match(text, i)
        if m is None:
            return None
        name, args, i = m.group(1), {}, m.end()
        while (a := self.BUILTIN_ARG.match(text, i)) is not None:
            try:
                args[a.group(1)], i = json.JSONDecoder().raw_decode(text, a.end())
            except json.JSONDecodeError:
                return None
            i = re.compile(r"\s*").match(text, i).end()
            if not text.startswith(",", i):
                break
            i += 1
        if not text.startswith(")", i):
            return None
        return (name, args), re.compile(r"\s*").match(text, i + 1).end()


# ---------------------------------------------------------------- Mistral Nemo
def nine_char_id(call_id: str) -> str:
    """A call id as Mistral's templates insist on it: nine letters or digits (others mapped stably)."""
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha1(call_id.encode()).hexdigest()[:9]


def _random_id() -> str:
    return _new_id()[-9:]


_ID_MARK = "ID-OF-NINE-CHARACTERS"


class MistralNemo:
    """Mistral Nemo / Small: ``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abc123XYZ"}, ...]``."""

    name = "mistral-nemo"
    TRIGGER = "[TOOL_CALLS]"

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        k = 0
        for m in msgs:
            if "tool_calls" in m:
                calls, k = m["tool_calls"], 0
                m = {**m, "tool_calls": [{**c, "id": nine_char_id(c["id"])} for c in calls]}
            elif m["role"] == "tool":
                owner = _result_owner(m, calls, k) if calls else None
                k += 1
                cid = calls[owner]["id"] if owner is not None else str(m.get("tool_call_id") or "")
                m = {**m, "tool_call_id": nine_char_id(cid)}
            out.append(_openai_calls(m))
        return out, _tools_var(tools)

    def grammar(self, tools: Tools) -> str:
        """``[TOOL_CALLS]`` and a JSON array of calls, each with an ``id`` of nine letters or digits
        (llama.cpp's schema: ``"pattern": "^[a-zA-Z0-9]{9}$"``)."""
        call = _calls_schema(tools.offered())
        alts = call.get("anyOf", [call])
        for a in alts:
            a["properties"]["id"] = {"const": _ID_MARK}  # (replaced below: the converter takes no "pattern")
            a["required"] = ["name", "arguments", "id"]
        many = {"minItems": 1} if tools.parallel else {"minItems": 1, "maxItems": 1}
        arr = {"type": "array", "items": alts[0] if len(alts) == 1 else {"anyOf": alts}, **many}
        g = schema_to_gbnf(arr, start="calls").replace(f'"\\"{_ID_MARK}\\""', '"\\"" [a-zA-Z0-9]{9} "\\""')
        return 'root ::= "[TOOL_CALLS]" calls\n' + g

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        at = text.find(self.TRIGGER)
        if at < 0:
            return text, []
        start = re.compile(r"\s*").match(text, at + len(self.TRIGGER)).end()
        try:
            arr, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            return text, []
        arr = arr if isinstance(arr, list) else [arr]
        calls = []
        for obj in arr:
            c = _parsed_call(obj)
            if c is not None:
                given = obj.get("id")
                c["id"] = given if isinstance(given, str) and re.fullmatch(r"[A-Za-z0-9]{9}", given) else _random_id()
                calls.append(c)
        if not calls:
            return text, []
        return (text[:at] + text[end:]).strip(), calls


class MistralArgs(MistralNemo):
    """Mistral's newer templates (Ministral 3, Magistral, Mistral Small 3.2, Devstral): a call a ``[TOOL_CALLS]``,
    ``[TOOL_CALLS]NAME[ARGS]{...}``, with ``[CALL_ID]ID`` before ``[ARGS]`` where the template writes one
    (``call_id``), ids nine letters or digits as for Nemo.  A reply's leading ``[THINK]...[/THINK]`` comes back
    as ``<think>...</think>`` before the content, for the server to split off as the reasoning (llama.cpp's
    common_chat_params_init_ministral_3 parser: reasoning, content up to the first ``[TOOL_CALLS]``, then the calls)."""

    name = "mistral-args"
    THINK = re.compile(r"\[THINK\](.*?)\[/THINK\]", re.S)
    CALL = re.compile(r"\[TOOL_CALLS\]\s*([^\[\]\s]+)\s*(?:\[CALL_ID\]\s*([^\[\s]*)\s*)?\[ARGS\]\s*")

    def __init__(self, call_id: bool = False) -> None:
        self.call_id = call_id

    def grammar(self, tools: Tools) -> str:
        """``[TOOL_CALLS]NAME[ARGS]`` then the arguments JSON that function's schema allows (a ``[CALL_ID]`` of nine
        letters or digits before ``[ARGS]`` allowed where the template has one), one call or several."""
        fns, rules = [], []
        cid = ' ("[CALL_ID]" [a-zA-Z0-9]{9})?' if self.call_id else ""
        for i, f in enumerate(tools.offered()):
            rules.append(_schema_rules(f["parameters"], f"f{i}-"))
            fns.append(f"{_gbnf_str(f['name'])}{cid} \"[ARGS]\" f{i}-root")
        many = "+" if tools.parallel else ""
        return f"root ::= call{many}\ncall ::= \"[TOOL_CALLS]\" ({' | '.join(fns)})\n" + "".join(rules)

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        think = self.THINK.match(text)
        rest = text[think.end() :] if think else text
        at = rest.find(self.TRIGGER)
        calls, i = [], at
        while at >= 0 and (m := self.CALL.match(rest, i)) is not None:
            try:
                args, end = json.JSONDecoder().raw_decode(rest, m.end())
            except json.JSONDecodeError:
                break
            if not isinstance(args, dict):
                break
            given = m.group(2) or ""
            calls.append({"id": given if re.fullmatch(r"[A-Za-z0-9]{9}", given) else _random_id(), "name": m.group(1), "arguments": args})
            i = re.compile(r"\s*").match(rest, end).end()
        if not calls and not think:
            return text, []
        content = rest[:at] + rest[i:] if calls else rest
        return ((f"<think>{think.group(1)}</think>" if think else "") + content).strip(), calls


# ---------------------------------------------------------------- DeepSeek R1 / V3.1
TB, TE = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"  #: DeepSeek's calls section
CB, SEP, CE = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"  #: one call's


class DeepSeek:
    """DeepSeek R1: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>...
    <｜tool▁calls▁end｜>``; V3.1 (``v31``): ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>``.
    Their templates take a call's arguments as JSON text, and ``content`` None on a turn of calls."""

    TRIGGER = TB

    def __init__(self, v31: bool = False) -> None:
        self.v31 = v31
        self.name = "deepseek-v3.1" if v31 else "deepseek-r1"
        head = r"(?:<｜tool▁call▁begin｜>)?" + (r"([^\n<]+)<｜tool▁sep｜>\s*" if v31 else r"function<｜tool▁sep｜>([^\n]+)\n```json\n")
        self.call = re.compile(head)
        self.close = re.compile(r"\s*<｜tool▁call▁end｜>" if v31 else r"\s*```\s*<｜tool▁call▁end｜>")

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out = []
        for m in msgs:
            if "tool_calls" in m:
                m = {**m, "content": m["content"] or None, "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                    for c in m["tool_calls"]]}  # fmt: skip
            out.append(m)
        return out, _tools_var(tools)

    def grammar(self, tools: Tools) -> str:
        fns, rules = [], []
        for i, f in enumerate(tools.offered()):
            rules.append(_schema_rules(f["parameters"], f"f{i}-"))
            if self.v31:
                fns.append(f"{_gbnf_str(CB + f['name'] + SEP)} f{i}-root {_gbnf_str(CE)}")
            else:
                fns.append(f"{_gbnf_str(CB + 'function' + SEP + f['name'] + chr(10) + '```json' + chr(10))} f{i}-root {_gbnf_str(chr(10) + '```' + CE)}")
        many = "+" if tools.parallel else ""
        return f"root ::= {_gbnf_str(TB)} call{many} {_gbnf_str(TE)}\ncall ::= {' | '.join(fns)}\n" + "".join(rules)

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        think, rest = _split_think(text)
        at = rest.find(TB)
        if at < 0:
            return text, []
        i, calls = at + len(TB), []
        while (m := self.call.match(rest, i)) is not None:
            try:
                args, end = json.JSONDecoder().raw_decode(rest, m.end())
            except json.JSONDecodeError:
                break
            close = self.close.match(rest, end)
            if not isinstance(args, dict) or close is None:
                break
            calls.append({"id": _new_id(), "name": m.group(1).strip(), "arguments": args})
            i = close.end()
        if not calls:
            return text, []
        after = re.compile(r"\s*(?:<｜tool▁calls▁end｜>)?").match(rest, i).end()
        return (think + rest[:at] + rest[after:]).strip(), calls


# ---------------------------------------------------------------- Command R7B
class CommandR7B:
    """Command R7B: ``<|START_THINKING|>plan<|END_THINKING|><|START_ACTION|>[{"tool_call_id": "0",
    "tool_name": NAME, "parameters": {...}}]<|END_ACTION|>``, an answer ``<|START_RESPONSE|>...<|END_RESPONSE|>``.
    The parsed reply's plan comes back as ``<think>plan</think>`` before the content, for the server to
    split off as the reasoning (llama.cpp's reasoning_content); an earlier turn's thinking is its ``tool_plan``."""

    name = "command-r7b"
    TRIGGER = "<|START_ACTION|>"
    THINK = re.compile(r"<\|START_THINKING\|>(.*?)(?:<\|END_THINKING\|>|$)", re.S)
    ACTION = re.compile(r"<\|START_ACTION\|>(.*?)(?:<\|END_ACTION\|>|$)", re.S)
    RESPONSE = re.compile(r"<\|START_RESPONSE\|>(.*?)(?:<\|END_RESPONSE\|>|$)", re.S)

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out, calls, k = [], [], 0
        for m in msgs:
            if "tool_calls" in m:
                calls, k = m["tool_calls"], 0
                m = {**_openai_calls(m), "tool_plan": m.get("thinking", "")}
            elif m["role"] == "tool" and calls:  # (the template finds a result's call by its id)
                m = {**m, "tool_call_id": calls[_result_owner(m, calls, k)]["id"]}
                k += 1
            out.append(m)
        return out, _tools_var(tools)

    def grammar(self, tools: Tools) -> str:
        alts = []
        for f in tools.offered():
            params = f["parameters"]
            try:
                schema_to_gbnf(params)
            except SchemaError:
                params = ANY_OBJECT
            alts.append({"type": "object", "properties": {"tool_call_id": {"const": _ID_MARK}, "tool_name": {"const": f["name"]}, "parameters": params},
                         "required": ["tool_call_id", "tool_name", "parameters"]})  # fmt: skip
        many = {"minItems": 1} if tools.parallel else {"minItems": 1, "maxItems": 1}
        arr = {"type": "array", "items": alts[0] if len(alts) == 1 else {"anyOf": alts}, **many}
        # (llama.cpp's schema: "tool_call_id" "pattern": "^[0-9]{1,10}$")
        g = schema_to_gbnf(arr, start="calls").replace(f'"\\"{_ID_MARK}\\""', '"\\"" [0-9]{1,10} "\\""')
        return f"root ::= {_gbnf_str(self.TRIGGER)} calls {_gbnf_str('<|END_ACTION|>')}\n" + g

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        calls = []
        if (act := self.ACTION.search(text)) is not None:
            try:
                arr = json.loads(act.group(1))
            except json.JSONDecodeError:
                arr = []
            for obj in arr if isinstance(arr, list) else []:
                if isinstance(obj, dict) and (c := _parsed_call({"name": obj.get("tool_name"), "arguments": obj.get("parameters", {})})):
                    calls.append(c)
        think = self.THINK.search(text)
        said = self.RESPONSE.search(text)
        if not calls and not think and not said:
            return text, []
        content = said.group(1) if said else ""
        return (f"<think>{think.group(1)}</think>" if think else "") + content, calls


# ---------------------------------------------------------------- selection
def native_format(template: str) -> Any | None:
    """This template's native tool format where it is one of this module's, else None (Hermes', the
    generic or gpt-oss's, as ``tools.tool_format`` decides).  The order is llama.cpp's: Mistral's ``[ARGS]``, DeepSeek V3.1,
    R1 and Command R7B first, GLM-4.5 and
    Qwen3-Coder before Hermes (their templates hold ``<tool_call>`` too), Hermes before Llama 3.x and
    Mistral (Hermes 3 is a Llama 3.1 with Hermes' template)."""
    if "[TOOL_CALLS]" in template and "[ARGS]" in template:  # (llama.cpp checks Ministral 3's first)
        return MistralArgs(call_id="[CALL_ID]" in template)
    if "message['prefix'] is defined and message['prefix'] and thinking" in template:
        return DeepSeek(v31=True)
    if TB in template:
        return DeepSeek()
    if "<|END_THINKING|><|START_ACTION|>" in template:
        return CommandR7B()
    if "[gMASK]<sop>" in template and "<arg_key>" in template and "<arg_value>" in template:
        return Glm45()
    if all(s in template for s in ("<tool_call>", "<function>", "<function=", "<parameters>", "<parameter=")):
        return Qwen3Coder()
    if "<|tool_call>" in template and "<tool_call|>" in template:
        return Gemma4()
    if "<tool_call>" in template:
        return None
    if "<|start_header_id|>ipython<|end_header_id|>" in template:
        return Llama3x(builtins=PYTHON_TAG in template)  # (llama.cpp's allow_python_tag_builtin_tools)
    if "[TOOL_CALLS]" in template:
        return MistralNemo()
    return None
