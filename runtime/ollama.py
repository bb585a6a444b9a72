"""Ollama's API over ``kvrun serve``'s model, so apps written for Ollama (chat front-ends, editors,
desktop tools) can use kvrun as they are: ``POST /api/chat``, ``POST /api/generate``, ``POST
/api/embed`` (and the legacy ``/api/embeddings``), ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``,
``GET /api/version``.

Requests are translated into the OpenAI-shaped ones :meth:`Server.start` checks and runs (same
caches, same prefix reuse, one generation at a time), answers into Ollama's shapes: streamed
(Ollama's default) as newline-delimited JSON objects, the last with ``done: true``, the reason and
the timings in nanoseconds (``prompt_eval_count``, ``eval_count``, ``*_duration``).

Options (``options: {...}``): ``num_predict``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``seed``, ``stop``, ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``; others
(``num_ctx``, ``num_gpu``, ...) are fixed when the server starts and ignored here, as the
``model`` field is (the server holds one).  ``think: false`` asks the chat template for replies
without a reasoning block (Qwen3's ``enable_thinking``); ``format: "json"`` constrains the reply to
one JSON object, ``format: {schema}`` to the JSON a schema allows (``grammar.py``).
``/api/generate`` wraps the prompt (and ``system``) in the chat template unless ``raw`` is true, as Ollama does.
"""

from __future__ import annotations

import datetime
import itertools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .reasoning import ThinkSplitter
from .reasoning import split as split_reasoning
from .streamed import Streamed
from .tools import ollama_calls

if TYPE_CHECKING:
    from .server import Run, Server

