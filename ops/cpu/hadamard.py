"""The fast Walsh-Hadamard transform of a row, ``x <- x @ H / sqrt(n)`` in place (Numba, CPU).

The compressed KV cache rotates keys, values and queries with it (``kvrun.cache.insert``):
a decode step rotates every query head, the new key and value, and the output back; a prefill
chunk every row of those.  Rows of 64, 128 and 256 values (the head sizes models use) go
through vector IR: the row is held in 16-float vectors, the butterflies of stages 1, 2, 4 and 8
are a lane shuffle, an add, a subtract and a select inside each vector, the later stages adds
and subtracts between vectors.  The butterflies and their order are the plain loop's, so the
result is the same bit for bit; the loop took ~53 ns a row of 64 here, the IR ~10.  Other
sizes run the loop.  Only generic LLVM operations are used (no x86 intrinsics): a host
without AVX-512 runs each 16-float vector as two halves.  A row that is no power of two is
rotated block by block (block-diagonal Hadamard), each block by the IR where its size has one.

Defined in a file of its own; Numba caches what inlines it by the caller's file, so clear
Numba's cache after changing this one.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_JIT = dict(cache=True, nogil=True, fastmath=False)
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
VEC = 16  # floats a vector
IR_SIZES = (64, 128, 256)  # row sizes with a vector-IR transform


@intrinsic
def _fwht_ir(typingctx, addr, n):  # noqa: ARG001
    """IR: the transform of the ``n`` floats at ``addr`` (int64) in place, for n in :data:`IR_SIZES`."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        b = builder
        p, n_ = args
        done = b.append_basic_block("fwht.done")
        sw = b.switch(n_, done)
        for size in IR_SIZES:
            bb = b.append_basic_block(f"fwht.{size}")
            sw.add_case(ir.Constant(n_.type, size), bb)
            b.position_at_end(bb)
            _emit(b, p, size)
            b.branch(done)
        b.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


def _emit(b: ir.IRBuilder, addr: ir.Value, n: int) -> None:
    vt = ir.VectorType(_F32, VEC)
    vp = b.inttoptr(addr, vt.as_pointer())
    x = [b.load(b.gep(vp, [ir.Constant(_I32, k)]), align=4) for k in range(n // VEC)]
    for h in (1, 2, 4, 8):  # within a vector: lane i meets lane i ^ h
        swap = ir.Constant(ir.VectorType(_I32, VEC), [i ^ h for i in range(VEC)])
        upper = ir.Constant(ir.VectorType(ir.IntType(1), VEC), [bool(i & h) for i in range(VEC)])
        for k, v in enumerate(x):
            y = b.shuffle_vector(v, v, swap)
            # lower lane: a + b (its own value plus its partner's); upper lane: a - b (its partner's minus its own)
            x[k] = b.select(upper, b.fsub(y, v), b.fadd(v, y))
    h = 1
    while h * VEC < n:  # between vectors k and k + h
        for k in range(len(x)):
            if k & h == 0:
                lo, hi = x[k], x[k + h]
                x[k], x[k + h] = b.fadd(lo, hi), b.fsub(lo, hi)
        h *= 2
    s = ir.Constant(vt, [ir.Constant(_F32, float(np.float32(1.0 / math.sqrt(n))))] * VEC)
    for k, v in enumerate(x):
        b.store(b.fmul(v, s), b.gep(vp, [ir.Constant(_I32, k)]), align=4)


@nb.njit(inline="always", **_JIT)
def fwht(x: np.ndarray) -> None:
    """In place ``x <- x @ H`` for the orthonormal Sylvester-Hadamard ``H`` (x contiguous); a length
    ``n = m * 2^k`` that is no power of two (``2^k`` the largest power of two dividing it) is
    rotated by ``blockdiag(H_{2^k}, ..., H_{2^k})``, each block on its own
    (``kvrun.cache.quant.hadamard``: Phi-3's 96 as three 32s, MLA's 576 as nine 64s)."""
    n = x.shape[0]
    if n in IR_SIZES and x.strides[0] == 4:
        _fwht_ir(x.ctypes.data, n)
        return
    b = n & -n  # the block: the largest power of two dividing n (n itself when it is one)
    if b == n:
        _fwht_loop(x)
    else:  # (a call, not inlined: the power-of-two heads' inlined code stays as small as it was, ~45 ns a row of 64)
        _fwht_blocks(x, b)


@nb.njit(**_JIT)
def _fwht_blocks(x: np.ndarray, b: int) -> None:
    """:func:`fwht` of each ``b``-wide block of ``x`` (b a power of two dividing len(x))."""
    for i in range(0, x.shape[0], b):
        blk = x[i : i + b]
        if b in IR_SIZES and blk.strides[0] == 4:
            _fwht_ir(blk.ctypes.data, b)
        else:
            _fwht_loop(blk)


@nb.njit(inline="always", **_JIT)
def _fwht_loop(x: np.ndarray) -> None:
    """In place ``x <- x @ H`` for the orthonormal Sylvester-Hadamard ``H`` (len(x) a power of two),
    by loops: sizes of :data:`IR_SIZES` go through the vector IR (:func:`fwht`); others: the first
    three butterfly stages 8 values at a time in registers (the loop over those blocks vectorises),
    the later ones as long loops over two slices indexed from 0 (indices from ``i`` could be
    negative to Numba, and its wraparound test kept those loops scalar: 256 values took 850 ns,
    then 300).
    """
    n = x.shape[0]
    h = 1
    if n >= 8:
        for i in range(0, n, 8):
            a0, a1, a2, a3 = x[i] + x[i + 1], x[i] - x[i + 1], x[i + 2] + x[i + 3], x[i + 2] - x[i + 3]
            a4, a5, a6, a7 = x[i + 4] + x[i + 5], x[i + 4] - x[i + 5], x[i + 6] + x[i + 7], x[i + 6] - x[i + 7]
            b0, b1, b2, b3 = a0 + a2, a1 + a3, a0 - a2, a1 - a3
            b4, b5, b6, b7 = a4 + a6, a5 + a7, a4 - a6, a5 - a7
            x[i], x[i + 1], x[i + 2], x[i + 3] = b0 + b4, b1 + b5, b2 + b6, b3 + b7
            x[i + 4], x[i + 5], x[i + 6], x[i + 7] = b0 - b4, b1 - b5, b2 - b6, b3 - b7
        h = 8
    while h < n:
        for i in range(0, n, 2 * h):
            lo = x[i : i + h]
            hi = x[i + h : i + 2 * h]
            for j in range(h):
                a = lo[j]
                b = hi[j]
                lo[j] = a + b
                hi[j] = a - b
        h *= 2
    s = np.float32(1.0 / math.sqrt(n))
    for j in range(n):
        x[j] *= s
