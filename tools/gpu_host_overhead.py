"""Host time and kernel launches per decode token of the GPU path, without a GPU.  (developer tool)

Runs the GPU backend on the CPU emulator's runtime with its launcher replaced by
a no-op, so what is timed is kvrun's own host Python per decode token (models,
backend, caches, argument conversion), not kernels and not CuPy's per-launch
cost, and counts the launches.  Small-model decode on a GPU is bound by these.
Noisy on a shared machine (this 2-vCPU one alternates between ~1.3 and ~2.4 ms
for the same code): repeat, and compare versions alternately.

Measured on SmolLM2 Q4_1, this machine: 513 launches / 4.63 ms at the start of
stop 12, 273 launches / ~1.3 ms at its end; 213 launches once the pre-norms rode in
the projections (stop 14; Gemma 3 270M 292 -> 184 with its QK-norm and post-norms fused).
Stop 15: with the plain cache, decode steps replay a captured CUDA graph (runtime/graphs.py):
3.3-5.7 ms eager (KVRUN_CUDA_GRAPHS=0, this machine at its slow speed) vs 0.54-0.62 ms replayed,
most of which is the emulator's replay loop over the 213 recorded launches (one driver call on CUDA).
Stop 16: the compressed cache's steady state replays too (slots planned on the host into the
graph's input buffer): --kv 4 7.67 -> 0.32 ms, --kv 2 4.50 -> 0.32 ms (plain 3.01 -> 0.33 ms).

    KVRUN_GPU_EMULATE=1 python tools/gpu_host_overhead.py MODEL [--kv SPEC] [--prompt N] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KVRUN_GPU_EMULATE", "1")

from kvrun.ops.gpu import kernels as K  # noqa: E402
from kvrun.cache.kvconfig import KVConfig  # noqa: E402
from kvrun.runtime.engine import Engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--profile", action="store_true", help="also print the top functions by own time")
    ap.add_argument("--kv", default=None, help="KV cache setting, as kvrun's --kv (default: the plain fp16 cache)")
    ap.add_argument("--prompt", type=int, default=0, help="also time a prefill of this many tokens")
    ap.add_argument(
        "--strict", action="store_true",
        help="run on the tests' CuPy stand-in (tests/devicexp.py), whose captures record array operations as CuPy's do: "
        "an eviction policy's steps then replay too (its recorded array operations run on the host in a replay, unlike CUDA's)",
    )  # fmt: skip
    a = ap.parse_args()
    kv = KVConfig.parse(a.kv) if a.kv else None
    if a.strict:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from devicexp import StrictRuntime

        K.set_runtime(StrictRuntime())
    eng = Engine(a.model, device="gpu", n_ctx=max(256, 2 * a.prompt), kv=kv)
    rt = K.runtime()
    rt.checks = False  # as on CuPy: no per-launch layout checks
    counts: collections.Counter[str] = collections.Counter()
    record = rt.launch

    def launch(name, *args, **kw):  # kernels do not run: host time only (a graph capture still records them)
        if rt._recording is not None:
            record(name, *args, **kw)
        else:
            counts.update([name])

    rt.launch = launch
    if eng.graphs is not None:
        eng.graphs.verify = False  # (no kernel runs, so no replay to check)
    cache = eng.new_cache()
    if a.prompt:
        t = time.perf_counter()
        eng.eval(cache, [(7 * i) % 1000 + 10 for i in range(a.prompt)])
        n = sum(counts.values())
        print(f"prefill of {a.prompt} tokens: {(time.perf_counter() - t) * 1e3:.0f} ms of host time, {n} launches")
    eng.eval(cache, [1, 2, 3, 4, 5])
    counts.clear()
    best, steps = 1e9, 0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            eng.eval(cache, [6])
        best = min(best, (time.perf_counter() - t) / 20)
        steps += 20
    replays = eng.graphs.n_replays if eng.graphs is not None else 0
    how = f", {replays} of {steps} steps replayed from a captured graph (one driver call each on CUDA)" if replays else ""
    print(f"{best * 1e3:.2f} ms of host time and {sum(counts.values()) / steps:.0f} launches per decode token{how}")
    if a.profile:
        import cProfile
        import pstats

        with cProfile.Profile() as pr:
            for _ in range(20):
                eng.eval(cache, [6])
        pstats.Stats(pr).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
