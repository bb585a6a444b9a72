"""OpenAI's Responses API over ``kvrun serve``'s model (``POST /v1/responses``, ``POST /v1/responses/input_tokens``),
as llama-server offers it, so clients written for it (the OpenAI SDKs' ``client.responses``, Codex-style agents)
can use a local model.

A request is translated into the OpenAI chat body :meth:`Server.start` checks and runs (same caches, prefix reuse,
one generation a slot), as llama-server's ``convert_responses_to_chatcmpl`` does: ``instructions`` a system message
first; ``input`` a string (one user message) or a list of items: messages (roles user, system, developer with
``input_text`` / ``input_image`` parts or a string; assistant with ``output_text`` parts), ``function_call`` items
(joined to the assistant turn before them, as its tool calls), ``function_call_output`` items (tool results) and
``reasoning`` items (the assistant turn's reasoning_content).  ``tools`` are function tools in the Responses' flat
shape (``{"type": "function", "name", "description", "parameters"}``), ``tool_choice`` auto / none / required /
``{"type": "function", "name"}``; ``text.format`` json_object or json_schema (``{"type": "json_schema", "name",
"schema"}``, which llama-server leaves to OpenAI's reference) constrains the reply; ``max_output_tokens`` is
max_tokens; ``temperature``, ``top_p`` (and llama-server's own sampling fields) pass through; ``reasoning``
``{"effort": "none"}`` asks a thinking template for no reasoning block (``enable_thinking: false``), other efforts
are accepted and ignored.

The answer is a ``response`` object whose ``output`` holds, in order, a ``reasoning`` item (a thinking model's
thoughts, as ``reasoning_text`` content), a ``message`` with one ``output_text`` part, and a ``function_call`` item
per call, with ``usage`` (input, output, cached tokens).  ``status`` is "completed", or "incomplete" with
``incomplete_details.reason`` "max_output_tokens" when the token limit (or the context) cut the reply, as
OpenAI's (llama-server says completed either way).  ``stream: true`` sends the typed server-sent events
(``event: TYPE`` lines, each payload with its ``sequence_number``): response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta (and
response.reasoning_text.delta, response.function_call_arguments.delta), their .done events, then
response.completed (response.incomplete); no ``[DONE]``.

The server keeps no responses: ``previous_response_id`` is refused in one line (llama-server refuses it too) and
``GET /v1/responses/{id}`` is a 404; a client sends the whole conversation as ``input``.  ``store``, ``metadata``,
``model``, ``user``, ``truncation``, ``include`` are accepted and ignored; hosted tools (web search, file search,
...), ``input_file`` parts and image file ids are refused.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .reasoning import ThinkSplitter
from .reasoning import split as split_reasoning
from .streamed import Streamed
from .tools import openai_calls

if TYPE_CHECKING:
    from .server import Run, Server

PATHS = ("/v1/responses", "/responses")
#: fields passed to the chat as they are (OpenAI's and llama-server's sampling and constraint fields)
PASSED = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty", "repeat_penalty",
          "stop", "parallel_tool_calls", "chat_template_kwargs", "grammar", "json_schema", "id_slot", "ignore_eos")  # fmt: skip


class Events(Streamed):
    """A streamed response: (event type, payload) pairs sent as named server-sent events, no ``[DONE]``."""

    named, done = True, False


def handle(server: Server, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any] | None:
    """The answer to a Responses API request, or None for another path."""
    from .server import BadRequest

    if path in PATHS and method == "POST":
        body = body or {}
        return _answer(server, body, server.start(translate(body, BadRequest), True), bool(body.get("stream", False)))
    if path in tuple(p + "/input_tokens" for p in PATHS) and method == "POST":
        from .anthropic import _count_with_images

        obody, images = server._images(translate(body or {}, BadRequest))  # (pictures as markers: their rows counted)
        n = _count_with_images(server, obody, images, BadRequest) if images else server.count_chat_tokens(obody)
        return 200, {"object": "response.input_tokens", "input_tokens": n}
    if path.startswith(tuple(p + "/" for p in PATHS)):
        raise BadRequest("kvrun serve keeps no responses (it is stateless): there is none to get, cancel or delete", 404)
    return None


# ------------------------------------------------------------------ request -> chat body
def _is_str(item: dict[str, Any], key: str) -> bool:
    return isinstance(item.get(key), str)


def _user_parts(content: list[Any], where: str, BadRequest: type) -> list[dict[str, Any]]:  # noqa: N803
    """A user / system message's Responses parts as OpenAI chat parts (``input_image``: an ``image_url`` part)."""
    out = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "input_text":
            if not _is_str(p, "text"):
                raise BadRequest(f"{where}[{j}]: an input_text part needs its text")
            out.append({"type": "text", "text": p["text"]})
        elif kind == "input_image":
            url = p.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url  # (some clients send {"url": ...})
            if not isinstance(url, str):
                raise BadRequest(f"{where}[{j}]: an input_image part needs image_url (a data URL); file ids are not supported")
            out.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "input_file":
            raise BadRequest(f"{where}[{j}]: input_file parts are not supported")
        else:
            raise BadRequest(f"{where}[{j}]: a part's type must be input_text or input_image, got {kind!r:.30}")
    return out


