"""llama-server's own endpoints over ``kvrun serve``'s model, so editors and front-ends written for
llama.cpp's server (code completion plugins, its web UI, scripts) work against kvrun as they are:

* ``POST /completion``: llama-server's native completion.  ``prompt`` is a string, token ids, or both
  mixed (``[12, "text", 34]``; BOS added when the first element is text and the vocabulary asks for
  it); ``n_predict`` (-1: until the text ends or the context fills), ``stream`` (server-sent events
  of ``content`` pieces, then the final object; no ``[DONE]``), ``stop``, ``temperature``, ``top_k``,
  ``top_p``, ``min_p``, ``seed``, ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``,
  ``grammar``, ``json_schema``, ``n_probs`` (``completion_probabilities``), ``cache_prompt``
  (false: the slot's cached prefix is not reused), ``id_slot``, ``ignore_eos``.  ``prompt`` may also
  be llama-server's multimodal object ``{"prompt_string": ..., "multimodal_data": [base64, ...]}`` (a
  server started with ``--mmproj``): one ``<__media__>`` marker in the text per picture, in order,
  laid out as libmtmd does (:func:`multimodal_prompt`; runtime/vision.py).  The answer has
  llama-server's fields: ``content``, ``stop``, ``stop_type`` (eos, word, limit),
  ``stopping_word``, ``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached``, ``truncated``,
  ``generation_settings``, ``timings`` (``prompt_n``, ``prompt_ms``, ``predicted_n``, ...).
* ``POST /infill``: fill-in-the-middle for code models: ``input_prefix``, ``input_suffix``,
  ``input_extra`` ([{filename, text}]: other files, the repo-level pattern), ``prompt`` and
  /completion's fields; the prompt's tokens are built as llama-server's ``format_infill``
  (:func:`fim_prompt`) from the vocabulary's FIM tokens (``tokenizer.ggml.fim_*_token_id``, or
  llama.cpp's fallbacks by token text: ``Tokenizer.fim_ids``).  A model without them is refused.
* ``POST /tokenize`` (``content``, ``add_special``, ``parse_special``, ``with_pieces``) and
  ``POST /detokenize`` (``tokens``): llama.cpp's token ids and pieces.
* ``POST /apply-template``: ``messages`` -> ``{"prompt": ...}``, the conversation as the model's
  chat template writes it (what /v1/chat/completions would prefill), for a client that edits the
  prompt before sending it to /completion.
* ``GET /props``: ``default_generation_settings``, ``total_slots``, ``model_path``,
  ``chat_template``, ``modalities``, ``build_info``; ``POST /props`` is refused (llama-server needs
  ``--props`` for it; kvrun's settings are fixed when it starts).

The generation itself is :meth:`Server.start`'s (same slots, prefix reuse, batching, constraints);
this module translates bodies in and answers out.  Other llama-server sampling fields (mirostat,
dry_*, xtc_*, typical_p, logit_bias, n_keep, samplers, ...) are accepted and ignored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..loaders.errors import KvrunError
from ..loaders.tokenizer import Tokenizer
from .engine import GenRequest
from .sampling import SamplerConfig
from .streamed import Streamed
from .tools import check_tools, tool_format

if TYPE_CHECKING:
    from .server import Run, Server

#: llama-server's default --batch-size: format_infill keeps the prefix and suffix to fit one batch (3:1)
FIM_BATCH = 2048
#: format_infill's separator of extra files on a vocabulary without FIM_SEP
SNIPPET_SEP = "\n\n--- snippet ---\n\n"
DEFAULT_SEED = 4294967295  # LLAMA_DEFAULT_SEED: llama-server's "random seed" as it reports it
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty", "presence_penalty", "frequency_penalty")
STOP_TYPE = {"eos": "eos", "stop string": "word", "length": "limit", "context full": "limit"}  # GenStats.stop_reason -> stop_type
PATHS = ("/completion", "/infill", "/tokenize", "/detokenize", "/apply-template", "/props")


class Stream(Streamed):
    """A streamed answer of plain server-sent events (``data: {...}``), without OpenAI's closing
    ``data: [DONE]``: llama-server's native endpoints end with the final object, and clients such as
    llama.vim parse every ``data:`` line as JSON."""

    done = False


def handle(server: Server, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any] | None:
    """The answer to one of llama-server's native endpoints, or None for another path."""
    if path not in PATHS:
        return None
    from .server import BadRequest

    body = body or {}
    if path == "/props":
        if method == "GET":
            return 200, _props(server)
        if method == "POST":
            raise BadRequest("this server's properties are fixed when it starts (llama-server's POST /props needs --props, "
                             "which kvrun serve does not offer): restart it with other flags", 501)  # fmt: skip
        return None
    if method != "POST":
        return None
    if path == "/tokenize":
        return 200, _tokenize(server, body, BadRequest)
    if path == "/detokenize":
        return 200, {"content": server.model.detokenize(_token_ids(server, body.get("tokens"), "tokens", BadRequest))}
    if path == "/apply-template":
        return 200, {"prompt": _apply_template(server, body, BadRequest)}
    if path == "/infill":
        ids = _infill_ids(server, body, BadRequest)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict):
            prompt = prompt[0]  # ([{prompt_string, multimodal_data}]: one prompt)
        if isinstance(prompt, dict):
            laid = multimodal_prompt(server, prompt, BadRequest)
            if laid is not None:
                return _complete(server, body, laid.ids, BadRequest, laid)
            prompt = prompt.get("prompt_string")
        ids = prompt_ids(server.model.tokenizer, prompt, BadRequest)
    return _complete(server, body, ids, BadRequest)


