"""llama.cpp's pp/tg speed through llama-cpp-python, to compare with `kvrun bench` in one run.

Developer tool (not a dependency)::

    /tmp/oracle/bin/python tools/bench_llamacpp.py MODEL.gguf [-t 2] [-r 3]

Measures like llama-bench: ppN = N random tokens in one batch on an empty
cache; tgN = N tokens one at a time on an empty cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=max(a.p, a.n) + 16, n_batch=a.p, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    rng = np.random.default_rng(0)
    n_vocab = llm.n_vocab()
    llm.eval(rng.integers(0, n_vocab, 16).tolist())  # warm-up
    pp, tg = [], []
    for _ in range(a.r):
        llm.reset()
        toks = rng.integers(0, n_vocab, a.p).tolist()
        t0 = time.perf_counter()
        llm.eval(toks)
        pp.append(a.p / (time.perf_counter() - t0))
    for _ in range(a.r):
        llm.reset()
        toks = rng.integers(0, n_vocab, a.n).tolist()
        t0 = time.perf_counter()
        for t in toks:
            llm.eval([t])
        tg.append(a.n / (time.perf_counter() - t0))
    for name, s in ((f"pp{a.p}", pp), (f"tg{a.n}", tg)):
        sd = statistics.stdev(s) if len(s) > 1 else 0.0
        print(f"llama.cpp {a.model.split('/')[-1]} threads={a.threads} {name}: {statistics.fmean(s):.2f} ± {sd:.2f} tok/s")


if __name__ == "__main__":
    main()
