"""The engine: load a GGUF, prefill in chunks, decode token by token.

``Engine.eval`` is the one place tokens enter the model: it feeds them in
chunks of ``n_batch`` (matrix-matrix work) starting at the cache's offset and
returns the logits the caller asked for.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from ..cache.base import KVCache
from ..cache.batch import BatchedKVCache, batchable
from ..cache.factory import make_cache
from ..cache.kvconfig import KVConfig
from ..cache.picture_block import PictureRows
from ..loaders.config import ModelConfig, load_config
from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.lora import LoraAdapter
from ..loaders.lora import apply as apply_lora
from ..loaders.tokenizer import StreamDecoder, Tokenizer
from ..models import model_class
from ..ops import get_backend
from ..ops.cpu.blas import set_blas_threads
from ..ops.cpu.parallel import num_threads
from ..ops.cpu.topk import top_k
from .batcher import MODEL_THREAD, Batcher
from .gbnf import compiled
from .grammar import JSON_OBJECT, GrammarConstraint
from .sampling import Sampler, SamplerConfig
from .speculative import DraftModel, check_vocab
from .threads import ThreadTuner


def set_threads(n: int | None) -> int:
    """Set Numba's and numpy's BLAS thread counts (None: leave the defaults); returns Numba's count in use."""
    import numba

    if n is not None:
        if n < 1:
            raise KvrunError(f"--threads must be >= 1, got {n}")
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        set_blas_threads(n)  # prefill's GEMMs: numpy's BLAS keeps a pool of its own
    return numba.get_num_threads()


@dataclass
class GenStats:
    """Counters of one generation, printed like llama.cpp's timings."""

    n_prompt: int = 0
    t_prompt: float = 0.0
    n_gen: int = 0
    t_gen: float = 0.0
    stop_reason: str = ""
    stop_word: str = ""  # the stop string that ended the text (llama-server's stopping_word)
    n_drafted: int = 0  # lookup decoding: tokens drafted, and of them kept
    n_accepted: int = 0
    #: with GenRequest.logprobs >= 0: per generated token (id, its logprob, [(id, logprob)] of the top N)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.t_prompt if self.t_prompt > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.n_gen / self.t_gen if self.t_gen > 0 else 0.0


MAX_LOGPROBS = 20  # as OpenAI's top_logprobs
MAX_LOOKUP = 16  # drafted tokens a step at most
DRAFT_BACKOFF = 8  # a draft model unsure or refused: at most this many tokens before it drafts again


class NgramIndex:
    """Prompt lookup's draft source: where each 2- and 3-gram of the text last occurred, updated as the
    text grows (a dict per token, instead of scanning the text every step)."""

    N = 3

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}  # n-gram -> the position after its latest earlier occurrence
        for t in tokens:
            self.push(t)

    def push(self, tok: int) -> None:
        p = len(self.tokens)
        for g in range(2, self.N + 1):  # the n-grams ending just before tok now have a follower: tok
            if p - g >= 0:
                self.last[tuple(self.tokens[p - g : p])] = p
        self.tokens.append(tok)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix n-gram, of 2 or
        3 tokens (one token alone matched too often by chance: measured, 8 of 301 drafts kept on a story)."""
        n = len(self.tokens)
        for g in range(min(self.N, n), 1, -1):
            at = self.last.get(tuple(self.tokens[n - g :]))
            if at is not None:
                return self.tokens[at : at + k]
        return []


@dataclass
class GenRequest:
    max_tokens: int = 256  # -1: no limit (until the end of text, a stop, or a full context), as llama.cpp's -n -1
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    #: -1: none; N >= 0: record each generated token's log-probability under the model (log-softmax of
    #: the raw logits: before temperature, penalties and truncation, as OpenAI's logprobs) and the N likeliest
    logprobs: int = -1
    #: constrain the text to one JSON object (runtime/grammar.py's JSON_OBJECT), as Ollama's format "json"
    json_mode: bool = False
    #: constrain the text to a GBNF grammar's language (runtime/grammar.py), as llama.cpp's --grammar;
    #: a JSON schema comes here converted (runtime/jsonschema.py)
    grammar: str | None = None
    #: the grammar holds only from where the text first contains this (llama.cpp's lazy grammar: Hermes'
    #: tool calls in auto mode); the text before it is free
    grammar_trigger: str | None = None
    #: prompt lookup decoding (llama.cpp's lookup): draft up to this many tokens from an earlier
    #: occurrence of the text's last n-gram and check them in one forward; 0: off
    lookup: int = 0

    def greedy(self) -> bool:
        """Whether the text is greedy decoding's: temperature 0, no penalties (what drafts are checked against)."""
        s = self.sampler
        return s.temperature <= 0 and s.repeat_penalty == 1.0 and not s.presence_penalty and not s.frequency_penalty

    def validate(self) -> None:
        """Raise ValueError for a value no generation can take (the sampler's too)."""
        self.sampler.validate()
        if not -1 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_LOGPROBS} (the likeliest tokens to report), got {self.logprobs}")
        if self.max_tokens < -1:
            raise ValueError(f"max_tokens must be >= 0, or -1 for no limit (until the text ends or the context fills); got {self.max_tokens}")
        if not 0 <= self.lookup <= MAX_LOOKUP:
            raise ValueError(f"lookup must be in 0..{MAX_LOOKUP} (drafted tokens a step), got {self.lookup}")
        if self.grammar_trigger is not None and (self.grammar is None or not self.grammar_trigger):
            raise ValueError("a grammar trigger needs a grammar (and some text)")
        if self.grammar is not None:
            if self.json_mode:
                raise ValueError("JSON mode and a grammar (or JSON schema) are two constraints: give one")
            compiled(self.grammar)  # (a GrammarError, a ValueError, names the fault)
        if self.lookup and (not self.greedy() or self.json_mode or self.grammar is not None):
            raise ValueError("lookup decoding takes greedy sampling (temperature 0, no penalties, no JSON mode or grammar): "
                             "it keeps the drafted tokens greedy decoding would have chosen")  # fmt: skip


