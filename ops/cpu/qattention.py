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

    codes [n_kv, C, D * w / 8]  uint8   w = container width 2, 4, 8 or 16 bits
                                        (16: raw float16 bytes, no meta)
    meta  [n_kv, C, D / G, 2]   uint8   per group of G values: scale code, zero code

A group of ``G`` values holds ``nb = G * w / 8`` bytes, *group-planar*: byte
``i`` of the group packs the codes of values ``i, i + nb, i + 2 nb, ...`` at
bit offsets ``0, w, 2w, ...``, so unpacking is a unit-stride, vectorisable
shift-and-mask.  A value is ``x = s * c + m`` with ``s = lut[scale code]``
(a log-spaced table, see ``kvrun.cache.quant``) and ``m = -s * z``,
``z = zero code * (2^b - 1) / 255`` (b: the code's bits; 3-bit codes sit in
4-bit containers): asymmetric integer quantization whose
zero point has 8 fractional bits of resolution.

Decode reads the cache in place: fused row kernels (LLVM vector IR, one per
width and group) decode each row into registers and dot it with every query
head of its GQA group (keys) or add it, weighted, to their accumulators
(values).  So each byte of the cache is read once per query, no float copy of
the cache is ever made, and the unpacking is shared by the group's heads.
Geometries the fused kernels do not cover take a tile-at-a-time path (rows
decoded into an L1-resident scratch).  Prefill, compute-bound, may
dequantize into a per-call scratch and use BLAS.
"""

from __future__ import annotations

import types as types_

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .f16 import f16_to_f32, f32_to_f16
from .qmatmul import LF16, LF32, LI8, LI16, LI32, LI64, V, _G

_JIT = dict(cache=True, fastmath=True, nogil=True)
_NEG_INF = np.float32(-1e30)  # masked logit: finite, so exp() needs no branch (and fastmath stays valid)
TILE = 64  # rows dequantized at a time into an L1-resident float scratch
SPLIT_MIN_SLOTS = 1024  # a KV head is split across threads from this many slots (split-K)
STORE, DOT, ADD = 0, 1, 2  # modes of the fused row kernels (see ``_row_kernel``)


@nb.njit(inline="always", **_JIT)
def container(bits: int) -> int:
    """Bits a code occupies: 3-bit codes are stored in 4-bit containers."""
    return 4 if bits == 3 else bits


# ================================================================= row decoders (LLVM vector IR)
# Why IR: Numba types ``uint8 >> int`` and ``& 3`` as int64, and AVX2 has no
# int64 -> float conversion, so a Numba unpack loop stays scalar (~27 ns per
# 2-bit row of 64).  Written as <n x i32> vectors, a group is a handful of
# shifts, masks, conversions and FMAs (~4 ns a row).  Only generic LLVM
# operations are used (no x86 intrinsics), so this compiles on any host.
# Defined in this file: Numba's cache is invalidated per defining file.

def _emit_group(g: _G, w: int, G: int, cpp, mpp, lpp, zs, gi) -> list:
    """IR: group ``gi`` of a row, decoded into ``G/8`` <8 x float> vectors (value order).

    ``cpp``/``mpp``: i8* to the row's codes / meta; ``lpp``: float* scale
    table; ``zs``: float zero-code step.  ``w = 16``: raw float16, no meta.
    Plane ``m`` of the group's ``nb`` bytes holds values ``m nb .. m nb + nb``,
    so an 8-byte chunk ``c`` of plane ``m`` is vector ``m nb/8 + c``.
    """
    b = g.b
    if w == 16:
        base = b.mul(gi, ir.Constant(LI64, 2 * G))
        out = []
        for k in range(G // 8):
            h = b.bitcast(g.load(cpp, b.add(base, ir.Constant(LI64, 16 * k)), V(LI16, 8)), V(LF16, 8))
            out.append(b.fpext(h, V(LF32, 8)))
        return out
    nb_ = G * w // 8
    mo = b.mul(gi, ir.Constant(LI64, 2))
    sg = b.load(b.gep(lpp, [g.u8(mpp, mo)]))
    zc = b.uitofp(g.u8(mpp, b.add(mo, ir.Constant(LI64, 1))), LF32)
    s_v = g.splat(sg)
    m_v = g.splat(b.fneg(b.fmul(b.fmul(sg, zc), zs)))
    out = [None] * (G // 8)
    base = b.mul(gi, ir.Constant(LI64, nb_))
    for c in range(nb_ // 8):
        x = b.zext(g.load(cpp, b.add(base, ir.Constant(LI64, 8 * c)), V(LI8, 8)), V(LI32, 8))
        for m in range(8 // w):
            code = g.and_(g.shr(x, w * m), (1 << w) - 1) if w < 8 else x
            out[m * (nb_ // 8) + c] = g.fma(b.sitofp(code, V(LF32, 8)), s_v, m_v)
    return out


def _i64(v: int) -> ir.Constant:
    return ir.Constant(LI64, v)


def _fptr(b: ir.IRBuilder, addr) -> ir.Value:
    return b.inttoptr(addr, LF32.as_pointer())


def _vptr(b: ir.IRBuilder, fp, idx) -> ir.Value:
    """<8 x float>* at float index ``idx`` of float* ``fp``."""
    return b.bitcast(b.gep(fp, [idx]), V(LF32, 8).as_pointer())


_ROWS_SIG = types.void(*([types.int64] * 6 + [types.float32] + [types.int64] * 6))


def _row_kernel(w: int, G: int):
    """An intrinsic that decodes ``n`` rows of a pool in registers and, per row, either

    * ``mode == DOT``: dots them with ``gqa`` query heads: ``x[hh * xs + r] = q_hh . row_r``
      (``x`` = scores, ``y`` = q: [gqa, D] float32),
    * ``mode == ADD``: adds them to ``gqa`` accumulators: ``acc_hh += x[hh * xs + r] row_r``
      (``x`` = probabilities, ``y`` = acc: [gqa, D] float32), or
    * ``mode == STORE``: stores them as floats, ``y[r D : (r+1) D] = row_r``
      (prefill scratch, merging, the tile path; ``gqa``, ``x``, ``xs`` unused).

    Arguments (int64 unless said): mode, codes, row stride of codes (bytes),
    meta, row stride of meta, lut, zs (float32), y, gqa, D, x, x stride
    (floats), n.  Each row's bytes are read once and never stored as floats.
    """

    def codegen(context, builder, sig, args):
        g, b = _G(builder), builder
        mode, cp, cs, mp, ms, lp, zs, yp, gqa, D, xp, xs, n = args
        lpp, ypp, xpp = _fptr(b, lp), _fptr(b, yp), _fptr(b, xp)
        n_groups = b.udiv(D, _i64(G))
        zero = ir.Constant(V(LF32, 8), [ir.Constant(LF32, 0.0)] * 8)

        def rows(mode: int) -> None:
            dot = mode == DOT
            with cgutils.for_range(b, n) as rl:
                r = rl.index
                rc = g.addr(b.add(cp, b.mul(r, cs)))
                rm = g.addr(b.add(mp, b.mul(r, ms)))
                if mode == STORE:
                    with cgutils.for_range(b, n_groups) as gl:
                        gi = gl.index
                        o = b.add(b.mul(r, D), b.mul(gi, _i64(G)))
                        for k, v in enumerate(_emit_group(g, w, G, rc, rm, lpp, zs, gi)):
                            b.store(v, _vptr(b, ypp, b.add(o, _i64(8 * k))), align=4)
                    return
                if dot:
                    with cgutils.for_range(b, gqa) as hl:
                        b.store(ir.Constant(LF32, 0.0), b.gep(xpp, [b.add(b.mul(hl.index, xs), r)]))
                with cgutils.for_range(b, n_groups) as gl:
                    gi = gl.index
                    vecs = _emit_group(g, w, G, rc, rm, lpp, zs, gi)
                    with cgutils.for_range(b, gqa) as hl:
                        hh = hl.index
                        off = b.add(b.mul(hh, D), b.mul(gi, _i64(G)))  # float index of this group in q / acc row hh
                        xh = b.gep(xpp, [b.add(b.mul(hh, xs), r)])
                        if dot:
                            a0 = a1 = zero
                            for k, v in enumerate(vecs):  # two chains: half the FMA latency
                                qv = b.load(_vptr(b, ypp, b.add(off, _i64(8 * k))), align=4)
                                if k % 2 == 0:
                                    a0 = g.fma(v, qv, a0)
                                else:
                                    a1 = g.fma(v, qv, a1)
                            b.store(b.fadd(b.load(xh), g.hsum(b.fadd(a0, a1))), xh)
                        else:
                            pv = g.splat(b.load(xh))
                            for k, v in enumerate(vecs):
                                ap = _vptr(b, ypp, b.add(off, _i64(8 * k)))
                                b.store(g.fma(pv, v, b.load(ap, align=4)), ap, align=4)

        with b.if_else(b.icmp_unsigned("==", mode, _i64(STORE))) as (then, otherwise):
            with then:
                rows(STORE)
            with otherwise:
                with b.if_else(b.icmp_unsigned("==", mode, _i64(DOT))) as (t2, o2):
                    with t2:
                        rows(DOT)
                    with o2:
                        rows(ADD)
        return context.get_dummy_value()

    def typer(typingctx, mode, cp, cs, mp, ms, lp, zs, yp, gqa, D, xp, xs, n):  # noqa: ARG001
        return _ROWS_SIG, codegen

    return intrinsic(typer)


# fused row kernels (decode-and-dot / decode-and-accumulate / decode-and-store), per (container bits, group);
# 16 bits (float16 rows) read in chunks of 32
_rk16 = _row_kernel(16, 32)
_rk2_32, _rk2_64, _rk2_128 = (_row_kernel(2, G) for G in (32, 64, 128))
_rk4_32, _rk4_64, _rk4_128 = (_row_kernel(4, G) for G in (32, 64, 128))
_rk8_32, _rk8_64, _rk8_128 = (_row_kernel(8, G) for G in (32, 64, 128))


@nb.njit(inline="always", **_JIT)
def fused_ok(bits: int, G: int, D: int) -> bool:
    """Whether the fused row kernels cover this (width, group, head size)."""
    if bits == 16:
        return D % 32 == 0
    return (G == 32 or G == 64 or G == 128) and D % G == 0


@nb.njit(inline="always", **_JIT)
def _rows(mode: int, bits: int, G: int, cp: int, cs: int, mp: int, ms: int, lp: int, zs: float,
          yp: int, gqa: int, D: int, xp: int, xs: int, n: int) -> None:
    """Dispatch to the fused row kernel of (width, group); see ``_row_kernel``."""
    z = np.float32(zs)
    w = container(bits)
    k = mode
    if w == 16:
        _rk16(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
    elif w == 2:
        if G == 32:
            _rk2_32(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        elif G == 64:
            _rk2_64(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        else:
            _rk2_128(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
    elif w == 4:
        if G == 32:
            _rk4_32(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        elif G == 64:
            _rk4_64(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        else:
            _rk4_128(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
    else:
        if G == 32:
            _rk8_32(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        elif G == 64:
            _rk8_64(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)
        else:
            _rk8_128(k, cp, cs, mp, ms, lp, z, yp, gqa, D, xp, xs, n)


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
    w = container(bits)
    nbg = G * w // 8
    mask = (1 << w) - 1
    for g in range(D // G):
        sg = lut[meta[g, 0]]
        mg = -sg * np.float32(meta[g, 1]) * zs
        for m in range(8 // w):
            for i in range(nbg):
                out[g * G + m * nbg + i] = sg * np.float32((np.int32(codes[g * nbg + i]) >> np.int32(w * m)) & mask) + mg


@nb.njit(**_JIT)
def decode_rows(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, r0: int, n: int, out: np.ndarray) -> None:
    """Rows ``r0 .. r0+n`` of one head's pool, dequantized into ``out[:n*D]`` (flat, row after row).

    codes: [C, D*w/8] uint8 (16 bits: float16 bytes); meta: [C, D/G, 2] uint8;
    lut: [256] float32; out: flat float32.  Each row must be contiguous.
    """
    D = codes.shape[1] * 8 // container(bits)
    if fused_ok(bits, G, D) and codes.strides[1] == 1 and (bits == 16 or (meta.strides[2] == 1 and meta.strides[1] == 2)):
        zs = np.float32((1 << bits) - 1) / np.float32(255.0) if bits < 16 else np.float32(0.0)
        _rows(STORE, bits, G, codes.ctypes.data + r0 * codes.strides[0], codes.strides[0],
              meta.ctypes.data + r0 * meta.strides[0], meta.strides[0], lut.ctypes.data, zs, out.ctypes.data, 1, D, 0, 0, n)
        return
    for r in range(n):
        dequant_row(codes[r0 + r], meta[r0 + r], lut, bits, G, out[r * D : (r + 1) * D])


@nb.njit(**_JIT)
def decode_half_rows(x: np.ndarray, r0: int, n: int, out: np.ndarray) -> None:
    """Rows ``r0 .. r0+n`` of a [R, D] uint16 (float16 bits) array into ``out[:n*D]``."""
    D = x.shape[1]
    if fused_ok(16, 32, D) and x.strides[1] == 2:
        _rows(STORE, 16, 32, x.ctypes.data + r0 * x.strides[0], x.strides[0], 0, 0, 0, 0.0, out.ctypes.data, 1, D, 0, 0, n)
        return
    for r in range(n):
        for d in range(D):
            out[r * D + d] = f16_to_f32(x[r0 + r, d])


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
    n_threads: int = 0,
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

    Slots are decoded ``TILE`` rows at a time into an L1-resident float
    scratch (vector decoders, one per width) and each row is dotted with every
    query head of its GQA group, so every byte of the cache is read once per
    query and no float copy of the cache is ever made.  Work items run in
    parallel (``prange``): one per KV head, or, with fewer KV heads than
    threads and at least ``SPLIT_MIN_SLOTS`` slots, a head's slots are cut into
    chunks that each keep their own softmax maximum and are combined at the
    end (flash-decoding's split-K).  SmolLM2's 3 KV heads at 4096 slots, 2
    threads, 2-bit: 0.50 -> 0.34 ms a layer-step (fp16 ring, serial: 0.43 ms).

    s_all: [n_kv, gqa, N] float32 scratch.  probs_acc: [n_kv, N] float32
    receives the softmax probabilities summed over each KV head's query heads
    (what eviction policies score with), or ``[0, 0]`` to skip.  n_threads:
    threads the split is planned for (0: Numba's current count).
    """
    _attend_decode_q(q, qpos, k16, v16, kc0, km0, vc0, vm0, kw0, vw0, kc1, km1, vc1, vm1, kw1, vw1, klut0, vlut0, klut1, vlut1,
                     G, kpos, logw, window, scale, softcap, out, s_all, probs_acc, n_threads or nb.get_num_threads())


