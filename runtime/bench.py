"""Prompt-processing and generation speed, measured as llama-bench does.

``pp N``: N random tokens evaluated in batches on an empty cache.
``tg N``: N tokens evaluated one at a time on an empty cache.
With ``depth`` D (llama-bench's ``-d``) both start after D tokens already in
the cache (prefilled, not timed): ``tg128 @ d4096`` is decode speed with 4096
tokens of context, where attention over the cache matters.
``tg N xB`` (``--parallel``): B sequences generating N tokens each at once,
a forward a step over all of them (a server's parallel slots; llama.cpp's
batched-bench): the figure is all sequences' tokens a second.
Each test is repeated; the figures are mean and standard deviation of tok/s.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .engine import Engine


@dataclass
class BenchResult:
    test: str
    n_tokens: int
    samples: list[float] = field(default_factory=list)  # tok/s per repeat
    # tg on the GPU: the timed decode steps replayed from a captured CUDA graph (None: the CPU);
    # a count short of all of them says where decode ran eagerly, each launch from Python
    replayed: int | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_parts() -> dict[str, int]:
    """Current resident memory split as the kernel counts it (bytes): ``anon``
    (heap, arrays, JIT code), ``file`` (mapped files: the model's pages and
    shared libraries); empty where /proc is not available."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    out[key[3:].lower()] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def _tokens(engine: Engine, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, engine.cfg.n_vocab, n).astype(np.int32)


def _cache_at(engine: Engine, depth: int, rng: np.random.Generator):
    """A fresh cache holding ``depth`` random tokens (prefilled, untimed)."""
    cache = engine.new_cache()
    if depth:
        engine.eval(cache, _tokens(engine, depth, rng))
    return cache


def _label(test: str, depth: int) -> str:
    return f"{test} @ d{depth}" if depth else test


def bench_pp(engine: Engine, n: int, repeats: int, seed: int = 0, depth: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    res = BenchResult(_label(f"pp{n}", depth), n)
    engine.eval(engine.new_cache(), _tokens(engine, min(n, 32), rng))  # warm-up (JIT, caches)
    for _ in range(repeats):
        cache = _cache_at(engine, depth, rng)
        toks = _tokens(engine, n, rng)
        t0 = time.perf_counter()
        engine.eval(cache, toks)
        res.samples.append(n / (time.perf_counter() - t0))
        del cache  # one cache alive at a time: peak RSS is what a user sees
    return res


def bench_tg(engine: Engine, n: int, repeats: int, seed: int = 0, depth: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    res = BenchResult(_label(f"tg{n}", depth), n)
    # warm-up: every kernel a conversation runs, a compressed cache's spill and quantized steps
    # too (a few tokens on an empty cache stay in its fp16 window, and the first timed repeat
    # would load the rest from Numba's cache)
    engine.warm_up()
    graphs = engine.graphs
    for _ in range(repeats):
        cache = _cache_at(engine, depth, rng)
        toks = _tokens(engine, n, rng)
        before = graphs.n_replays if graphs is not None else 0
        t0 = time.perf_counter()
        for t in toks:
            engine.eval(cache, [int(t)])
        res.samples.append(n / (time.perf_counter() - t0))
        if graphs is not None:
            res.replayed = (res.replayed or 0) + graphs.n_replays - before
        del cache
    return res


def bench_tg_parallel(engine: Engine, n: int, n_seq: int, repeats: int, seed: int = 0, depth: int = 0) -> BenchResult:
    """``n_seq`` sequences decoding ``n`` tokens each, every step one forward over all (``Engine.forward_batch``):
    tok/s of all of them together."""
    if n_seq == 1:
        return bench_tg(engine, n, repeats, seed, depth)
    rng = np.random.default_rng(seed)
    res = BenchResult(_label(f"tg{n} x{n_seq}", depth), n * n_seq)
    engine.warm_up()
    outs = [np.empty((1, engine.cfg.n_vocab), np.float32) for _ in range(n_seq)]
    warm = [engine.new_cache() for _ in range(n_seq)]  # (the batch's products at this width, loaded once untimed)
    engine.forward_batch(warm, [_tokens(engine, 1, rng) for _ in warm], [0] * n_seq, outs)
    del warm
    graphs = engine.batch_graphs  # (the GPU: batches of steps replay graphs of their own, runtime/batch_graphs.py)
    for _ in range(repeats):
        caches = [_cache_at(engine, depth, rng) for _ in range(n_seq)]
        toks = _tokens(engine, n * n_seq, rng).reshape(n, n_seq, 1)
        before = graphs.n_replays if graphs is not None else 0
        t0 = time.perf_counter()
        for step in toks:
            engine.forward_batch(caches, list(step), [0] * n_seq, outs)
        res.samples.append(n * n_seq / (time.perf_counter() - t0))
        if graphs is not None:
            res.replayed = (res.replayed or 0) + n_seq * (graphs.n_replays - before)
        del caches
    return res