def token_logprobs(logits: np.ndarray, tok: int, top: int) -> tuple[int, float, list[tuple[int, float]]]:
    """``tok``'s log-probability under ``logits`` [n_vocab] and the ``top`` likeliest (id, logprob), float64."""
    m = float(logits.max())
    # (the exponentials in float32, summed in float64: a float64 copy of a 262k vocabulary cost more than the rest)
    lse = m + float(np.log(np.exp(logits - np.float32(m)).sum(dtype=np.float64)))
    if 0 < top < logits.size:
        best = top_k(logits, top)  # (best first, of equal logits the lower id: ops/cpu/topk.py)
    else:
        best = np.argsort(-logits, kind="stable") if top else np.arange(0)
    return tok, float(logits[tok]) - lse, [(int(i), float(logits[i]) - lse) for i in best]


DEFAULT_CTX = 4096  # tokens of context when none is asked for (or the model's training context, if shorter)
#: tokens that take a compressed cache past its largest default fp16 window (80 + 4 sinks): it has spilled,
#: calibrated and quantized by then (``Engine.warm_up``, runtime/prewarm.py)
PAST_THE_WINDOW = 100


class Engine:
    """A loaded model: file, config, tokenizer, weights on a backend."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        n_ctx: int | None = None,
        n_batch: int = 256,
        threads: int | None = None,
        kv: KVConfig | None = None,
        lora: list[tuple[str, float]] | None = None,
        draft: str | os.PathLike | None = None,
        draft_max: int = 8,
        draft_p_min: float = 0.75,
    ) -> None:
        t0 = time.perf_counter()
        if n_ctx is not None and n_ctx < 0:  # (before the file opens: a bad flag costs no load)
            raise KvrunError(f"--ctx-size must be >= 0 (0: the model's own context), got {n_ctx}")
        if n_batch < 1:
            raise KvrunError(f"--batch-size must be >= 1, got {n_batch}")
        n_threads = set_threads(threads)
        self.path = str(path)
        self.gguf = GGUFFile(path)
        #: LoRA adapters (path, scale), merged into the weights they touch as the model loads (loaders/lora.py)
        self.lora = [(str(p), float(sc)) for p, sc in (lora or [])]
        if self.lora:
            self.gguf = apply_lora(self.gguf, [LoraAdapter.open(p, sc) for p, sc in self.lora])
        self.cfg: ModelConfig = load_config(self.gguf)
        cls = model_class(self.cfg.arch)
        if n_ctx is None:  # a chat-sized default, never past what the model was trained for
            n_ctx = min(DEFAULT_CTX, self.cfg.n_ctx_train)
        elif n_ctx == 0:
            n_ctx = self.cfg.n_ctx_train
        if n_ctx < 8:
            raise KvrunError(f"--ctx-size must be at least 8, got {n_ctx}")
        self.n_ctx = n_ctx
        self.n_batch = max(1, min(n_batch, n_ctx))
        try:  # KV cache compression (None: plain fp16)
            self.kv = kv.validate(n_ctx) if kv is not None else None
        except ValueError as e:
            raise KvrunError(f"KV cache: {e}") from None
        try:
            self.backend = get_backend(device)
        except ValueError as e:
            raise KvrunError(str(e)) from None
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        self.model = cls(self.gguf, self.cfg, self.backend, self.n_ctx, self.n_batch)
        self.load_time = time.perf_counter() - t0
        # no --threads: decode measures whether all cores or one is faster now (runtime/threads.py)
        self.tuner = ThreadTuner(n_threads) if threads is None and self.backend.name == "cpu" else None
        # --threads, kept: Numba's count is per thread, and a server's handler thread or chat's warm-up
        # thread evaluating would otherwise run on all cores whatever the user asked
        self.threads = n_threads if threads is not None else None
        # on the GPU, one-token decode steps with the plain cache replay captured CUDA graphs
        self.graphs = None
        # (an encoder decodes nothing; a model saying cuda_graphs False makes host decisions a step)
        if self.backend.name == "gpu" and not getattr(self.model, "encoder", False) and getattr(self.model, "cuda_graphs", True):
            from .graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self.model, self.backend.xp, self.cfg.n_vocab, len(self.model.layer_specs()))
        #: on the GPU, batches of one-token steps (a server's slots decoding together) replay graphs of their own
        self.batch_graphs = None
        if self.graphs is not None:
            from .batch_graphs import BatchDecodeGraphs

            self.batch_graphs = BatchDecodeGraphs(self.graphs, self.cfg.n_vocab)
        # the first forward compiles the kernels when their on-disk cache is cold
        self.kernels_cold = not getattr(self.backend, "kernels_cached", lambda: True)()
        #: run once, on the model's thread, before the first forward that makes logits (runtime/prewarm.py's prime:
        #: on a cold kernel cache, this process's share of the compile, ahead of the attention the compile helper has
        #: under way; an app that only embeds never runs it)
        self.before_first_forward: Callable[[], None] | None = None
        #: speculative decoding (runtime/speculative.py): a draft model drafting up to draft_max tokens a
        #: step for greedy requests
        self.draft: DraftModel | None = None
        self.draft_max = draft_max
        if draft is not None:
            if not 1 <= draft_max <= MAX_LOOKUP:
                raise KvrunError(f"--draft-max must be in 1..{MAX_LOOKUP}, got {draft_max}")
            if self.kv is not None:  # (drafted tokens the target refuses leave its cache: a compressed one cannot undo)
                raise KvrunError("a draft model needs the fp16 KV cache: drop the --kv-* flags, or the draft model")
            d = Engine(draft, device=device, n_ctx=self.n_ctx, n_batch=self.n_batch, threads=threads)
            check_vocab(self, d)
            if not 0.0 <= draft_p_min < 1.0:
                raise KvrunError(f"--draft-p-min must be in [0, 1), got {draft_p_min}")
            # (Gemma 4's MTP head drafts from the target's hidden state and cache: models/gemma4_assistant.py)
            self.draft = d.model.drafter(self, draft_p_min) if hasattr(d.model, "drafter") else DraftModel(d, self.cfg.n_vocab, draft_p_min)
        #: continuous batching (runtime/batcher.py): evaluations from several threads (a server's parallel
        #: slots, an app's sessions) meet there and are fed through the model together, one forward at a time
        self.batcher = Batcher(self)

    @property
    def prefill_products(self) -> str | None:
        """How prefill's weight products run on the CPU (an int8 GEMM or float tiles + BLAS); None on a GPU."""
        fn = getattr(self.backend, "prefill_products", None)
        return fn() if fn is not None else None

    # ------------------------------------------------------------------ cache
    def new_cache(self) -> KVCache:
        """An empty cache of the engine's KV setting, context and batch size."""
        return self.cache_for(self.kv, self.n_ctx, self.n_batch)

    def cache_for(self, kv: KVConfig | None, n_ctx: int, n_batch: int) -> KVCache:
        """An empty cache of any KV setting (None: plain fp16) on the engine's backend.

        ``kv-eval`` and ``needle`` compare several settings on one loaded model.
        """
        return KVCache(make_cache(self.model.layer_specs(), n_ctx, n_batch, kv, device=self.backend.name))

    def copy_prefix(self, dst: KVCache, src: KVCache, n_past: int) -> bool:
        """``dst`` holds exactly ``src``'s positions < ``n_past`` without a forward (KVCache.copy_prefix: a server's new
        conversation takes another slot's system prompt), and a draft head's rows of them go with them; False, and
        ``dst`` empty, where the cache cannot copy."""
        if not dst.copy_prefix(src, n_past):
            return False
        # (EAGLE-3's tap keeps the target's rows by position: they follow.  A draft model's own cache follows the text,
        # Gemma 4's assistant reads the row the next forward files: nothing to copy)
        follow = getattr(self.draft, "copy_prefix", None)
        if follow is not None:
            follow(dst, src, n_past)
        return True

    # ------------------------------------------------------------------ eval
    def eval(
        self, cache: KVCache, tokens: list[int] | np.ndarray, logits_all: bool = False, logits_start: int = 0, on_device: bool = False
    ) -> np.ndarray:
        """Feed ``tokens`` after what ``cache`` holds.

        Returns float32 logits ``[len(tokens) - logits_start, n_vocab]`` for the
        tokens from index ``logits_start`` on when ``logits_all``, else
        ``[1, n_vocab]`` for the last token.  ``on_device``: an array of the
        backend's (on the GPU it stays there, for :meth:`Sampler.sample`).
        """
        tokens = self._checked_tokens(tokens, cache.offset)
        if self.model.encoder_decoder and cache.offset == 0:  # T5: the prompt goes through the encoder once, the
            # decoder is fed its start token in its place (models/t5.py), so one row of logits comes back
            if logits_all:
                raise KvrunError(f"{self.cfg.arch} reads the prompt with its encoder: the prompt's tokens have no logits "
                                 "(perplexity, prompt log-probabilities); generate from it instead")  # fmt: skip
            prompt = tokens
            tokens = np.array([self.batcher.call(lambda: self.model.encode_prompt(cache, prompt))], np.int32)
        n = len(tokens)
        n_vocab = self.cfg.n_vocab
        first = min(max(logits_start, 0), n - 1) if logits_all else n - 1
        out = self.backend.zeros((n - first, n_vocab), np.float32) if on_device else np.empty((n - first, n_vocab), np.float32)
        self.batcher.eval(cache, tokens, first, out)  # (fed with whichever other sequences are waiting)
        return out

    @functools.cached_property
    def can_batch(self) -> bool:
        """Whether :meth:`forward_batch` takes several sequences: every layer attention (cache/batch.py), on the CPU or
        the GPU (found once: a server's every step asks)."""
        return (not self.model.encoder and not self.model.encoder_decoder
                and batchable(self.model.layer_specs()))  # (T5: each sequence's encoded prompt is its own)

    def forward_batch(self, caches: list[KVCache], chunks: list[np.ndarray], wants: list[int], outs: list[Any]) -> None:
        """One forward over several sequences: ``chunks[i]`` fed after what ``caches[i]`` holds, the logits of
        its tokens from index ``wants[i]`` on into ``outs[i]`` (``[len(chunks[i]) - wants[i], n_vocab]``).

        The weight products take all the tokens at once; each sequence attends over its own cache
        (cache/batch.py).  Every sequence's tokens are checked first; a forward that fails leaves each cache
        as it was.  On the GPU the logits stay on the device (one copy down for the host ``outs``), and a batch
        of one-token steps replays a CUDA graph of its own (runtime/batch_graphs.py)."""
        if self.batcher.use_worker and not MODEL_THREAD.here():  # (every CPU kernel on one thread: runtime/batcher.py)
            return self.batcher.call(lambda: self.forward_batch(caches, chunks, wants, outs))
        if len(caches) > 1 and not self.can_batch:
            raise KvrunError(f"{self.cfg.arch} on the {self.backend.name} backend feeds one sequence a forward: "
                             "its layers keep state that is not attention")  # fmt: skip
        chunks = [self._checked_tokens(t, c.offset) for t, c in zip(chunks, caches)]
        if self.before_first_forward is not None:
            self._first_forward()
        if self.batch_graphs is not None and all(len(t) == 1 for t in chunks) and not any(wants):
            # decode steps in one order whatever order the sequences queued in: one CUDA graph for the batch
            order = sorted(range(len(caches)), key=lambda i: id(caches[i]))
            caches, chunks, outs = [caches[i] for i in order], [chunks[i] for i in order], [outs[i] for i in order]
        tokens = np.concatenate(chunks)
        if len(tokens) > self.n_batch:
            raise KvrunError(f"a batch of {len(tokens)} tokens is more than --batch-size {self.n_batch}")
        mux = BatchedKVCache(caches, [len(t) for t in chunks])
        rows = np.concatenate([np.arange(b + w, b + len(t)) for b, w, t in zip(mux.bounds, wants, chunks)]).astype(np.int64)
        on_device = self.backend.name != "cpu"
        logits = (self.backend.zeros if on_device else np.empty)((len(rows), self.cfg.n_vocab), np.float32)
        pos = mux.positions()
        prefill = getattr(self.backend, "prefill", None)
        try:
            with prefill() if prefill is not None else contextlib.nullcontext():
                # --threads, else the decode tuner's choice (as a prefill follows it): the leading thread's count
                n_threads = self.threads if self.threads is not None else self.tuner.best if self.tuner is not None else None
                if n_threads is not None and num_threads() != n_threads:
                    numba.set_num_threads(n_threads)
                eager = lambda: self.model.forward(tokens, pos, mux, rows, logits)  # noqa: E731
                steps = len(rows) == len(caches) == len(tokens)  # (one token each, every one's logits wanted)
                if not (steps and self.batch_graphs is not None and self.batch_graphs.decode(caches, mux, tokens, pos, logits, eager)):
                    eager()
        except BaseException:
            for c in caches:  # (what the forward stored before it failed)
                c.truncate(c.offset)
            raise
        mux.advance()
        at, host = 0, None
        for out in outs:
            if on_device and not isinstance(out, type(logits)):  # (a host array: the batch's logits come down once)
                host = self.backend.to_host(logits) if host is None else host
                out[...] = host[at : at + len(out)]
            else:
                out[...] = logits[at : at + len(out)]
            at += len(out)

    def eval_embd(self, cache: KVCache, rows: np.ndarray) -> None:
        """Feed embedding rows ``rows`` [n, n_embd] (an image's, models/siglip.py) after what ``cache`` holds, in place of
        token embeddings: n_batch rows a forward, each seeing the cache and its own forward's rows both ways, as
        llama.cpp's mtmd_helper_eval_chunks feeds an image to Gemma 3.  No logits: text follows an image."""
        rows = np.ascontiguousarray(rows, np.float32)
        if not getattr(self.model, "takes_images", False):
            raise KvrunError(f"{self.cfg.arch} models take no images; kvrun runs images with Gemma 3 (--mmproj)")
        width = getattr(self.model, "n_embd_inp", self.cfg.n_embd)  # (Qwen3-VL's rows carry DeepStack levels beside)
        if rows.ndim != 2 or rows.shape[1] != width:
            raise KvrunError(f"the image rows are {rows.shape[-1]} wide and the model's embeddings {width}: "
                             "the --mmproj file is not this model's projector")  # fmt: skip
        if cache.offset + len(rows) > self.n_ctx:
            raise KvrunError(f"{cache.offset + len(rows)} tokens do not fit the context of {self.n_ctx}; raise --ctx-size")
        none = np.empty((0, self.cfg.n_vocab), np.float32)

        def run() -> None:
            for s in range(0, len(rows), self.n_batch):
                chunk = rows[s : s + self.n_batch]
                pos = np.arange(cache.offset, cache.offset + len(chunk), dtype=np.int32)
                self.model.input_embd = chunk
                try:
                    self.model.forward(np.zeros(len(chunk), np.int32), pos, cache, np.zeros(0, np.int64), none)
                finally:
                    self.model.input_embd = None
                cache.offset += len(chunk)

        cache.media[PictureRows] = PictureRows()  # (its own K/V while its pieces are fed, for a compressed cache)
        try:
            self.batcher.call(run)
        finally:
            cache.media.pop(PictureRows, None)

    def _checked_tokens(self, tokens: list[int] | np.ndarray, offset: int) -> np.ndarray:
        """``tokens`` as int32, or a one-line KvrunError: not integers, empty, past the context after
        ``offset`` cached tokens, outside the vocabulary."""
        if not isinstance(tokens, np.ndarray):  # (a list of floats had been truncated to ids without a word)
            tokens = np.asarray(tokens)
            if tokens.size and tokens.dtype.kind not in "iu":
                raise KvrunError(f"token ids must be integers, got {tokens.dtype} values such as {tokens.flat[0]!r}")
        tokens = np.asarray(tokens, dtype=np.int32)
        n = len(tokens)
        if n == 0:
            raise KvrunError("nothing to evaluate: the prompt is empty")
        if offset + n > self.n_ctx:
            raise KvrunError(
                f"{offset + n} tokens do not fit the context of {self.n_ctx}; "
                "raise --ctx-size, shorten the prompt, or /reset the chat"
            )
        bad = (tokens < 0) | (tokens >= self.cfg.n_vocab)
        if bad.any():
            raise KvrunError(f"token id {int(tokens[bad][0])} is outside the vocabulary of {self.cfg.n_vocab}")
        return tokens

    def embed(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """The final-normed hidden state of every token of ``tokens`` (on a fresh cache), float32
        ``[len(tokens), n_embd]``: what embeddings pool (llama.cpp's ``result_norm``)."""
        if self.model.encoder:  # (BERT: the whole text at once, no cache, as long as it was trained for)
            n_max = self.cfg.n_ctx_train
            if len(tokens) > n_max:
                raise KvrunError(f"{len(tokens)} tokens are more than the {n_max} this encoder reads at once; shorten the text")
            checked = self._checked_tokens(tokens, 0)
            return self.batcher.call(lambda: self.model.encode(checked))  # (the model's buffers: one thread at a time)
        tokens = self._checked_tokens(tokens, 0)
        cache = self.new_cache()
        on_device = self.backend.name != "cpu"
        out = self.backend.zeros((len(tokens), self.cfg.n_embd), np.float32) if on_device else np.empty((len(tokens), self.cfg.n_embd), np.float32)
        def run() -> None:
            self.model.embedding = True
            try:
                self._eval_chunks(cache, tokens, 0, out, graphs=False)
            finally:
                self.model.embedding = False

        self.batcher.call(run)
        return self.backend.to_host(out) if on_device else out

    def _eval_chunks(self, cache: KVCache, tokens: np.ndarray, first: int, out, graphs: bool = True) -> None:
        """The forward passes of :meth:`eval`, n_batch tokens each; logits from token ``first`` on into ``out``
        (``graphs``: a one-token step may replay a CUDA graph).  A prefill runs inside what the backend
        holds around one (the CPU: BLAS at one thread beside its VNNI GEMM)."""
        prefill = getattr(self.backend, "prefill", None)
        with prefill() if len(tokens) > 1 and prefill is not None else contextlib.nullcontext():
            self._forward_chunks(cache, tokens, first, out, graphs)

    def _first_forward(self) -> None:
        """:attr:`before_first_forward`, once (the model's thread runs one forward at a time)."""
        hook, self.before_first_forward = self.before_first_forward, None
        if hook is not None:
            hook()

    def _forward_chunks(self, cache: KVCache, tokens: np.ndarray, first: int, out, graphs: bool) -> None:
        if self.before_first_forward is not None and not self.model.embedding:  # (an embedding decodes nothing: the
            self._first_forward()  # hook waits for a forward that makes logits)
        n = len(tokens)
        if self.threads is not None and num_threads() != self.threads:
            numba.set_num_threads(self.threads)
        for s in range(0, n, self.n_batch):
            chunk = tokens[s : s + self.n_batch]
            T = len(chunk)
            pos = np.arange(cache.offset, cache.offset + T, dtype=np.int32)
            lo = max(first, s)  # first token of this chunk whose logits are wanted
            if lo < s + T:
                rows = np.arange(lo - s, T)
                dst = out[lo - first : s + T - first]
            else:  # no logits wanted from this chunk: skip the output head
                rows = np.zeros(0, np.int64)
                dst = out[:0]
            if T == 1 and len(rows) == 1 and graphs and self.graphs is not None:  # replayed from a CUDA graph, or run and captured
                eager = lambda: self.model.forward(chunk, pos, cache, rows, dst)  # noqa: E731
                if self.graphs.decode(cache, int(chunk[0]), int(pos[0]), dst, eager):
                    cache.offset += T
                    continue
            tune = T == 1 and self.tuner is not None
            if tune:
                self.tuner.begin()
                t1 = time.perf_counter()
            self.model.forward(chunk, pos, cache, rows, dst)
            if tune:
                self.tuner.end(time.perf_counter() - t1)
            cache.offset += T

    def warm_up(self) -> None:
        """Run once each kernel a conversation runs, on a scratch cache: a prefill past the largest
        fp16 window (so a compressed cache also spills, calibrates and quantizes), then two decode
        steps.  Loading the kernels from Numba's cache costs the first reply ~0.3-0.5 s here;
        ``kvrun chat`` runs this while the user types.  The decode-thread tuner is left out."""
        if self.model.encoder:  # an embedding model: one short text
            self.embed(np.arange(min(8, self.cfg.n_ctx_train), dtype=np.int32) % self.cfg.n_vocab)
            return
        cache = self.new_cache()
        # (32 tokens reach the prefill GEMM's parallel path)
        n = max(1, min(self.n_ctx - 2, PAST_THE_WINDOW if self.kv is not None else 32))
        tokens = np.arange(n, dtype=np.int32) % self.cfg.n_vocab
        tuner, self.tuner = self.tuner, None
        try:
            self.eval(cache, tokens)
            for t in tokens[:2]:
                if cache.offset < self.n_ctx:
                    self.eval(cache, [int(t)])
        finally:
            self.tuner = tuner

    # ------------------------------------------------------------------ generate
    def generate_tokens(self, cache: KVCache, prompt: list[int], req: GenRequest, stats: GenStats | None = None,
                        context: list[int] | None = None) -> Iterator[int]:  # fmt: skip
        """Prefill ``prompt`` then yield sampled token ids until EOS/EOT, a stop, or max_tokens (-1: none).
        ``context``: the tokens ``cache`` already holds before ``prompt`` (a draft model reads the whole text)."""
        req.validate()
        if req.lookup and self.kv is not None:  # (a compressed cache's evictions and calibration are not undone by truncating)
            raise KvrunError("lookup decoding needs the fp16 KV cache: drop the --kv-* flags, or lookup")
        stats = stats if stats is not None else GenStats()
        sampler = Sampler(req.sampler)
        history = list(prompt)
        t0 = time.perf_counter()
        # on the GPU the logits stay there: a greedy step brings down one id, a top-k draw k candidates
        on_device = self.backend.name != "cpu"
        logits = self.eval(cache, prompt, on_device=on_device)[-1]
        stats.n_prompt, stats.t_prompt = len(prompt), time.perf_counter() - t0
        grammar = req.grammar if req.grammar is not None else JSON_OBJECT if req.json_mode else None
        constraint = GrammarConstraint(self.tokenizer, self.cfg.n_vocab, grammar, req.grammar_trigger) if grammar is not None else None
        ngrams = NgramIndex(history) if req.lookup else None
        # the draft model drafts for greedy, unconstrained requests (its drafts are checked greedily)
        drafter = self.draft if self.draft is not None and not req.lookup and constraint is None and req.greedy() else None
        context = list(context or [])
        with self.batcher.sequence(cache):
            yield from self._generate(cache, logits, history, req, stats, sampler, constraint, ngrams, drafter, context)

    def _generate(self, cache: KVCache, logits: Any, history: list[int], req: GenRequest, stats: GenStats, sampler: Sampler,
                  constraint: GrammarConstraint | None, ngrams: NgramIndex | None, drafter: DraftModel | None,
                  context: list[int]) -> Iterator[int]:  # fmt: skip
        """The sampling loop of :meth:`generate_tokens`, from the prompt's ``logits`` on."""
        on_device = self.backend.name != "cpu"
        xp = getattr(self.backend, "xp", np)
        eot = self.tokenizer.eot_ids
        confirmed: list[tuple[int, Any]] = []  # lookup: drafted tokens the model confirmed (in the cache), with their logits
        backoff, resume_at = 1, 0  # lookup: after a draft wholly refused, none for `backoff` tokens (doubling while refused)
        t1 = time.perf_counter()
        try:
            for _ in range(req.max_tokens) if req.max_tokens >= 0 else itertools.count():
                if confirmed:
                    tok, row = confirmed.pop(0)
                elif constraint is not None:  # the logits come to the host, masked
                    tok, row = sampler.sample(constraint.mask(self.backend.to_host(logits).reshape(-1)), history, np, np.asarray), logits
                    constraint.accept(tok)
                else:
                    tok, row = sampler.sample(logits, history, xp, self.backend.to_host), logits
                if tok in eot and not req.ignore_eos:
                    stats.stop_reason = "eos"
                    return
                if req.logprobs >= 0:  # (the whole vocabulary to the host: only when asked for)
                    stats.logprobs.append(token_logprobs(self.backend.to_host(row).reshape(-1), tok, req.logprobs))
                history.append(tok)
                stats.n_gen += 1
                yield tok
                if ngrams is not None:
                    ngrams.push(tok)
                if cache.offset >= self.n_ctx:
                    stats.stop_reason = "context full"
                    return
                if row is not logits:  # a confirmed draft token: already in the cache, its follower's logits known
                    continue
                # (at most a batch drafted: a window's or a chunk's ring holds n_batch tokens past what it needs, so a draft
                # wholly refused can still be truncated away, cache/plain.py can_truncate)
                room = min(self.n_ctx - cache.offset - 1, self.n_batch)
                draft = []
                if stats.n_gen >= resume_at:
                    if drafter is not None:  # (it feeds the draft model what it has not seen yet, then drafts)
                        draft = drafter.draft(context + history, min(self.draft_max, room), cache)
                        if not draft:  # the draft model was unsure: skip its forwards for a while, catch up in one
                            resume_at, backoff = stats.n_gen + backoff, min(2 * backoff, DRAFT_BACKOFF)
                    elif ngrams is not None:
                        draft = ngrams.draft(min(req.lookup, room))
                if not draft:
                    logits = self.eval(cache, [tok], on_device=on_device)[-1]
                    continue
                # one forward over tok and the draft: row i predicts the token after draft[:i]; the draft is kept
                # as far as greedy decoding agrees with it, the rest leaves the cache
                rows = self.eval(cache, [tok, *draft], logits_all=True, on_device=on_device)
                picks = self.backend.to_host(xp.argmax(rows[: len(draft)], axis=1)).tolist()  # one copy down
                n_ok = next((i for i, (d, p) in enumerate(zip(draft, picks)) if d != p), len(draft))
                cache.truncate(cache.offset - (len(draft) - n_ok))
                confirmed = [(draft[i], rows[i]) for i in range(n_ok)]
                stats.n_drafted += len(draft)
                stats.n_accepted += n_ok
                logits = rows[n_ok]
                if n_ok == 0:  # a wasted forward: wait before drafting again, longer each time in a row
                    resume_at, backoff = stats.n_gen + backoff, min(2 * backoff, 64 if drafter is None else DRAFT_BACKOFF)
                else:
                    backoff = 1
            stats.stop_reason = "length"
        finally:
            stats.t_gen = time.perf_counter() - t1
            if confirmed:  # confirmed tokens never given out leave the cache: it holds what was generated
                cache.truncate(cache.offset - len(confirmed))

    def generate_reusing(self, cache: KVCache, held: list[int], ids: list[int], req: GenRequest, stats: GenStats | None = None) -> Iterator[int]:
        """:meth:`generate_tokens` for ``ids`` on a cache that holds ``held`` (its tokens in order, updated in
        place to what the cache holds after): the longest prefix they share stays, at least the last token of
        ``ids`` is evaluated (for its logits), the rest is prefilled, as llama.cpp's chat and server reuse theirs."""
        if self.model.encoder_decoder:  # (T5: the cache holds the decoder's tokens, not the prompt: nothing to reuse)
            cache.reset()
            held.clear()
            yield from self.generate_tokens(cache, ids, req, stats)
            return
        n_keep = min(shared_prefix(held, ids), len(ids) - 1)
        if n_keep < cache.offset:
            n_keep = cache.truncate(n_keep)  # (a convolution's state may not go back that far: then all is fed again)
        del held[n_keep:]
        held.extend(ids[n_keep:])
        out: list[int] = []
        try:
            for t in self.generate_tokens(cache, ids[n_keep:], req, stats, context=ids[:n_keep]):
                out.append(t)
                yield t
        finally:  # the cache holds the prompt and every generated token that was fed back
            held.extend(out[: cache.offset - len(held)])

    def generate_text(self, cache: KVCache, prompt: list[int], req: GenRequest, stats: GenStats | None = None) -> Iterator[str]:
        """Like :meth:`generate_tokens` but yields text pieces, honouring stop strings."""
        stats = stats if stats is not None else GenStats()
        return stream_text(self.tokenizer, self.generate_tokens(cache, prompt, req, stats), req.stop, stats)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def stream_text(tokenizer: Tokenizer, ids: Iterator[int], stop: tuple[str, ...], stats: GenStats) -> Iterator[str]:
    """Token ids -> text pieces; never splits a UTF-8 character, never prints a stop string.

    Text that could be the start of a stop string is held back until it is
    known not to be one.
    """
    dec = StreamDecoder(tokenizer)
    pending = ""
    hold = max((len(s) for s in stop), default=0)
    for tok in ids:
        pending += dec.push(tok)
        if stop:
            hits = [pending.find(s) for s in stop if s and s in pending]
            if hits:
                if pending[: min(hits)]:
                    yield pending[: min(hits)]
                stats.stop_reason = "stop string"
                stats.stop_word = min((s for s in stop if s and s in pending), key=pending.find)
                return
            safe = len(pending) - hold + 1
            if safe > 0:
                yield pending[:safe]
                pending = pending[safe:]
        elif pending:
            yield pending
            pending = ""
    pending += dec.flush()
    if pending:
        yield pending
