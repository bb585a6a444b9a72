"""Prompt-processing and generation speed, measured as llama-bench does.

``pp N``: N random tokens evaluated in batches on an empty cache.
``tg N``: N tokens evaluated one at a time on an empty cache.
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

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tokens(engine: Engine, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, engine.cfg.n_vocab, n).astype(np.int32)


def bench_pp(engine: Engine, n: int, repeats: int, seed: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    res = BenchResult(f"pp{n}", n)
    engine.eval(engine.new_cache(), _tokens(engine, min(n, 32), rng))  # warm-up (JIT, caches)
    for _ in range(repeats):
        cache = engine.new_cache()
        toks = _tokens(engine, n, rng)
        t0 = time.perf_counter()
        engine.eval(cache, toks)
        res.samples.append(n / (time.perf_counter() - t0))
    return res


def bench_tg(engine: Engine, n: int, repeats: int, seed: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    res = BenchResult(f"tg{n}", n)
    warm = engine.new_cache()
    for t in _tokens(engine, 4, rng):
        engine.eval(warm, [int(t)])
    for _ in range(repeats):
        cache = engine.new_cache()
        toks = _tokens(engine, n, rng)
        t0 = time.perf_counter()
        for t in toks:
            engine.eval(cache, [int(t)])
        res.samples.append(n / (time.perf_counter() - t0))
    return res