def _assistant_text(content: Any, where: str, BadRequest: type) -> str:  # noqa: N803
    """An earlier assistant message's text (a string, or ``output_text`` parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be text or a list of output_text parts")
    for j, p in enumerate(content):
        if not isinstance(p, dict) or p.get("type") not in ("output_text", "refusal") or not isinstance(p.get("text", p.get("refusal")), str):
            raise BadRequest(f"{where}[{j}] must be an output_text part with its text")
    return "".join(p.get("text", p.get("refusal", "")) for p in content)


def _reasoning_text(item: dict[str, Any], where: str, BadRequest: type) -> str:  # noqa: N803
    """A reasoning item's text: its ``content`` (reasoning_text parts), else its ``summary`` (a client that keeps
    only the summary, as some do, replays that)."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list) and parts:
            if not all(isinstance(p, dict) and _is_str(p, "text") for p in parts):
                raise BadRequest(f"{where}.{key} must be a list of parts with their text")
            return "".join(p["text"] for p in parts)
    return ""


def _messages(given: Any, BadRequest: type) -> list[dict[str, Any]]:  # noqa: N803
    """``input`` items as OpenAI chat messages: an assistant's message, calls and reasoning one turn, as
    llama-server joins them."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise BadRequest("input must be a string or a non-empty list of items (messages, function_call, function_call_output)")
    msgs: list[dict[str, Any]] = []

    def assistant() -> dict[str, Any]:
        """The assistant turn to add to: the last message if it is one, else a new one."""
        if not msgs or msgs[-1]["role"] != "assistant":
            msgs.append({"role": "assistant", "content": ""})
        return msgs[-1]

    for i, item in enumerate(given):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object (a message, function_call or function_call_output item)")
        kind, role = item.get("type", "message"), item.get("role")
        if kind == "message" and role in ("user", "system", "developer"):
            content = item.get("content")
            if isinstance(content, str):
                msgs.append({"role": role, "content": content})
            elif isinstance(content, list):
                parts = _user_parts(content, f"{where}.content", BadRequest)
                images = any(p["type"] == "image_url" for p in parts)  # (text alone: one string, as the chat path joins it)
                msgs.append({"role": role, "content": parts if images else "".join(p["text"] for p in parts)})
            else:
                raise BadRequest(f"{where}.content must be text or a list of input_text / input_image parts")
        elif kind == "message" and role == "assistant":
            turn = assistant()
            turn["content"] += _assistant_text(item.get("content"), f"{where}.content", BadRequest)
        elif kind == "message":
            raise BadRequest(f"{where}.role must be user, system, developer or assistant, got {role!r:.20}")
        elif kind == "function_call":
            if not (_is_str(item, "name") and _is_str(item, "arguments") and _is_str(item, "call_id")):
                raise BadRequest(f"{where}: a function_call item needs name, arguments (JSON text) and call_id")
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            assistant().setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            out = item.get("output")
            if isinstance(out, list):  # (input_text parts)
                if not all(isinstance(p, dict) and p.get("type") == "input_text" and _is_str(p, "text") for p in out):
                    raise BadRequest(f"{where}.output must be text or a list of input_text parts")
                out = "".join(p["text"] for p in out)
            if not _is_str(item, "call_id") or not isinstance(out, str):
                raise BadRequest(f"{where}: a function_call_output item needs call_id and output (text)")
            msgs.append({"role": "tool", "tool_call_id": item["call_id"], "content": out})
        elif kind == "reasoning":
            text = _reasoning_text(item, where, BadRequest)
            if text:
                assistant()["reasoning_content"] = text
        else:
            raise BadRequest(f"{where}: items of type {kind!r:.30} are not supported (message, function_call, function_call_output, reasoning are)")
    return msgs


def _tools(tools: Any, BadRequest: type) -> list[dict[str, Any]]:  # noqa: N803
    """Responses' flat function tools as OpenAI chat's ``{"type": "function", "function": {...}}``."""
    if not isinstance(tools, list):
        raise BadRequest('tools must be a list of {"type": "function", "name": ..., "parameters": {...}}')
    out = []
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind != "function":
            raise BadRequest(f"tools[{i}]: only function tools are supported, got type {kind!r:.30} (no hosted tools)")
        out.append({"type": "function", "function": {k: v for k, v in t.items() if k in ("name", "description", "parameters")}})
    return out


def _tool_choice(choice: Any, BadRequest: type) -> Any:  # noqa: N803
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and _is_str(choice, "name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest(f'tool_choice must be "auto", "none", "required" or {{"type": "function", "name": ...}}, got {choice!r:.60}')


def _format(text: Any, BadRequest: type) -> dict[str, Any] | None:  # noqa: N803
    """``text.format`` as chat's ``response_format`` (None: plain text)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest('text.format json_schema needs {"type": "json_schema", "name": ..., "schema": {...}}')
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"), "schema": fmt["schema"]}}
    raise BadRequest(f'text.format must be {{"type": "text" | "json_object" | "json_schema", ...}}, got {fmt!r:.60}')


