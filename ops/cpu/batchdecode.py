"""Decode steps of several sequences' fp16 rings in one call: a server's parallel slots.

A batched forward (``runtime/batcher.py``) feeds one decode token of each of B
sequences; each attends over its own cache.  One Python call per sequence and
layer (``decode_step_f16``) cost ~15 us of dispatch against ~2 us of arithmetic
on a small model: 16 sequences spent 7.8 of a 35 ms step (SmolLM2) there.  Here
one call takes every sequence of a layer: the caches' arrays are passed as their
addresses (a list of arrays would be a typed list, rebuilt every step, or a tuple,
compiled again for every batch size) and each sequence runs ``decode_step_f16``'s
very arithmetic, so a sequence's result is the one it gets alone, bit for bit.

The threads share out the sequences, each attended on one thread (the serial
variants below), rather than each sequence's heads: one parallel region a layer
instead of one a sequence, which matters most when another process holds a core
and a region waits for its slowest thread.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

from .parallel import prange_only
from .qattention import _JIT, F16_ROWS, _attend_decode_q, _variant, decode_step_f16

# decode_step_f16 and the fp16 attention it calls, compiled without threads (a prange is a range): the same
# arithmetic (a split-K plan is made for split_for, not for the threads that run it)
_attend_decode_f16_serial = nb.njit(**_JIT)(
    _variant(_attend_decode_q.py_func, "_attend_decode_f16_serial", **F16_ROWS)
)
_decode_step_f16_serial = nb.njit(**_JIT)(
    _variant(decode_step_f16.py_func, "_decode_step_f16_serial", _attend_decode_f16=_attend_decode_f16_serial)
)


@intrinsic
def _u16_at(typingctx, addr):
    """The uint16* at address ``addr`` (int64)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint16)))

    return types.CPointer(types.uint16)(types.int64), codegen


@intrinsic
def _i32_at(typingctx, addr):
    """The int32* at address ``addr`` (int64)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.int32)))

    return types.CPointer(types.int32)(types.int64), codegen


@intrinsic
def _f32_at(typingctx, addr):
    """The float32* at address ``addr`` (int64)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return types.CPointer(types.float32)(types.int64), codegen


@nb.njit(parallel=prange_only(), **_JIT)
def decode_steps_f16(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, bounds: np.ndarray, addrs: np.ndarray,
                     cap: int, gqa: int, used: np.ndarray, window: int, scale: float, softcap: float, out: np.ndarray,
                     split_for: int, sink_logits: np.ndarray) -> None:  # fmt: skip
    """``decode_step_f16`` for each sequence ``i`` of a batch: rows ``bounds[i]:bounds[i + 1]`` of q [T, n_head, D],
    k [T, n_kv, D], v [T, n_kv, Dv], pos [T] and out, over the ring whose k16 [n_kv, cap, D] uint16, v16, kpos [cap]
    int32 and score scratch [n_kv, gqa, cap] float32 are at ``addrs[i]``; ``used[i]``: its slots written so far, updated."""
    n_kv, D, Dv = k.shape[1], k.shape[2], v.shape[2]
    for i in nb.prange(bounds.shape[0] - 1):
        lo, hi = bounds[i], bounds[i + 1]
        k16 = nb.carray(_u16_at(addrs[i, 0]), (n_kv, cap, D))
        v16 = nb.carray(_u16_at(addrs[i, 1]), (n_kv, cap, Dv))
        kpos = nb.carray(_i32_at(addrs[i, 2]), (cap,))
        s_all = nb.carray(_f32_at(addrs[i, 3]), (n_kv, gqa, cap))
        used[i] = _decode_step_f16_serial(q[lo:hi], k[lo:hi], v[lo:hi], pos[lo:hi], k16, v16, kpos, used[i], window, scale,
                                          softcap, out[lo:hi], s_all, split_for, sink_logits)  # fmt: skip
