"""Perplexity over non-overlapping windows, as llama-perplexity computes it.

The text is tokenized once; each window of ``n_ctx`` tokens starts a fresh
cache (its first token replaced by BOS when the model adds one) and only the
second half of the window is scored, so every scored token has at least
``n_ctx/2`` tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from .engine import Engine


@dataclass
class PerplexityResult:
    ppl: float
    n_tokens: int  # tokens scored
    n_chunks: int
    chunk_ppl: list[float]
    ppl_se: float = 0.0  # its standard error, as llama-perplexity's "+/-": ppl * std(nll) / sqrt(n - 1)


def se_of_mean(x: np.ndarray) -> float:
    """Standard error of the mean of ``x``: ``std(x) / sqrt(n)`` with the sample std (0 under two values)."""
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def text_window(tokens: np.ndarray, c: int, n_ctx: int, tokenizer: Any) -> np.ndarray:
    """Window ``c`` of ``n_ctx`` tokens, copied, its first token BOS where the model adds one:
    each window is scored as a text of its own (llama-perplexity's chunks)."""
    window = tokens[c * n_ctx : (c + 1) * n_ctx].copy()
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        window[0] = tokenizer.bos_id
    return window


def log_softmax_at(logits: np.ndarray, targets: np.ndarray, block: int = 16) -> np.ndarray:
    """log p(target) per row.   logits: [n, n_vocab] float32; targets: [n] int.

    A block of rows at a time, the exponentials in float32 and their sums in float64: a float64
    copy of a window's [256, 262144] logits (Gemma 3) is half a gigabyte, and making it, then its
    exponentials, took a fifth of the perplexity run."""
    targets = np.asarray(targets)
    out = np.empty(len(targets), np.float64)
    for r0 in range(0, len(targets), block):
        x = logits[r0 : r0 + block]
        m = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=1, dtype=np.float64)) + m[:, 0]
        out[r0 : r0 + block] = x[np.arange(x.shape[0]), targets[r0 : r0 + block]] - lse
    return out


def perplexity(
    engine: Engine,
    tokens: list[int] | np.ndarray,
    n_ctx: int,
    make_cache: Callable[[], object] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    max_chunks: int = 0,
    on_window: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``tokens`` in windows of ``n_ctx``; ``progress(done, total, ppl_so_far)`` once before
    the first window (done 0, ppl NaN) and after each.  ``on_window(logits, targets)``: each window's scored
    logits and the tokens they predict (kld.BaseWriter stores them for ``--kl-divergence``)."""
    tokens = np.asarray(tokens, np.int64)
    n_chunks = len(tokens) // n_ctx
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise KvrunError(f"the text has {len(tokens)} tokens; perplexity at --ctx {n_ctx} needs at least {n_ctx} (use a longer text or a smaller --ctx)")
    first = n_ctx // 2
    nll: list[np.ndarray] = []  # per scored token, window by window
    chunk_ppl = []
    if progress:
        progress(0, n_chunks, math.nan)  # the work is known and starts (no figure yet)
    for c in range(n_chunks):
        window = text_window(tokens, c, n_ctx, engine.tokenizer)
        cache = make_cache() if make_cache else engine.new_cache()
        logits = engine.eval(cache, window, logits_all=True, logits_start=first)
        lp = log_softmax_at(logits[: n_ctx - 1 - first], tokens[c * n_ctx + first + 1 : (c + 1) * n_ctx])
        if on_window:
            on_window(logits[: n_ctx - 1 - first], tokens[c * n_ctx + first + 1 : (c + 1) * n_ctx])
        nll.append(-lp)
        chunk_ppl.append(math.exp(-float(lp.mean())))
        if progress:
            progress(c + 1, n_chunks, math.exp(float(np.concatenate(nll).mean())))
    all_nll = np.concatenate(nll)
    ppl = math.exp(float(all_nll.mean()))
    return PerplexityResult(ppl, all_nll.size, n_chunks, chunk_ppl, ppl * se_of_mean(all_nll))
