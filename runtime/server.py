"""An OpenAI-compatible HTTP server over one loaded model, as llama.cpp's ``llama-server``.

Endpoints (JSON in and out; ``"stream": true`` answers as server-sent events,
one ``data: {chunk}`` per text piece, then ``data: [DONE]``):

* ``POST /v1/chat/completions``: ``messages`` -> the assistant's reply
* ``POST /v1/completions``: ``prompt`` (text, or a list of token ids) -> its continuation
* ``POST /v1/embeddings``: ``input`` (texts or token ids) -> mean-pooled, L2-normalised embeddings
* ``POST /v1/rerank`` (``/rerank``, ``/v1/reranking``): a reranker's ``query`` and ``documents`` ->
  ``results`` by relevance score (``rerank.py``)
* ``GET /v1/models``, ``GET /health``
* Ollama's ``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``
  (``ollama.py``), so apps written for Ollama work as they are
* Anthropic's ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (``anthropic.py``)
* OpenAI's Responses API, ``POST /v1/responses`` and ``/v1/responses/input_tokens`` (``responses.py``)
* images, with ``--mmproj`` (Gemma 3's projector): chat messages' ``image_url`` parts as data URLs, Ollama's
  ``images`` (base64); no URL is fetched (``vision_chat.py``)
* llama-server's own ``POST /completion``, ``/infill``, ``/tokenize``, ``/detokenize``, ``/apply-template`` and
  ``GET /props`` (``llamaserver.py``), for editors and front-ends written for llama.cpp's server

Sampling fields: ``max_tokens`` (or ``max_completion_tokens``; absent: until the
text ends or the context fills), ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``seed``, ``presence_penalty``, ``frequency_penalty``, ``repeat_penalty``,
``stop``.  Constraints: ``response_format`` ``{"type": "json_object"}`` (one JSON object) or
``{"type": "json_schema", "json_schema": {"schema": {...}}}`` (structured outputs), and llama.cpp
server's ``grammar`` (GBNF) and ``json_schema``.  Other OpenAI fields (``model``, ``user``, ...) are accepted and
ignored.  ``n`` (up to 16) choices are generated
in slots of their own, up to ``--parallel`` at once, a stated ``seed`` moved on by the choice's index.  ``tools`` / ``tool_choice`` / ``parallel_tool_calls``:
the reply's calls come back as ``tool_calls`` (``tools.py``).

Up to ``--parallel`` requests (default 1) are generated at once, each in a
slot of its own (``slots.py``), their tokens fed through the model together
(``batcher.py``); the others wait for a slot.  Each slot keeps its KV cache
between requests and a request reuses the longest prefix its prompt shares with
what its slot holds, so a client that resends a growing conversation prefills
only its new turn (llama-server's prompt cache).  ``GET /slots`` lists them.
Only the Python standard library is used.
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from . import anthropic, llamaserver, ollama, rerank, responses
from .api import Model, Session, _request
from .engine import GenStats, stream_text
from .reasoning import ThinkSplitter
from .reasoning import split as split_reasoning
from .slots import Slots
from .tools import Tools, check_messages, check_tools, openai_calls
from . import vision_chat
from .vision_chat import take_images

MAX_BODY = 16 << 20  # bytes of a request body
MAX_CHOICES = 16  # a request's n: choices generated (each in a slot, up to --parallel at once)
REPLY_RESERVE = 256  # context tokens a chat request without max_tokens keeps free for its reply before dropping old turns
SAMPLING = {  # OpenAI field -> kvrun sampling keyword
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "repeat_penalty": "repeat_penalty",
}  # fmt: skip


@dataclass
class Run:
    """A generation a request asked for (:meth:`Server.start`): its text pieces (a generator, started by
    the first ``next``), the stats they fill, the prompt's token count (known once it is running)."""

    req: Any  # GenRequest
    stats: GenStats = field(default_factory=GenStats)
    pieces: Iterator[str] = field(default_factory=lambda: iter(()))
    n_prompt: int = 0
    live: Session | None = None  # a chat's session: its stats are live, ``stats`` gets them at the end
    tools: Tools | None = None  # the request's tools: the reply is parsed for calls
    message: dict[str, Any] | None = None  # a chat's reply as the session keeps it (tool calls parsed), once done

    def calls(self) -> list[dict[str, Any]]:
        """The tool calls of the finished reply."""
        return (self.message or {}).get("tool_calls", []) if self.tools is not None else []

    def live_stats(self) -> GenStats:
        return self.live.last_stats if self.live is not None else self.stats

    def prompt_tokens(self) -> int:
        """The prompt's tokens, known once the generation started (a chat's as its session rendered it)."""
        return self.live.n_prompt_tokens if self.live is not None and not self.n_prompt else self.n_prompt