def multimodal_prompt(server: Server, prompt: dict[str, Any], BadRequest: type) -> Any:  # noqa: N803
    """/completion's ``{"prompt_string": ..., "multimodal_data": [base64, ...]}`` laid out with its pictures
    (runtime/vision_chat.py's Laid: special tokens parsed, BOS as the vocabulary asks, each marker the picture's
    rows, as llama-server's mtmd_tokenize), or None when it carries no pictures (then its text is the prompt).
    As llama-server, the markers must match the pictures one for one."""
    from .vision import MARKER
    from .vision_chat import NO_PROJECTOR, _from_text, lay_out

    text, data = prompt.get("prompt_string"), prompt.get("multimodal_data")
    if not isinstance(text, str):
        raise BadRequest('prompt.prompt_string must be a string, e.g. {"prompt_string": "<__media__> what is this?", '
                         '"multimodal_data": [base64]}')  # fmt: skip
    if not data:
        return None
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        raise BadRequest("prompt.multimodal_data must be a list of base64 images")
    if server.model.vision is None:
        raise BadRequest(NO_PROJECTOR)
    if text.count(MARKER) != len(data):
        raise BadRequest(f"prompt.prompt_string has {text.count(MARKER)} {MARKER} markers and multimodal_data "
                         f"{len(data)} images: one marker per image, in order")  # fmt: skip
    try:
        images = [_from_text(d, f"prompt.multimodal_data[{j}]", False, True) for j, d in enumerate(data)]
        return lay_out(server.model.vision, text, images)
    except (ValueError, KvrunError) as e:
        raise BadRequest(str(e)) from None


# ---------------------------------------------------------------- tokens
def tokenize_mixed(tk: Tokenizer, value: Any, add_special: bool, parse_special: bool) -> list[int]:
    """llama-server's ``tokenize_mixed``: a text, or a list of texts and token ids joined in order (only a
    first text gets the vocabulary's BOS/EOS, with ``add_special``).  ValueError in one line."""
    if isinstance(value, str):
        return tk.encode(value, add_bos=None if add_special else False, parse_special=parse_special)
    if not isinstance(value, list):
        raise ValueError(f"must be a text, or a list of texts and token ids, got {type(value).__name__}")
    out: list[int] = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            out += tk.encode(p, add_bos=None if add_special and i == 0 else False, parse_special=parse_special)
        elif isinstance(p, int) and not isinstance(p, bool):
            if not 0 <= p < tk.n_vocab:
                raise ValueError(f"token id {p} is not in [0, {tk.n_vocab})")
            out.append(p)
        else:
            raise ValueError(f"[{i}] must be a text or a token id, got {type(p).__name__}")
    return out


