"""Ternary weights, TQ1_0 and TQ2_0 (BitNet b1.58, TriLM): the pieces ``qmatmul`` wires into its kernels.

Both types hold ``w = d * (t - 1)``, a code ``t`` in {0, 1, 2} a weight and one f16 ``d`` a block of 256
(layouts in ``loaders/quants.py``).  The row dots meet them as every other type's: ``x`` quantized once per call
to int8 per 32 (``qmatmul._quant_x``), the unsigned codes multiplied with it by ``vpmaddubsw``/``vpmaddwd`` (or
``vpdpbusd``), one FMA per 32 weights with ``d * xd``, and the ``-1`` of every code folded into the sums of the
quantized x (``xs``: ``xd * sum q`` per 32): ``-d * sum(xs)`` a block, one vector FMA for its 8 sums.  So a row's
result is exactly (up to float32 rounding) its dot product with the quantized x, as for Q4_0's ``-8``.

* TQ2_0 (2.06 bits a weight): the 2-bit codes are laid out as Q2_K's, 4 runs of 32 in each 32 bytes: a shift and a
  mask a run.
* TQ1_0 (1.69 bits): five base-3 digits a byte, stored as the fixed point ``ceil(v * 256 / 243)``, so that digit
  ``n`` is ``(3 * (byte * 3^n mod 256)) >> 8``, taken in bytes as llama.cpp's AVX2 kernel does (the multiples of 3^n
  by adds and shifts, the digit by two ``vpmulhuw``): about 9 instructions a run of 32 beside the dot.  The block's 48 + 4 bytes give 8 runs
  of 32: digits 0-4 of ``qs[0:32]``, digits 0-1 and 2-3 of ``qs[32:48]`` side by side, and digit 4 of
  ``qs[32:48]`` beside the 4 digits of ``qh[0:4]``.

llama.cpp quantizes x to Q8_K (int8, one scale a 256) for these types; kvrun's scale a 32 is finer, so the two
runtimes' products differ by their activation rounding (``tests/test_ternary.py``, the ``bitnet-tq2_0`` fixture).

The row decoders (:func:`row_tq1_0`, :func:`row_tq2_0`: float32, the same bits as ``gguf.quants``) serve
``get_rows``, the prefill's tile + BLAS path (there is no int8 GEMM for these types) and hosts without AVX2.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir

from .f16 import f16_to_f32
from .parallel import EXACT_JIT

LI8, LI16, LI64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
LF32 = ir.FloatType()
V32I8, V32I16, V16I8, V8F32 = ir.VectorType(LI8, 32), ir.VectorType(LI16, 32), ir.VectorType(LI8, 16), ir.VectorType(LF32, 8)

#: block bytes
TQ1_0_BYTES, TQ2_0_BYTES = 54, 66
_POW3 = (1, 3, 9, 27, 81)


# ----------------------------------------------------------------- SIMD row-dot blocks (``qmatmul._row_dot``'s protocol)
def _xd(g, xd, s: int) -> ir.Value:
    """The float32 scale of x's 32-run s."""
    return g.b.load(g.b.gep(xd, [ir.Constant(LI64, s)]))


def _runs_dot(g, runs, d, xq, xd, xs, st) -> list:
    """The state after a block whose 8 runs of 32 unsigned codes (<32 x u8>, 0..2) are ``runs``, its scale ``d``:
    ``accs += d xd[s] (run_s . xq_s)`` alternating two accumulators, then ``-d sum_s xs[s]`` (the codes' offset)."""
    b = g.b
    accs = [st[0], st[1]]
    for s, q in enumerate(runs):
        p = g.dot_u8s8(q, g.load(xq, 32 * s, V32I8))
        accs[s & 1] = g.fma(p, g.splat(b.fmul(d, _xd(g, xd, s))), accs[s & 1])
    xsv = b.load(b.bitcast(xs, V8F32.as_pointer()), align=4)  # the block's 8 sums of x, one a run
    accs[1] = g.fma(xsv, g.splat(b.fneg(d)), accs[1])
    return [accs[0], accs[1], st[2], st[3]]


def tq2_0_runs(g, wb) -> list:
    """TQ2_0's 8 runs of 32 codes: bits 2k of ``qs[32h + l]`` for weight ``128h + 32k + l``."""
    runs = []
    for h in range(2):
        raw = g.load(wb, 32 * h, V32I8)
        runs += [g.and_(g.shr(raw, 2 * k), 3) for k in range(4)]
    return runs


def _times9(g, v: ir.Value) -> ir.Value:
    """``v * 9 mod 256`` bytewise: ``(v << 3) + v`` (a word shift and a mask; x86 has no byte multiply)."""
    return g.b.add(g.shl(v, 3), v)


