"""Attention that reads a compressed KV cache in place (Numba, CPU).

A layer's slots live in three *areas* that share one slot numbering
``j in [0, N)``:

* ``[0, F)``: fp16 slots (attention sinks and the full-precision residual
  window), held as float16 bit patterns like the plain cache;
* ``[F, F + C0)``: quantized pool 0 (the only pool, or the high-precision one
  of a mixed cache);
* ``[F + C0, N)``: quantized pool 1 (the low-precision pool; ``C1 = 0`` when
  there is none).

Quantized layout (one *row* = one token's K or V of one KV head)::

    codes [n_kv, C, D * w / 8]  uint8   w = 2, 3, 4, 8 or 16 bits a code
                                        (16: raw float16 bytes, no meta)
    meta  [n_kv, C, D / G, 2]   uint8   per group of G values: scale code, zero code

A group of ``G`` values holds ``nb = G * w / 8`` bytes, *group-planar*: byte
``i`` of the group packs the codes of values ``i, i + nb, i + 2 nb, ...`` at
bit offsets ``0, w, 2w, ...``, so unpacking is a unit-stride, vectorisable
shift-and-mask.  A 3-bit group is two such planes: its first ``G/4`` bytes
hold the codes' low two bits in the 2-bit layout, its last ``G/8`` bytes their
high bits in the 1-bit layout (value ``v``: bit ``v // (G/8)`` of byte
``v % (G/8)``), 3 bits a value.  A value is ``x = s * c + m`` with
``s = lut[scale code]`` (a log-spaced table, see ``kvrun.cache.quant``) and
``m = -s * z``, ``z = zero code * (2^b - 1) / 255``: asymmetric integer
quantization whose zero point has 8 fractional bits of resolution.

Decode reads the cache in place.  On a host with VNNI, 2- and 4-bit keys are
scored as integer dot products with int8 queries (:mod:`.qkeys`).  Other rows go
a tile at a time: vector row decoders (LLVM vector IR, one per width and group)
turn the tile's rows into an L1-resident float tile, and register-blocked tile
kernels dot it with every query head of its GQA group (keys) or add it,
weighted, to their accumulators (values).  So each byte of the cache is read once per query, the unpacking is
shared by the group's heads, and no float copy of the cache is ever made.
Geometries the vector decoders do not cover fill the tile with plain loops.
Prefill, compute-bound, may dequantize into a per-call scratch and use BLAS.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .arraycopy import copy_into
from .f16 import f16_to_f32, f32_to_f16
from .outline import outline
from .parallel import EXACT_JIT, prange_only, split_threads
from .variant import variant as _variant
from .vexp import exp32
from .qmatmul import HAVE_AVX512, LF16, LF32, LI8, LI16, LI32, LI64, ROW0, V, _G, _i64, _switch_pairs
from .qkeys import CHUNK_GROUPS, INT_KEYS, key_kernel_ok, key_scores, prep_queries
from .qkeys import L as KEY_LANES

_JIT = dict(cache=True, fastmath=True, nogil=True)
_NEG_INF = np.float32(-1e30)  # masked logit: finite, so exp() needs no branch (and fastmath stays valid)
TILE = 64  # rows dequantized at a time into an L1-resident float scratch
SPLIT_MIN_SLOTS = 256  # a KV head is split across threads from this many slots (split-K): Gemma 3's one KV head
# over a 516-slot window, 2 threads: 51-66 -> 36 us (fp16), 54 -> 38 us (4-bit); 1024 left its sliding-window layers on one thread
#: the two passes of decode attention over a head's slots (see ``_pass``).  numpy scalars: Numba types a global int as
#: its literal value, and each value compiled ``_pass`` and its ``_half_pass`` calls once more (~2-3 s of a first run
#: each, for a branch that costs nothing); a numpy scalar is a plain int64
DOT, ADD = np.int64(1), np.int64(2)


# ================================================================= row decoders (LLVM vector IR)
# Why IR: Numba types ``uint8 >> int`` and ``& 3`` as int64, and AVX2 has no
# int64 -> float conversion, so a Numba unpack loop stays scalar (~27 ns per
# 2-bit row of 64).  Written as <n x i32> vectors, a group is a handful of
# shifts, masks, conversions and FMAs (~4 ns a row).  Only generic LLVM
# operations are used (no x86 intrinsics), so this compiles on any host.
# Defined in this file: Numba's cache is invalidated per defining file.

#: vector widths of the row decoders and tile kernels: 16 floats (zmm) on an AVX-512 host (tiles: where
#: the head size is a multiple of 16; decoders: where a group's bytes are), else 8.  Zen 5 runs a zmm
#: FMA as fast as a ymm one: a decode layer-step at 2048 slots (1 thread, in cache) took SmolLM2 54 ->
#: 44 us at fp16 and 69 -> 55 at 4 bits, Gemma 3 81 -> 58 and 93 -> 69.  Decoded values and the values'
#: sums are the same either way (lane-wise FMA chains); the keys' dots add a zmm's halves first.
_WIDTHS = (8, 16) if HAVE_AVX512 else (8,)


def _zero(n: int) -> ir.Constant:
    return ir.Constant(V(LF32, n), [ir.Constant(LF32, 0.0)] * n)


def _fma(g: _G, a: ir.Value, x: ir.Value, c: ir.Value) -> ir.Value:
    n = a.type.count
    return g.call(f"llvm.fma.v{n}f32", V(LF32, n), [a, x, c])


def _emit_group(g: _G, w: int, G: int, cpp, mpp, lpp, zs, gi) -> list:
    """IR: group ``gi`` of a row, decoded into float vectors in value order (``G`` values in all).

    ``cpp``/``mpp``: i8* to the row's codes / meta; ``lpp``: float* scale
    table; ``zs``: float zero-code step.  ``w = 16``: raw float16, no meta.
    Plane ``m`` of the group's ``nb`` bytes holds values ``m nb .. m nb + nb``,
    so a chunk ``c`` of ``VL`` bytes of plane ``m`` is vector ``m nb/VL + c``.
    ``VL`` = 16 lanes (zmm) on an AVX-512 host where ``nb`` is a multiple of 16
    (half the instructions a value), else 8.
    """
    b = g.b
    if w == 16:
        VL = 16 if 16 in _WIDTHS else 8
        base = b.mul(gi, ir.Constant(LI64, 2 * G))
        out = []
        for k in range(G // VL):
            h = b.bitcast(g.load(cpp, b.add(base, ir.Constant(LI64, 2 * VL * k)), V(LI16, VL)), V(LF16, VL))
            out.append(b.fpext(h, V(LF32, VL)))
        return out
    if w == 3:
        return _emit_group3(g, G, cpp, mpp, lpp, zs, gi)
    nb_ = G * w // 8
    VL = 16 if 16 in _WIDTHS and nb_ % 16 == 0 else 8
    s_v, m_v = _group_scale(g, mpp, lpp, zs, gi, VL)
    out = [None] * (G // VL)
    base = b.mul(gi, ir.Constant(LI64, nb_))
    for c in range(nb_ // VL):
        x = b.zext(g.load(cpp, b.add(base, ir.Constant(LI64, VL * c)), V(LI8, VL)), V(LI32, VL))
        for m in range(8 // w):
            code = g.and_(g.shr(x, w * m), (1 << w) - 1) if w < 8 else x
            out[m * (nb_ // VL) + c] = _fma(g, b.sitofp(code, V(LF32, VL)), s_v, m_v)
    return out


def _group_scale(g: _G, mpp, lpp, zs, gi, n: int = 8) -> tuple:
    """IR: group ``gi``'s step and offset as <n x float> splats: ``s = lut[u]``, ``m = -s zc zs``."""
    b = g.b
    mo = b.mul(gi, ir.Constant(LI64, 2))
    sg = b.load(b.gep(lpp, [g.u8(mpp, mo)]))
    zc = b.uitofp(g.u8(mpp, b.add(mo, ir.Constant(LI64, 1))), LF32)
    return g.splat(sg, n), g.splat(b.fneg(b.fmul(b.fmul(sg, zc), zs)), n)


