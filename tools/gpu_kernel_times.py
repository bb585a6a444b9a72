"""Device time per kernel of GPU decode steps at a given depth.  (developer tool)

Decodes eagerly (``KVRUN_CUDA_GRAPHS=0``: each launch on its own) after a
prompt of ``--depth`` tokens, with a CUDA event pair around every launch, and
prints per kernel its launches and microseconds a token, against the step's
wall time.  The rest of the wall time is the host (Python, argument conversion,
launch calls) and CuPy's own array operations, which do not go through
``kernels.launch`` and are not timed here.  An event pair also holds the gap
while the GPU waits for the host's launch, so a last column times each kernel
with no host in between: the last step's launches of it, captured alone as a
CUDA graph and replayed.

Why: on an H200 (stop 27) the compressed cache's decode ran 3-4x slower than the
plain cache's (SmolLM2 tg128 @ d512 with ``--kv-bits 2``: 106 tok/s vs 380 for the
plain cache at d0), while the emulator shows the same host time for both (0.3 ms a
replayed step).  Compare, on the device:

    python tools/gpu_kernel_times.py MODEL --depth 512
    python tools/gpu_kernel_times.py MODEL --depth 512 --kv 2

With ``KVRUN_GPU_EMULATE=1`` it runs on the CPU emulator (host timers; the
kernels' figures are then the emulator's, useful only to check the tool).
"""

from __future__ import annotations

import argparse
import collections
import os
import time

os.environ["KVRUN_CUDA_GRAPHS"] = "0"  # eager: a graph replay would hide its launches

from kvrun.cache.kvconfig import KVConfig  # noqa: E402
from kvrun.ops.gpu import kernels as K  # noqa: E402
from kvrun.runtime.engine import Engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--kv", default=None, help="KV cache setting, as kvrun's --kv (default: the plain fp16 cache)")
    ap.add_argument("--depth", type=int, default=512, help="prompt tokens before the timed steps")
    ap.add_argument("-n", type=int, default=32, help="decode steps timed")
    ap.add_argument("--top", type=int, default=25, help="kernels listed")
    a = ap.parse_args()
    kv = KVConfig.parse(a.kv) if a.kv else None
    eng = Engine(a.model, device="gpu", n_ctx=a.depth + a.n + 8, kv=kv)
    rt = K.runtime()
    cuda = rt.name == "cuda"
    cache = eng.new_cache()
    eng.eval(cache, [(7 * i) % 1000 + 10 for i in range(a.depth)])
    for t in (11, 12):  # compiles and warms what the timed steps launch
        eng.eval(cache, [t])
    rt.synchronize()

    marks: list[tuple[str, object, object]] = []
    last_step: list[tuple] = []  # the last timed step's launches, replayed alone below
    plain_launch = rt.launch

    def timed(name, grid, block, args, shared_mem):
        last_step.append((name, grid, block, args, shared_mem))
        if cuda:
            start, end = rt.xp.cuda.Event(), rt.xp.cuda.Event()
            start.record()
            plain_launch(name, grid, block, args, shared_mem)
            end.record()
        else:  # the emulator runs each launch to its end on the host
            start = time.perf_counter()
            plain_launch(name, grid, block, args, shared_mem)
            end = time.perf_counter()
        marks.append((name, start, end))

    rt.launch = timed
    t0 = time.perf_counter()
    for i in range(a.n):
        del last_step[:]
        eng.eval(cache, [13 + i])
    rt.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / a.n
    rt.launch = plain_launch

    per: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for name, start, end in marks:
        ms = rt.xp.cuda.get_elapsed_time(start, end) if cuda else (end - start) * 1e3
        per[name][0] += 1
        per[name][1] += ms
    total = sum(ms for _, ms in per.values()) * 1e3 / a.n  # us a token
    graph_us = _graph_times(rt, last_step, plain_launch) if cuda else {}
    print(f"{a.model.split('/')[-1]}, {a.kv or 'fp16'} cache, depth {a.depth}, {a.n} eager steps on {rt.name}")
    print(f"{'kernel':<32} {'launches/tok':>12} {'us/tok':>9} {'share':>6} {'graph us/tok':>12}")
    for name, (n, ms) in sorted(per.items(), key=lambda kv_: -kv_[1][1])[: a.top]:
        us = ms * 1e3 / a.n
        g = f"{graph_us[name]:>12.1f}" if name in graph_us else f"{'-':>12}"
        print(f"{name:<32} {n / a.n:>12.1f} {us:>9.1f} {us / max(total, 1e-9):>6.1%} {g}")
    print(f"kernels {total / 1e3:.3f} ms a token, {len(marks) / a.n:.0f} launches; wall {wall:.3f} ms a token (the rest: host and CuPy array ops)")
    if graph_us:
        print(f"graph: the last step's launches of each kernel replayed alone, {sum(graph_us.values()) / 1e3:.3f} ms a token in all")


def _graph_times(rt, launches: list[tuple], plain_launch, reps: int = 20) -> dict[str, float]:
    """Device microseconds a token per kernel with no host in between: one step's launches of each kernel
    captured as a CUDA graph and replayed ``reps`` times between two events.  (The eager figures above
    also hold each launch's host-side gap whenever the GPU waits for the host.)  The replays rewrite
    the step's buffers, which no longer matters here."""
    cp = rt.xp
    by_name: dict[str, list[tuple]] = collections.defaultdict(list)
    for launch in launches:
        by_name[launch[0]].append(launch)
    out: dict[str, float] = {}
    for name, ls in by_name.items():
        try:
            graph = rt.capture(lambda ls=ls: [plain_launch(*x) for x in ls])
            graph.launch()  # warm
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(reps):
                graph.launch()
            end.record()
            end.synchronize()
            out[name] = cp.cuda.get_elapsed_time(start, end) * 1e3 / reps
        except Exception as e:  # a kernel that cannot be captured alone: left out
            print(f"{name}: no graph time ({type(e).__name__}: {e})")
    return out


if __name__ == "__main__":
    main()