class Text(str):
    """A plain-text answer (``GET /metrics``' Prometheus exposition), not JSON."""


@dataclass
class Metrics:
    """What the server generated since it started, for ``GET /metrics`` (llama-server's names, ``kvrun:`` for ``llamacpp:``)."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    tokens_predicted: int = 0
    predicted_seconds: float = 0.0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, st: GenStats) -> None:
        with self.lock:
            self.prompt_tokens += st.n_prompt
            self.prompt_seconds += st.t_prompt
            self.tokens_predicted += st.n_gen
            self.predicted_seconds += st.t_gen
            self.requests += 1

    def exposition(self, slots: Slots, batcher: Any) -> str:
        """The Prometheus text format: counters, then gauges of now."""
        with self.lock:
            c = (("prompt_tokens_total", "counter", "prompt tokens evaluated (a slot's cached prefix not counted)", self.prompt_tokens),
                 ("prompt_seconds_total", "counter", "seconds spent evaluating prompts", self.prompt_seconds),
                 ("tokens_predicted_total", "counter", "tokens generated", self.tokens_predicted),
                 ("tokens_predicted_seconds_total", "counter", "seconds spent generating", self.predicted_seconds),
                 ("requests_total", "counter", "generation requests finished", self.requests))  # fmt: skip
        idle, busy = slots.counts()
        n_fwd = batcher.n_forwards
        c += (("n_decode_total", "counter", "forward passes run (a batch of several requests' tokens is one)", n_fwd),
              ("n_tokens_per_decode", "gauge", "tokens a forward pass fed on average (batching: more than one)", batcher.n_rows / n_fwd if n_fwd else 0.0),
              ("prompt_tokens_copied_total", "counter", "prompt tokens copied from another slot's cache (a shared system prompt)", slots.n_shared),
              ("requests_processing", "gauge", "requests holding a slot", busy),
              ("requests_deferred", "gauge", "requests waiting for a slot", slots.waiting))  # fmt: skip
        return "".join(f"# HELP kvrun:{name} {help}\n# TYPE kvrun:{name} {kind}\nkvrun:{name} {value}\n" for name, kind, help, value in c)


class BadRequest(Exception):
    """A request the client can fix: answered with ``status`` and the message (one line)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _finish_reason(stats: GenStats) -> str:
    """OpenAI's finish_reason: "length" when max_tokens or the context ended the text."""
    return "length" if stats.stop_reason in ("length", "context full") else "stop"


