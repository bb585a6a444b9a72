"""Measure KV cache compressions against the uncompressed cache on real text.

:func:`kv_eval` decodes a text token by token — positions ``0 .. ctx-1``, one
token per forward call, so eviction and quantization act exactly as in a long
generation — with every configuration *and* the plain fp16 cache.  The
configurations advance in lock step (position t for all of them, then t+1),
so their next-token distributions are compared as they are produced and
nothing of vocabulary size is kept per position.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ..cache.factory import bits_per_value
from ..cache.kvconfig import KVConfig
from ..loaders.errors import KvrunError
from .engine import Engine
from .perplexity import se_of_mean, text_window


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def paired_dppl(nll: np.ndarray, nll_ref: np.ndarray) -> tuple[float, float]:
    """Perplexity change of ``nll`` against ``nll_ref`` (per-token negative log-likelihoods of the
    same tokens), in percent, and its standard error: the tokens are paired, so the error comes
    from the spread of the per-token differences, much smaller than either perplexity's own.

    ``100 (exp(mean d) - 1)`` with ``d = nll - nll_ref``; error ``100 exp(mean d) std(d) / sqrt(n)``
    (delta method).  One token gives an error of 0.
    """
    d = np.asarray(nll, np.float64) - np.asarray(nll_ref, np.float64)
    n = d.size
    if n == 0:
        return 0.0, 0.0
    g = math.exp(d.mean())
    return 100.0 * (g - 1.0), 100.0 * g * se_of_mean(d)


def kv_eval(
    engine: Engine,
    tokens: list[int] | np.ndarray,
    configs: list[KVConfig],
    ctx: int,
    progress: Callable[[int, int], None] | None = None,
    score_from: float = 0.5,
    windows: int = 1,
) -> list[dict]:
    """Quality and size of KV cache configurations against the fp16 cache.

    Parameters
    ----------
    engine : Engine
        A loaded model with ``engine.n_ctx >= ctx``.
    tokens : list[int] or ndarray
        The text, at least ``ctx`` tokens (the first is replaced by BOS when
        the model adds one, as llama-perplexity does).
    configs : list[KVConfig]
        The configurations to measure.
    ctx : int
        Tokens decoded; every cache is sized for ``ctx``.
    progress : callable, optional
        ``progress(done, total)`` after each decoded token.
    score_from : float
        Share of the positions skipped before scoring: with 0.5 the second
        half is scored, where every token has at least ``ctx/2`` of context
        (and evicting/quantizing caches are past their budgets).
    windows : int
        Consecutive windows of ``ctx`` tokens, each decoded from empty caches
        (and starting with BOS where the model adds one), whose scored tokens
        are pooled: the standard errors narrow as ``1/sqrt(windows)``.

    Returns
    -------
    list[dict]
        Per configuration: ``config`` (spec string), ``kv_bytes`` (allocated),
        ``bits_per_value`` (storage and metadata per K/V value at ``ctx``),
        ``ppl``, ``ppl_ref``, ``dppl_pct`` (vs fp16, percent) and ``dppl_se_pct`` (its
        standard error over the scored tokens, see :func:`paired_dppl`), ``kl`` (mean
        KL(fp16 || config) of next-token distributions, nats), ``top1``
        (agreement with the fp16 argmax), ``tok_s`` (decode tokens/s of that
        configuration over the last quarter of the positions, i.e. with at
        least ``3 ctx / 4`` tokens of context; ``tok_s_ref`` likewise for fp16).
    """
    # (on the model thread, as every forward: runtime/batcher.py)
    return engine.batcher.call(lambda: _kv_eval(engine, tokens, configs, ctx, progress, score_from, windows))


def _kv_eval(engine: Engine, tokens: list[int] | np.ndarray, configs: list[KVConfig], ctx: int,
             progress: Callable[[int, int], None] | None, score_from: float, windows: int) -> list[dict]:  # fmt: skip
    tokens = np.asarray(tokens, np.int32)
    if windows < 1:
        raise KvrunError(f"windows must be >= 1, got {windows}")
    if len(tokens) < ctx * windows:
        what = f"{windows} windows of ctx {ctx}" if windows > 1 else f"ctx {ctx}"
        raise KvrunError(
            f"the text has {len(tokens)} tokens; kv-eval at {what} needs at least {ctx * windows} (use a longer text, a smaller --ctx or fewer --windows)"
        )
    if ctx > engine.n_ctx:
        raise KvrunError(f"ctx {ctx} exceeds the engine's context of {engine.n_ctx}")
    for kv in configs:
        kv.validate(ctx)
    M = len(configs) + 1
    logits = np.zeros((M, engine.cfg.n_vocab), np.float32)
    row = np.zeros(1, np.int64)
    first = int(ctx * score_from)
    t_speed = ctx - 1 - max(1, (ctx - 1) // 4)  # timing starts here
    kl, top1 = np.zeros(M), np.zeros(M)
    per_window = max(ctx - 1 - first, 0)
    nll_tok = np.zeros((M, per_window * windows))  # per scored token, for the paired errors
    secs = np.zeros(M)
    n_scored = 0
    for w in range(windows):
        text = text_window(tokens, w, ctx, engine.tokenizer)
        caches = [engine.cache_for(None, ctx, 1)] + [engine.cache_for(kv, ctx, 1) for kv in configs]
        for t in range(ctx - 1):
            tok = text[t : t + 1]
            pos = np.full(1, t, np.int32)
            for i, cache in enumerate(caches):
                t0 = time.perf_counter()
                engine.model.forward(tok, pos, cache, row, logits[i : i + 1])
                cache.offset += 1
                if t >= t_speed:
                    secs[i] += time.perf_counter() - t0
            if t >= first:
                lp = _log_softmax(logits)  # [M, n_vocab]
                nll_tok[:, n_scored] = -lp[:, text[t + 1]]
                p_ref = np.exp(lp[0])
                kl += (p_ref[None, :] * (lp[0][None, :] - lp)).sum(axis=1)
                top1 += lp.argmax(axis=1) == lp[0].argmax()
                n_scored += 1
            if progress:
                progress(w * (ctx - 1) + t + 1, windows * (ctx - 1))
    n = max(n_scored, 1)
    nll_tok = nll_tok[:, :n_scored]
    ppl = np.exp(nll_tok.sum(axis=1) / n)
    dppl = [paired_dppl(nll_tok[i], nll_tok[0]) for i in range(M)]
    tok_s = windows * (ctx - 1 - t_speed) / np.maximum(secs, 1e-9)
    return [
        {
            "config": str(kv),
            "kv_bytes": int(caches[i].nbytes()),
            "bits_per_value": bits_per_value(caches[i].layers, ctx),
            "ppl": float(ppl[i]),
            "ppl_ref": float(ppl[0]),
            "dppl_pct": float(dppl[i][0]),
            "dppl_se_pct": float(dppl[i][1]),
            "kl": float(kl[i] / n),
            "top1": float(top1[i] / n),
            "tok_s": float(tok_s[i]),
            "tok_s_ref": float(tok_s[0]),
        }
        for i, kv in enumerate(configs, start=1)
    ]


def format_table(results: list[dict]) -> str:
    """The results as a fixed-width table (one row per configuration)."""
    head = f"{'config':<44} {'kv_bytes':>11} {'bits/val':>8} {'ppl':>9} {'dPPL%':>7} {'±':>5} {'KL':>8} {'top1':>6} {'tok/s':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['config']:<44} {r['kv_bytes']:>11,} {r['bits_per_value']:>8.2f} {r['ppl']:>9.4f} "
            f"{r['dppl_pct']:>+7.2f} {r['dppl_se_pct']:>5.2f} {r['kl']:>8.5f} {r['top1']:>6.3f} {r['tok_s']:>6.2f}"
        )
    return "\n".join(lines)


__all__ = ["format_table", "kv_eval", "paired_dppl"]