def prompt_ids(tk: Tokenizer, prompt: Any, BadRequest: type) -> list[int]:  # noqa: N803
    """/completion's prompt as token ids (llama-server's tokenize_input_prompts: special tokens added and parsed)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # (["text"] and [[ids]]: one prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list, dict)) for p in prompt):
        raise BadRequest("prompt holds several prompts: send one prompt a request (a text, token ids, or both mixed)")
    try:
        ids = tokenize_mixed(tk, prompt, True, True)
    except ValueError as e:
        raise BadRequest(f"prompt {e}") from None
    if not ids:
        raise BadRequest("prompt is empty: nothing to complete")
    return ids


def _flag(body: dict[str, Any], key: str, default: bool, BadRequest: type) -> bool:  # noqa: N803
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise BadRequest(f"{key} must be true or false, got {v!r:.40}")
    return v


def _token_ids(server: Server, value: Any, key: str, BadRequest: type) -> list[int]:  # noqa: N803
    n_vocab = server.model.tokenizer.n_vocab
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise BadRequest(f"{key} must be a list of token ids")
    if any(not 0 <= t < n_vocab for t in value):
        raise BadRequest(f"{key} must be token ids in [0, {n_vocab})")
    return value


def _tokenize(server: Server, body: dict[str, Any], BadRequest: type) -> dict[str, Any]:  # noqa: N803
    """``{"tokens": [ids]}``, or with ``with_pieces`` ``[{"id", "piece"}]`` (a piece that is not whole UTF-8: its bytes)."""
    if "content" not in body:
        raise BadRequest('content is required: the text to tokenize, e.g. {"content": "Hello"}')
    tk = server.model.tokenizer
    add_special = _flag(body, "add_special", False, BadRequest)
    parse_special = _flag(body, "parse_special", True, BadRequest)
    with_pieces = _flag(body, "with_pieces", False, BadRequest)
    try:
        ids = tokenize_mixed(tk, body["content"], add_special, parse_special)
    except ValueError as e:
        raise BadRequest(f"content {e}") from None
    if not with_pieces:
        return {"tokens": ids}

    def piece(t: int) -> str | list[int]:
        b = tk.token_bytes(t)  # (common_token_to_piece: special tokens' text too)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return list(b)

    return {"tokens": [{"id": t, "piece": piece(t)} for t in ids]}


def _apply_template(server: Server, body: dict[str, Any], BadRequest: type) -> str:  # noqa: N803
    """The conversation as the chat template writes it, the assistant's turn opened (Model.chat_tokens' text)."""
    model = server.model
    msgs = server._messages(body)
    tkw = body.get("chat_template_kwargs") or {}
    if not isinstance(tkw, dict):
        raise BadRequest('chat_template_kwargs must be an object, e.g. {"enable_thinking": false}')
    try:
        tools = check_tools(body["tools"], body.get("tool_choice")) if body.get("tools") else None
        kw = dict(tkw)
        if (tools is not None and tools.active) or any(m["role"] == "tool" or "tool_calls" in m for m in msgs):
            msgs, extra = tool_format(model.chat_template()).template_messages(msgs, tools)
            kw.update(extra)
        return model.render(msgs, **kw)
    except (ValueError, KvrunError) as e:
        raise BadRequest(str(e)) from None


# ---------------------------------------------------------------- infill
def fim_prompt(tk: Tokenizer, prefix: Any, suffix: Any, extra: list[dict[str, Any]], prompt: list[int], n_ctx: int,
               n_batch: int = FIM_BATCH, n_predict: int = -1, spm: bool = False) -> list[int]:  # fmt: skip
    """The tokens of a fill-in-the-middle prompt, as llama-server's ``format_infill`` builds them:

        [extra files] [BOS] FIM_PRE prefix prompt FIM_SUF suffix FIM_MID

    where the extra files are Qwen2.5-Coder's repo-level pattern, ``FIM_REP "myproject\\n"``, then for each
    ``FIM_SEP filename "\\n" text``, then ``FIM_SEP "filename\\n"`` (a vocabulary without FIM_REP / FIM_SEP:
    the texts alone, each after ``SNIPPET_SEP``).  The prefix keeps its last ``3 * (n_batch // 4)`` tokens,
    the suffix its first ``n_batch // 4 - 2 - len(prompt)``, the extra files their last ``n_ctx - n_batch -
    2 * n_predict``; ``spm``: suffix before prefix (llama-server's --spm-infill).  ``prefix`` and ``suffix``
    are texts (or texts and ids mixed), tokenized without special tokens; ``prompt`` token ids (llama-server
    puts them after the prefix)."""
    fim = tk.fim_ids
    pre_id, suf_id, mid_id, rep_id, sep_id = (fim[k] for k in ("fim_pre", "fim_suf", "fim_mid", "fim_rep", "fim_sep"))

    def enc(text: str) -> list[int]:
        return tk.encode(text, add_bos=False, parse_special=False)

    pre = tokenize_mixed(tk, prefix, False, False)
    suf = tokenize_mixed(tk, suffix, False, False)
    extra_ids: list[int] = [rep_id, *enc("myproject\n")] if rep_id is not None else []
    for chunk in extra:
        extra_ids += [sep_id, *enc(chunk.get("filename", "tmp") + "\n")] if sep_id is not None else enc(SNIPPET_SEP)
        extra_ids += enc(chunk.get("text", ""))
    if sep_id is not None:
        extra_ids += [sep_id, *enc("filename\n")]  # (llama-server's: the file being edited is not named)
    quarter = n_batch // 4
    n_pre = min(len(pre), 3 * quarter)
    n_suf = min(len(suf), max(0, quarter - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra_ids))
    head = [pre_id, *pre[len(pre) - n_pre :], *prompt]
    tail = [suf_id, *suf[:n_suf]]
    first, last = (tail, head) if spm else (head, tail)
    if tk.add_bos and tk.bos_id is not None:
        first = [tk.bos_id, *first]
    return [*extra_ids[len(extra_ids) - n_extra :], *first, *last, mid_id]


def _infill_ids(server: Server, body: dict[str, Any], BadRequest: type) -> list[int]:  # noqa: N803
    """An /infill body's prompt tokens (its fields checked as llama-server's handle_infill does)."""
    tk = server.model.tokenizer
    missing = [name for name, k in (("prefix", "fim_pre"), ("suffix", "fim_suf"), ("middle", "fim_mid")) if tk.fim_ids[k] is None]
    if missing:
        raise BadRequest(f"{server.model.config.name} has no fill-in-the-middle {'/'.join(missing)} token: /infill needs a code "
                         "model with FIM tokens (Qwen2.5-Coder, CodeLlama, StarCoder, ...)", 501)  # fmt: skip
    for key in ("input_prefix", "input_suffix"):
        if key not in body:
            raise BadRequest(f"{key} is required (the code before and after the gap)")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (the start of the middle)")
    extra = body.get("input_extra", [])
    if not isinstance(extra, list) or not all(isinstance(c, dict) for c in extra):
        raise BadRequest('input_extra must be a list of {"filename": string, "text": string}')
    for i, c in enumerate(extra):
        if not isinstance(c.get("text"), str):
            raise BadRequest(f"input_extra[{i}] must have a text (a string)")
        if not isinstance(c.get("filename", ""), str):
            raise BadRequest(f"input_extra[{i}].filename must be a string")
    try:
        return fim_prompt(tk, body["input_prefix"], body["input_suffix"], extra, tk.encode(prompt, add_bos=False),
                          server.model.engine.n_ctx)  # fmt: skip
    except ValueError as e:
        raise BadRequest(f"input_prefix / input_suffix: {e}") from None


# ---------------------------------------------------------------- completion
def _openai_body(body: dict[str, Any], ids: list[int], BadRequest: type) -> dict[str, Any]:  # noqa: N803
    """A /completion body -> the OpenAI-shaped body of Server.start (its values checked there)."""
    n_predict = body.get("n_predict", body.get("max_tokens", -1))
    if isinstance(n_predict, bool) or not isinstance(n_predict, int):
        raise BadRequest(f"n_predict must be an integer (-1: no limit), got {n_predict!r:.40}")
    n_probs = body.get("n_probs", 0)
    if isinstance(n_probs, bool) or not isinstance(n_probs, int) or not 0 <= n_probs <= 20:
        raise BadRequest(f"n_probs must be an integer in 0..20 (the likeliest tokens to report), got {n_probs!r:.40}")
    out: dict[str, Any] = {k: body[k] for k in (*SAMPLING, "stop", "grammar", "json_schema", "ignore_eos", "id_slot") if body.get(k) is not None}
    out["prompt"] = ids
    if n_predict >= 0:  # (any negative: until the text ends or the context fills, as llama-server's -1)
        out["max_tokens"] = n_predict
    if n_probs:
        out["logprobs"] = n_probs
    if not _flag(body, "cache_prompt", True, BadRequest):
        out["cache_prompt"] = False
    return out


def _settings(server: Server, req: GenRequest, stream: bool, n_probs: int) -> dict[str, Any]:
    """llama-server's generation_settings (its params' JSON) for ``req``, with the fields kvrun has."""
    s = req.sampler
    return {"n_ctx": server.model.engine.n_ctx, "model": server.name, "n_predict": req.max_tokens,
            "seed": DEFAULT_SEED if s.seed is None or s.seed < 0 else s.seed, "temperature": s.temperature, "top_k": s.top_k,
            "top_p": s.top_p, "min_p": s.min_p, "typical_p": 1.0, "repeat_last_n": s.repeat_last_n, "repeat_penalty": s.repeat_penalty,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty, "mirostat": 0, "stop": list(req.stop),
            "max_tokens": req.max_tokens, "n_keep": 0, "n_discard": 0, "ignore_eos": req.ignore_eos, "stream": stream,
            "n_probs": n_probs, "min_keep": 0, "grammar": req.grammar or "", "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],
            "speculative": server.model.engine.draft is not None}  # fmt: skip


def _probs(server: Server, entries: list) -> list[dict[str, Any]]:
    """completion_probabilities: each token's id, text, bytes, log-probability and the likeliest ``n_probs``
    (log-softmax of the raw logits, as llama-server's with post_sampling_probs off)."""
    tk = server.model.tokenizer

    def one(t: int, lp: float) -> dict[str, Any]:
        b = tk.token_bytes(t)
        return {"id": t, "token": b.decode("utf-8", "replace"), "bytes": list(b), "logprob": lp}

    return [one(t, lp) | {"top_logprobs": [one(i, x) for i, x in top]} for t, lp, top in entries]


def _timings(run: Run) -> dict[str, Any]:
    st = run.stats
    pms, gms = st.t_prompt * 1e3, st.t_gen * 1e3
    return {"cache_n": max(run.n_prompt - st.n_prompt, 0), "prompt_n": st.n_prompt, "prompt_ms": pms,
            "prompt_per_token_ms": pms / st.n_prompt if st.n_prompt else 0.0, "prompt_per_second": 1e3 * st.n_prompt / pms if pms > 0 else 0.0,
            "predicted_n": st.n_gen, "predicted_ms": gms, "predicted_per_token_ms": gms / st.n_gen if st.n_gen else 0.0,
            "predicted_per_second": 1e3 * st.n_gen / gms if gms > 0 else 0.0}  # fmt: skip


def _complete(server: Server, body: dict[str, Any], ids: list[int], BadRequest: type, laid: Any = None) -> tuple[int, Any]:  # noqa: N803
    """Generate from the prompt ``ids`` (Server.start) and answer as llama-server's /completion; ``laid``: a
    prompt with pictures (:func:`multimodal_prompt`; ``ids`` its ids, the pictures' rows negative)."""
    obody = _openai_body(body, ids, BadRequest)
    if laid is not None:
        obody["_laid"] = laid  # (not JSON: no client can send it)
    stream = _flag(body, "stream", False, BadRequest)
    n_probs = obody.get("logprobs", 0)
    run = server.start(obody, False)
    settings = _settings(server, run.req, stream, n_probs)
    first = next(run.pieces, None)  # the generation starts: a bad request (a prompt too long) fails before the 200
    sent = 0  # logprobs entries already sent (streaming)
    text: list[str] = []

    def final(content: str) -> dict[str, Any]:
        st, n_ctx = run.stats, server.model.engine.n_ctx
        cached = run.n_prompt + st.n_gen - (st.n_gen > 0 and st.stop_reason != "eos")  # (the last token is fed back only to see EOS)
        whole = "".join(text)
        out = {"index": 0, "content": content, "tokens": [], "stop": True, "model": server.name, "tokens_predicted": st.n_gen,
               "tokens_evaluated": run.n_prompt, "generation_settings": settings, "prompt": server.model.detokenize([t for t in ids if t >= 0]),
               "has_new_line": "\n" in whole, "truncated": st.stop_reason == "context full", "stop_type": STOP_TYPE.get(st.stop_reason, "none"),
               "stopping_word": st.stop_word if st.stop_reason == "stop string" else "", "tokens_cached": min(cached, n_ctx),
               "timings": _timings(run)}  # fmt: skip
        if n_probs and not stream:
            out["completion_probabilities"] = _probs(server, run.stats.logprobs)
        return out

    pieces = itertools.chain([first] if first is not None else [], run.pieces)
    if not stream:
        try:
            text.extend(pieces)
        finally:
            run.pieces.close()
        return 200, final("".join(text))

    def events() -> Iterator[dict[str, Any]]:
        nonlocal sent
        try:
            for piece in pieces:
                text.append(piece)
                chunk = {"index": 0, "content": piece, "tokens": [], "stop": False, "tokens_predicted": run.stats.n_gen,
                         "tokens_evaluated": run.n_prompt}  # fmt: skip
                if n_probs:
                    entries = run.stats.logprobs[sent:]
                    sent += len(entries)
                    chunk["completion_probabilities"] = _probs(server, entries)
                yield chunk
            yield final("")  # (streamed: the content came in the pieces, as llama-server's)
        finally:
            run.pieces.close()  # a client gone mid-stream: the generation stops, the slot's cache stays consistent

    return 200, Stream(events())


# ---------------------------------------------------------------- props
def _props(server: Server) -> dict[str, Any]:
    """GET /props: the server's defaults and what it runs."""
    from .. import __version__

    model = server.model
    try:
        template = model.chat_template()
    except KvrunError:  # (an embedding model may have none)
        template = ""
    settings = _settings(server, GenRequest(max_tokens=-1, sampler=SamplerConfig()), True, 0)
    slot = {"id": 0, "id_task": -1, "n_ctx": model.engine.n_ctx, "speculative": settings["speculative"], "is_processing": False,
            "params": settings, "prompt": "",
            "next_token": {"has_next_token": True, "has_new_line": False, "n_remain": -1, "n_decoded": 0, "stopping_word": ""}}  # fmt: skip
    audio = getattr(model.vision, "takes_audio", False)  # (an audio projector, runtime/audio.py)
    return {"default_generation_settings": slot, "total_slots": len(server.slots) if server.slots is not None else 1,
            "model_path": model.engine.path, "chat_template": template, "modalities": {"vision": model.vision is not None and (not audio or getattr(model.vision, "takes_images", False)), "audio": audio},
            "build_info": f"kvrun {__version__}", "is_sleeping": False}  # fmt: skip
