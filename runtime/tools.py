"""Tool calls (function calling): OpenAI's and Ollama's ``tools``, the model's reply parsed into
``tool_calls``.

How a model is asked depends on its chat template, as llama.cpp's ``common/chat`` decides:

* :class:`Hermes`: a template that knows ``<tool_call>`` (Qwen 2.5 / 3, SmolLM3, Hermes, ...) gets
  the tools as its ``tools`` variable and the conversation's calls and results as they are; the
  model writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, which are
  parsed out of its reply.  ``tool_choice: "required"`` (or a named function) constrains the reply
  to such blocks with a grammar; ``auto`` leaves the model free until it writes ``<tool_call>``,
  and holds it to the blocks from there (llama.cpp's lazy grammar).
* :class:`Generic`: any other template (SmolLM2, Gemma, ...).  A system message lists the tools and
  the reply is constrained to one JSON object, ``{"tool_calls": [{"name": ..., "arguments":
  {...}}]}`` or ``{"response": "..."}`` (``runtime/grammar.py``): every reply parses, whatever the
  model.  Earlier calls are written back the same way, results as user turns
  ``{"tool_response": {...}}`` (templates such as Gemma's know no ``tool`` role).
* :class:`Harmony`: gpt-oss's template (OpenAI's *harmony* messages) renders the tools itself (a
  developer message, ``namespace functions {...}``); the model calls one by addressing a message to
  it, ``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}`` (or ``to=`` in
  the role: ``<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>``), after
  which ``<|call|>`` ends the reply: one call a reply.  :func:`harmony_reply` reads a reply's
  messages: ``analysis`` the thinking, ``final`` (and a ``commentary`` preamble) the answer, those to
  ``functions.NAME`` the calls.  ``auto`` holds the reply to a call from ``to=functions.`` on
  (llama.cpp's lazy grammar), ``required`` from the first byte (an analysis and a preamble first
  allowed).

Messages here are normalised (:func:`check_messages`): an assistant turn may carry ``tool_calls``
(``[{"id", "name", "arguments": dict}]``) and its ``thinking`` (Ollama's; llama-server's
``reasoning_content``), a ``tool`` turn gives one result (``content``, and the ``name`` or
``tool_call_id`` of its call).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .jsonschema import SchemaError, schema_to_gbnf
from .reasoning import CHANNEL, MESSAGE, harmony_messages

ANY_OBJECT = {"type": "object"}
CHOICES = ("auto", "none", "required")


@dataclass
class Tools:
    """The tools of a request: ``functions`` [{"name", "description", "parameters"}], and the choice:
    ``mode`` auto / none / required, ``forced`` the one function a named choice asks for."""

    functions: list[dict[str, Any]]
    mode: str = "auto"
    forced: str | None = None
    parallel: bool = True  # several calls in one reply (OpenAI's parallel_tool_calls)

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.mode != "none"

    def offered(self) -> list[dict[str, Any]]:
        """The functions the model may call."""
        return [f for f in self.functions if self.forced is None or f["name"] == self.forced]


def check_tools(tools: Any, tool_choice: Any = None, parallel: Any = True) -> Tools:
    """OpenAI's (and Ollama's) ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked; ValueError in one line."""
    if not isinstance(tools, list):
        raise ValueError('tools must be a list of {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    funcs = []
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(f, dict) or t.get("type", "function") != "function":
            raise ValueError(f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}')
        name = f.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ValueError(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -, got {name!r:.40}")
        params = f.get("parameters", ANY_OBJECT)
        if not isinstance(params, dict):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
        funcs.append({"name": name, "description": str(f.get("description") or ""), "parameters": params})
    if len({f["name"] for f in funcs}) != len(funcs):
        raise ValueError("tools: two functions have the same name")
    if not isinstance(parallel, bool):
        raise ValueError(f"parallel_tool_calls must be true or false, got {parallel!r:.40}")
    out = Tools(funcs, parallel=parallel)
    if tool_choice is None or tool_choice in CHOICES:
        out.mode = tool_choice or "auto"
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        out.mode, out.forced = "required", tool_choice["function"].get("name")
        if out.forced not in {f["name"] for f in funcs}:
            raise ValueError(f"tool_choice names {out.forced!r}, which is not in tools")
    else:
        raise ValueError(f'tool_choice must be "auto", "none", "required" or {{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r:.60}')
    if out.mode == "required" and not funcs:
        raise ValueError('tool_choice "required" needs tools')
    return out


def check_messages(msgs: Any) -> list[dict[str, Any]]:
    """OpenAI / Ollama messages, normalised: text parts joined, "developer" as "system", tool calls'
    arguments as dicts.  ValueError (one line) for a malformed one; the last must be a user's or a tool's."""
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"messages[{i}]: role {role!r} is not supported; use system, user, assistant or tool")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise ValueError(f"messages[{i}]: only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        calls = m.get("tool_calls") if role == "assistant" else None
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = [_call_of(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls)]
        thinking = (m.get("thinking") or m.get("reasoning_content")) if role == "assistant" else None
        if isinstance(thinking, str) and thinking:  # (gpt-oss's template shows it again before a call)
            msg["thinking"] = thinking
        if role == "tool":
            name = m.get("name") or m.get("tool_name")
            msg["name"] = name if isinstance(name, str) else _name_of_call(out, m.get("tool_call_id"))
            if m.get("tool_call_id") is not None:
                msg["tool_call_id"] = str(m["tool_call_id"])
        out.append(msg)
    if out[-1]["role"] not in ("user", "tool"):
        raise ValueError("messages must end with the user's message or a tool result (the one to reply to)")
    return out


def _call_of(c: Any, where: str) -> dict[str, Any]:
    """A call as OpenAI (arguments: JSON text) or Ollama (arguments: an object) writes it."""
    f = c.get("function") if isinstance(c, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ValueError(f'{where} must be {{"function": {{"name": ..., "arguments": ...}}}}')
    args = f.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"{where}.function.arguments is not JSON") from None
    if not isinstance(args, dict):
        raise ValueError(f"{where}.function.arguments must be an object")
    return {"id": str(c.get("id") or _new_id()), "name": f["name"], "arguments": args}


def _name_of_call(msgs: list[dict[str, Any]], call_id: Any) -> str | None:
    for m in reversed(msgs):
        for c in m.get("tool_calls", ()):
            if c["id"] == call_id:
                return c["name"]
    return None


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _calls_schema(funcs: list[dict[str, Any]]) -> dict[str, Any]:
    """The schema of one call to one of ``funcs``; a function whose parameters the converter cannot
    take gets any object as its arguments (the client checks them anyway)."""
    alts = []
    for f in funcs:
        params = f["parameters"]
        try:
            schema_to_gbnf(params)
        except SchemaError:
            params = ANY_OBJECT
        alts.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": params}, "required": ["name", "arguments"]})
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _parsed_call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"id": _new_id(), "name": obj["name"], "arguments": args} if isinstance(args, dict) else None


class Hermes:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the template renders the rest."""

    name = "hermes"
    BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out = []
        for m in msgs:
            m = dict(m)
            if "tool_calls" in m:
                m["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                                   for c in m["tool_calls"]]  # fmt: skip
            out.append(m)
        extra = {"tools": [{"type": "function", "function": f} for f in tools.offered()]} if tools and tools.active else {}
        return out, extra

    #: auto: the reply is free until it writes this, then held to the call blocks (llama.cpp's lazy grammar)
    TRIGGER = "<tool_call>"

    def grammar(self, tools: Tools) -> str:
        blocks = "" if not tools.parallel else "+"
        return f'root ::= ("<tool_call>\\n" call "\\n</tool_call>" "\\n"?){blocks}\n' + schema_to_gbnf(_calls_schema(tools.offered()), start="call")

    def trigger(self, tools: Tools) -> str | None:
        """required: the grammar from the first byte; auto: from :data:`TRIGGER` on, the text before free."""
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        calls, keep, at = [], [], 0
        for m in self.BLOCK.finditer(text):
            try:
                call = _parsed_call(json.loads(m.group(1)))
            except json.JSONDecodeError:
                call = None
            if call is not None:
                calls.append(call)
                keep.append(text[at : m.start()])
                at = m.end()
        keep.append(text[at:])
        return "".join(keep).strip() if calls else text, calls


class Generic:
    """Any template: the tools in a system message, the reply one JSON object (grammar-constrained)."""

    name = "generic"

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in msgs:
            if "tool_calls" in m:
                calls = [{"name": c["name"], "arguments": c["arguments"]} for c in m["tool_calls"]]
                m = {"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)}
            elif m["role"] == "tool":
                m = {"role": "user", "content": json.dumps({"tool_response": {"name": m.get("name"), "content": m["content"]}}, ensure_ascii=False)}
            elif m["role"] == "assistant" and tools is not None and tools.active:
                m = {"role": "assistant", "content": json.dumps({"response": m["content"]}, ensure_ascii=False)}
            else:
                m = {"role": m["role"], "content": m["content"]}
            if out and out[-1]["role"] == m["role"] and m["role"] != "system":  # (templates that want turns to alternate)
                out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n\n" + m["content"]}
            else:
                out.append(m)
        if tools is not None and tools.active:
            note = self._instructions(tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
            else:
                out.insert(0, {"role": "system", "content": note})
        return out, {}

    @staticmethod
    def _instructions(tools: Tools) -> str:
        listed = json.dumps(tools.offered(), ensure_ascii=False)
        call = 'To call tools, reply with a JSON object {"tool_calls": [{"name": <a tool name>, "arguments": <its arguments>}]}.'
        if tools.mode == "required":
            return f"You can call these tools:\n{listed}\n\n{call} Reply with tool calls only."
        return f'You can call these tools:\n{listed}\n\n{call} Otherwise reply with {{"response": <your answer>}}.'

    def grammar(self, tools: Tools) -> str:
        many = {"minItems": 1} if tools.parallel else {"minItems": 1, "maxItems": 1}
        calls = {"type": "object", "properties": {"tool_calls": {"type": "array", "items": _calls_schema(tools.offered()), **many}},
                 "required": ["tool_calls"]}  # fmt: skip
        answer = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
        return schema_to_gbnf(calls if tools.mode == "required" else {"anyOf": [calls, answer]})

    def trigger(self, tools: Tools) -> str | None:
        return None  # (the whole reply is the JSON object)

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return text, []  # (cut by max_tokens: the text as it is)
        if isinstance(obj, dict) and isinstance(obj.get("tool_calls"), list):
            calls = [c for c in map(_parsed_call, obj["tool_calls"]) if c is not None]
            if calls:
                return "", calls
        if isinstance(obj, dict) and isinstance(obj.get("response"), str):
            return obj["response"], []
        return text, []


#: a GBNF text's rule names (outside its literals, character classes and repetition bounds)
_GBNF_NAME = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|::=|([A-Za-z0-9-]+)')


def harmony_reply(text: str) -> tuple[str | None, str, list[dict[str, Any]]]:
    """(the thinking, None if none; the answer; the calls) of a gpt-oss reply, as llama.cpp reads it:
    ``analysis`` messages are the thinking, ``final`` and ``commentary`` ones the answer, a message to
    ``functions.NAME`` a call (its arguments the JSON object it holds; a call cut short is left out)."""
    thoughts, said, calls = [], [], []
    for channel, recipient, body in harmony_messages(text):
        if recipient is not None and recipient.startswith("functions."):
            try:
                args = json.JSONDecoder().raw_decode(body.strip())[0] if body.strip() else {}
            except json.JSONDecodeError:
                continue
            if (call := _parsed_call({"name": recipient[len("functions.") :], "arguments": args})) is not None:
                calls.append(call)
        elif channel == "analysis":
            thoughts.append(body)
        else:
            said.append(body)
    return "".join(thoughts) or None, "".join(said), calls


def _prefixed(gbnf: str, prefix: str) -> str:
    """A GBNF text's rules renamed ``prefix + name``, to sit beside others' in one grammar."""
    return _GBNF_NAME.sub(lambda m: prefix + m.group(1) if m.group(1) else m.group(0), gbnf)


class Harmony:
    """gpt-oss: its template renders the tools and the calls, the model addresses a message to
    ``functions.NAME`` (:func:`harmony_reply`)."""

    name = "harmony"
    #: auto: the reply is free until it addresses a function (the `` to=`` of either header order)
    TRIGGER = " to=functions."

    def template_messages(self, msgs: list[dict[str, Any]], tools: Tools | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Calls as OpenAI's; the template renders one call a message and names a result after the call
        before it, so a turn of several calls becomes one a call, each followed by its results."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(msgs):
            m, i = msgs[i], i + 1
            if "tool_calls" not in m:
                out.append(m)
                continue
            results = []
            while i < len(msgs) and msgs[i]["role"] == "tool":
                results.append(msgs[i])
                i += 1
            calls = m["tool_calls"]
            owner = [_result_owner(r, calls, k) for k, r in enumerate(results)]
            for j, c in enumerate(calls):
                turn = {"role": "assistant", "content": "", "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}]}  # fmt: skip
                if j == 0 and m.get("thinking"):  # (the template takes one of content and thinking before a call)
                    turn["thinking"] = m["thinking"]
                elif j == 0:
                    turn["content"] = m["content"]
                out.append(turn)
                out += [r for r, o in zip(results, owner) if o == j]
        extra = {"tools": [{"type": "function", "function": f} for f in tools.offered()]} if tools and tools.active else {}
        return out, extra

    def grammar(self, tools: Tools) -> str:
        """A call: `` to=functions.NAME``, its header's rest, ``<|message|>`` and the arguments its schema
        allows; ``required``: from the first byte, after an analysis and a preamble message if any."""
        fns, rules = [], []
        for i, f in enumerate(tools.offered()):
            try:
                args = schema_to_gbnf(f["parameters"])
            except SchemaError:
                args = schema_to_gbnf(ANY_OBJECT)
            fns.append(f'{json.dumps(f["name"])} ("<|channel|>" channel)? constrain? "<|message|>" fn{i}-root')
            rules.append(_prefixed(args, f"fn{i}-"))
        if tools.mode == "required":
            head = ('root ::= (note "<|start|>assistant"){0,2} ("<|channel|>" channel)? " to=functions." fn\n'
                    'note ::= "<|channel|>" ("analysis" | "commentary") "<|message|>" ([^<] | "<"+ [^|<])* "<|end|>"\n')  # fmt: skip
        else:
            head = 'root ::= " to=functions." fn\n'
        return (head + "fn ::= " + " | ".join(fns) + "\n" + 'channel ::= "commentary" | "analysis"\n'
                + 'constrain ::= " " "<|constrain|>"? "json" | "<|constrain|>json"\n' + "".join(rules))  # fmt: skip

    def trigger(self, tools: Tools) -> str | None:
        return None if tools.mode == "required" else self.TRIGGER

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        _, content, calls = harmony_reply(text)
        return content, calls


def _result_owner(r: dict[str, Any], calls: list[dict[str, Any]], k: int) -> int:
    """Which of ``calls`` the ``k``-th result answers: its call's id's, else the one in its place (results
    come in the calls' order) unless that one has another name, else the first of its name."""
    for j, c in enumerate(calls):
        if c["id"] == r.get("tool_call_id"):
            return j
    if k < len(calls) and r.get("name") in (None, calls[k]["name"]):
        return k
    return next((j for j, c in enumerate(calls) if c["name"] == r.get("name")), min(k, len(calls) - 1))


def tool_format(template: str) -> Hermes | Generic | Harmony:
    """How a model with this chat template is asked for tool calls."""
    if CHANNEL in template and MESSAGE in template:
        return Harmony()
    from .toolformats import native_format  # (DeepSeek, Command R7B, GLM-4.5, Qwen3-Coder, Gemma 4, Llama 3.x, Mistral; it builds on this module)

    if (native := native_format(template)) is not None:
        return native
    return Hermes() if "<tool_call>" in template else Generic()


def openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as OpenAI's message.tool_calls: arguments as JSON text."""
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]  # fmt: skip


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as Ollama's message.tool_calls: arguments as an object."""
    return [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