OPTIONS = {  # Ollama option -> OpenAI field of Server.start
    "num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
    "seed": "seed", "stop": "stop", "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}  # fmt: skip


class NDJSON(Streamed):
    """A streamed answer of newline-delimited JSON objects (Ollama's), not server-sent events."""

    ndjson, done = True, False


def handle(server: Server, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any] | None:
    """The answer to an ``/api/...`` request, or None for a path that is not Ollama's."""
    from .server import BadRequest

    body = body or {}
    if method == "GET" and path == "/api/version":
        from .. import __version__

        return 200, {"version": __version__}
    if method == "GET" and path in ("/api/tags", "/api/ps"):
        return 200, {"models": [_model_entry(server)]}
    if method == "POST" and path == "/api/show":
        return 200, _show(server)
    if method == "POST" and path in ("/api/embed", "/api/embeddings"):  # the newer, and the legacy one-prompt form
        t0 = datetime.datetime.now()
        legacy = path == "/api/embeddings"
        vecs, n_tokens = server.embed(body.get("prompt") if legacy else body.get("input"))
        if legacy:
            return 200, {"embedding": vecs[0].tolist()}
        return 200, {"model": server.name, "embeddings": vecs.tolist(), "prompt_eval_count": n_tokens, "load_duration": 0,
                     "total_duration": int((datetime.datetime.now() - t0).total_seconds() * 1e9)}  # fmt: skip
    if method == "POST" and path in ("/api/chat", "/api/generate"):
        chat = path == "/api/chat"
        if not chat and not body.get("prompt"):  # Ollama's "load the model" request
            return 200, {"model": server.name, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        obody, as_chat = _translate(body, chat, BadRequest)
        return _answer(server, server.start(obody, as_chat), chat, stream=body.get("stream", True) is not False)
    return None


def _translate(body: dict[str, Any], chat: bool, BadRequest: type) -> tuple[dict[str, Any], bool]:  # noqa: N803
    """An Ollama body -> (the OpenAI-shaped body, whether it runs as a chat)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("options must be an object, e.g. {\"temperature\": 0.7, \"num_predict\": 128}")
    out: dict[str, Any] = {OPTIONS[k]: v for k, v in opts.items() if k in OPTIONS and v is not None}
    mt = out.get("max_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int)):
        raise BadRequest(f"options.num_predict must be an integer, got {mt!r:.40}")
    if mt is not None and mt < 0:  # Ollama's -1 (and -2): until the text ends or the context fills
        out.pop("max_tokens")
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):  # structured outputs: a JSON schema
        out["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt}}
    elif fmt not in (None, ""):
        raise BadRequest(f"format must be \"json\" or a JSON schema (an object), got {fmt!r:.40}")
    if body.get("tools"):
        out["tools"] = body["tools"]
    if body.get("think") is False:
        out["chat_template_kwargs"] = {"enable_thinking": False}
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages must be a non-empty list of {'role': ..., 'content': ...}")
        keep = ("role", "content", "images", "thinking", "tool_calls", "tool_name", "name")  # (tool calls and results: runtime/tools.py;
        # images, base64: before the text, with a server started with --mmproj, runtime/vision_chat.py)
        out["messages"] = [{k: m[k] for k in keep if k in m} if isinstance(m, dict) else m for m in msgs]
        return out, True
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if body.get("raw"):
        if body.get("images"):
            raise BadRequest("a raw prompt takes no images: leave raw out, and the images go before the prompt in the chat template")
        out["prompt"] = prompt
        return out, False
    system = body.get("system")
    images = {"images": body["images"]} if body.get("images") else {}  # (as a chat message's: before the prompt)
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt, **images}]
    return out, True


def _answer(server: Server, run: Run, chat: bool, stream: bool) -> tuple[int, Any]:
    from .server import _finish_reason

    t0 = datetime.datetime.now()
    key = "message" if chat else "response"

    def part(text: str) -> dict[str, Any]:
        return {"role": "assistant", "content": text} if chat else text

    def last(text: str) -> dict[str, Any]:
        st = run.stats
        ns = lambda s: int(s * 1e9)  # noqa: E731
        return {
            "model": server.name, "created_at": _now(), key: part(text), "done": True, "done_reason": _finish_reason(st),
            "total_duration": ns((datetime.datetime.now() - t0).total_seconds()), "load_duration": 0,
            "prompt_eval_count": run.n_prompt, "prompt_eval_duration": ns(st.t_prompt),
            "eval_count": st.n_gen, "eval_duration": ns(st.t_gen),
        }  # fmt: skip

    def parsed(text: str) -> dict[str, Any]:
        """A whole chat reply as Ollama's message: a thinking model's thoughts as ``thinking``, its calls."""
        thinking, content = split_reasoning(run.message["content"] if run.tools is not None else text)
        thinking = run.message.get("thinking") if thinking is None and run.tools is not None else thinking  # (gpt-oss's)
        msg = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking is not None else {})}
        return {**msg, "tool_calls": ollama_calls(run.calls())} if run.calls() else msg

    if not stream:
        text = "".join(run.pieces)
        return 200, {**last(text), "message": parsed(text)} if chat else last(text)
    first = next(run.pieces, None)  # a bad request (a prompt too long) fails before the 200 goes out

    def lines() -> Iterator[dict[str, Any]]:
        try:
            if run.tools is not None:  # parsed whole, then sent as one message
                for _ in run.pieces:
                    pass
                yield {"model": server.name, "created_at": _now(), "message": parsed(""), "done": False}
            elif chat:  # a thinking model's thoughts as message.thinking, the rest as content
                think = ThinkSplitter()
                for piece in itertools.chain([first] if first is not None else [], run.pieces):
                    for kind, text in think.push(piece):
                        yield {"model": server.name, "created_at": _now(), "message": _delta(kind, text), "done": False}
                for kind, text in think.flush():
                    yield {"model": server.name, "created_at": _now(), "message": _delta(kind, text), "done": False}
            else:
                if first is not None:
                    yield {"model": server.name, "created_at": _now(), key: part(first), "done": False}
                for piece in run.pieces:
                    yield {"model": server.name, "created_at": _now(), key: part(piece), "done": False}
            yield last("")
        finally:
            run.pieces.close()  # a client gone mid-stream: the generation stops, the caches stay consistent

    return 200, NDJSON(lines())


def _delta(kind: str, text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text} if kind == "content" else {"role": "assistant", "content": "", "thinking": text}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _details(server: Server) -> dict[str, Any]:
    from ..loaders.quants import QUANT_TYPES

    cfg = server.model.config
    g = server.model.engine.gguf
    n_params = sum(t.n_elements for t in g.tensors.values())
    counts: dict[int, int] = {}
    for t in g.tensors.values():
        if len(t.shape) > 1:
            counts[t.qtype] = counts.get(t.qtype, 0) + t.n_elements
    q = max(counts, key=counts.get) if counts else None
    return {
        "format": "gguf", "family": cfg.arch, "families": [cfg.arch],
        "parameter_size": f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M",
        "quantization_level": QUANT_TYPES[q].name if q in QUANT_TYPES else "unknown",
    }  # fmt: skip


def _model_entry(server: Server) -> dict[str, Any]:
    path = server.model.engine.path
    st = os.stat(path)
    return {
        "name": server.name, "model": server.name, "size": st.st_size, "digest": f"{st.st_size:x}{int(st.st_mtime):x}",
        "modified_at": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
        "details": _details(server),
    }  # fmt: skip


def _show(server: Server) -> dict[str, Any]:
    cfg = server.model.config
    return {
        "modelfile": "", "parameters": "", "template": server.model.chat_template(), "details": _details(server),
        "model_info": {"general.architecture": cfg.arch, f"{cfg.arch}.context_length": cfg.n_ctx_train,
                       f"{cfg.arch}.embedding_length": cfg.n_embd, f"{cfg.arch}.block_count": cfg.n_layer},
        "capabilities": ["completion", *(["vision"] if server.model.vision is not None else [])],
    }  # fmt: skip
