"""llama.cpp's speed with several sequences generating at once (its batched-bench's TG), to compare with
``kvrun bench -np 1,2,4,8`` in one run.

Developer tool (not a dependency)::

    /work/llvenv/bin/python tools/bench_llamacpp_batched.py MODEL.gguf [-t 2] [-n 64] [-r 3] [-np 1,2,4,8] [--no-extra-bufts]

For each B: B sequences, each after ``-d`` random tokens (prefilled, untimed), then ``-n`` steps of one
``llama_decode`` over one new token of every sequence (the logits of each), timed: all B sequences'
tokens a second, as ``kvrun bench``'s ``tgN xB``.  Each sequence has a KV stream of its own
(``kv_unified`` off: attention reads only its own tokens, as kvrun's slots).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from llama_cpp import Llama
from llama_cpp import llama_cpp as L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-d", "--depth", type=int, default=16)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-np", "--parallel", default="1,2,4,8")
    ap.add_argument("--no-extra-bufts", action="store_true", help="no repacked weight buffers (see bench_llamacpp.py)")
    a = ap.parse_args()
    if a.no_extra_bufts:
        default = L.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        L.llama_model_default_params = params
    llm = Llama(model_path=a.model, n_ctx=64, n_threads=a.threads, verbose=False)  # (the model; contexts made below)
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(0)
    for B in [int(x) for x in a.parallel.split(",")]:
        cp = L.llama_context_default_params()
        cp.n_ctx = B * (a.depth + a.n + 16)
        cp.n_batch = cp.n_ubatch = max(512, B)
        cp.n_seq_max = B
        cp.n_threads = cp.n_threads_batch = a.threads
        cp.kv_unified = False
        ctx = L.llama_init_from_model(llm.model, cp)
        batch = L.llama_batch_init(max(512, B * a.depth, B), 0, B)

        def feed(tokens: list[list[int]], start: int) -> None:
            n = 0
            for s, toks in enumerate(tokens):
                for i, t in enumerate(toks):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = int(t), start + i, 1
                    batch.seq_id[n][0] = s
                    batch.logits[n] = i == len(toks) - 1
                    n += 1
            batch.n_tokens = n
            if L.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed")

        samples = []
        for rep in range(a.r + 1):  # (the first: warm-up, untimed)
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            feed([rng.integers(0, n_vocab, a.depth).tolist() for _ in range(B)], 0)
            steps = rng.integers(0, n_vocab, (a.n, B))
            t0 = time.perf_counter()
            for i, step in enumerate(steps):
                feed([[t] for t in step], a.depth + i)
            L.llama_synchronize(ctx)
            if rep:
                samples.append(a.n * B / (time.perf_counter() - t0))
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
        print(f"llama.cpp {a.model.split('/')[-1]} threads={a.threads} tg{a.n} x{B} @ d{a.depth}: {statistics.fmean(samples):.2f} ± {sd:.2f} tok/s")


if __name__ == "__main__":
    main()