def translate(body: dict[str, Any], BadRequest: type) -> dict[str, Any]:  # noqa: N803
    """A Responses API body -> the OpenAI chat body of Server.start (a bad one: BadRequest, one line)."""
    if "input" not in body:
        raise BadRequest("input is required (a string, or a list of items)")
    if body.get("previous_response_id"):
        raise BadRequest("previous_response_id is not supported: kvrun serve keeps no responses; send the whole conversation as input")
    if body.get("background"):
        raise BadRequest("background responses are not supported (the server keeps no responses)")
    out: dict[str, Any] = {k: body[k] for k in PASSED if body.get(k) is not None}
    msgs = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise BadRequest("instructions must be text")
        msgs.append({"role": "system", "content": body["instructions"]})
    out["messages"] = msgs + _messages(body["input"], BadRequest)
    if (n := body.get("max_output_tokens")) is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BadRequest(f"max_output_tokens must be a positive integer, got {n!r:.40}")
        out["max_tokens"] = n
    if body.get("tools"):
        out["tools"] = _tools(body["tools"], BadRequest)
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"], BadRequest)
    if (rf := _format(body.get("text"), BadRequest)) is not None:
        out["response_format"] = rf
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise BadRequest('reasoning must be an object, e.g. {"effort": "low"}')
    if reasoning and reasoning.get("effort") == "none":  # (a thinking template's switch; others ignore it)
        out["chat_template_kwargs"] = {"enable_thinking": False, **(out.get("chat_template_kwargs") or {})}
    return out


