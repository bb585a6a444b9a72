"""The Python API an application embeds.

>>> import kvrun
>>> model = kvrun.load("smollm2", n_ctx=4096)
>>> for piece in model.generate("The capital of France is", max_tokens=16, temperature=0):
...     print(piece, end="")
>>> chat = model.session(system="You are terse.")
>>> reply = chat.send("Hi!")            # keeps its KV cache between turns
>>> chat.save("chat.kvs"); chat = model.load_session("chat.kvs")  # resumed exactly, cache and all
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import numpy as np

from ..cache.kvconfig import KVConfig
from ..loaders.chat_template import builtin_template, file_template, render_chat
from ..loaders.errors import KvrunError
from ..loaders.store import resolve
from . import prewarm
from .engine import Engine, GenRequest, GenStats, stream_text
from .reasoning import is_harmony
from .sampling import SamplerConfig
from .tools import Harmony, Tools, check_messages, check_tools, harmony_reply, tool_format

Message = dict[str, str]
POOLINGS = ("mean", "cls", "last")  # how Model.embed pools a text's hidden states (cls: the first token's)


def grammar_text(grammar: str | None = None, json_schema: Any = None) -> str | None:
    """The GBNF grammar of a request: ``grammar`` as given, or a JSON schema (a dict, or its JSON text)
    converted; None for neither.  ValueError (one line) for a bad one."""
    if json_schema is None:
        if grammar is not None and not isinstance(grammar, str):
            raise ValueError(f"grammar must be a GBNF text, got {type(grammar).__name__}")
        return grammar
    if grammar is not None:
        raise ValueError("give a grammar or a JSON schema, not both")
    from .jsonschema import schema_to_gbnf

    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"the JSON schema is not JSON ({e.msg} at line {e.lineno} col {e.colno})") from None
    if not isinstance(json_schema, (dict, bool)):
        raise ValueError(f"a JSON schema must be an object, got {type(json_schema).__name__}")
    return schema_to_gbnf(json_schema)


def _request(max_tokens: int, stop: Any, ignore_eos: bool = False, logprobs: int = -1, json_mode: bool = False, lookup: int = 0,
             grammar: str | None = None, json_schema: Any = None, grammar_trigger: str | None = None, **sampling: Any) -> GenRequest:  # fmt: skip
    """The request, checked (a bad value raises here, before any state changes)."""
    known = {f.name: f.type for f in fields(SamplerConfig)}
    for k, v in sampling.items():
        if k not in known:
            raise ValueError(f"unknown sampling option {k!r}; known: {', '.join(known)}")
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):  # ("hot" had failed inside a comparison)
            raise ValueError(f"{k} must be a number, got {v!r:.40}")
    cfg = SamplerConfig(**{k: v for k, v in sampling.items() if v is not None})
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ()) if isinstance(stop, (list, tuple, type(None))) else None
    if stops is None or not all(isinstance(x, str) for x in stops):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r:.40}")
    req = GenRequest(max_tokens=max_tokens, sampler=cfg, stop=stops, ignore_eos=ignore_eos, logprobs=logprobs, json_mode=bool(json_mode),
                     grammar=grammar_text(grammar, json_schema), grammar_trigger=grammar_trigger, lookup=lookup)  # fmt: skip
    req.validate()
    return req


class Model:
    """A loaded model; see :func:`load`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = engine.cfg
        self.last_stats = GenStats()
        self._cache = None
        #: the projector (runtime/vision.py) when loaded with ``mmproj``: chat messages may then carry images
        self.vision: Any = None
        #: extra variables for the chat template, as llama-server's --chat-template-kwargs
        #: (Qwen3's ``{"enable_thinking": False}`` asks for replies without a reasoning block)
        self.chat_template_kwargs: dict[str, Any] = {}

    # -------------------------------------------------------------- low level
    def tokenize(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 logits ``[len(ids), n_vocab]`` for every position (a fresh cache)."""
        cache = self.engine.new_cache()
        return self.engine.eval(cache, ids, logits_all=True)

    def embedding_ids(self, inputs: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """:meth:`embed`'s inputs as token id lists (texts tokenized), one per input; ValueError in one line."""

        def is_ids(x: Any) -> bool:
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(inputs, str) or (is_ids(inputs) and inputs):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise ValueError("inputs must be a text, a list of token ids, or a non-empty list of either")
        seqs = []
        for i, x in enumerate(inputs):
            if not (isinstance(x, str) or is_ids(x)):
                raise ValueError(f"inputs[{i}] must be a text or a list of token ids, got {type(x).__name__}")
            ids = self.tokenize(x) if isinstance(x, str) else x
            if not ids:
                raise ValueError(f"inputs[{i}] is empty: nothing to embed")
            seqs.append(ids)
        return seqs

    def embed(self, inputs: str | list[str] | list[int] | list[list[int]], pooling: str | None = None, normalize: bool = True) -> np.ndarray:
        """Embeddings, float32 ``[n_inputs, n_embd]``, as llama-server's /v1/embeddings: each input (a
        text, or a list of token ids; or a list of either) is run on its own and its final hidden
        states are pooled, ``mean`` over its tokens, the first (``cls``) or the ``last`` token's, then
        L2-normalised unless ``normalize`` is False.  ``pooling`` None: an embedding model's own
        (its file's pooling type), else mean.  (A generative model's embeddings are fit for
        similarity search over its own kind of text; an embedding model's, such as BERT's, are what
        it was trained for.)"""
        pooling = pooling or getattr(self.engine.model, "pooling", "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        seqs = self.embedding_ids(inputs)
        out = np.empty((len(seqs), self.config.n_embd), np.float32)
        for i, ids in enumerate(seqs):
            h = self.engine.embed(ids)
            v = h.mean(axis=0, dtype=np.float64) if pooling == "mean" else h[0 if pooling == "cls" else -1].astype(np.float64)
            if normalize:
                v /= max(np.linalg.norm(v), 1e-12)
            out[i] = v
        return out

    def rerank(self, query: str, documents: list[str]) -> list[float]:
        """Each document's relevance to ``query``, in the documents' order, as llama-server's
        /v1/rerank scores it: a reranker's (pooling type rank: bge-reranker, Qwen3-Reranker) head
        on the pair's prompt (``runtime/rerank.py``).  ValueError in one line for another model."""
        from .rerank import score

        return score(self, query, documents)[0]

    def new_cache(self):
        return self.engine.new_cache()

    # -------------------------------------------------------------- generation
    def generate(self, prompt: str | list[int], max_tokens: int = 256, stop: Any = None, **sampling: Any) -> Iterator[str]:
        """Stream the completion of ``prompt`` as text pieces.

        Sampling keywords: temperature, top_k, top_p, min_p, repeat_penalty,
        presence_penalty, frequency_penalty, seed; ``json_mode=True`` constrains the text to one
        JSON object (as Ollama's ``format: "json"``), ``json_schema=`` (a dict) to the JSON texts a
        schema allows, ``grammar=`` (GBNF text) to a grammar's language; ``lookup=N`` (greedy, fp16 cache) drafts up to N
        tokens a step from earlier text and keeps those greedy decoding agrees with.
        """
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        req = _request(max_tokens, stop, **sampling)
        self.last_stats = GenStats()
        cache = self.engine.new_cache()
        yield from self.engine.generate_text(cache, ids, req, self.last_stats)

    def complete(self, prompt: str | list[int], max_tokens: int = 256, **kw: Any) -> str:
        return "".join(self.generate(prompt, max_tokens=max_tokens, **kw))

    def diffuse(self, prompt: str, chat_template: bool = True, **params: Any) -> str:
        """A diffusion language model's text after ``prompt`` (Dream, LLaDA, LLaDA-MoE, RND1; runtime/diffusion.py),
        as llama-diffusion-cli's: ``params`` are :class:`~kvrun.runtime.diffusion.DiffusionParams`' (``steps``,
        ``eps`` or ``block_length``, ``algorithm``, ``temperature``, ``cfg_scale``...), ``max_length`` at most the model's context
        and batch (its default: the batch), e.g. ``kvrun.load(path, n_ctx=256, n_batch=256).diffuse("Hi", eps=1e-3)``."""
        from .diffusion import DiffusionParams, diffusion_text

        params.setdefault("max_length", min(self.engine.n_batch, self.engine.n_ctx))
        try:
            prm = DiffusionParams(**params)
        except TypeError as e:
            raise KvrunError(f"diffuse: {e}") from None
        return diffusion_text(self, prompt, prm, chat_template)

    def chat_template(self) -> str:
        return file_template(self.engine.gguf) or builtin_template(self.config.arch, self.tokenizer)

    def render(self, messages: list[Message], add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        """The conversation as the chat template writes it; ``template_kwargs`` (over
        :attr:`chat_template_kwargs`) are variables for the template, e.g. ``enable_thinking=False``."""
        tk = self.tokenizer
        extra = {**self.chat_template_kwargs, **template_kwargs}
        for k in ("messages", "add_generation_prompt", "bos_token", "eos_token"):
            if k in extra:
                raise KvrunError(f"chat template variable {k!r} is kvrun's to set; pass it another way")
        return render_chat(
            self.chat_template(),
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=tk.token_to_piece(tk.bos_id) if tk.bos_id is not None else "",
            eos_token=tk.token_to_piece(tk.eos_id) if tk.eos_id is not None else "",
            **extra,
        )

    def chat(self, messages: list[Message], stream: bool = False, max_tokens: int = 512,
             chat_template_kwargs: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None,
             tool_choice: Any = None, parallel_tool_calls: bool = True, **sampling: Any) -> Any:  # fmt: skip
        """One reply to ``messages`` (``{"role": "system" | "user" | "assistant" | "tool", "content": str}``,
        the last one the user's or a tool result); a text iterator when ``stream`` else the text.
        ``chat_template_kwargs``: template variables for this call, over :attr:`chat_template_kwargs`.

        ``tools`` (OpenAI's: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``)
        ``tool_choice`` (auto, none, required, or one function) and ``parallel_tool_calls`` (False: at
        most one call): the reply is then a message dict,
        ``{"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments": dict}]}``
        (``tool_calls`` only when the model calls), not streamed; see ``runtime/tools.py``."""
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise ValueError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
        if not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}")
        from .vision_chat import take_images

        messages, images = take_images(list(messages), self.vision)  # (image parts as <__media__> markers in the text)
        msgs = check_messages(messages)
        s = self.session()
        s.messages = msgs[:-1]
        s.template_kwargs = dict(chat_template_kwargs or {})
        if tools is not None:
            if stream:
                raise ValueError("a reply with tools is parsed whole: call chat() without stream")
            s.tools = check_tools(tools, tool_choice, parallel_tool_calls)
            sampling = self.tool_sampling(s.tools, sampling)
        it = s.reply(msgs, max_tokens=max_tokens, images=images, **sampling)

        def pieces() -> Iterator[str]:
            try:
                yield from it
            finally:
                self.last_stats = s.last_stats  # as generate() leaves them

        if tools is not None:
            "".join(pieces())
            return s.messages[-1]
        return pieces() if stream else "".join(pieces())

    def chat_tokens(self, msgs: list[dict[str, Any]], tools: Tools | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """The tokens of a conversation (:func:`check_messages`' form) as the chat template writes it, with
        the tools, tool calls and results as the template's tool format asks (``runtime/tools.py``)."""
        return self.tokenize(self.chat_text(msgs, tools, template_kwargs), add_bos=None)

    def chat_text(self, msgs: list[dict[str, Any]], tools: Tools | None = None, template_kwargs: dict[str, Any] | None = None) -> str:
        """:meth:`chat_tokens`' text (images' ``<__media__>`` markers left in it, for runtime/vision_chat.py)."""
        kw = dict(template_kwargs or {})
        if (tools is not None and tools.active) or any(m["role"] == "tool" or "tool_calls" in m for m in msgs):
            msgs, extra = tool_format(self.chat_template()).template_messages(msgs, tools)
            kw.update(extra)
        return self.render(msgs, **kw)

    def tool_sampling(self, tools: Tools, sampling: dict[str, Any]) -> dict[str, Any]:
        """``sampling`` with the grammar the model's tool format puts on a reply (ValueError if the
        request has its own constraint)."""
        if not tools.active:
            return sampling
        fmt = tool_format(self.chat_template())
        if any(sampling.get(k) for k in ("grammar", "json_schema", "json_mode")):
            if fmt.trigger(tools) is None:
                raise ValueError("tools constrain the reply themselves: drop the grammar, JSON schema or JSON mode")
            return sampling  # (Hermes' auto calls are held lazily; a grammar of the request's own goes first)
        trigger = fmt.trigger(tools)
        return {**sampling, "grammar": fmt.grammar(tools), **({"grammar_trigger": trigger} if trigger else {})}

    def session(self, system: str | None = None) -> Session:
        return Session(self, system)

    def load_session(self, path: str | os.PathLike) -> Session:
        """The chat :meth:`Session.save` wrote to ``path``, its KV cache as it was (same model, context and
        KV setting, else a KvrunError saying which differs)."""
        from .sessionfile import load

        state = load(path, self.engine)
        s = Session(self, state["system"])
        s.cache, s.tokens, s.messages, s.n_shifts = state["cache"], state["tokens"], state["messages"], state["n_shifts"]
        s.images = state.get("images", [])
        return s


class Session:
    """A multi-turn chat that keeps its KV cache between turns.

    Each turn renders the whole conversation with the chat template, keeps the
    cached prefix that matches the new token sequence, and prefills only the
    rest, as llama.cpp's chat does.
    """

    def __init__(self, model: Model, system: str | None = None) -> None:
        self.model = model
        self.engine = model.engine
        self.cache = self.engine.new_cache()
        self.tokens: list[int] = []  # what the cache holds, in order
        self.messages: list[Message] = [{"role": "system", "content": system}] if system else []
        self.system = system
        self.last_stats = GenStats()
        self.n_shifts = 0  # context shifts so far (oldest turns dropped)
        self.n_prompt_tokens = 0  # the last turn's whole prompt (the conversation as rendered), cached prefix included
        self.template_kwargs: dict[str, Any] = {}  # chat template variables for this chat, over the model's
        self.tools: Tools | None = None  # functions the model may call (runtime/tools.py)
        self.images: list[np.ndarray] = []  # the conversation's pictures, decoded, one per <__media__> in its text

    def reset(self) -> None:
        self.cache.reset()
        self.tokens = []
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.images = []

    def stream(self, user: str, images: list[Any] | None = None, **kw: Any) -> Iterator[str]:
        """The reply to ``user``, as text pieces (keywords: :meth:`reply`'s).  ``images`` (paths, bytes, PIL images;
        a model loaded with ``mmproj``) go before the text, as llama-mtmd-cli's ``/image`` puts them."""
        if images:
            from .vision_chat import user_turn

            msg, new = user_turn(self.model.vision, user, images)
            return self.reply(self.messages + [msg], images=self.images + new, **kw)
        return self.reply(self.messages + [{"role": "user", "content": user}], images=self.images, **kw)

    def _render(self, msgs: list[dict[str, Any]]) -> list[int]:
        return self.model.chat_tokens(msgs, self.tools, self.template_kwargs)

    def reply(self, msgs: list[dict[str, Any]], max_tokens: int = 512, stop: Any = None, reserve: int | None = None,
              logprobs: int = -1, json_mode: bool = False, prompt: list[int] | None = None, images: list[np.ndarray] | None = None,
              **sampling: Any) -> Iterator[str]:  # fmt: skip
        """The reply to the conversation ``msgs`` (which becomes this session's), as text pieces.
        ``reserve``: context tokens kept free for the reply when deciding whether the oldest turns must
        go (default: ``max_tokens``, or half the context when it is -1).  ``logprobs`` >= 0: each reply
        token's log-probability and the ``logprobs`` likeliest, in ``last_stats.logprobs``.  ``prompt``:
        ``msgs`` already rendered with this session's tools and template variables (a server picking a slot
        rendered them to compare), not rendered again.  ``images``: the conversation's pictures, decoded
        (runtime/vision_chat.py), one per ``<__media__>`` marker in its text, in order."""
        req = _request(max_tokens, stop, logprobs=logprobs, json_mode=json_mode, **sampling)
        msgs = list(msgs)
        laid = None
        if images:  # laid out with its pictures, their rows as ids of their own (runtime/vision_chat.py)
            from . import vision_chat

            laid = vision_chat.lay_out(self.model.vision, self.model.chat_text(msgs, self.tools, self.template_kwargs), images)
            prompt = laid.ids
        prompt = self._render(msgs) if prompt is None else prompt
        if reserve is None:
            reserve = self.engine.n_ctx // 2 if max_tokens < 0 else max_tokens
        reserve = min(max(reserve, 0), self.engine.n_ctx // 2)  # for the reply
        room = self.engine.n_ctx - reserve
        if len(prompt) > room:
            msgs, prompt = self._shift(msgs, room) if laid is None else vision_chat.too_long(len(prompt), room, self.engine.n_ctx)
        self.n_prompt_tokens = len(prompt)
        self.messages = msgs
        self.images = list(images or [])
        self.last_stats = GenStats()
        reply: list[str] = []
        if laid is not None:
            ids = vision_chat.generate_reusing(self.model.vision, self.cache, self.tokens, laid, req, self.last_stats)
        else:
            ids = self.engine.generate_reusing(self.cache, self.tokens, prompt, req, self.last_stats)  # the cached prefix kept
        try:
            for piece in stream_text(self.engine.tokenizer, ids, req.stop, self.last_stats):
                reply.append(piece)
                yield piece
        finally:
            ids.close()
            self.messages.append(self._reply_message("".join(reply)))

    def _reply_message(self, text: str) -> dict[str, Any]:
        """The reply as the conversation keeps it: with tools, its calls parsed out (``tool_calls``); a
        gpt-oss reply's harmony messages as its answer, its ``thinking`` (its template refuses channel
        tags in a message's content, and drops earlier turns' thinking itself) and its calls."""
        active = self.tools is not None and self.tools.active
        fmt = tool_format(self.model.chat_template()) if active else None
        if is_harmony(text) or isinstance(fmt, Harmony):  # (a call may open the reply: " to=functions.NAME<|channel|>...")
            thinking, content, calls = harmony_reply(text)
            return {"role": "assistant", "content": content, **({"thinking": thinking} if thinking else {}),
                    **({"tool_calls": calls} if calls and active else {})}  # fmt: skip
        if fmt is None:
            return {"role": "assistant", "content": text}
        if (know := getattr(fmt, "know", None)) is not None:  # (XML formats: a string parameter's value stays text)
            know(self.tools)
        content, calls = fmt.parse(text)
        return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}

    def _shift(self, msgs: list[Message], room: int) -> tuple[list[Message], list[int]]:
        """Context shift: drop the oldest turns (the system prompt stays) until the
        conversation fits ``room`` tokens, leaving half the context free so that
        shifts stay rare.  The cache then keeps only the prefix still shared and
        the rest is prefilled again, so this works for every cache kind."""
        head = 1 if msgs and msgs[0]["role"] == "system" else 0
        target = min(room, self.engine.n_ctx // 2)
        self.n_shifts += 1
        while True:
            prompt = self._render(msgs)
            if len(prompt) <= target or len(msgs) - head <= 1:
                break
            del msgs[head : head + 2 if len(msgs) - head > 2 else head + 1]  # a user turn and its reply
        if len(prompt) > room:
            raise KvrunError(
                f"the message is {len(prompt)} tokens with the chat template; the context of "
                f"{self.engine.n_ctx} leaves {room} for it: raise --ctx-size or shorten it"
            )
        return msgs, prompt

    def send(self, user: str, **kw: Any) -> str:
        return "".join(self.stream(user, **kw))

    def fork(self) -> Session:
        """A second conversation that starts where this one stands (an app's "try another reply", a branch of a
        chat): its messages, and its KV cache copied, not evaluated again (:meth:`Engine.copy_prefix`, a compressed
        cache's as it is held, a recurrent layer's state).  Where the cache cannot copy (a compressed cache that evicted
        a token the next one sees, or merges) the fork's first reply evaluates the conversation.  The two go on apart."""
        other = Session(self.model, self.system)
        other.messages = [dict(m) for m in self.messages]
        other.template_kwargs = dict(self.template_kwargs)
        other.tools, other.images, other.n_shifts = self.tools, list(self.images), self.n_shifts
        n = len(self.tokens)
        if n and self.engine.copy_prefix(other.cache, self.cache, n):
            other.tokens = list(self.tokens)
        return other

    def save(self, path: str | os.PathLike) -> int:
        """Write the conversation and its KV cache to ``path`` (:mod:`.sessionfile`), to be resumed by
        :meth:`Model.load_session` exactly where it stopped; returns the file's size in bytes."""
        from .sessionfile import save

        state = {"kind": "chat", "cache": self.cache, "tokens": self.tokens, "messages": self.messages, "system": self.system,
                 "n_shifts": self.n_shifts, **({"images": self.images} if self.images else {})}  # fmt: skip
        return save(path, self.engine, state)

    def kv_bytes(self) -> int:
        return self.cache.nbytes()


def load(
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    n_ctx: int | None = None,
    n_batch: int = 256,
    threads: int | None = None,
    kv: KVConfig | str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    lora: str | os.PathLike | list[Any] | None = None,
    mmproj: str | os.PathLike | None = None,
) -> Model:
    """Load a GGUF model (a path, a known short name, or None for the default).

    Parameters
    ----------
    model : path to a ``.gguf`` file or a name from ``kvrun models``.
    device : ``cpu``, ``gpu`` or ``auto``.
    n_ctx : context length in tokens (None: 4096, or the model's training context if
        shorter; 0: the model's training context).
    n_batch : prompt tokens per forward pass during prefill.
    threads : Numba threads (None: Numba's default).
    kv : KV cache compression: a :class:`~kvrun.cache.kvconfig.KVConfig`, a spec
        string such as ``"2,policy=h2o,budget=512"`` or a preset name; None: fp16.
    chat_template_kwargs : variables for the chat template (:attr:`Model.chat_template_kwargs`),
        e.g. ``{"enable_thinking": False}`` for Qwen3 replies without reasoning.
    lora : LoRA adapters (GGUF files) merged into the weights as the model loads: a path, or a list
        of paths and ``(path, scale)`` pairs.
    mmproj : the model's multimodal projector (``mmproj-*.gguf``, Gemma 3's): chat messages may then carry
        images (``{"type": "image_url", ...}`` parts, ``{"type": "image", "image": path}``; runtime/vision_chat.py).

    On a machine whose kernel cache is cold, the first generation compiles the kernels (tens of seconds, once): a
    helper process started here compiles the decode attention meanwhile (runtime/prewarm.py; ``KVRUN_PREWARM=0``
    turns it off).
    """
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
        raise KvrunError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
    if isinstance(kv, str):
        try:
            kv = KVConfig.parse(kv)
        except ValueError as e:
            raise KvrunError(f"kv={kv!r}: {e}") from None
    path = resolve(model)
    adapters = [lora] if isinstance(lora, (str, os.PathLike)) else list(lora or [])
    adapters = [(a, 1.0) if isinstance(a, (str, os.PathLike)) else (a[0], float(a[1])) for a in adapters]
    m = Model(Engine(path, device=device, n_ctx=n_ctx, n_batch=n_batch, threads=threads, kv=kv, lora=adapters))
    prewarm.start(m.engine)  # (a cold kernel cache: a second process compiles the decode attention meanwhile)
    m.chat_template_kwargs = dict(chat_template_kwargs or {})
    if mmproj is not None:
        from .vision import Vision

        m.vision = Vision(m.engine, mmproj)
    return m