@nb.njit(parallel=True, **_JIT)
def _attend_decode_q(q, qpos, k16, v16, kc0, km0, vc0, vm0, kw0, vw0, kc1, km1, vc1, vm1, kw1, vw1, klut0, vlut0, klut1, vlut1,
                     G, kpos, logw, window, scale, softcap, out, s_all, probs_acc, n_threads):
    T, H, D = q.shape
    n_kv = k16.shape[0]
    F = k16.shape[1]
    Dv = v16.shape[2]
    C0 = kc0.shape[1]
    C1 = kc1.shape[1]
    N = F + C0 + C1
    gqa = H // n_kv
    sc = np.float32(scale)
    cap = np.float32(softcap)
    use_logw = logw.shape[0] > 0
    use_acc = probs_acc.shape[0] > 0
    ph = 1 if kpos.shape[0] > 1 else 0  # pos row stride over KV heads
    fk = _all_fused(k16, kc0, km0, kw0, kc1, km1, kw1, G, D)
    fv = _all_fused(v16, vc0, vm0, vw0, vc1, vm1, vw1, G, Dv)
    # work items: (KV head, slot chunk); a head is split when there are fewer
    # heads than threads and enough slots (Gemma 3 has one KV head)
    nc = 1
    if n_kv < n_threads and N >= SPLIT_MIN_SLOTS:
        nc = min(-(-n_threads // n_kv), N // (SPLIT_MIN_SLOTS // 2))
    step = -(-N // nc)
    step = max(TILE, -(-step // TILE) * TILE)
    nc = -(-N // step)
    items = n_kv * nc
    part = np.empty((items, gqa, Dv), np.float32)  # per item: value sums weighted by exp(logit - its max)
    mx = np.empty((items, gqa), np.float32)  # per item: max logit
    tot = np.empty((items, gqa), np.float32)  # per item: sum of exp(logit - max)
    qt = np.empty((H, D), np.float32)
    for t in range(T):
        pq = qpos[t]
        qt[:] = q[t]
        for it in nb.prange(items):
            kh = it // nc
            j0 = (it % nc) * step
            j1 = min(N, j0 + step)
            s = s_all[kh]
            prow = kh * ph
            bias = np.empty(j1 - j0, np.float32)
            # ---- raw scores q . k
            _pass(DOT, kh, j0, j1, fk, k16, kc0, km0, klut0, kw0, kc1, km1, klut1, kw1, G, D, qt[kh * gqa : (kh + 1) * gqa], s_all, gqa)
            # ---- logits, masks, softmax over this item's slots (flash-decoding: each item keeps
            # its own max; probabilities stay unnormalised until the items are combined)
            for j in range(j0, j1):  # additive bias per slot: merge log-weight, or the mask
                pk = kpos[prow, j]
                visible = pk >= 0 and pk <= pq and not (window > 0 and pq - pk >= window)
                lw = logw[kh, j] if use_logw else np.float32(0.0)
                bias[j - j0] = lw if visible else _NEG_INF
            for hh in range(gqa):
                mh = _NEG_INF
                if softcap > 0:
                    for j in range(j0, j1):
                        a = cap * np.tanh(s[hh, j] * sc / cap) + bias[j - j0]
                        s[hh, j] = a
                        mh = max(mh, a)
                else:
                    for j in range(j0, j1):
                        a = s[hh, j] * sc + bias[j - j0]
                        s[hh, j] = a
                        mh = max(mh, a)
                sm = np.float32(0.0)
                for j in range(j0, j1):
                    e = np.exp(s[hh, j] - mh)  # exactly 0 for masked slots
                    s[hh, j] = e
                    sm += e
                mx[it, hh] = mh
                tot[it, hh] = sm
            # ---- values
            acc = part[it]
            acc[:] = 0.0
            _pass(ADD, kh, j0, j1, fv, v16, vc0, vm0, vlut0, vw0, vc1, vm1, vlut1, vw1, G, Dv, acc, s_all, gqa)
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
                        for j in range(c * step, min(N, (c + 1) * step)):
                            probs_acc[kh, j] += s_all[kh, hh, j] * w


@nb.njit(inline="always", **_JIT)
def _pass(mode: int, kh: int, j0: int, j1: int, fused: bool, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
          c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, y: np.ndarray, s_all: np.ndarray, gqa: int) -> None:
    """One pass over the slots ``j0 .. j1`` of KV head ``kh``: ``DOT``: ``s_all[kh, hh, j] = y_hh . k_j``
    (y: the group's queries [gqa, D]); ``ADD``: ``y_hh += s_all[kh, hh, j] v_j`` (y: accumulators)."""
    if fused:
        _areas(mode, kh, j0, j1, x16, c0, m0, lut0, w0, c1, m1, lut1, w1, G, D, y.ctypes.data, s_all)
        return
    s = s_all[kh]
    F = x16.shape[1]
    C0 = c0.shape[1]
    tile = np.empty(TILE * D, np.float32)
    for a0 in range(j0, j1, TILE):
        n = min(TILE, j1 - a0)
        _fill_tile(a0, n, F, C0, x16[kh], c0[kh], m0[kh], lut0, w0, c1[kh], m1[kh], lut1, w1, G, D, tile)
        for r in range(n):
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


@nb.njit(inline="always", **_JIT)
def _all_fused(x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, w0: int, c1: np.ndarray, m1: np.ndarray, w1: int, G: int, D: int) -> bool:
    """Whether every area of K (or V) can go through the fused row kernels (unit inner strides, covered widths)."""
    ok = fused_ok(16, G, D) and x16.strides[2] == 2
    for c, m, w in ((c0, m0, w0), (c1, m1, w1)):
        if c.shape[1] > 0:
            ok = ok and fused_ok(w, G, D) and c.strides[2] == 1 and (w == 16 or (m.strides[3] == 1 and m.strides[2] == 2))
    return ok


@nb.njit(inline="always", **_JIT)
def _areas(mode: int, kh: int, j0: int, j1: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
           c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, yp: int, s_all: np.ndarray) -> None:
    """Slots ``j0 .. j1`` of one KV head (they may straddle the three areas) through the fused row kernels:
    scores into ``s_all[kh]`` (``DOT``, y = the group's queries) or values into y (``ADD``, y = accumulators)."""
    F = x16.shape[1]
    C0 = c0.shape[1]
    gqa = s_all.shape[1]
    xs = s_all.strides[1] // 4
    xp = s_all.ctypes.data + kh * s_all.strides[0]
    a, e = max(j0, 0), min(j1, F)
    if e > a:
        _rows(mode, 16, G, x16.ctypes.data + kh * x16.strides[0] + a * x16.strides[1], x16.strides[1], 0, 0, 0, 0.0, yp, gqa, D, xp + 4 * a, xs, e - a)
    a, e = max(j0, F), min(j1, F + C0)
    if e > a:
        r = a - F
        zs = np.float32((1 << w0) - 1) / np.float32(255.0)
        _rows(mode, w0, G, c0.ctypes.data + kh * c0.strides[0] + r * c0.strides[1], c0.strides[1],
              m0.ctypes.data + kh * m0.strides[0] + r * m0.strides[1], m0.strides[1], lut0.ctypes.data, zs, yp, gqa, D, xp + 4 * a, xs, e - a)
    a, e = max(j0, F + C0), j1
    if e > a:
        r = a - F - C0
        zs = np.float32((1 << w1) - 1) / np.float32(255.0)
        _rows(mode, w1, G, c1.ctypes.data + kh * c1.strides[0] + r * c1.strides[1], c1.strides[1],
              m1.ctypes.data + kh * m1.strides[0] + r * m1.strides[1], m1.strides[1], lut1.ctypes.data, zs, yp, gqa, D, xp + 4 * a, xs, e - a)


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
# carries the fused row kernels of every (width, group): compiling it takes ~27 s
# of a first run's ~34.  This is the same body with the row dispatch cut to fp16
# rows, built by swapping one global of each inlined layer.
def _variant(f, name: str, **swap):
    """A copy of function ``f`` named ``name`` whose globals in ``swap`` are replaced.

    Numba keys its on-disk cache by name, so a variant never loads the original's code.
    """
    g = types_.FunctionType(f.__code__, dict(f.__globals__, **swap), name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    return g


@nb.njit(inline="always", **_JIT)
def _fill_tile16(j0: int, n: int, F: int, C0: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
                 c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, tile: np.ndarray) -> None:
    """``_fill_tile`` for fp16 rows only."""
    decode_half_rows(x16, j0, n, tile)


@nb.njit(inline="always", **_JIT)
def _areas16(mode: int, kh: int, j0: int, j1: int, x16: np.ndarray, c0: np.ndarray, m0: np.ndarray, lut0: np.ndarray, w0: int,
             c1: np.ndarray, m1: np.ndarray, lut1: np.ndarray, w1: int, G: int, D: int, yp: int, s_all: np.ndarray) -> None:
    """``_areas`` when every slot is in the fp16 area (one row kernel, not three)."""
    xs = s_all.strides[1] // 4
    xp = s_all.ctypes.data + kh * s_all.strides[0]
    a, e = max(j0, 0), min(j1, x16.shape[1])
    if e > a:
        _rk16(mode, x16.ctypes.data + kh * x16.strides[0] + a * x16.strides[1], x16.strides[1], 0, 0, 0, np.float32(0.0),
              yp, s_all.shape[1], D, xp + 4 * a, xs, e - a)


_pass16 = nb.njit(inline="always", **_JIT)(_variant(_pass.py_func, "_pass16", _areas=_areas16, _fill_tile=_fill_tile16))
_attend_decode_f16 = nb.njit(parallel=True, **_JIT)(_variant(_attend_decode_q.py_func, "_attend_decode_f16", _pass=_pass16))

_NO_CODES = np.zeros((4096, 0, 1), np.uint8)  # no pools (0 slots; indexable by any KV head)
_NO_META = np.zeros((4096, 0, 1, 2), np.uint8)
_NO_LUT = np.ones(256, np.float32)


@nb.njit(**_JIT)
def decode_step_f16(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, k16: np.ndarray, v16: np.ndarray, kpos: np.ndarray,
                    used: int, window: int, scale: float, softcap: float, out: np.ndarray, s_all: np.ndarray, n_threads: int) -> int:
    """A decode step of an fp16 ring in one call (a layer-step's dispatch and numpy calls cost more than its
    arithmetic on a small model): the step's tokens stored, then :func:`attend_decode_q`'s arithmetic cut
    to fp16 rows (``_attend_decode_f16``) over the slots written so far.

    q: [T, n_head, D] float32; k, v: [T, n_kv, D] / [T, n_kv, Dv] float32, stored as fp16 bits (rounded as
    numpy's astype) at slot = position % capacity of k16/v16 [n_kv, cap, D] uint16 and kpos [cap] int32;
    used: slots [0, used) written before.  Returns the new ``used``.
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
    qpos = np.empty(pos.shape[0], np.int32)
    qpos[:] = pos
    no_probs = np.zeros((0, 0), np.float32)  # (the globals are read-only in here, and the kernel may write these)
    _attend_decode_f16(q, qpos, k16[:, :used], v16[:, :used], _NO_CODES, _NO_META, _NO_CODES, _NO_META, 16, 16,
                       _NO_CODES, _NO_META, _NO_CODES, _NO_META, 16, 16, _NO_LUT, _NO_LUT, _NO_LUT, _NO_LUT,
                       32, kpos[:used].reshape((1, used)), no_probs, window, scale, softcap, out, s_all[:, :, :used], no_probs, n_threads)  # fmt: skip
    return used