# ------------------------------------------------------------------ the run -> a response
def _short(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _reasoning_item(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": rid, "type": "reasoning", "summary": [], "content": content, "encrypted_content": "", "status": status}


def _message_item(mid: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": mid, "type": "message", "role": "assistant", "status": status, "content": content}


def _call_items(run: Run) -> list[dict[str, Any]]:
    """The reply's calls as function_call items (call_id: the id a function_call_output answers)."""
    return [{"id": "fc_" + c["id"].removeprefix("call_"), "type": "function_call", "status": "completed", "call_id": c["id"],
             "name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in openai_calls(run.calls())]  # fmt: skip


def _parsed(run: Run, text: str) -> tuple[str | None, str]:
    """(the reasoning, None if none; the answer) of a finished reply, as chat's choice splits them."""
    reasoning, content = split_reasoning(run.message["content"] if run.tools is not None and run.message else text)
    if run.tools is not None and reasoning is None and run.message:
        reasoning = run.message.get("thinking")  # (gpt-oss's, kept apart with its calls)
    return reasoning, content


def _answer(server: Server, body: dict[str, Any], run: Run, stream: bool) -> tuple[int, Any]:
    rid, created = _short("resp_"), int(time.time())

    def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        """The response object (the request's settings echoed, as OpenAI's)."""
        done = status != "in_progress"
        cut = done and run.stats.stop_reason in ("length", "context full")
        n_in, n_out = run.n_prompt if done else run.prompt_tokens(), run.stats.n_gen if done else 0
        return {"id": rid, "object": "response", "created_at": created, "completed_at": int(time.time()) if done else None,
                "status": "incomplete" if cut else status, "model": server.name, "output": output,
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "temperature": body.get("temperature"), "top_p": body.get("top_p"), "tools": body.get("tools") or [],
                "tool_choice": body.get("tool_choice", "auto"), "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "text": body.get("text") or {"format": {"type": "text"}}, "reasoning": body.get("reasoning"),
                "previous_response_id": None, "store": False, "metadata": body.get("metadata") or {},
                "usage": {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
                          "input_tokens_details": {"cached_tokens": max(n_in - run.stats.n_prompt, 0) if done else 0},
                          "output_tokens_details": {"reasoning_tokens": 0}} if done else None}  # fmt: skip

    if not stream:
        reasoning, content = _parsed(run, "".join(run.pieces))
        output = [_reasoning_item(_short("rs_"), reasoning)] if reasoning else []
        if content or not run.calls():  # (an empty reply is still a message: its output_text is "")
            output.append(_message_item(_short("msg_"), content))
        return 200, response("completed", output + _call_items(run))
    first = next(run.pieces, None)  # a bad request (a prompt too long) fails before the 200 goes out
    return 200, Events(_events(run, first, response))


def _split(think: ThinkSplitter, pieces: Iterator[str]) -> Iterator[tuple[str, str]]:
    """The (kind, text) parts of a streamed reply: "reasoning" or "content"."""
    for piece in pieces:
        yield from think.push(piece)
    yield from think.flush()


def _events(run: Run, first: str | None, response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The typed events of a streamed response: the text as it comes (a reply parsed for calls: whole at its end)."""
    seq = itertools.count()
    output: list[dict[str, Any]] = []
    open_item: list[Any] = []  # [kind, item id, text so far] of the item being streamed

    def ev(kind: str, **payload: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(seq), **payload}

    def start(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from close()
        iid = _short("rs_" if kind == "reasoning" else "msg_")
        open_item[:] = [kind, iid, ""]
        item = _reasoning_item(iid, "", "in_progress") if kind == "reasoning" else _message_item(iid, None, "in_progress")
        yield ev("response.output_item.added", output_index=len(output), item=item)
        if kind == "message":
            yield ev("response.content_part.added", item_id=iid, output_index=len(output), content_index=0,
                     part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})  # fmt: skip

    def delta(kind: str, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if not open_item or open_item[0] != kind:
            yield from start(kind)
        open_item[2] += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        yield ev(name, item_id=open_item[1], output_index=len(output), content_index=0, delta=text,
                 **({"logprobs": []} if kind == "message" else {}))  # fmt: skip

    def close() -> Iterator[tuple[str, dict[str, Any]]]:
        if not open_item:
            return
        kind, iid, text = open_item
        where = {"item_id": iid, "output_index": len(output), "content_index": 0}
        if kind == "message":
            item = _message_item(iid, text)
            yield ev("response.output_text.done", **where, text=text, logprobs=[])
            yield ev("response.content_part.done", **where, part=item["content"][0])
        else:
            item = _reasoning_item(iid, text)
            yield ev("response.reasoning_text.done", **where, text=text)
        yield ev("response.output_item.done", output_index=len(output), item=item)
        output.append(item)
        open_item.clear()

    try:
        yield ev("response.created", response=response("in_progress", []))
        yield ev("response.in_progress", response=response("in_progress", []))
        pieces = itertools.chain([first] if first is not None else [], run.pieces)
        if run.tools is not None:  # the reply is parsed whole: its reasoning, text and calls at its end
            reasoning, content = _parsed(run, "".join(pieces))
            if reasoning:
                yield from delta("reasoning", reasoning)
            if content or not run.calls():
                yield from delta("message", content) if content else start("message")
        else:  # a thinking model's thoughts as reasoning_text deltas, the rest as output_text ones
            think, held = ThinkSplitter(), ""  # held: spaces before anything else, kept until it is known whether
            for kind, text in _split(think, pieces):  # a reasoning item comes first (the message then starts with them)
                if kind == "content" and not open_item and not output and not (held + text).strip():
                    held += text
                    continue
                if kind == "content":
                    text, held = held + text, ""
                yield from delta("message" if kind == "content" else "reasoning", text)
            if held or (not output and (not open_item or open_item[0] != "message")):
                yield from delta("message", held) if held else start("message")  # (an empty reply is still a message)
        yield from close()
        for item in _call_items(run):
            where = {"item_id": item["id"], "output_index": len(output)}
            yield ev("response.output_item.added", output_index=len(output), item=dict(item, arguments="", status="in_progress"))
            yield ev("response.function_call_arguments.delta", **where, delta=item["arguments"])
            yield ev("response.function_call_arguments.done", **where, arguments=item["arguments"])
            yield ev("response.output_item.done", output_index=len(output), item=item)
            output.append(item)
        final = response("completed", output)
        yield ev("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
    finally:
        run.pieces.close()  # a client gone mid-stream: the generation stops, the caches stay consistent
