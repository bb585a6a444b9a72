"""llama.cpp's pp/tg speed through llama-cpp-python, to compare with `kvrun bench` in one run.

Developer tool (not a dependency)::

    /work/llvenv/bin/python tools/bench_llamacpp.py MODEL.gguf [-t 2] [-r 3] [-d 4096] [--kv q8_0]

Measures like llama-bench: ppN = N random tokens in one batch on an empty
cache; tgN = N tokens one at a time on an empty cache.  ``-d D``: both start
after D tokens already in the cache (prefilled, untimed), as ``kvrun bench -d``.
``--kv TYPE``: llama.cpp's own KV cache quantization (f16, q8_0, q4_0; the
quantized ones need flash attention, which it then turns on; ``--fa`` turns it on
with f16 too).  ``--no-extra-bufts``: without llama.cpp's repacked weight buffers (on an Intel Xeon
VM its AMX buffer segfaults on Q4_1 weights; its AVX-512 kernels then run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from llama_cpp import GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, Llama

KV_TYPES = {"f16": GGML_TYPE_F16, "q8_0": GGML_TYPE_Q8_0, "q4_0": GGML_TYPE_Q4_0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-d", "--depth", type=int, default=0)
    ap.add_argument("--kv", default="f16", choices=sorted(KV_TYPES))
    ap.add_argument("--fa", action="store_true", help="flash attention with an f16 cache too")
    ap.add_argument("--no-extra-bufts", action="store_true",
                    help="no repacked weight buffers (llama.cpp's AMX one segfaults on some Sapphire Rapids VMs)")
    a = ap.parse_args()
    if a.no_extra_bufts:  # (Llama() takes no such argument: the default model parameters it starts from are patched)
        from llama_cpp import llama_cpp as low

        default = low.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
    kv = KV_TYPES[a.kv]
    llm = Llama(
        model_path=a.model, n_ctx=a.depth + max(a.p, a.n) + 16, n_batch=max(a.p, 512), n_threads=a.threads, n_threads_batch=a.threads,
        type_k=kv, type_v=kv, flash_attn=a.fa or a.kv != "f16", verbose=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    n_vocab = llm.n_vocab()
    llm.eval(rng.integers(0, n_vocab, 16).tolist())  # warm-up
    pp, tg = [], []

    def at_depth() -> None:
        llm.reset()
        if a.depth:
            llm.eval(rng.integers(0, n_vocab, a.depth).tolist())

    for _ in range(a.r if a.p else 0):
        at_depth()
        toks = rng.integers(0, n_vocab, a.p).tolist()
        t0 = time.perf_counter()
        llm.eval(toks)
        pp.append(a.p / (time.perf_counter() - t0))
    for _ in range(a.r if a.n else 0):
        at_depth()
        toks = rng.integers(0, n_vocab, a.n).tolist()
        t0 = time.perf_counter()
        for t in toks:
            llm.eval([t])
        tg.append(a.n / (time.perf_counter() - t0))
    at = f" @ d{a.depth}" if a.depth else ""
    for name, s in ((f"pp{a.p}{at}", pp), (f"tg{a.n}{at}", tg)):
        if not s:
            continue
        sd = statistics.stdev(s) if len(s) > 1 else 0.0
        print(f"llama.cpp {a.model.split('/')[-1]} threads={a.threads} {name}: {statistics.fmean(s):.2f} ± {sd:.2f} tok/s")


if __name__ == "__main__":
    main()
