"""Anthropic's Messages API over ``kvrun serve``'s model (``POST /v1/messages``,
``POST /v1/messages/count_tokens``), as llama-server and Ollama offer it, so clients written for it
(the Anthropic SDKs, coding agents) can use a local model.

Requests are translated into the OpenAI-shaped ones :meth:`Server.start` checks and runs (same
caches, prefix reuse, one generation at a time): ``system`` (text or text blocks), ``messages``
with text, ``tool_use`` and ``tool_result`` blocks, ``max_tokens`` (required, as Anthropic's),
``temperature``, ``top_p``, ``top_k``, ``stop_sequences``, ``tools`` (``input_schema``) and
``tool_choice`` (auto, any, tool, none; ``runtime/tools.py``).  The answer is a message of content
blocks (``text``, ``tool_use``) with ``stop_reason`` end_turn / max_tokens / stop_sequence /
tool_use and ``usage``; ``stream: true`` sends Anthropic's server-sent events (message_start,
content_block_start / _delta / _stop, message_delta, message_stop).  A user's ``image`` blocks
(``{"type": "base64", "media_type": ..., "data": ...}`` sources; a server started with ``--mmproj``) become
OpenAI ``image_url`` parts with a data URL, as llama-server's ``convert_anthropic_to_oai`` makes them, so they
take the OpenAI shape's path (runtime/vision_chat.py); a ``url`` source is refused (no network requests), as
are documents; ``thinking``, ``metadata`` and the ``model`` field are accepted and ignored.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .streamed import Streamed

if TYPE_CHECKING:
    from .server import Run, Server


class Events(Streamed):
    """A streamed answer of Anthropic's named server-sent events: (event type, payload) pairs."""

    named, done = True, False


def handle(server: Server, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any] | None:
    """The answer to a Messages API request, or None for another path."""
    if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
        return None
    from .server import BadRequest

    body = body or {}
    obody = _translate(body, BadRequest, counting=path.endswith("count_tokens"))
    if path.endswith("count_tokens"):
        obody, images = server._images(obody)  # (pictures as markers: their rows counted below)
        if images:
            return 200, {"input_tokens": _count_with_images(server, obody, images, BadRequest)}
        return 200, {"input_tokens": server.count_chat_tokens(obody)}
    return _answer(server, server.start(obody, True), bool(body.get("stream", False)))


def _count_with_images(server: Server, obody: dict[str, Any], images: list[Any], BadRequest: type) -> int:  # noqa: N803
    """The positions a conversation with pictures takes: its text laid out with them (each picture its rows and
    the tokens around them, runtime/vision.py), as a generation would feed it."""
    from ..loaders.errors import KvrunError
    from .tools import check_tools
    from .vision_chat import lay_out

    msgs = server._messages(obody)
    try:
        tools = check_tools(obody["tools"], obody.get("tool_choice")) if obody.get("tools") else None
        text = server.model.chat_text(msgs, tools, server.model.chat_template_kwargs)
        return len(lay_out(server.model.vision, text, images).ids)
    except (ValueError, KvrunError) as e:
        raise BadRequest(str(e)) from None


def _text(content: Any, where: str, BadRequest: type) -> str:  # noqa: N803
    """Text, or a list of text blocks, as one string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    raise BadRequest(f"{where} must be text or a list of text blocks")


def _image_part(block: dict[str, Any], where: str, BadRequest: type) -> dict[str, Any]:  # noqa: N803
    """An image block as the OpenAI ``image_url`` part llama-server makes of it (a data URL of the source's
    media_type, image/jpeg when none is given); the picture itself is decoded with the OpenAI shape's."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url":
        raise BadRequest(f"{where}: image URLs are not fetched (kvrun makes no network requests); send the picture as "
                         '{"type": "base64", "media_type": "image/png", "data": ...}')  # fmt: skip
    if kind != "base64" or not isinstance(source.get("data"), str):
        raise BadRequest(f'{where}: an image\'s source must be {{"type": "base64", "media_type": "image/png", "data": ...}}')
    media_type = source.get("media_type") or "image/jpeg"
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{source['data']}"}}


