"""Numba's ``parallel`` option for the CPU kernels."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numba.np.ufunc.parallel


# Numba options of a kernel whose rounding must not move: no FMA contraction or reassociation.
# fastmath=False must be said: Numba compiles a callee with its caller's fastmath where the callee
# leaves it unset, so a row loop's rounding depended on which caller (serial matvec, a parallel
# one, a fused kernel) compiled it first: decode logits changed with the thread count and the
# cache's history (Gemma 3, one decode token: up to 0.5 logits between 1 and 2 threads).
EXACT_JIT = dict(cache=True, nogil=True, fastmath=False)


def prange_only() -> dict:
    """Numba's ``parallel`` option for a kernel whose only parallel loop is its explicit prange.

    With plain ``parallel=True`` Numba also turns whole-array statements (``o[:] = 0.0``,
    ``qt[:] = q[t]``, ``np.zeros``) into parallel regions of their own, each a thread-pool
    launch: ~12 of them a decode-attention step cost 10-14 us, as much as the arithmetic at
    a few hundred slots (SmolLM2, 150 slots: 29 -> 15 us a layer).  A fresh dict each time:
    Numba empties the one it is given while compiling, and an empty dict means all passes on.
    """
    return dict(prange=True, comprehension=False, setitem=False, numpy=False, reduction=False,
                inplace_binop=False, stencil=False, fusion=False)  # fmt: skip


def split_threads() -> int:
    """Threads a split-K plan is made for: the pool's size, not the count in use.  A split changes
    the order of a softmax's sums, so planning it for the count in use made a token's result
    depend on ``--threads`` and on what the thread tuner picked meanwhile; run on fewer threads,
    a plan for more costs only the merging of its chunks (a few hundred floats)."""
    return numba.config.NUMBA_NUM_THREADS


def num_threads() -> int:
    """``numba.get_num_threads()`` without its lock: ~0.2 instead of ~1.2 us, and a decode token asks
    ~150 times.  The public call makes sure the pool is up and rebinds Numba's raw getter (its
    threading layer's, thread-local like the public one), which later calls use directly."""
    return _num_threads()


def _first_num_threads() -> int:
    global _num_threads
    n = numba.get_num_threads()  # launches the pool, binding the raw getter
    raw = getattr(numba.np.ufunc.parallel, "_get_num_threads", None)
    try:
        if raw is not None and raw() == n:
            _num_threads = raw
    except Exception:  # noqa: BLE001 - an internal API: keep the public call where it differs
        pass
    return n


_num_threads = _first_num_threads


# ---------------------------------------------------------------- numpy work on Python threads
# Prefill's numpy steps between Numba's kernels (attention's GEMMs on one BLAS thread, the gated
# activation's SIMD exp) release the GIL: a few Python threads run their row blocks side by side.
@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The workers beside the calling thread: one fewer than Numba's pool, the most any count in use asks for."""
    return ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1), thread_name_prefix="kvrun-prefill")


def numpy_threads() -> int:
    """Threads for prefill's numpy steps: Numba's count in use where a prefill holds BLAS at one
    thread (``blas.one_thread_beside_the_gemm``), else one (BLAS's own pool threads its GEMMs)."""
    from .blas import blas_threads

    return num_threads() if blas_threads() == 1 else 1


def each_shared(fn: Callable[[int], None], starts: Sequence[int], nt: int) -> None:
    """fn(s) for each s of starts, dealt round-robin to nt threads: the caller and nt - 1 pool workers.

    Round-robin, since a causal chunk's later query blocks see more keys.  ``fn`` must write
    disjoint outputs and keep its scratch per thread; its arithmetic is the same on any thread.
    """
    nt = max(1, min(len(starts), nt))  # one: all on the calling thread, no pool
    jobs = [_pool().submit(_each, fn, starts[i::nt]) for i in range(1, nt)]
    _each(fn, starts[0::nt])
    for j in jobs:
        j.result()


def _each(fn: Callable[[int], None], starts: Sequence[int]) -> None:
    for s in starts:
        fn(s)