def _top_digit(g, v: ir.Value) -> ir.Value:
    """The top base-3 digit of the bytes ``v`` (0..2): ``(3 v) >> 8``, two bytes a 16-bit lane at once: ``vpmulhuw``
    of the byte moved to the lane's top (``b << 8``) with 3 is ``(3 b 256) >> 16``, the digit, in the lane's low byte."""
    b = g.b
    w = ir.VectorType(LI16, 16)
    v16 = b.bitcast(v, w)
    three = ir.Constant(w, [ir.Constant(LI16, 3)] * 16)
    lo = g.call("llvm.x86.avx2.pmulhu.w", w, [g.shl(v16, 8), three])
    hi = g.call("llvm.x86.avx2.pmulhu.w", w, [g.and_(v16, 0xFF00), three])
    return b.bitcast(b.or_(lo, g.shl(hi, 8)), V32I8)


def tq1_0_runs(g, wb) -> list:
    """TQ1_0's 8 runs of 32 codes (weights 32s .. 32s + 31), from ``qs[0:32]``, ``qs[32:48]`` and ``qh[0:4]``: the
    bytes times 3^n (mod 256) by adds and shifts (times 3: two adds; times 9: a shift and an add), then the top digit."""
    b = g.b
    i32 = ir.IntType(32)
    q0 = g.load(wb, 0, V32I8)
    q1 = g.load(wb, 32, V16I8)
    qh = g.load(wb, 48, ir.VectorType(LI8, 4))
    qh16 = b.shuffle_vector(qh, qh, ir.Constant(ir.VectorType(i32, 16), [i % 4 for i in range(16)]))
    # [qs[32:48] | qh x4]: digit n of the first half, digits 0..3 of qh (one a 4 lanes) in the second
    q1h = b.shuffle_vector(q1, qh16, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
    x3 = b.add(b.add(q0, q0), q0)
    x9 = _times9(g, q0)
    runs = [_top_digit(g, v) for v in (q0, x3, x9, _times9(g, x3), _times9(g, x9))]  # weights 32n + m: digit n of qs[m]
    y3 = b.add(b.add(q1h, q1h), q1h)
    y9 = _times9(g, q1h)
    y27, y81 = _times9(g, y3), _times9(g, y9)

    def halves(lo: ir.Value, hi: ir.Value) -> ir.Value:  # lanes 0..15 of lo, then lanes 0..15 of hi
        return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, 32), list(range(16)) + list(range(32, 48))))

    runs.append(_top_digit(g, halves(q1h, y3)))  # 160..191: digits 0, 1 of qs[32 + m]
    runs.append(_top_digit(g, halves(y9, y27)))  # 192..223: digits 2, 3
    # 224..239: digit 4 of qs[32 + m] (y81's first half); 240..255: digit n of qh[j] at 240 + 4n + j, which is lane
    # 16 + 4n + j of qh's n-th multiple (y1 .. y27 hold qh[i % 4] in lane 16 + i)
    last = y81
    for n, y in enumerate((q1h, y3, y9, y27)):
        mask = ir.Constant(ir.VectorType(ir.IntType(1), 32), [int(16 + 4 * n <= i < 20 + 4 * n) for i in range(32)])
        last = b.select(mask, y, last)
    runs.append(_top_digit(g, last))
    return runs


def emit_tq2_0(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """One TQ2_0 block (66 B: ``qs u8[64] | d f16``)."""
    return _runs_dot(g, tq2_0_runs(g, wb), g.f16(wb, 64), xq, xd, xs, st)


def emit_tq1_0(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """One TQ1_0 block (54 B: ``qs u8[48] | qh u8[4] | d f16``)."""
    return _runs_dot(g, tq1_0_runs(g, wb), g.f16(wb, 52), xq, xd, xs, st)


# ----------------------------------------------------------------- row decoders (float32, bit-exact)
@nb.njit(inline="always", cache=True)
def _h(row, o):
    """float16 at byte offset o of a uint8 row."""
    return f16_to_f32(np.uint16(row[o]) | (np.uint16(row[o + 1]) << np.uint16(8)))


@nb.njit(**EXACT_JIT)
def row_tq2_0(row, out):
    """out[:] = the TQ2_0 row's weights (a whole number of 256-blocks in out.size)."""
    for b in range(out.size // 256):
        o = b * TQ2_0_BYTES
        d = _h(row, o + 64)
        for e in range(256):
            t = (np.int32(row[o + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3
            out[b * 256 + e] = d * np.float32(t - 1)


@nb.njit(inline="always", cache=True)
def _digit(byte, p):
    """Base-3 digit of a TQ1_0 byte for the multiplier p = 3^n: the top two bits of 3 (byte p mod 256)."""
    return (((np.int32(byte) * p) & 255) * 3) >> 8


@nb.njit(**EXACT_JIT)
def row_tq1_0(row, out):
    """out[:] = the TQ1_0 row's weights (a whole number of 256-blocks in out.size)."""
    for b in range(out.size // 256):
        o = b * TQ1_0_BYTES
        d = _h(row, o + 52)
        y = b * 256
        p = 1
        for n in range(5):
            for m in range(32):
                out[y + 32 * n + m] = d * np.float32(_digit(row[o + m], p) - 1)
            for m in range(16):
                out[y + 160 + 16 * n + m] = d * np.float32(_digit(row[o + 32 + m], p) - 1)
            if n < 4:
                for j in range(4):
                    out[y + 240 + 4 * n + j] = d * np.float32(_digit(row[o + 48 + j], p) - 1)
            p *= 3