def _emit_group3(g: _G, G: int, cpp, mpp, lpp, zs, gi) -> list:
    """IR: a 3-bit group (a 2-bit plane of the low bits, then a 1-bit plane of the high bits).

    The low plane is the 2-bit layout over ``G/4`` bytes; value ``v``'s high bit is bit
    ``v // (G/8)`` of byte ``v % (G/8)`` of the high plane.  The high plane (4 to 16 bytes)
    is loaded once; each output vector picks its 8 lanes out of it with a constant
    shuffle and shifts each lane by its own constant.
    """
    b = g.b
    n2, n1 = G // 4, G // 8
    s_v, m_v = _group_scale(g, mpp, lpp, zs, gi)
    base = b.mul(gi, ir.Constant(LI64, 3 * G // 8))
    hi = b.zext(g.load(cpp, b.add(base, ir.Constant(LI64, n2)), V(LI8, n1)), V(LI32, n1))
    out = [None] * (G // 8)
    for c in range(n2 // 8):
        x = b.zext(g.load(cpp, b.add(base, ir.Constant(LI64, 8 * c)), V(LI8, 8)), V(LI32, 8))
        for m in range(4):
            v0 = m * n2 + 8 * c  # the vector's first value
            lanes = b.shuffle_vector(hi, hi, ir.Constant(V(LI32, 8), [(v0 + i) % n1 for i in range(8)]))
            bit = b.and_(b.lshr(lanes, ir.Constant(V(LI32, 8), [(v0 + i) // n1 for i in range(8)])), ir.Constant(V(LI32, 8), [1] * 8))
            code = b.or_(g.and_(g.shr(x, 2 * m), 3), g.shl(bit, 2))
            out[v0 // 8] = g.fma(b.sitofp(code, V(LF32, 8)), s_v, m_v)
    return out


def _fptr(b: ir.IRBuilder, addr) -> ir.Value:
    return b.inttoptr(addr, LF32.as_pointer())


def _vptr(b: ir.IRBuilder, fp, idx, n: int = 8) -> ir.Value:
    """<n x float>* at float index ``idx`` of float* ``fp``."""
    return b.bitcast(b.gep(fp, [idx]), V(LF32, n).as_pointer())


# The (width, group) pairs with a vector decoder; raw float16 rows are decoded 32 values at a time.
ROW_DECODERS = ((16, 32), *((w, G) for w in (2, 3, 4, 8) for G in (32, 64, 128)))


@intrinsic
def _rows_ir(typingctx, bits, G, cp, cs, mp, ms, lp, zs, yp, D, n):  # noqa: ARG001
    """Decode ``n`` rows of a pool in registers and store them as floats, ``y[r D : (r+1) D] = row_r``
    (the attention tiles, prefill scratch, merging): one IR switch over (bits, G) to the loop
    specialised for that pair in :data:`ROW_DECODERS`; a pair outside it stores nothing
    (:func:`vector_ok` guards the callers).

    Arguments (int64 unless said): bits, G, codes, row stride of codes (bytes), meta, row
    stride of meta, lut, zs (float32), y, D, n.
    """
    sig = types.void(*([types.int64] * 7 + [types.float32] + [types.int64] * 3))

    def codegen(context, builder, sig, args):
        b = builder
        bits_, G_, cp, cs, mp, ms, lp, zs, yp, D, n = args
        lpp, ypp = _fptr(b, lp), _fptr(b, yp)

        def decode(w: int, G: int) -> None:
            g = _G(b)
            n_groups = b.udiv(D, _i64(G))
            with cgutils.for_range(b, n) as rl:
                r = rl.index
                rc = g.addr(b.add(cp, b.mul(r, cs)))
                rm = g.addr(b.add(mp, b.mul(r, ms)))
                with cgutils.for_range(b, n_groups) as gl:
                    gi = gl.index
                    o = b.add(b.mul(r, D), b.mul(gi, _i64(G)))
                    at = 0
                    for v in _emit_group(g, w, G, rc, rm, lpp, zs, gi):
                        b.store(v, _vptr(b, ypp, b.add(o, _i64(at)), v.type.count), align=4)
                        at += v.type.count

        _switch_pairs(b, bits_, G_, ROW_DECODERS, "rows", decode)
        return context.get_dummy_value()

    return sig, codegen


# ================================================================= fp32 tile kernels (LLVM vector IR)
# Decode attends a tile of rows at a time: the rows are decoded into an
# L1-resident float tile once (any width), then every query head of the GQA
# group runs over the tile with its accumulators in registers.  (Decoding in
# registers and updating accumulators in memory per row was store-bound: every
# row re-stored each head's whole accumulator row.)
_V8 = V(LF32, 8)
_ZERO8 = ir.Constant(_V8, [ir.Constant(LF32, 0.0)] * 8)


def _shuf(b: ir.IRBuilder, x: ir.Value, y: ir.Value, idx: list[int]) -> ir.Value:
    return b.shuffle_vector(x, y, ir.Constant(V(LI32, 8), idx))


def _reduce8(b: ir.IRBuilder, a: list) -> ir.Value:
    """Eight <8 x float> -> one <8 x float> whose lane i is the sum of ``a[i]`` (a transpose-add tree:
    seven adds and fourteen shuffles for eight sums, where eight separate horizontal sums take 24 of each)."""
    s = [b.fadd(_shuf(b, x, y, [0, 8, 2, 10, 4, 12, 6, 14]), _shuf(b, x, y, [1, 9, 3, 11, 5, 13, 7, 15])) for x, y in zip(a[0::2], a[1::2])]
    t = [b.fadd(_shuf(b, x, y, [0, 1, 8, 9, 4, 5, 12, 13]), _shuf(b, x, y, [2, 3, 10, 11, 6, 7, 14, 15])) for x, y in zip(s[0::2], s[1::2])]
    return b.fadd(_shuf(b, t[0], t[1], [0, 1, 2, 3, 8, 9, 10, 11]), _shuf(b, t[0], t[1], [4, 5, 6, 7, 12, 13, 14, 15]))


_TILE_SIG = types.void(*([types.int64] * 8))


def _row_vec(b: ir.IRBuilder, tp: ir.Value, half: bool, row, ts, k8, n: int = 8) -> ir.Value:
    """IR: floats ``k8 .. k8+n`` of tile row ``row`` (row stride ``ts`` elements): float32, or
    float16 bits converted on the way in (F16C's vcvtph2ps takes its operand from memory)."""
    idx = b.add(b.mul(row, ts), k8)
    if not half:
        return b.load(_vptr(b, tp, idx, n), align=4)
    hp = b.bitcast(b.gep(tp, [idx]), V(LI16, n).as_pointer())
    return b.fpext(b.bitcast(b.load(hp, align=2), V(LF16, n)), V(LF32, n))


def _reduce4(b: ir.IRBuilder, a: list) -> ir.Value:
    """Four <8 x float> -> one <4 x float> whose lane i is the sum of ``a[i]``: the first half of
    :func:`_reduce8`'s tree, so four rows reduced this way give its sums bit for bit."""
    s = [b.fadd(_shuf(b, x, y, [0, 8, 2, 10, 4, 12, 6, 14]), _shuf(b, x, y, [1, 9, 3, 11, 5, 13, 7, 15])) for x, y in zip(a[0::2], a[1::2])]
    t = b.fadd(_shuf(b, s[0], s[1], [0, 1, 8, 9, 4, 5, 12, 13]), _shuf(b, s[0], s[1], [2, 3, 10, 11, 6, 7, 14, 15]))
    lo, hi = (b.shuffle_vector(t, t, ir.Constant(V(LI32, 4), [h + i for i in range(4)])) for h in (0, 4))
    return b.fadd(lo, hi)


def _halves(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<16 x float> -> <8 x float>, its halves added (an <8 x float> as it is)."""
    if v.type.count == 8:
        return v
    lo, hi = (b.shuffle_vector(v, v, ir.Constant(V(LI32, 8), [h + i for i in range(8)])) for h in (0, 8))
    return b.fadd(lo, hi)


def _by_width(b: ir.IRBuilder, D, emit) -> None:
    """IR: ``emit(16)`` when the head size ``D`` is a multiple of 16 on an AVX-512 host, else ``emit(8)``."""
    if len(_WIDTHS) == 1:
        emit(8)
        return
    with b.if_else(b.icmp_unsigned("==", b.urem(D, _i64(16)), _i64(0))) as (wide, narrow):
        with wide:
            emit(16)
        with narrow:
            emit(8)


# A tile is read once for up to HEADS_AT_ONCE query heads of the GQA group: each row vector is
# loaded (and for fp16, converted) once and FMA'd into every head's accumulators, at most 12
# accumulators so that they, the queries (or weights) and a row fit AVX2's 16 registers.  One
# head at a time re-read and re-converted every row gqa times (SmolLM2's gqa is 3, Gemma 3's 4):
# a fp16 key and value pass in L2, one thread, 2048 slots x D 64 x gqa 3: 33 -> 22 us; 512 x 256
# x 4: 45 -> 29 us; a whole decode layer-step at 2048 slots 1.13-1.19x.
HEADS_AT_ONCE = 4
DOT_ROWS = {1: 8, 2: 4, 3: 4, 4: 2}  # rows a step of the key pass, by heads at once
ADD_VECS = {1: 8, 2: 4, 3: 4, 4: 2}  # 8-float column vectors a block of the value pass


def _head_chunks(b: ir.IRBuilder, gqa, emit) -> None:
    """IR: ``emit(h0, hg)`` for the query heads in chunks ``h0 .. h0 + hg`` of at most
    :data:`HEADS_AT_ONCE`, ``hg`` a compile-time constant (a switch on what is left)."""
    with cgutils.for_range_slice(b, _i64(0), gqa, _i64(HEADS_AT_ONCE)) as (h0, _):
        left = b.sub(gqa, h0)
        done = b.append_basic_block("heads.done")
        switch = b.switch(left, done)
        for hg in range(1, HEADS_AT_ONCE + 1):
            block = b.append_basic_block(f"heads.{hg}")
            if hg < HEADS_AT_ONCE:
                switch.add_case(_i64(hg), block)
            else:
                switch.default = block
            b.position_at_end(block)
            emit(h0, hg)
            b.branch(done)
        b.position_at_end(done)


def _tile_dot(half: bool):
    """Scores of a tile: ``x[hh * xs + r] = y_hh . tile_r`` for rows ``r < n`` and heads ``hh < gqa``.

    tile: [n, D] float32 (``half``: float16 bits, read in place) with row stride ``ts`` elements;
    y: [gqa, D] float32 (the group's queries); x: float32 with head stride ``xs`` (floats).
    Arguments are int64 addresses and sizes; ``D % 8 == 0``.  Heads go :data:`HEADS_AT_ONCE` at a
    time, :data:`DOT_ROWS` rows a step for each (one head: eight, in eight accumulator registers),
    every row vector loaded once for all of them; a step's sums are reduced together in one
    transpose-add tree, the last ``n % rows`` rows one by one.
    """

    def codegen(context, builder, sig, args):
        g, b = _G(builder), builder
        tp, ts, n, D, yp, gqa, xp, xs = args
        tpp = b.inttoptr(tp, (LI16 if half else LF32).as_pointer())
        ypp, xpp = _fptr(b, yp), _fptr(b, xp)
        accs = {nl: [[cgutils.alloca_once(b, V(LF32, nl)) for _ in range(8)] for _ in range(HEADS_AT_ONCE)] for nl in _WIDTHS}

        def rows(h0, hg: int, r0, rb: int, nl: int) -> None:  # rows r0 .. r0 + rb of heads h0 .. h0 + hg, nl-float vectors
            acc = accs[nl]  # promoted to registers
            for h in range(hg):
                for i in range(rb):
                    b.store(_zero(nl), acc[h][i])
            with cgutils.for_range(b, b.udiv(D, _i64(nl))) as kl:
                k8 = b.mul(kl.index, _i64(nl))
                qk = [b.load(_vptr(b, ypp, b.add(b.mul(b.add(h0, _i64(h)), D), k8), nl), align=4) for h in range(hg)]
                for i in range(rb):  # (in this order 3 heads x 4 rows fit: 12 sums, 3 queries, 1 row)
                    t = _row_vec(b, tpp, half, b.add(r0, _i64(i)), ts, k8, nl)
                    for h in range(hg):
                        b.store(_fma(g, t, qk[h], b.load(acc[h][i])), acc[h][i])
            for h in range(hg):
                xi = b.add(b.mul(b.add(h0, _i64(h)), xs), r0)
                sums = [_halves(b, b.load(a)) for a in acc[h][:rb]]
                if rb == 8:
                    b.store(_reduce8(b, sums), _vptr(b, xpp, xi), align=4)
                elif rb == 4:
                    b.store(_reduce4(b, sums), b.bitcast(b.gep(xpp, [xi]), V(LF32, 4).as_pointer()), align=4)
                elif rb == 2:  # (padded with zeros: x + 0 is x, so the tree's sums are unchanged)
                    r4 = _reduce4(b, sums + [_ZERO8, _ZERO8])
                    r2 = b.shuffle_vector(r4, r4, ir.Constant(V(LI32, 2), [0, 1]))
                    b.store(r2, b.bitcast(b.gep(xpp, [xi]), V(LF32, 2).as_pointer()), align=4)
                else:
                    b.store(g.hsum(sums[0]), b.gep(xpp, [xi]))

        def heads(h0, hg: int, nl: int) -> None:
            rb = DOT_ROWS[hg]
            n_rb = b.mul(b.udiv(n, _i64(rb)), _i64(rb))
            with cgutils.for_range_slice(b, _i64(0), n_rb, _i64(rb)) as (r0, _):
                rows(h0, hg, r0, rb, nl)
            with cgutils.for_range_slice(b, n_rb, n, _i64(1)) as (r, _):  # the last n % rb rows one by one
                rows(h0, hg, r, 1, nl)

        _by_width(b, D, lambda nl: _head_chunks(b, gqa, lambda h0, hg: heads(h0, hg, nl)))
        return context.get_dummy_value()

    def typer(typingctx, tp, ts, n, D, yp, gqa, xp, xs):  # noqa: ARG001
        return _TILE_SIG, codegen

    return intrinsic(typer)


def _tile_add(half: bool):
    """Weighted values of a tile: ``y_hh += sum_r x[hh * xs + r] tile_r`` for heads ``hh < gqa``.

    tile: [n, D] float32 (``half``: float16 bits, read in place) with row stride ``ts`` elements;
    y: [gqa, D] float32 accumulators; x: float32 weights with head stride ``xs``.  ``D % 8 == 0``.
    The accumulators go through the tile a block of columns at a time in registers, :data:`ADD_VECS`
    vectors for each of up to :data:`HEADS_AT_ONCE` heads (one head: 64 floats), every row vector
    loaded once for all of them.  Each accumulator is the same FMA chain over the rows whatever the
    blocking, so the values' sums do not depend on it.
    """

    def codegen(context, builder, sig, args):
        g, b = _G(builder), builder
        tp, ts, n, D, yp, gqa, xp, xs = args
        tpp = b.inttoptr(tp, (LI16 if half else LF32).as_pointer())
        ypp, xpp = _fptr(b, yp), _fptr(b, xp)
        accs = {nl: [[cgutils.alloca_once(b, V(LF32, nl)) for _ in range(8)] for _ in range(HEADS_AT_ONCE)] for nl in _WIDTHS}

        def columns(h0, hg: int, off, nv: int, nl: int) -> None:  # floats [off, off + nl nv) of heads h0 .. h0 + hg
            acc = accs[nl]
            arow = [b.add(b.mul(b.add(h0, _i64(h)), D), off) for h in range(hg)]
            for h in range(hg):
                for k in range(nv):
                    b.store(b.load(_vptr(b, ypp, b.add(arow[h], _i64(nl * k)), nl), align=4), acc[h][k])
            with cgutils.for_range(b, n) as rl:
                r = rl.index
                p = [g.splat(b.load(b.gep(xpp, [b.add(b.mul(b.add(h0, _i64(h)), xs), r)])), nl) for h in range(hg)]
                for k in range(nv):
                    t = _row_vec(b, tpp, half, r, ts, b.add(off, _i64(nl * k)), nl)
                    for h in range(hg):
                        b.store(_fma(g, p[h], t, b.load(acc[h][k])), acc[h][k])
            for h in range(hg):
                for k in range(nv):
                    b.store(b.load(acc[h][k]), _vptr(b, ypp, b.add(arow[h], _i64(nl * k)), nl), align=4)

        def heads(h0, hg: int, nl: int) -> None:
            nv = ADD_VECS[hg]
            n_blk = b.udiv(D, _i64(nl * nv))
            n8 = b.udiv(b.urem(D, _i64(nl * nv)), _i64(nl))  # vectors left after the blocks (head sizes 80, 96, ...)
            with cgutils.for_range(b, n_blk) as cl:
                columns(h0, hg, b.mul(cl.index, _i64(nl * nv)), nv, nl)
            with cgutils.for_range(b, n8) as vl:
                columns(h0, hg, b.add(b.mul(n_blk, _i64(nl * nv)), b.mul(vl.index, _i64(nl))), 1, nl)

        _by_width(b, D, lambda nl: _head_chunks(b, gqa, lambda h0, hg: heads(h0, hg, nl)))
        return context.get_dummy_value()

    def typer(typingctx, tp, ts, n, D, yp, gqa, xp, xs):  # noqa: ARG001
        return _TILE_SIG, codegen

    return intrinsic(typer)


tile_dot, tile_add = _tile_dot(False), _tile_add(False)
# the fp16 area is read in place: converting on the way into the FMAs costs less than
# decoding it into the float tile first and reading that back
tile_dot16, tile_add16 = _tile_dot(True), _tile_add(True)


# row decoders, per (code bits, group); 16 bits (float16 rows) read in chunks of 32
@nb.njit(inline="always", **_JIT)
def vector_ok(bits: int, G: int, D: int) -> bool:
    """Whether the vector row decoders cover this (width, group, head size)."""
    if bits == 16:
        return D % 32 == 0
    return (G == 32 or G == 64 or G == 128) and D % G == 0


@outline("kvrun_rows", types.void(*([types.int64] * 7 + [types.float32] + [types.int64] * 3)), **_JIT)
def _rows(bits: int, G: int, cp: int, cs: int, mp: int, ms: int, lp: int, zs: float, yp: int, D: int, n: int) -> None:
    """The row decoder of (width, group); see ``_rows_ir`` (compiled once, :mod:`.outline`)."""
    _rows_ir(bits, 32 if bits == 16 else G, cp, cs, mp, ms, lp, zs, yp, D, n)


@nb.njit(inline="always", **_JIT)
def dequant_row(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, out: np.ndarray) -> None:
    """One row, dequantized: ``out[d] = s_g c_d + m_g`` (plain loops; the reference for the decoders).

    codes: [D*w/8] uint8; meta: [D/G, 2] uint8; lut: [256] float32; out: [D] float32.
    """
    D = out.shape[0]
    if bits == 16:
        for d in range(D):
            out[d] = f16_to_f32(np.uint16(codes[2 * d]) | (np.uint16(codes[2 * d + 1]) << np.uint16(8)))
        return
    zs = np.float32((1 << bits) - 1) / np.float32(255.0)
    nbg = G * bits // 8
    mask = (1 << bits) - 1
    if bits == 3:  # the low bits 2-bit planar over G/4 bytes, then the high bits 1-bit planar over G/8
        n2, n1 = G // 4, G // 8
        for g in range(D // G):
            sg = lut[meta[g, 0]]
            mg = -sg * np.float32(meta[g, 1]) * zs
            for v in range(G):
                lo = (np.int32(codes[g * nbg + v % n2]) >> np.int32(2 * (v // n2))) & 3
                hi = (np.int32(codes[g * nbg + n2 + v % n1]) >> np.int32(v // n1)) & 1
                out[g * G + v] = sg * np.float32(lo | (hi << 2)) + mg
        return
    for g in range(D // G):
        sg = lut[meta[g, 0]]
        mg = -sg * np.float32(meta[g, 1]) * zs
        for m in range(8 // bits):
            for i in range(nbg):
                out[g * G + m * nbg + i] = sg * np.float32((np.int32(codes[g * nbg + i]) >> np.int32(bits * m)) & mask) + mg


@nb.njit(**_JIT)
def decode_rows(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, r0: int, n: int, out: np.ndarray) -> None:
    """Rows ``r0 .. r0+n`` of one head's pool, dequantized into ``out[:n*D]`` (flat, row after row).

    codes: [C, D*w/8] uint8 (16 bits: float16 bytes); meta: [C, D/G, 2] uint8;
    lut: [256] float32; out: flat float32.  Each row must be contiguous.
    """
    D = codes.shape[1] * 8 // bits
    if vector_ok(bits, G, D) and codes.strides[1] == 1 and (bits == 16 or (meta.strides[2] == 1 and meta.strides[1] == 2)):
        zs = np.float32((1 << bits) - 1) / np.float32(255.0) if bits < 16 else np.float32(0.0)
        _rows(bits, G, codes.ctypes.data + r0 * codes.strides[0], codes.strides[0],
              meta.ctypes.data + r0 * meta.strides[0], meta.strides[0], lut.ctypes.data, zs, out.ctypes.data, D, n)
        return
    for r in range(n):
        dequant_row(codes[r0 + r], meta[r0 + r], lut, bits, G, out[r * D : (r + 1) * D])


@nb.njit(**_JIT)
def decode_half_rows(x: np.ndarray, r0: int, n: int, out: np.ndarray) -> None:
    """Rows ``r0 .. r0+n`` of a [R, D] uint16 (float16 bits) array into ``out[:n*D]``."""
    D = x.shape[1]
    if vector_ok(16, 32, D) and x.strides[1] == 2:
        _rows(16, 32, x.ctypes.data + r0 * x.strides[0], x.strides[0], 0, 0, 0, 0.0, out.ctypes.data, D, n)
        return
    for r in range(n):
        for d in range(D):
            out[r * D + d] = f16_to_f32(x[r0 + r, d])


@nb.njit(**_JIT)
def decode_slots(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, slots: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = row slots[i]`` of one head's pool, dequantized (prefill's gather of the held slots).

    codes/meta/lut/bits/G as :func:`decode_rows` (an fp16 ring's [R, D] uint16 rows go in as their
    uint8 view with bits 16); slots: [n] int, ascending; out: [n, D] float32 (C-contiguous).
    Runs of consecutive slots (a pool fills from the front, so usually one run) go through the
    row decoders in one call each."""
    D = out.shape[1]
    flat = out.reshape(-1)
    i = 0
    while i < slots.size:
        e = i + 1
        while e < slots.size and slots[e] == slots[e - 1] + 1:
            e += 1
        decode_rows(codes, meta, lut, bits, G, slots[i], e - i, flat[i * D :])
        i = e


_HALF_META = np.zeros((0, 0, 2), np.uint8)  # float16 rows carry no quantization metadata


def decode_half_slots(x: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = x[slots[i]]`` widened: x [R, D] uint16 (float16 bits, rows contiguous); slots ascending;
    out [n, D] float32 (C-contiguous)."""
    decode_slots(x.view(np.uint8), _HALF_META, _NO_LUT, 16, 32, slots, out)


@nb.njit(**_JIT)
def dequantize_rows(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, out: np.ndarray) -> None:
    """Rows of a pool back to float32 (prefill scratch, merging, tests).

    codes: [n, D*w/8] uint8; meta: [n, D/G, 2] uint8 ([n, 0, 2] for 16 bits);
    lut: [256] float32; out: [n, D] float32 (C-contiguous).
    """
    decode_rows(codes, meta, lut, bits, G, 0, out.shape[0], out.reshape(-1))


@nb.njit(inline="always", **_JIT)
def _fill_tile(j0: int, n: int, F: int, C0: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
               c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, tile: np.ndarray) -> None:
    """Slots ``j0 .. j0+n`` of one head (fp16 area, pool 0, pool 1: a tile may straddle them) as floats."""
    j = j0
    end = j0 + n
    while j < end:
        o = tile[(j - j0) * D :]
        if j < F:
            e = min(end, F)
            decode_half_rows(x16, j, e - j, o)
        elif j < F + C0:
            e = min(end, F + C0)
            decode_rows(c0, m0, lut0, w0, G, j - F, e - j, o)
        else:
            e = end
            decode_rows(c1, m1, lut1, w1, G, j - F - C0, e - j, o)
        j = e


def attend_decode_q(
    q: np.ndarray,
    qpos: np.ndarray,
    k16: np.ndarray,
    v16: np.ndarray,
    kc0: np.ndarray,
    km0: np.ndarray,
    vc0: np.ndarray,
    vm0: np.ndarray,
    kw0: int,
    vw0: int,
    kc1: np.ndarray,
    km1: np.ndarray,
    vc1: np.ndarray,
    vm1: np.ndarray,
    kw1: int,
    vw1: int,
    klut0: np.ndarray,
    vlut0: np.ndarray,
    klut1: np.ndarray,
    vlut1: np.ndarray,
    G: int,
    kpos: np.ndarray,
    logw: np.ndarray,
    window: int,
    scale: float,
    softcap: float,
    out: np.ndarray,
    s_all: np.ndarray,
    probs_acc: np.ndarray,
    split_for: int = 0,
    int_keys: bool = INT_KEYS,
    sink_logits: np.ndarray | None = None,
    alibi: np.ndarray | None = None,
) -> None:
    """Attention of a few queries over fp16 slots and up to two quantized pools.

    q: [T, n_head, D] float32 (already in the cache's rotated basis);
    qpos: [T] int32; k16: [n_kv, F, D] uint16; v16: [n_kv, F, Dv] uint16;
    kc0/vc0: [n_kv, C0, D*w/8] / [n_kv, C0, Dv*w/8] uint8 codes;
    km0/vm0: [n_kv, C0, D/G, 2] / [n_kv, C0, Dv/G, 2] uint8 scale and zero
    codes; kw0/vw0: bits of pool 0's key/value codes; likewise pool 1
    (``C1 = 0`` for none); klut0, vlut0, klut1, vlut1: [256] float32 scale
    tables of each pool; kpos: [P, N] int32 absolute positions (-1: empty),
    ``P = 1`` when all KV heads hold the same tokens, else ``P = n_kv``;
    logw: [n_kv, N] float32 log merge weights added to the logits
    (KeepKV's electoral votes) or ``[0, 0]``; out: [T, n_head, Dv] float32.

    Slots are decoded a tile of rows at a time into an L1-resident float
    scratch (vector decoders, one per width) and the tile is dotted with every
    query head of its GQA group, so every byte of the cache is read once per
    query and no float copy of the cache is ever made.  Work items run in
    parallel (``prange``): one per KV head, or, from ``SPLIT_MIN_SLOTS`` slots on
    when the heads do not share out evenly over the threads, a head's slots are
    cut into chunks that each keep their own softmax maximum and are combined at
    the end (flash-decoding's split-K).  SmolLM2's layer-step at 4096 fp16 slots
    (3 KV heads, 2 threads, its 30 layers' cache streamed from memory): 0.39 ms
    before the tile kernels and even split, 0.29 ms after.  Each pool is read only up to
    its last held slot (pools are sized for the whole context and fill from the front).

    s_all: [n_kv, gqa, N] float32 scratch.  probs_acc: [n_kv, N] float32
    receives the softmax probabilities summed over each KV head's query heads
    (what eviction policies score with), or ``[0, 0]`` to skip.  split_for:
    threads the split is planned for (0: :func:`split_threads`, the pool's size).  int_keys: 2- and
    4-bit keys are scored by integer dot products with the queries quantized to int8
    (:mod:`.qkeys`; on hosts with VNNI, the default there), else through the float tiles.
    sink_logits: [n_head] float32, gpt-oss's learned attention sinks (a logit per head that joins
    each softmax's denominator and adds no value; not the kept first tokens of the compressed
    cache's "sink" area), or None.  alibi: [n_head] float32 ALiBi slopes, each logit getting
    ``slope * (key_pos - query_pos)`` from the slot's stored position (after ``logw``), or None.
    """
    _attend_decode_q(q, qpos, k16, v16, kc0, km0, vc0, vm0, kw0, vw0, kc1, km1, vc1, vm1, kw1, vw1, klut0, vlut0, klut1, vlut1,
                     G, kpos, logw, window, scale, softcap, out, s_all, probs_acc, split_for or split_threads(), int_keys,
                     NO_SINKS if sink_logits is None else sink_logits, NO_SINKS if alibi is None else alibi)


SOFTMAX_LANES = 16  # the softmax's max and sum run in this many independent lanes (see _softmax_part)


# (a plain call: _logits calls it twice, and inlined it compiled twice)
@nb.njit(**EXACT_JIT)
def _softmax_part(sh: np.ndarray, bias: np.ndarray, sc: float, cap: float, softcap: float, lane: np.ndarray) -> tuple:
    """Scores ``sh`` -> logits (scaled, soft-capped, plus ``bias``) -> ``exp(logit - max)`` in place;
    returns (max, sum of the exps).  lane: [SOFTMAX_LANES] float32 scratch.

    The max and the sum are kept in SOFTMAX_LANES independent lanes (slot ``j`` in lane ``j % 16``,
    the last ``n % 16`` slots after the lanes): each lane is a plain sequential chain, so LLVM turns the
    loops into vector code without fast-math's licence to reorder a reduction, and the rounding is the
    same however the kernel is compiled (this kernel is EXACT_JIT, see below).  As one scalar chain,
    SmolLM2's layer-step at 2048 slots (3 KV heads, 2 threads) took 80 us instead of 46.
    """
    n = sh.shape[0]
    nl = n - n % SOFTMAX_LANES
    if softcap > 0:
        for j in range(n):
            sh[j] = cap * np.tanh(sh[j] * sc / cap) + bias[j]
    else:
        for j in range(n):
            sh[j] = sh[j] * sc + bias[j]
    lane[:] = _NEG_INF
    for j0 in range(0, nl, SOFTMAX_LANES):
        blk = sh[j0 : j0 + SOFTMAX_LANES]
        for i in range(SOFTMAX_LANES):
            lane[i] = max(lane[i], blk[i])
    mh = _NEG_INF
    for i in range(SOFTMAX_LANES):
        mh = max(mh, lane[i])
    for j in range(nl, n):
        mh = max(mh, sh[j])
    lane[:] = 0.0
    for j0 in range(0, nl, SOFTMAX_LANES):
        blk = sh[j0 : j0 + SOFTMAX_LANES]
        for i in range(SOFTMAX_LANES):
            e = exp32(blk[i] - mh)  # exactly 0 for masked slots
            blk[i] = e
            lane[i] += e
    sm = np.float32(0.0)
    for i in range(SOFTMAX_LANES):
        sm += lane[i]
    for j in range(nl, n):
        e = exp32(sh[j] - mh)
        sh[j] = e
        sm += e
    return mh, sm


@nb.njit(inline="always", **EXACT_JIT)
def _key_queries(H: int, G: int) -> tuple:
    """Scratch of :func:`.qkeys.prep_queries` for H query heads (empty with G = 0: no integer keys)."""
    return np.empty((H, G * KEY_LANES), np.int8), np.empty((H, 2 * KEY_LANES if G > 0 else 0), np.float32)


# The prange's body is three plain calls (_keys, _logits, _pass): Numba's parfor lowering compiles a
# loop body as a gufunc of its own, and with the softmax inlined into it (twice: with and without
# ALiBi) the fp16 kernel alone compiled for ~20 s on a first run; ~9 s now, and ~2 s these two calls.
@nb.njit(**EXACT_JIT)
def _logits(s: np.ndarray, j0: int, j1: int, kp: np.ndarray, pq: int, window: int, logw: np.ndarray, alibi: np.ndarray, kh: int,
            gqa: int, sc: float, cap: float, softcap: float, mx: np.ndarray, tot: np.ndarray) -> None:
    """Raw scores ``s[hh, j0:j1]`` (one KV head's, [gqa, N]) -> ``exp(logit - max)`` in place, with the
    position mask (``kp``: the head's slot positions [N]; query at ``pq``; a sliding ``window`` > 0, a
    chunk of ``-window`` < 0), merge log-weights ``logw[kh]`` and ALiBi slopes ``alibi[kh * gqa + hh]``
    (either empty for none); each query head's max and sum of exps into ``mx[hh]``, ``tot[hh]``.

    Flash-decoding: each work item keeps its own max; the probabilities stay unnormalised until the
    items are combined."""
    use_alibi = alibi.shape[0] > 0
    bias = np.empty(j1 - j0, np.float32)
    hbias = np.empty(j1 - j0 if use_alibi else 0, np.float32)  # a query head's own: bias + its ALiBi
    lane = np.empty(SOFTMAX_LANES, np.float32)
    lo = max(pq - window, -1) if window > 0 else -1  # visible: lo < position <= pq (and not -1: empty)
    if window < 0:  # chunked (Llama 4): the keys from the start of the query's chunk of -window positions
        lo = pq - pq % -window - 1
    # (the loops run over slices from 0: an index from j0 could be negative to Numba, whose
    # wraparound test keeps a loop from vectorising)
    kpj = kp[j0:j1]
    for j in range(j1 - j0):  # additive bias per slot, branch-free: the mask
        bias[j] = np.float32(0.0) if (kpj[j] > lo) & (kpj[j] <= pq) else _NEG_INF
    if logw.shape[0] > 0:  # merge log-weights
        lw = logw[kh, j0:j1]
        for j in range(j1 - j0):
            bias[j] += lw[j]
    for hh in range(gqa):
        if use_alibi:  # (the true positions, so an evicted cache's gaps keep their distances)
            sl = alibi[kh * gqa + hh]
            for j in range(j1 - j0):
                hbias[j] = bias[j] + sl * np.float32(kpj[j] - pq)
            mx[hh], tot[hh] = _softmax_part(s[hh, j0:j1], hbias, sc, cap, softcap, lane)
        else:
            mx[hh], tot[hh] = _softmax_part(s[hh, j0:j1], bias, sc, cap, softcap, lane)


# _keys and _pass are plain calls, not inline="always" (Numba's IR inlining copies a callee block by
# block with its whole scope: a first --kv-bits 2 run compiled ~14 s longer with them inlined), and
# EXACT_JIT, the flags of the kernel they were inlined into, so they round as the inlined code did.
@nb.njit(**EXACT_JIT)
def _keys(kh, j0, j1, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, qt, s_all, gqa, ik0, ik1, kq0, kq1) -> None:
    """Raw scores ``s_all[kh, hh, j] = q_hh . k_j`` over the slots ``j0 .. j1`` of KV head ``kh``: a pool
    with integer keys (``ik0``/``ik1``, its queries ``kq0``/``kq1`` from :func:`.qkeys.prep_queries`)
    through :func:`.qkeys.key_scores`, the rest (fp16 slots, other pools) through :func:`_pass`."""
    F = x16.shape[1]
    C0 = c0.shape[1]
    y = qt[kh * gqa : (kh + 1) * gqa]
    if not (ik0 or ik1):
        _pass(DOT, kh, j0, j1, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, y, s_all, gqa)
        return
    gs = np.empty((gqa, CHUNK_GROUPS), np.float32)
    lo, hi = kh * gqa, (kh + 1) * gqa
    for seg in range(3):  # the fp16 area, pool 0, pool 1
        a = j0 if seg == 0 else max(j0, F if seg == 1 else F + C0)
        e = min(j1, F) if seg == 0 else (min(j1, F + C0) if seg == 1 else j1)
        if a >= e:
            continue
        if seg == 1 and ik0:
            key_scores(c0[kh], m0[kh], lut0, w0, G, a - F, e - a, kq0[0][lo:hi], kq0[1][lo:hi], gs, s_all[kh], a)
        elif seg == 2 and ik1:
            key_scores(c1[kh], m1[kh], lut1, w1, G, a - F - C0, e - a, kq1[0][lo:hi], kq1[1][lo:hi], gs, s_all[kh], a)
        else:
            _pass(DOT, kh, a, e, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, y, s_all, gqa)


# EXACT_JIT, not _JIT: cache/insert.py's decode_step (EXACT_JIT) calls this kernel from inside
# Numba, and a parallel callee compiled within its caller took other rounding than the same kernel
# loaded from Numba's cache, so a first run after an install or an edit gave other logits than every
# later run (SmolLM2, kv-eval --ctx 2048: 4-bit PPL 20.48 then 20.32, 2-bit 20.66 then 20.89).  With
# one set of flags for both, both ways compile alike; the vector-IR kernels do the arithmetic that
# counts, and the softmax's reductions run in independent lanes (_softmax_part), so it is as fast.
# tests/test_jit_cache.py runs a compiling process and a cache-loading one and compares their logits.
@nb.njit(parallel=prange_only(), **EXACT_JIT)
def _attend_decode_q(q, qpos, k16, v16, kc0, km0, vc0, vm0, kw0, vw0, kc1, km1, vc1, vm1, kw1, vw1, klut0, vlut0, klut1, vlut1,
                     G, kpos, logw, window, scale, softcap, out, s_all, probs_acc, split_for, int_keys, sink_logits, alibi):
    T, H, D = q.shape
    n_kv = k16.shape[0]
    F = k16.shape[1]
    Dv = v16.shape[2]
    C0 = kc0.shape[1]
    C1 = kc1.shape[1]
    gqa = H // n_kv
    sc = np.float32(scale)
    cap = np.float32(softcap)
    use_acc = probs_acc.shape[0] > 0
    use_sinks = sink_logits.shape[0] > 0
    ph = 1 if kpos.shape[0] > 1 else 0  # pos row stride over KV heads
    # the slots to read: the fp16 area and each pool up to its last held slot.  A pool is
    # sized for the whole context and fills from its first empty slot, so early in a long
    # context most of it is an empty tail (SmolLM2 at -c 4096, 4-bit, 300 tokens held:
    # 22.4 ms a token with the tails read, 14.8 without)
    A1 = F + _extent(kpos, F, C0)  # segment A: [0, A1), the fp16 area and pool 0
    B0 = F + C0
    B1 = B0 + _extent(kpos, B0, C1)  # segment B: [B0, B1), pool 1
    if A1 == B0:  # pool 0 full (pool 1 only fills after it, so the usual case): one segment, split evenly
        A1, B0 = B1, B1
    M = A1 + B1 - B0
    # work items: (KV head, slot chunk); with enough slots a head is split so that
    # the items share out evenly over the threads (Gemma 3 has one KV head, SmolLM2
    # three: on two threads, three whole heads would leave one thread idle a third of the time)
    nc = 1
    if n_kv % split_for != 0 and M >= SPLIT_MIN_SLOTS:  # n_kv * nc items divide evenly over the threads
        nc = min(split_for // math.gcd(n_kv, split_for), M // (SPLIT_MIN_SLOTS // 2))
    step = -(-M // nc)
    step = max(TILE, -(-step // TILE) * TILE)
    na = -(-A1 // step)
    nc = na + -(-(B1 - B0) // step)  # chunks a head: each segment cut into pieces of at most step slots
    cj0 = np.empty(nc, np.int64)
    cj1 = np.empty(nc, np.int64)
    for c in range(nc):
        a = 0 if c < na else B0
        b = A1 if c < na else B1
        cj0[c] = a + (c if c < na else c - na) * step
        cj1[c] = min(b, cj0[c] + step)
    items = n_kv * nc
    part = np.empty((items, gqa, Dv), np.float32)  # per item: value sums weighted by exp(logit - its max)
    mx = np.empty((items, gqa), np.float32)  # per item: max logit
    tot = np.empty((items, gqa), np.float32)  # per item: sum of exp(logit - max)
    qt = np.empty((H, D), np.float32)
    # integer key scores per pool (2/4-bit keys, VNNI): the queries quantized and laid out once a step
    ik0 = int_keys and C0 > 0 and key_kernel_ok(kw0, G, D)
    ik1 = int_keys and C1 > 0 and key_kernel_ok(kw1, G, D)
    kq0 = _key_queries(H, G if ik0 else 0)
    kq1 = _key_queries(H, G if ik1 else 0)
    for t in range(T):
        pq = qpos[t]
        for hh in range(H):
            copy_into(qt[hh], q[t, hh])
        if ik0:
            prep_queries(qt, kw0, G, kq0[0], kq0[1])
        if ik1:
            prep_queries(qt, kw1, G, kq1[0], kq1[1])
        for it in nb.prange(items):
            kh = it // nc
            j0 = cj0[it % nc]
            j1 = cj1[it % nc]
            # ---- raw scores q . k
            _keys(kh, j0, j1, k16, kc0, km0, klut0, kw0, kc1, km1, klut1, kw1, G, D, qt, s_all, gqa, ik0, ik1, kq0, kq1)
            # ---- logits, masks, softmax over this item's slots
            _logits(s_all[kh], j0, j1, kpos[kh * ph], pq, window, logw, alibi, kh, gqa, sc, cap, softcap, mx[it], tot[it])
            # ---- values
            acc = part[it]
            acc[:] = 0.0
            _pass(ADD, kh, j0, j1, v16, vc0, vm0, vlut0, vw0, vc1, vm1, vlut1, vw1, G, Dv, acc, s_all, gqa)
        # ---- combine the items of each head
        for kh in range(n_kv):
            for hh in range(gqa):
                m = _NEG_INF
                for c in range(nc):
                    m = max(m, mx[kh * nc + c, hh])
                den = np.float32(0.0)
                for c in range(nc):
                    w = np.exp(mx[kh * nc + c, hh] - m)
                    mx[kh * nc + c, hh] = w  # now the item's weight
                    den += w * tot[kh * nc + c, hh]
                if use_sinks:  # the sink's exp joins the denominator only (it has no value)
                    den += np.exp(min(sink_logits[kh * gqa + hh] - m, np.float32(80.0)))
                inv = np.float32(1.0) / den if m > np.float32(0.5) * _NEG_INF else np.float32(0.0)
                o = out[t, kh * gqa + hh]
                o[:] = 0.0
                for c in range(nc):
                    w = mx[kh * nc + c, hh] * inv
                    pc = part[kh * nc + c, hh]
                    for d in range(Dv):
                        o[d] += w * pc[d]
                if use_acc:
                    for c in range(nc):
                        w = mx[kh * nc + c, hh] * inv
                        for j in range(cj0[c], cj1[c]):
                            probs_acc[kh, j] += s_all[kh, hh, j] * w


@nb.njit(inline="always", **_JIT)
def _extent(kpos: np.ndarray, lo: int, cap: int) -> int:
    """Slots of the area ``[lo, lo + cap)`` up to its last held one (any pos row): 0 when it is empty.

    Scans back from the end a block at a time (a max over a block vectorises), so an empty
    tail costs well under a nanosecond a slot."""
    b1 = cap
    while b1 > 0:
        b0 = max(0, b1 - 64)
        m = np.int32(-1)
        for r in range(kpos.shape[0]):
            row = kpos[r, lo + b0 : lo + b1]
            for s in range(b1 - b0):
                m = max(m, row[s])
        if m >= 0:
            for s in range(b1 - b0 - 1, -1, -1):
                for r in range(kpos.shape[0]):
                    if kpos[r, lo + b0 + s] >= 0:
                        return b0 + s + 1
        b1 = b0
    return 0


@outline("kvrun_float_tiles", types.void(*([types.int64] * 9)), **EXACT_JIT)
def _float_tiles(mode, tp, ts, n, D, yp, gqa, xp, xs):
    """One float tile through ``tile_dot`` (mode DOT) or ``tile_add``, compiled once (:mod:`.outline`);
    EXACT_JIT, the flags of ``_pass``, its caller."""
    if mode == DOT:
        tile_dot(tp, ts, n, D, yp, gqa, xp, xs)
    else:
        tile_add(tp, ts, n, D, yp, gqa, xp, xs)


@outline("kvrun_half_tiles", types.void(*([types.int64] * 9)), **_JIT)
def _half_tiles(mode, tp, ts, n, D, yp, gqa, xp, xs):
    """One fp16 tile through ``tile_dot16`` (mode DOT) or ``tile_add16``, compiled once (:mod:`.outline`)."""
    if mode == DOT:
        tile_dot16(tp, ts, n, D, yp, gqa, xp, xs)
    else:
        tile_add16(tp, ts, n, D, yp, gqa, xp, xs)


@nb.njit(**_JIT)
def _half_pass(mode: int, xh: np.ndarray, j0: int, j1: int, R: int, y: np.ndarray, s: np.ndarray, gqa: int, row0: int) -> None:
    """``_pass`` over fp16 slots ``j0 .. j1`` (xh: one KV head's rows of fp16 bits from slot ``row0`` on:
    the fp16 area [F, D] uint16, or a 16-bit pool's codes [C, 2D] uint8; s: its scores [gqa, N]), read
    in place R rows at a time: a tile's rows stay in L1 while every query head goes over them.  (A
    call of its own: inlined, it made the pools' loops in ``_pass`` 7% slower.)"""
    D = y.shape[1]
    ts = xh.strides[0] // 2
    xs = s.strides[0] // 4
    for a0 in range(j0, j1, R):
        n = min(R, j1 - a0)
        xp = s.ctypes.data + 4 * a0
        tp = xh.ctypes.data + (a0 - row0) * xh.strides[0]
        _half_tiles(mode, tp, ts, n, D, y.ctypes.data, gqa, xp, xs)


@nb.njit(**EXACT_JIT)
def _pass(mode: int, kh: int, j0: int, j1: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
          c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, y: np.ndarray, s_all: np.ndarray, gqa: int) -> None:
    """One pass over the slots ``j0 .. j1`` of KV head ``kh``: ``DOT``: ``s_all[kh, hh, j] = y_hh . k_j``
    (y: the group's queries [gqa, D]); ``ADD``: ``y_hh += s_all[kh, hh, j] v_j`` (y: accumulators).

    The fp16 slots are read in place by the tile kernels' half-precision twins; the pools' rows
    are decoded a tile at a time into floats (a tile may straddle the two pools) and run through
    the register-blocked tile kernels with every query head."""
    s = s_all[kh]
    F = x16.shape[1]
    C0 = c0.shape[1]
    R = max(8, min(TILE, 4096 // D))  # tile rows: 16 KB of floats, in L1
    tile = np.empty(R * D, np.float32)
    vector = D % 8 == 0 and y.flags.c_contiguous and s_all.strides[2] == 4
    xs = s_all.strides[1] // 4
    a0 = j0
    if vector and x16.strides[2] == 2 and x16.strides[1] % 2 == 0:  # the fp16 slots in place
        e = min(j1, F)
        if j0 < e:
            _half_pass(mode, x16[kh], j0, e, R, y, s_all[kh], gqa, ROW0)  # (ROW0, not a bare 0: a literal's compile of its own)
        a0 = max(j0, e)
        # 16-bit pools (an eviction policy over fp16 slots) in place too: decoded into the float tile
        # first, they had cost --kv-budget's attention twice as much a slot as the fp16 area
        if w0 == 16 and a0 < min(j1, F + C0) and c0.strides[2] == 1 and c0.strides[1] % 2 == 0:
            e = min(j1, F + C0)
            _half_pass(mode, c0[kh], a0, e, R, y, s_all[kh], gqa, F)
            a0 = e
        if w1 == 16 and F + C0 <= a0 < j1 and c1.strides[2] == 1 and c1.strides[1] % 2 == 0:
            _half_pass(mode, c1[kh], a0, j1, R, y, s_all[kh], gqa, F + C0)
            a0 = j1
    for a0 in range(a0, j1, R):  # (from the first slot the in-place passes left)
        n = min(R, j1 - a0)
        _fill_tile(a0, n, F, C0, x16[kh], c0[kh], m0[kh], lut0, w0, c1[kh], m1[kh], lut1, w1, G, D, tile)
        if vector:
            xp = s_all.ctypes.data + kh * s_all.strides[0] + 4 * a0
            _float_tiles(mode, tile.ctypes.data, D, n, D, y.ctypes.data, gqa, xp, xs)
            continue
        for r in range(n):  # other head sizes
            for hh in range(gqa):
                if mode == DOT:
                    a = np.float32(0.0)
                    for d in range(D):
                        a += y[hh, d] * tile[r * D + d]
                    s[hh, a0 + r] = a
                else:
                    p = s[hh, a0 + r]
                    for d in range(D):
                        y[hh, d] += p * tile[r * D + d]


@nb.njit(**_JIT)
def key_similarity(kvec: np.ndarray, kc: np.ndarray, km: np.ndarray, lut: np.ndarray, bits: int, G: int, kh: int, out: np.ndarray) -> None:
    """Cosine similarity of one key with every key of head ``kh`` in a pool.

    kvec: [D] float32; kc: [n_kv, C, D*w/8] uint8; km: [n_kv, C, D/G, 2] uint8;
    out: [C] float32.  Used to find a merge target.
    """
    C = kc.shape[1]
    D = kvec.shape[0]
    tile = np.empty(TILE * D, np.float32)
    nq = np.float32(0.0)
    for d in range(D):
        nq += kvec[d] * kvec[d]
    for j0 in range(0, C, TILE):
        n = min(TILE, C - j0)
        decode_rows(kc[kh], km[kh], lut, bits, G, j0, n, tile)
        for r in range(n):
            dot = np.float32(0.0)
            nk = np.float32(0.0)
            for d in range(D):
                x = tile[r * D + d]
                dot += x * kvec[d]
                nk += x * x
            den = np.sqrt(nq * nk)
            out[j0 + r] = dot / den if den > 0 else np.float32(0.0)


# ----------------------------------------------------------------- the fp16-only kernel
# The plain fp16 cache (the default) has no pools, but the general kernel above
# carries the row decoders of every (width, group): compiling it takes ~27 s
# of a first run's ~34.  This is the same body with the row dispatch cut to fp16
# rows, built by swapping one global of each inlined layer.
@nb.njit(inline="always", **_JIT)
def _fill_tile16(j0: int, n: int, F: int, C0: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
                 c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, tile: np.ndarray) -> None:
    """``_fill_tile`` for fp16 rows only."""
    decode_half_rows(x16, j0, n, tile)


# (_JIT: the flags of _attend_decode_f16, which calls these two)
_pass16 = nb.njit(**_JIT)(_variant(_pass.py_func, "_pass16", _fill_tile=_fill_tile16))


@nb.njit(**_JIT)
def _keys16(kh, j0, j1, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, qt, s_all, gqa, ik0, ik1, kq0, kq1) -> None:
    """``_keys`` for fp16 rows only: no pools, so no integer keys (whose kernels, compiled in, took the
    plain cache's first run 13 -> 24 s to compile)."""
    _pass16(DOT, kh, j0, j1, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, qt[kh * gqa : (kh + 1) * gqa], s_all, gqa)


@nb.njit(inline="always", **_JIT)
def _no_prep(q, w, G, qv, qf) -> None:
    """``prep_queries`` where no pool has integer keys."""


# (_JIT: the flags the softmax had when it was inlined into the fp16 kernel)
_softmax_part16 = nb.njit(**_JIT)(_variant(_softmax_part.py_func, "_softmax_part16"))
_logits16 = nb.njit(**_JIT)(_variant(_logits.py_func, "_logits16", _softmax_part=_softmax_part16))

#: the globals that cut _attend_decode_q to fp16 rows (its parallel form here, batchdecode's serial one)
F16_ROWS = dict(_pass=_pass16, _keys=_keys16, _logits=_logits16, prep_queries=_no_prep)
_attend_decode_f16 = nb.njit(parallel=prange_only(), **_JIT)(_variant(_attend_decode_q.py_func, "_attend_decode_f16", **F16_ROWS))

_NO_CODES = np.zeros((4096, 0, 1), np.uint8)  # no pools (0 slots; indexable by any KV head)
_NO_META = np.zeros((4096, 0, 1, 2), np.uint8)
_NO_LUT = np.ones(256, np.float32)
#: no sink logits (an empty [n_head]: attend_decode_q's sink_logits)
NO_SINKS = np.zeros(0, np.float32)


@nb.njit(**_JIT)
def decode_step_f16(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, k16: np.ndarray, v16: np.ndarray, kpos: np.ndarray,
                    used: int, window: int, scale: float, softcap: float, out: np.ndarray, s_all: np.ndarray, split_for: int,
                    sink_logits: np.ndarray) -> int:
    """A decode step of an fp16 ring in one call (a layer-step's dispatch and numpy calls cost more than its
    arithmetic on a small model): the step's tokens stored, then :func:`attend_decode_q`'s arithmetic cut
    to fp16 rows (``_attend_decode_f16``) over the slots written so far.

    q: [T, n_head, D] float32; k, v: [T, n_kv, D] / [T, n_kv, Dv] float32, stored as fp16 bits (rounded as
    numpy's astype) at slot = position % capacity of k16/v16 [n_kv, cap, D] uint16 and kpos [cap] int32;
    used: slots [0, used) written before; sink_logits: [n_head] (gpt-oss) or empty.  Returns the new ``used``.
    """
    cap = kpos.shape[0]
    for t in range(k.shape[0]):
        s = pos[t] % cap
        for h in range(k.shape[1]):
            for d in range(k.shape[2]):
                k16[h, s, d] = f32_to_f16(k[t, h, d])
            for d in range(v.shape[2]):
                v16[h, s, d] = f32_to_f16(v[t, h, d])
        kpos[s] = pos[t]
        used = max(used, s + 1)
    qpos = pos.astype(np.int32)
    no_probs = np.zeros((0, 0), np.float32)  # (the globals are read-only in here, and the kernel may write these)
    # (alibi: sink_logits[:0], empty: the plain cache's ALiBi is the keys' position channel, models/bloom.py; the
    # empty pools' widths 0: constants that prune ``_pass``'s in-place branches for 16-bit pools, a compile less)
    _attend_decode_f16(q, qpos, k16[:, :used], v16[:, :used], _NO_CODES, _NO_META, _NO_CODES, _NO_META, 0, 0,
                       _NO_CODES, _NO_META, _NO_CODES, _NO_META, 0, 0, _NO_LUT, _NO_LUT, _NO_LUT, _NO_LUT,
                       32, kpos[:used].reshape((1, used)), no_probs, window, scale, softcap, out, s_all[:, :, :used], no_probs, split_for,
                       False, sink_logits, sink_logits[:0])  # fmt: skip
    return used