def _translate(body: dict[str, Any], BadRequest: type, counting: bool = False) -> dict[str, Any]:  # noqa: N803
    """A Messages API body -> the OpenAI-shaped body of Server.start."""
    if not counting and body.get("max_tokens") is None:
        raise BadRequest("max_tokens is required (the most tokens to generate)")
    out: dict[str, Any] = {"max_tokens": body.get("max_tokens")}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("stop_sequences", "stop")):
        if body.get(src) is not None:
            out[dst] = body[src]
    msgs: list[dict[str, Any]] = []
    if body.get("system"):
        msgs.append({"role": "system", "content": _text(body["system"], "system", BadRequest)})
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise BadRequest("messages must be a non-empty list of {'role': 'user' | 'assistant', 'content': ...}")
    for i, m in enumerate(given):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be user or assistant, got {role!r:.20}")
        content = m.get("content")
        if isinstance(content, str):
            msgs.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be text or a list of content blocks")
        text, calls, results = [], [], []
        parts: list[dict[str, Any]] = []  # (text and image_url parts in order: the content when there are images)
        for j, b in enumerate(content):
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                text.append(str(b.get("text", "")))
                parts.append({"type": "text", "text": text[-1]})
            elif kind == "image" and role == "user":
                parts.append(_image_part(b, f"messages[{i}].content[{j}]", BadRequest))
            elif kind == "tool_use" and role == "assistant":
                calls.append({"id": str(b.get("id", "")), "type": "function", "function": {"name": b.get("name"), "arguments": b.get("input") or {}}})
            elif kind == "tool_result" and role == "user":
                results.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")),
                                "content": _text(b.get("content", ""), f"messages[{i}].content[{j}].content", BadRequest)})  # fmt: skip
            elif kind in ("thinking", "redacted_thinking"):
                continue  # (a reasoning block of an earlier turn: not shown to the model again)
            else:
                raise BadRequest(f"messages[{i}].content[{j}]: {kind!r} blocks are not supported (text, tool_use, tool_result, a user's image are)")
        msgs.extend(results)  # (a user turn that answers tool calls: the results first, then any text)
        if len(parts) > len(text):  # images: OpenAI parts, joined as the OpenAI shape's are (runtime/vision_chat.py)
            msgs.append({"role": role, "content": parts})
        elif text or calls:
            msgs.append({"role": role, "content": "".join(text), **({"tool_calls": calls} if calls else {})})
    out["messages"] = msgs
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema") or {"type": "object"}}}
                        if isinstance(t, dict) else t for t in body["tools"]]  # fmt: skip
        choice = body.get("tool_choice") or {"type": "auto"}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise BadRequest('tool_choice must be {"type": "auto" | "any" | "tool" | "none"}')
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


def _stop_reason(run: Run) -> str:
    if run.calls():
        return "tool_use"
    return {"length": "max_tokens", "context full": "max_tokens", "stop string": "stop_sequence"}.get(run.stats.stop_reason, "end_turn")


def _blocks(run: Run, text: str) -> list[dict[str, Any]]:
    """The reply's content blocks: its text, then a tool_use block per call."""
    content = run.message["content"] if run.tools is not None and run.message else text
    out = [{"type": "text", "text": content}] if content or not run.calls() else []
    return out + [{"type": "tool_use", "id": "toolu_" + c["id"].removeprefix("call_"), "name": c["name"], "input": c["arguments"]}
                  for c in run.calls()]  # fmt: skip


def _answer(server: Server, run: Run, stream: bool) -> tuple[int, Any]:
    mid = "msg_" + uuid.uuid4().hex[:24]

    def usage() -> dict[str, int]:
        return {"input_tokens": run.n_prompt, "output_tokens": run.stats.n_gen}

    if not stream:
        text = "".join(run.pieces)
        return 200, {"id": mid, "type": "message", "role": "assistant", "model": server.name, "content": _blocks(run, text),
                     "stop_reason": _stop_reason(run), "stop_sequence": None, "usage": usage()}  # fmt: skip
    first = next(run.pieces, None)  # a bad request (a prompt too long) fails before the 200 goes out

    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            yield "message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": server.name, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": run.prompt_tokens(), "output_tokens": 0}}}  # fmt: skip
            if run.tools is not None:  # parsed whole: its blocks one by one
                text = (first or "") + "".join(run.pieces)
                blocks = _blocks(run, text)
            else:
                yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
                for piece in itertools.chain([first] if first is not None else [], run.pieces):
                    yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
                yield "content_block_stop", {"type": "content_block_stop", "index": 0}
                blocks = []
            for i, b in enumerate(blocks):
                start = dict(b, text="") if b["type"] == "text" else dict(b, input={})
                yield "content_block_start", {"type": "content_block_start", "index": i, "content_block": start}
                delta = ({"type": "text_delta", "text": b["text"]} if b["type"] == "text"
                         else {"type": "input_json_delta", "partial_json": json.dumps(b["input"])})  # fmt: skip
                yield "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
                yield "content_block_stop", {"type": "content_block_stop", "index": i}
            yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": _stop_reason(run), "stop_sequence": None},
                                    "usage": {"output_tokens": run.stats.n_gen}}  # fmt: skip
            yield "message_stop", {"type": "message_stop"}
        finally:
            run.pieces.close()  # a client gone mid-stream: the generation stops, the caches stay consistent

    return 200, Events(events())