class Server:
    """The model, its slots and the batcher they feed; :meth:`handle` answers one request."""

    def __init__(self, model: Model, name: str, parallel: int = 1, slot_save_path: str | None = None) -> None:
        self.model = model
        self.name = name
        #: where POST /slots/ID?action=save|restore write and read slots' files (None: those actions are off)
        self.slot_save_path = slot_save_path
        self.metrics = Metrics()
        eng = model.engine
        self.slots: Slots | None = None
        if not eng.model.encoder:  # (an embedding model keeps no KV cache: it writes no text)
            if parallel > 1 and eng.draft is not None:
                raise KvrunError("a draft model serves one request at a time: use --parallel 1 with --draft")
            try:
                self.slots = Slots(model, parallel)
            except ValueError as e:
                raise KvrunError(str(e)) from None

    # ------------------------------------------------------------ requests
    def _request(self, body: dict[str, Any]) -> Any:
        """The GenRequest of an OpenAI body (a bad value: BadRequest)."""
        if body.get("functions"):  # (the legacy form: silently ignored, the model would just not call them)
            raise BadRequest("functions is OpenAI's old form: send tools instead")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        max_tokens = -1 if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise BadRequest(f"max_tokens must be an integer, got {max_tokens!r:.40}")
        sampling = {k: body[f] for f, k in SAMPLING.items() if body.get(f) is not None}
        ignore_eos = body.get("ignore_eos", False)  # (llama-server's: write max_tokens whatever the model says; benchmarks)
        if not isinstance(ignore_eos, bool):
            raise BadRequest(f"ignore_eos must be true or false, got {ignore_eos!r:.40}")
        try:
            return _request(max_tokens, body.get("stop"), ignore_eos=ignore_eos, logprobs=self._logprobs(body), **self._constraint(body), **sampling)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    @staticmethod
    def _constraint(body: dict[str, Any]) -> dict[str, Any]:
        """The reply's constraint: OpenAI's ``response_format`` (``{"type": "json_object"}``: one JSON
        object; ``{"type": "json_schema", "json_schema": {"schema": {...}}}``: the JSON a schema
        allows), or llama.cpp server's ``grammar`` (GBNF) and ``json_schema`` fields."""
        out: dict[str, Any] = {k: body[k] for k in ("grammar", "json_schema") if body.get(k) is not None}
        rf = body.get("response_format")
        if rf is None:
            return out
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if schema is None:
                raise BadRequest('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
            if out:
                raise BadRequest("give response_format or grammar/json_schema, not both")
            return {"json_schema": schema}
        if kind not in ("text", "json_object"):
            raise BadRequest('response_format type must be "text", "json_object" or "json_schema", ' f"got {rf!r:.60}")
        if kind == "json_object":
            out["json_mode"] = True
        return out

    @staticmethod
    def _logprobs(body: dict[str, Any]) -> int:
        """How many likeliest tokens to report with each one (-1: no logprobs): chat's ``logprobs: true``
        with ``top_logprobs: N``, or the legacy completions' ``logprobs: N``."""
        lp, top = body.get("logprobs"), body.get("top_logprobs")
        if "messages" in body:
            if lp not in (None, True, False):
                raise BadRequest(f"logprobs must be true or false, got {lp!r:.40}")
            if top is not None and (isinstance(top, bool) or not isinstance(top, int)):
                raise BadRequest(f"top_logprobs must be an integer, got {top!r:.40}")
            if top is not None and not lp:
                raise BadRequest("top_logprobs needs logprobs: true")
            if top is not None and not 0 <= top <= 20:
                raise BadRequest(f"top_logprobs must be in 0..20, got {top}")
            return (top or 0) if lp else -1
        if lp is None or lp is False:
            return -1
        if isinstance(lp, bool) or not isinstance(lp, int):
            raise BadRequest(f"logprobs must be an integer (the likeliest tokens to report), got {lp!r:.40}")
        return lp

    def _logprobs_payload(self, entries: list, chat: bool, offset: int) -> dict[str, Any]:
        """OpenAI's logprobs object for ``entries`` (GenStats.logprobs items); ``offset``: text length before them."""
        tk = self.model.tokenizer

        def one(tid: int, lp: float) -> dict[str, Any]:
            b = tk.token_bytes(tid)
            return {"id": tid, "token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}  # (id: as llama-server's)

        if chat:
            return {"content": [one(t, lp) | {"top_logprobs": [one(i, x) for i, x in top]} for t, lp, top in entries]}
        tokens, offsets = [], []
        for t, _, _ in entries:
            offsets.append(offset)
            tokens.append(tk.token_bytes(t).decode("utf-8", "replace"))
            offset += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries], "text_offset": offsets,
                "top_logprobs": [{one(i, x)["token"]: x for i, x in top} for _, _, top in entries]}  # fmt: skip

    @staticmethod
    def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
        """OpenAI messages as the chat template takes them (runtime/tools.py: tool calls and results too)."""
        try:
            return check_messages(body.get("messages"))
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def _images(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The body with its messages' pictures as ``<__media__>`` markers in their text, and the pictures decoded
        (runtime/vision_chat.py: OpenAI's data-URL image_url parts, Ollama's base64 ``images``; no URL fetched)."""
        try:
            msgs, images = take_images(body.get("messages"), self.model.vision, allow_paths=False)
        except (ValueError, KvrunError) as e:
            raise BadRequest(str(e)) from None
        return ({**body, "messages": msgs} if images else body), images

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):  # ["text"]: one prompt
            p = p[0]
        if isinstance(p, str) and p:
            return self.model.tokenize(p)
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            n_vocab = self.model.config.n_vocab
            if any(not 0 <= t < n_vocab for t in p):
                raise BadRequest(f"prompt token ids must be in [0, {n_vocab})")
            return list(p)
        raise BadRequest("prompt must be a non-empty string or a list of token ids (one prompt per request)")

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        """(status, JSON object) or (200, an iterator of server-sent event payloads) for a request."""
        path, _, query = path.partition("?")
        path = path.rstrip("/") or "/"
        if method == "GET" and path == "/health":
            if self.slots is None:
                return 200, {"status": "ok"}
            idle, busy = self.slots.counts()
            return 200, {"status": "ok", "slots_idle": idle, "slots_processing": busy}
        if method == "GET" and path == "/metrics" and self.slots is not None:
            return 200, Text(self.metrics.exposition(self.slots, self.model.engine.batcher))
        if method == "GET" and path == "/slots" and self.slots is not None:
            return 200, self.slots.describe()
        if method == "POST" and path.startswith("/slots/") and self.slots is not None:
            return self._slot_action(path, query, body or {})
        if method == "GET" and path in ("/v1/models", "/models"):
            return 200, {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "kvrun"}]}
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            return self._generate(body or {}, chat=True)
        if method == "POST" and path in ("/v1/completions", "/completions"):
            return self._generate(body or {}, chat=False)
        if method == "POST" and path in ("/v1/embeddings", "/embeddings"):
            body = body or {}
            vecs, n_tokens = self.embed(body.get("input"), body.get("encoding_format", "float"))
            return 200, {"object": "list", "model": self.name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
                         "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}  # fmt: skip
        if method == "POST" and path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking"):  # (rerank.PATHS)
            return rerank.handle(self, body or {})
        if path.startswith("/api/") and (answer := ollama.handle(self, method, path, body)) is not None:
            return answer
        if path.startswith("/v1/messages") and (answer := anthropic.handle(self, method, path, body)) is not None:
            return answer
        if path.startswith(("/v1/responses", "/responses")) and (answer := responses.handle(self, method, path, body)) is not None:
            return answer
        if (answer := llamaserver.handle(self, method, path, body)) is not None:  # /completion, /infill, /tokenize, /props...
            return answer
        raise BadRequest(f"no endpoint {method} {path}; see /v1/chat/completions, /v1/completions, /v1/models, /health, "
                         "and Ollama's /api/chat, /api/generate, /api/tags", 404)  # fmt: skip

    def count_chat_tokens(self, body: dict[str, Any]) -> int:
        """The prompt tokens an OpenAI-shaped chat body would take (its messages, tools, template)."""
        msgs = self._messages(body)
        try:
            tools = check_tools(body["tools"], body.get("tool_choice")) if body.get("tools") else None
            return len(self.model.chat_tokens(msgs, tools, self.model.chat_template_kwargs))
        except (ValueError, KvrunError) as e:
            raise BadRequest(str(e)) from None

    def embed(self, inputs: Any, encoding: str = "float") -> tuple[np.ndarray, int]:
        """Embeddings of a request's inputs (Model.embed: mean-pooled, L2-normalised) and their token count."""
        if encoding != "float":
            raise BadRequest(f"encoding_format {encoding!r} is not supported; use \"float\"")
        if not (isinstance(inputs, str) or (isinstance(inputs, list) and inputs)):
            raise BadRequest("input must be a text, a list of texts, or token ids")
        try:  # (the engine takes the model alone for it: runtime/batcher.py)
            seqs = self.model.embedding_ids(inputs)
            return self.model.embed(seqs), sum(len(ids) for ids in seqs)
        except (ValueError, KvrunError) as e:
            raise BadRequest(str(e)) from None

    # ------------------------------------------------------------ slots
    def _slot_action(self, path: str, query: str, body: dict[str, Any]) -> tuple[int, Any]:
        """llama-server's slot actions: ``POST /slots/ID?action=save|restore`` (``{"filename": NAME}``, in
        ``--slot-save-path``: the slot's conversation and KV cache, compressed or not, as ``kvrun chat
        --session`` files) and ``?action=erase`` (the slot's cache emptied)."""
        sid = path[len("/slots/") :]
        action = dict(kv.partition("=")[::2] for kv in query.split("&") if kv).get("action")
        if not sid.isdigit() or int(sid) >= len(self.slots):
            raise BadRequest(f"no slot {sid!r}: this server keeps slots 0..{len(self.slots) - 1}", 404)
        if action not in ("save", "restore", "erase"):
            raise BadRequest("give ?action=save, ?action=restore or ?action=erase")
        file = None
        if action != "erase":
            if self.slot_save_path is None:
                raise BadRequest("slot files are off: start the server with --slot-save-path DIR", 501)
            name = body.get("filename")
            if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
                raise BadRequest('filename must be a file name (no directories), e.g. {"filename": "chat1.kvs"}')
            file = os.path.join(self.slot_save_path, name)
        t0 = time.perf_counter()
        with self.slots.take(None, int(sid)) as slot:
            s = slot.session
            if action == "erase":
                n = len(s.tokens)
                s.reset()
                return 200, {"id_slot": slot.id, "n_erased": n}
            if action == "save":
                n_written = s.save(file)
                return 200, {"id_slot": slot.id, "filename": name, "n_saved": len(s.tokens), "n_written": n_written,
                             "timings": {"save_ms": 1e3 * (time.perf_counter() - t0)}}  # fmt: skip
            if not os.path.isfile(file):
                raise BadRequest(f"no slot file {name!r} in --slot-save-path", 404)
            try:
                slot.session = self.model.load_session(file)
            except KvrunError as e:
                raise BadRequest(str(e)) from None
            return 200, {"id_slot": slot.id, "filename": name, "n_restored": len(slot.session.tokens), "n_read": os.path.getsize(file),
                         "timings": {"restore_ms": 1e3 * (time.perf_counter() - t0)}}  # fmt: skip

    # ------------------------------------------------------------ generation
    def _tools(self, body: dict[str, Any], chat: bool, req: Any) -> Tools | None:
        """The request's tools (runtime/tools.py); the grammar their format puts on the reply goes into ``req``."""
        if body.get("tools") is None:
            if body.get("tool_choice") not in (None, "none", "auto"):
                raise BadRequest("tool_choice needs tools")
            return None
        if not chat:
            raise BadRequest("tools need a chat: send them to /v1/chat/completions")
        try:
            tools = check_tools(body["tools"], body.get("tool_choice"), body.get("parallel_tool_calls", True))
            constraint = {"grammar": req.grammar, "json_mode": req.json_mode}
            sampling = self.model.tool_sampling(tools, constraint)
            req.grammar, req.grammar_trigger = sampling.get("grammar"), sampling.get("grammar_trigger")
            req.validate()
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return tools

    def start(self, body: dict[str, Any], chat: bool) -> Run:
        """Check an OpenAI-shaped body (BadRequest) and make its generation, not yet started: the
        text pieces, and the stats they fill.  The OpenAI and the Ollama endpoints format it."""
        if self.slots is None:
            raise BadRequest(f"{self.model.config.name} is an embedding model ({self.model.config.arch}): it makes embeddings "
                             "(/v1/embeddings, /api/embed), not text")  # fmt: skip
        req = self._request(body)
        body, images = self._images(body) if chat else (body, [])
        msgs = self._messages(body) if chat else None
        tools = self._tools(body, chat, req)
        laid = None if chat else body.get("_laid")  # (llamaserver.py: /completion's multimodal_data, laid out with its pictures)
        if laid is not None and not isinstance(laid, vision_chat.Laid):  # (a client's own "_laid" field: not ours to read)
            raise BadRequest("_laid is not a request field; send images as multimodal_data (/completion) or image_url parts")
        ids = None if chat else (laid.ids if laid is not None else self._prompt_ids(body))
        tkw = body.get("chat_template_kwargs") or {}  # as llama-server: over the server's --chat-template-kwargs
        if not isinstance(tkw, dict):
            raise BadRequest("chat_template_kwargs must be an object, e.g. {\"enable_thinking\": false}")
        if reserved := {"messages", "add_generation_prompt", "bos_token", "eos_token"} & set(tkw):
            raise BadRequest(f"chat_template_kwargs may not set {', '.join(sorted(reserved))}: the server sets them")
        id_slot = body.get("id_slot", -1)
        if isinstance(id_slot, bool) or not isinstance(id_slot, int) or not -1 <= id_slot < len(self.slots):
            raise BadRequest(f"id_slot must be a slot id in 0..{len(self.slots) - 1}, or -1 for any (--parallel slots)")
        run = Run(req, tools=tools)
        stats = run.stats

        def pieces() -> Iterator[str]:
            known = ids if laid is None else None  # several slots: the one whose cache holds most of this prompt (a chat's rendered here to compare)
            if chat:  # (a request with images takes no other slot's cache: known None; its own slot's prefix is still kept)
                several = len(self.slots) > 1 and not images
                known = self.model.chat_tokens(msgs, tools, {**self.model.chat_template_kwargs, **tkw}) if several else None
            try:
                yield from generate(known)
            finally:
                self.metrics.add(stats)

        def generate(known: list[int] | None) -> Iterator[str]:
            eng = self.model.engine
            with self.slots.take(known, id_slot) as slot:  # held for the whole generation
                s = slot.session
                if chat:
                    s.messages = msgs[:-1]
                    s.template_kwargs = tkw
                    s.tools = tools
                    # no max_tokens: the reply may run to the context's end, but a long prompt keeps its turns
                    # (a client sending a document to summarise), so little is held back for the reply
                    reserve = None if req.max_tokens >= 0 else min(REPLY_RESERVE, eng.n_ctx // 8)
                    it = s.reply(msgs, max_tokens=req.max_tokens, stop=list(req.stop), reserve=reserve, ignore_eos=req.ignore_eos, prompt=known,
                                 logprobs=req.logprobs, json_mode=req.json_mode, grammar=req.grammar, images=images,
                                 grammar_trigger=req.grammar_trigger, **_sampling(req))  # fmt: skip
                    run.live = s
                    try:
                        yield from it
                    finally:
                        it.close()
                        stats.__dict__.update(s.last_stats.__dict__)
                        run.n_prompt = s.n_prompt_tokens
                        run.message = s.messages[-1] if s.messages and s.messages[-1]["role"] == "assistant" else None
                else:
                    run.n_prompt = len(ids)
                    if len(ids) >= eng.n_ctx:
                        raise BadRequest(f"the prompt is {len(ids)} tokens, the context {eng.n_ctx}; shorten it or start the server "
                                         "with a larger --ctx-size")  # fmt: skip
                    s.messages = []  # (the slot's cache holds this text now, not a conversation)
                    if body.get("cache_prompt") is False:  # (llama-server's: the whole prompt evaluated again)
                        del s.tokens[:]
                    gen = (eng.generate_reusing(s.cache, s.tokens, ids, req, stats) if laid is None
                           else vision_chat.generate_reusing(self.model.vision, s.cache, s.tokens, laid, req, stats))  # fmt: skip
                    yield from stream_text(eng.tokenizer, gen, req.stop, stats)

        run.pieces = _checked(pieces())
        return run

    def _generate(self, body: dict[str, Any], chat: bool) -> tuple[int, Any]:
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
            raise BadRequest(f"n must be an integer in 1..{MAX_CHOICES} (choices to generate), got {n!r:.40}")
        if n > 1 and body.get("id_slot", -1) != -1:
            raise BadRequest("id_slot pins one generation to a slot: send n 1 with it")
        runs = [self.start(_nth_choice(body, i), chat) for i in range(n)]
        stream = bool(body.get("stream", False))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        created = int(time.time())
        choices = [_Choice(self, run, i, chat, stream) for i, run in enumerate(runs)]

        def usage() -> dict[str, Any]:
            # the prompt counted once, as OpenAI does for n choices; cached_tokens (OpenAI's): the prompt's tokens the
            # first choice's slot held already, not evaluated again
            n_prompt, n_gen = runs[0].n_prompt, sum(r.stats.n_gen for r in runs)
            return {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen,
                    "prompt_tokens_details": {"cached_tokens": max(n_prompt - runs[0].stats.n_prompt, 0)}}  # fmt: skip

        def envelope(ch: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": rid, "object": obj + (".chunk" if stream and chat else ""), "created": created, "model": self.name,
                    "choices": ch, **extra}  # fmt: skip

        if not stream:
            return 200, envelope(_concurrently([c.whole for c in choices]), usage=usage())
        choices[0].prime()  # a bad request (a prompt too long) fails before the 200 goes out; the others share its prompt

        items = choices[0].events() if n == 1 else _merged([c.events for c in choices])

        def events() -> Iterator[dict[str, Any]]:
            left = n  # choices not finished: the last finish chunk carries the usage
            try:
                for ch in items:
                    left -= ch["finish_reason"] is not None
                    yield envelope([ch], **({} if left else {"usage": usage()}))
            finally:
                items.close()  # a client gone mid-stream: the generations stop, the caches stay consistent

        return 200, events()


class _Choice:
    """One choice of a completion request: its run's text as OpenAI's choice objects, whole or as stream deltas."""

    def __init__(self, server: Server, run: Run, index: int, chat: bool, stream: bool) -> None:
        self.server, self.run, self.index, self.chat, self.stream = server, run, index, chat, stream
        self.sent = [0, 0]  # logprobs entries and text characters already sent
        self.first: str | None = None
        self.primed = False

    def prime(self) -> None:
        """Start the generation: its first text piece (a bad request fails here)."""
        if not self.primed:
            self.first, self.primed = next(self.run.pieces, None), True

    def logprobs(self) -> dict[str, Any] | None:
        """The logprobs of the tokens generated since the last call (all of them, unstreamed)."""
        run = self.run
        if run.req.logprobs < 0:
            return None
        entries = run.live_stats().logprobs[self.sent[0] :]
        self.sent[0] += len(entries)
        return self.server._logprobs_payload(entries, self.chat, self.sent[1])

    def choice(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        lp = None if first else self.logprobs()
        self.sent[1] += len(text or "")
        if not self.chat:
            return {"index": self.index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        if not self.stream:
            return {"index": self.index, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": finish}
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
        return {"index": self.index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    def reasoning_delta(self, text: str) -> dict[str, Any]:
        return {"index": self.index, "delta": {"reasoning_content": text}, "logprobs": self.logprobs(), "finish_reason": None}

    def finish(self) -> str:
        return "tool_calls" if self.run.calls() else _finish_reason(self.run.stats)

    def whole(self) -> dict[str, Any]:
        """The finished choice (not streamed)."""
        run = self.run
        text = "".join(run.pieces)
        if run.tools is None and not self.chat:
            return self.choice(text, self.finish())
        reasoning, content = split_reasoning(run.message["content"] if run.tools is not None else text)  # (a thinking model's)
        if run.tools is not None and reasoning is None:
            reasoning = run.message.get("thinking")  # (gpt-oss's, kept apart with its calls)
        ch = self.choice(content or None if run.calls() else content, self.finish())
        if reasoning is not None:
            ch["message"]["reasoning_content"] = reasoning
        if run.calls():
            ch["message"]["tool_calls"] = openai_calls(run.calls())
        return ch

    def events(self) -> Iterator[dict[str, Any]]:
        """The stream's choice deltas, the last one with the finish reason."""
        self.prime()
        run, gen, first, choice = self.run, self.run.pieces, self.first, self.choice
        try:
            if self.chat:
                yield choice(None, None, first=True)
            if run.tools is not None:  # the reply is parsed whole: its content, then its calls
                for _ in gen:
                    pass
                if run.message.get("thinking"):  # (gpt-oss's)
                    yield self.reasoning_delta(run.message["thinking"])
                if run.message["content"]:
                    yield choice(run.message["content"], None)
                if run.calls():
                    calls = [{"index": i, **c} for i, c in enumerate(openai_calls(run.calls()))]
                    yield {"index": self.index, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}
            elif self.chat:  # a thinking model's thoughts as reasoning_content deltas, the rest as content
                think = ThinkSplitter()
                for piece in itertools.chain([first] if first is not None else [], gen):
                    for kind, text in think.push(piece):
                        yield choice(text, None) if kind == "content" else self.reasoning_delta(text)
                for kind, text in think.flush():
                    yield choice(text, None) if kind == "content" else self.reasoning_delta(text)
            else:
                if first is not None:
                    yield choice(first, None)
                for piece in gen:
                    yield choice(piece, None)
            yield choice(None, self.finish())
        finally:
            gen.close()  # a client gone mid-stream: the generation stops, the caches stay consistent


def _nth_choice(body: dict[str, Any], i: int) -> dict[str, Any]:
    """The request body of choice ``i`` of ``n``: a stated seed moved on by ``i``, so seeded choices differ and repeat."""
    seed = body.get("seed")
    if i == 0 or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return body
    return {**body, "seed": seed + i}


def _concurrently(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Each job's result, the jobs run in threads of their own (each takes a slot: up to --parallel at once); the first
    error raised again once all have ended."""
    if len(jobs) == 1:
        return [jobs[0]()]
    out: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            out[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 (handed to the request's thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _merged(streams: list[Callable[[], Iterator[Any]]]) -> Iterator[Any]:
    """The items of several streams, each read in a thread of its own, in the order they come; the streams are
    closed when the reader stops early (a client gone)."""
    q: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work(make: Callable[[], Iterator[Any]]) -> None:
        it = make()
        try:
            for item in it:
                q.put(("item", item))
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 (handed to the reader)
            q.put(("error", e))
        finally:
            it.close()
            q.put(("end", None))

    threads = [threading.Thread(target=work, args=(m,), daemon=True) for m in streams]
    for t in threads:
        t.start()
    live = len(threads)
    try:
        while live:
            kind, item = q.get()
            if kind == "end":
                live -= 1
            elif kind == "error":
                raise item
            else:
                yield item
    finally:
        stop.set()


def _sampling(req: Any) -> dict[str, Any]:
    """A GenRequest's sampler settings as keywords again (for Session.stream)."""
    return dict(req.sampler.__dict__)


def _checked(it: Iterator[str]) -> Iterator[str]:
    """``it`` with the engine's errors (a prompt past the context) as BadRequest."""
    try:
        yield from it
    except KvrunError as e:
        raise BadRequest(str(e)) from None


class Handler(BaseHTTPRequestHandler):
    """HTTP plumbing around :meth:`Server.handle`: JSON bodies, errors as OpenAI's error object, SSE."""

    server_version = "kvrun"
    protocol_version = "HTTP/1.1"
    app: Server  # set by :func:`make_server`
    api_key: str | None = None  # set by :func:`make_server`
    log: Callable[[str], None]  # set by :func:`make_server`: a line to the stderr the server started with

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_OPTIONS(self) -> None:  # noqa: N802 - a browser's CORS preflight
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Content-Type, Authorization, x-api-key, anthropic-version")
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def _body(self) -> dict[str, Any] | None:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise BadRequest(f"the request body is {n} bytes; at most {MAX_BODY}", 413)
        if n == 0:
            return None
        try:
            body = json.loads(self.rfile.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _authorized(self) -> bool:
        if self.api_key is None or self.path.split("?", 1)[0].rstrip("/") == "/health":
            return True
        given = self.headers.get("Authorization", "")
        if self.headers.get("x-api-key") is not None:  # (Anthropic's clients send the key so)
            return hmac.compare_digest(self.headers["x-api-key"].encode(), self.api_key.encode())
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    def _serve(self, method: str) -> None:
        t0 = time.perf_counter()
        try:
            if not self._authorized():
                raise BadRequest("a valid API key is needed: send the header Authorization: Bearer <key>", 401)
            status, payload = self.app.handle(method, self.path, self._body() if method == "POST" else None)
        except BadRequest as e:
            status, payload = e.status, self._error(str(e), "invalid_request_error", e.status)
        except Exception as e:  # a bug: one line in the log and a 500, never a traceback to the client
            status, payload = 500, self._error(f"{type(e).__name__}: {e}", "server_error", 500)
        if isinstance(payload, (dict, list, Text)):  # (a list: GET /slots' array; Text: /metrics)
            data = payload.encode() if isinstance(payload, Text) else json.dumps(payload).encode()
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", "text/plain; version=0.0.4" if isinstance(payload, Text) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._stream(payload)
        self.log(f"kvrun serve: {method} {self.path} {status} {time.perf_counter() - t0:.2f} s")

    def _error(self, message: str, kind: str, status: int) -> dict[str, Any]:
        """The error object: OpenAI's, or Ollama's ``{"error": message}`` on its paths."""
        if self.path.startswith("/api/"):
            return {"error": message}
        if self.path.startswith("/v1/messages"):  # Anthropic's
            return {"type": "error", "error": {"type": "authentication_error" if status == 401 else kind, "message": message}}
        return {"error": {"message": message, "type": kind, "code": status}}

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        ndjson = getattr(events, "ndjson", False)  # Ollama's: a JSON object a line (runtime/streamed.py)
        named = getattr(events, "named", False)  # Anthropic's: named events
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "application/x-ndjson" if ndjson else "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream's end is the connection's
        self.end_headers()
        self.close_connection = True

        def put(obj: Any) -> None:
            if named:
                self.wfile.write(f"event: {obj[0]}\ndata: ".encode() + json.dumps(obj[1]).encode() + b"\n\n")
            else:
                self.wfile.write(json.dumps(obj).encode() + b"\n" if ndjson else b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        try:
            for ev in events:
                put(ev)
            if getattr(events, "done", True):  # (OpenAI's closing event; the other families' streams have none)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
        except BadRequest as e:  # past the 200: said in the stream, as llama-server and Ollama do
            err = self._error(str(e), "invalid_request_error", e.status)
            put(("error", err) if named else err)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; closing the iterator stopped the generation
        finally:
            close = getattr(events, "close", None)
            if close:
                close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's own line: replaced by _serve's
        pass


def make_server(model: Model, host: str, port: int, name: str, api_key: str | None = None, parallel: int = 1,
                slot_save_path: str | None = None) -> ThreadingHTTPServer:  # fmt: skip
    """A server bound to ``host:port`` (0: any free port), not yet serving (``serve_forever``).  ``api_key``:
    every request but ``GET /health`` must carry ``Authorization: Bearer <api_key>`` (as llama-server's).
    ``parallel``: requests generated at once (slots); ``slot_save_path``: the directory of slot files (save/restore)."""
    err = sys.stderr  # (not looked up per request: a thread must not write into a stream swapped in meanwhile)
    log = staticmethod(lambda line: print(line, file=err, flush=True))
    handler = type("KvrunHandler", (Handler,), {"app": Server(model, name, parallel, slot_save_path), "log": log, "api_key": api_key})
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise KvrunError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host") from None
    httpd.daemon_threads = True
    return httpd
