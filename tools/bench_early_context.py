"""Decode speed early in a long context: what a chat pays before it has filled ``--ctx-size``.

Developer tool::

    python tools/bench_early_context.py MODEL.gguf [-c 4096] [--held 300] [-n 90] [--kv "16;4;2"] [-t 2]

``kvrun bench`` sizes its context to the test (as llama-bench does), so a
cache sized for a long context but holding few tokens is never measured
there.  Here each KV setting gets a cache of ``-c`` tokens, ``--held`` random
tokens are prefilled (untimed, plus 10 decode steps to warm up), then ``-n``
decode steps are timed through the Python engine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("--held", type=int, default=300, help="tokens in the cache when timing starts (about)")
    ap.add_argument("-n", type=int, default=90, help="decode steps timed")
    ap.add_argument("--kv", default="16;4;2", help='";"-separated KV settings (16: the plain fp16 cache)')
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for spec in (s.strip() for s in a.kv.split(";")):
        kv = None if spec == "16" else KVConfig.parse(spec)
        e = Engine(a.model, n_ctx=a.ctx_size, threads=a.threads, kv=kv)
        cache = e.new_cache()
        e.eval(cache, rng.integers(0, e.cfg.n_vocab, max(1, a.held - 10)))
        toks = rng.integers(0, e.cfg.n_vocab, 10 + a.n)
        for t in toks[:10]:
            e.eval(cache, [int(t)])
        t0 = time.perf_counter()
        for t in toks[10:]:
            e.eval(cache, [int(t)])
        dt = (time.perf_counter() - t0) / a.n
        print(f"ctx {a.ctx_size}, ~{a.held} held, kv {spec:>6}: {dt * 1e3:6.2f} ms/token  {1 / dt:6.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
