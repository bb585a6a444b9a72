"""Prefill products on integer dot products: a VNNI int8 GEMM (Numba, CPU).

``out[n_tok, n_rows] = x @ W.T`` with ``W`` in its GGUF block format, for hosts
with VNNI (``qmatmul.HAVE_VNNI``: AVX-512 VNNI on Zen 4/5 and Ice Lake and later
Xeons, 16 int32 lanes a vector; AVX-VNNI on Alder Lake and later Intel desktops
and laptops, 8 lanes).
Replaces decode-a-tile-to-float + BLAS sgemm in :func:`qmatmul.matmul`: one
``vpdpbusd`` does 64 int8 multiply-adds where an FMA does 16 float ones.

How (the same arithmetic as the decode kernels, laid out for many tokens):

* ``x`` is quantized once per call, per 32, to int8 (``qmatmul.quant_x8``: the
  codes, their scale and the sums of the quantized x per 32 and per 16).
* :data:`ROWS` (16) weight rows at a time are *packed*: every block type is
  written as unsigned byte codes ``u`` with, per group of ``G`` values
  (32; 16 for Q6_K, Q2_K, Q3_K, IQ2_XS, IQ2_S, IQ1_M), a scale ``s`` and an offset ``o`` so that ``w = s u + o``
  (Q4_0: ``u`` = nibble, ``s = d``, ``o = -8 d``; Q4_K: ``s = d sc``,
  ``o = -dmin m``; Q8_0: ``u = q + 128``, ``o = -128 d``; the i-quants' signed grid values
  + 128, ``o = -128 s``; MXFP4: ``u = v + 12``, ``s`` = its scale, ``o = -12 s``; ...).  Codes are
  interleaved ``[n_cols/4][16 rows][4]`` so one 64-byte load holds 4 codes
  of each of the 16 rows: a ``vpdpbusd`` with 4 bytes of one token's x
  broadcast then adds 4 products into each row's int32 lane.  The packed tile
  is ~n_cols x 16 bytes (10-32 KB): it stays in L1 while every token passes.
* Per group and token: the 16 int32 sums are converted to float and added with
  one FMA by ``s * dx`` and one by ``o * xsum`` (the offset meets the sum of the
  quantized x, so the result is W . x_quantized exactly up to float rounding,
  as in ``qmatmul.matvec``).  :data:`TOKENS` (8; 4 with 8 lanes) tokens share
  each weight load.

Error: as ``matvec`` (x quantized per 32 to int8, ~0.5% of ``|out|`` for 4-bit
weights; Q8_0 weights also meet int8 x here, as in llama.cpp's Q8_0 x Q8_0).

Measured on a Zen 5 EPYC, 1 thread, 640 x 2048 x 256 tokens: the kernel alone
~620 GOPS against OpenBLAS sgemm's ~120 GFLOP/s.  ``python -m
kvrun.ops.cpu.bench_matmul`` times it against the BLAS path.

The intrinsics live in this file because Numba's cache is invalidated only by
changes to the file defining a cached function.  The IR helpers (``_G``, the
K-quant code unpackers) are qmatmul's, as for ``qattention``: after changing
them, clear Numba's cache (or touch this file) so these kernels recompile.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .parallel import EXACT_JIT, num_threads, prange_only
from .qmatmul import (
    IQ1_M, IQ1_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS, IQ4_NL, IQ4_XS, LF32, LI8, LI32, MXFP4, MXFP4_VALUES, Q2_K, Q3_K, Q4_0,
    Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, V, V16I8, V32I8, V8I32, HAVE_VNNI, HAVE_VNNI512, _G, _IQ1S_TAB, _IQ2S_TAB,
    _IQ2XS_TAB, _IQ2XXS_TAB, _IQ3S_TAB, _IQ3XXS_TAB, _IQ4_TABLE, _TYPES, _c, _crumb_codes, _e8m0_half, _i64, _iq1_m_d,
    _iq1_m_scales, _iq1_m_sub, _iq1_s_scale, _iq1_s_sub, _iq2_s_sub, _iq2_scales, _iq2_xs_sub, _iq2_xxs_sub, _iq3_s_sub,
    _iq3_xxs_sub, _iq4_xs_scale, _k_scales, _lut16, _negate_where, _odd16, _q3_k_codes, _q3_k_scales, _q6_k_codes, _qk45_codes,
    _scratch, _scratch_bytes, _table, quant_x8,
)  # fmt: skip

ROWS = 16  # weight rows per packed tile: the 16 int32 lanes of a zmm register (two ymm)
#: int32 lanes per vector: 16 (AVX-512 VNNI), else 8 (AVX-VNNI).  KVRUN_GEMM_LANES=8 picks the
#: ymm kernel on an AVX-512 host (a developer switch: use it with a NUMBA_CACHE_DIR of its own,
#: since Numba's cache does not see a module constant change)
LANES = int(os.environ.get("KVRUN_GEMM_LANES", "0")) or (16 if HAVE_VNNI512 else 8)
#: tokens sharing each weight load: their int32 and float accumulators stay in registers
#: (32 zmm registers; 16 ymm)
TOKENS = 8 if LANES == 16 else 4

# ================================================================= the tile kernel
_KERNEL_SIG = types.none(*([types.int64] * 9))


def _kernel(G: int, NT: int, L: int):
    """kernel(pk, sp, x, xstr, n_cols, out, ostr, n_tok, n_rows), on L-lane int32 vectors.

    pk: packed codes [n_cols/4][16][4]; sp: float32 s [n_cols/G][16] then o [n_cols/G][16].
    x: the first token's scratch row (``qmatmul._scratch_bytes`` layout), rows xstr bytes
    apart; out: float32, token rows ostr floats apart, the tile's first column.  Writes
    out[t, 0:n_rows] for t < n_tok (n_tok <= NT, n_rows <= 16); reads NT scratch rows.
    L = 16: one zmm per 16 rows (AVX-512 VNNI); L = 8: two ymm halves (AVX-VNNI).
    """
    H = ROWS // L  # vector halves per tile row group
    VB, VI, VF = V(LI8, 4 * L), V(LI32, L), V(LF32, L)
    dot = f"llvm.x86.avx512.vpdpbusd.{32 * L}"

    def codegen(context, builder, sig, args):
        g = _G(builder)
        b = builder
        pk, sp, x, xstr, n_cols, out, ostr, n_tok, n_rows = args
        fp = LF32.as_pointer()
        nbk = b.udiv(n_cols, _i64(32))
        nsub = b.udiv(n_cols, _i64(G))
        pkp, spp = g.addr(pk), b.inttoptr(sp, fp)
        opp = b.gep(spp, [b.mul(nsub, _i64(16))])
        rows = [g.addr(b.add(x, b.mul(_i64(t), xstr))) for t in range(NT)]
        xd = [b.bitcast(g.off(r, b.mul(n_cols, _i64(2))), fp) for r in rows]
        # offsets meet the sums of the quantized x per G: xs (per 32) or xs16 (per 16)
        xsum = [b.gep(d, [b.mul(nbk, _i64(1 if G == 32 else 2))]) for d in xd]
        zf = ir.Constant(VF, [ir.Constant(LF32, 0.0)] * L)
        zi = ir.Constant(VI, [ir.Constant(LI32, 0)] * L)
        facc = [[cgutils.alloca_once_value(b, zf) for _ in range(H)] for _ in range(NT)]

        def vec(p, gi, h):  # the L floats of half h of group gi at p [n_groups][16]
            return b.load(b.bitcast(b.gep(p, [b.add(b.mul(gi, _i64(16)), _i64(L * h))]), VF.as_pointer()), align=4)

        with cgutils.for_range(b, nsub) as loop:
            gi = loop.index
            ia = [[zi] * H for _ in range(NT)]
            wbase = b.mul(gi, _i64(16 * G))
            xbase = b.mul(gi, _i64(G))
            for k in range(G // 4):
                wv = [g.load(pkp, b.add(wbase, _i64(64 * k + 4 * L * h)), VB) for h in range(H)]
                for t in range(NT):
                    xv = b.bitcast(g.splat(g.load(rows[t], b.add(xbase, _i64(4 * k)), LI32), L), VB)
                    for h in range(H):
                        ia[t][h] = g.call(dot, VI, [ia[t][h], wv[h], xv])
            dj = gi if G == 32 else b.udiv(gi, _i64(2))
            for h in range(H):
                sv, ov = vec(spp, gi, h), vec(opp, gi, h)
                for t in range(NT):
                    dx = g.splat(b.load(b.gep(xd[t], [dj])), L)
                    xs = g.splat(b.load(b.gep(xsum[t], [gi])), L)
                    f = g.call(f"llvm.fma.v{L}f32", VF, [b.sitofp(ia[t][h], VF), b.fmul(sv, dx), b.load(facc[t][h])])
                    b.store(g.call(f"llvm.fma.v{L}f32", VF, [ov, xs, f]), facc[t][h])
        outp = b.inttoptr(out, fp)
        nr = b.trunc(n_rows, LI32)
        masks = [b.icmp_unsigned("<", ir.Constant(VI, [ir.Constant(LI32, L * h + i) for i in range(L)]), g.splat(nr, L)) for h in range(H)]
        for t in range(NT):
            with b.if_then(b.icmp_signed("<", _i64(t), n_tok)):
                p = b.gep(outp, [b.mul(_i64(t), ostr)])
                for h in range(H):
                    g.call(f"llvm.masked.store.v{L}f32.p0", ir.VoidType(), [b.load(facc[t][h]), b.gep(p, [_i64(L * h)]), ir.Constant(LI32, 4), masks[h]])
        return context.get_dummy_value()

    def typer(typingctx, pk, sp, x, xstr, n_cols, out, ostr, n_tok, n_rows):  # noqa: ARG001
        return _KERNEL_SIG, codegen

    return intrinsic(typer)


gemm_g32 = _kernel(32, TOKENS, LANES)
gemm_g16 = _kernel(16, TOKENS, LANES)


# ================================================================= packing a row into a tile lane
# Each emitter returns, for each 32 values of one block, (codes <32 x u8>, [(s, o)] per group).
def _q4_0(g, wb):
    d = g.f16(wb, 0)
    return [(g.nibbles(g.load(wb, 2, V16I8)), [(d, g.b.fmul(d, _c(-8.0)))])]


def _q4_1(g, wb):
    d, m = g.f16x2(wb, 0)
    return [(g.nibbles(g.load(wb, 4, V16I8)), [(d, m)])]


def _q5_0(g, wb):
    d = g.f16(wb, 0)
    q = g.b.or_(g.nibbles(g.load(wb, 6, V16I8)), g.bits32(g.load(wb, 2, LI32)))
    return [(q, [(d, g.b.fmul(d, _c(-16.0)))])]


def _q5_1(g, wb):
    d, m = g.f16x2(wb, 0)
    q = g.b.or_(g.nibbles(g.load(wb, 8, V16I8)), g.bits32(g.load(wb, 4, LI32)))
    return [(q, [(d, m)])]


def _q8_0(g, wb):
    d = g.f16(wb, 0)
    q = g.b.xor(g.load(wb, 2, V32I8), ir.Constant(V32I8, [ir.Constant(LI8, 0x80)] * 32))  # q + 128 as u8
    return [(q, [(d, g.b.fmul(d, _c(-128.0)))])]


def _qk45(five: bool):
    def emit(g, wb):
        b = g.b
        d, dmin = g.f16x2(wb, 0)
        sm = _k_scales(g, wb, 4)
        res = []
        for s, q in enumerate(_qk45_codes(g, wb, five)):
            sc, mn = sm[s]
            res.append((q, [(b.fmul(d, b.sitofp(sc, LF32)), b.fmul(b.fneg(dmin), b.sitofp(mn, LF32)))]))
        return res

    return emit


def _q6_k(g, wb):
    b = g.b
    d = g.f16(wb, 208)
    res = []
    for h in range(2):
        for k, q in enumerate(_q6_k_codes(g, wb, h)):
            s = 4 * h + k
            groups = []
            for e in range(2):
                sd = b.fmul(d, b.sitofp(g.i8(wb, 192 + 2 * s + e), LF32))
                groups.append((sd, b.fmul(sd, _c(-32.0))))
            res.append((q, groups))
    return res


def _q2_k(g, wb):
    b = g.b
    d, dmin = g.f16x2(wb, 80)
    res = []
    for s, q in enumerate(_crumb_codes(g, wb, 16)):
        groups = []
        for e in range(2):
            sc = g.u8(wb, 2 * s + e)
            groups.append((b.fmul(d, b.sitofp(b.and_(sc, ir.Constant(LI32, 15)), LF32)),
                           b.fmul(b.fneg(dmin), b.sitofp(b.lshr(sc, ir.Constant(LI32, 4)), LF32))))
        res.append((q, groups))
    return res


def _q3_k(g, wb):
    """u = q + 4 (0..7), s = d (sc - 32), o = -4 s."""
    b = g.b
    d = g.f16(wb, 108)
    res = []
    scales = b.sitofp(_q3_k_scales(g, wb), V(LF32, 16))  # the 16 signed scales, as the decode dot reads them
    for s, q in enumerate(_q3_k_codes(g, wb)):
        groups = []
        for e in range(2):
            sd = b.fmul(d, b.extract_element(scales, ir.Constant(LI32, 2 * s + e)))
            groups.append((sd, b.fmul(sd, _c(-4.0))))
        res.append((q, groups))
    return res


def _iq4_codes(g, q16):
    """IQ4 nibbles -> table value + 128 as unsigned codes (vpdpbusd does not saturate)."""
    v = g.call("llvm.x86.avx2.pshuf.b", V32I8, [_IQ4_TABLE, g.nibbles(q16)])
    return g.b.xor(v, ir.Constant(V32I8, [ir.Constant(LI8, 0x80)] * 32))


def _iq4_nl(g, wb):
    d = g.f16(wb, 0)
    return [(_iq4_codes(g, g.load(wb, 2, V16I8)), [(d, g.b.fmul(d, _c(-128.0)))])]


def _iq4_xs(g, wb):
    res = []
    for s in range(8):
        sd = _iq4_xs_scale(g, wb, s)
        res.append((_iq4_codes(g, g.load(wb, 8 + 16 * s, V16I8)), [(sd, g.b.fmul(sd, _c(-128.0)))]))
    return res


# MXFP4's values + 12 (0..24): the table gives the unsigned codes directly, and an offset of -12 s
# (not IQ4's -128 s) cancels less of the sum in float32
_MXFP4_CODES = _lut16(MXFP4_VALUES + 12)


def _mxfp4(g, wb):
    d = _e8m0_half(g, g.u8(wb, 0))
    codes = g.call("llvm.x86.avx2.pshuf.b", V32I8, [_MXFP4_CODES, g.nibbles(g.load(wb, 1, V16I8))])
    return [(codes, [(d, g.b.fmul(d, _c(-12.0)))])]


def _iq_codes(g, q, signs):
    """Grid values with their signs, + 128, as unsigned codes: s = the weight's scale, o = -128 s."""
    return g.b.xor(_negate_where(g, q, signs), ir.Constant(V32I8, [ir.Constant(LI8, 0x80)] * 32))


def _iq_signed(name: str, data: bytes, mul: float, sub, scales_at):
    """IQ2_*/IQ3_*: w = (d mul sc) grid sign.  ``sub`` as the decode dot's; ``scales_at``: the byte offset of
    IQ2_XS/IQ2_S's nibble scales per 16 (G = 16), or None (a scale per 32 from the sub-block's ls, G = 32)."""

    def emit(g, wb):
        b = g.b
        tab = _table(g, name, data)
        d = b.fmul(g.f16(wb, 0), _c(mul))
        scv = b.sitofp(_iq2_scales(g, wb, scales_at), V(LF32, 16)) if scales_at is not None else None
        res = []
        for ib in range(8):
            r = sub(g, wb, ib, tab)
            if scv is not None:
                sds = [b.fmul(d, b.extract_element(scv, ir.Constant(LI32, 2 * ib + e))) for e in range(2)]
            else:
                sds = [b.fmul(d, b.sitofp(_odd16(g, r[2]), LF32))]  # 2 ls + 1 (IQ3_S: 1 + 2 ls)
            res.append((_iq_codes(g, r[0], r[1]), [(sd, b.fmul(sd, _c(-128.0))) for sd in sds]))
        return res

    return emit


def _iq1_s(g, wb):
    """u = grid + 1 (0..2), s = d (2 ls + 1), o = s (delta - 1)."""
    b = g.b
    tab = _table(g, "kvrun_iq1s_grid", _IQ1S_TAB)
    d = g.f16(wb, 0)
    res = []
    for ib in range(8):
        q, qh = _iq1_s_sub(g, wb, ib, tab)
        dl, off = _iq1_s_scale(g, d, qh)
        res.append((q, [(dl, b.fmul(dl, off))]))
    return res


def _iq1_m(g, wb):
    """u = 8 (grid + 1) + 1 +- 1 (0..18), s = d (2 ls + 1) / 8 per 16, o = -9 s."""
    b = g.b
    tab = _table(g, "kvrun_iq1s_grid", _IQ1S_TAB)
    d8 = b.fmul(_iq1_m_d(g, wb), _c(0.125))
    scv = b.sitofp(_iq1_m_scales(g, wb), V(LF32, 16))
    res = []
    for ib in range(8):
        sds = [b.fmul(d8, b.extract_element(scv, ir.Constant(LI32, 2 * ib + e))) for e in range(2)]
        res.append((_iq1_m_sub(g, wb, ib, tab), [(sd, b.fmul(sd, _c(-9.0))) for sd in sds]))
    return res


#: weight rows a packing call takes: their codes are transposed in registers into the tile's layout
#: (Q4_1 1536 x 576, one thread: 4 rows 0.060 ms, 8 rows 0.056, 16 rows 0.061; one row 0.089)
PACK_ROWS = 4  # (the packers' typer and _pack_tile name four row pointers: change them with it)
_PACK_SIG = types.none(*([types.int64] * (PACK_ROWS + 4)))


def _merge(b: ir.IRBuilder, x: ir.Value, y: ir.Value, s: int) -> ir.Value:
    """Two vectors laid out [8][s] (dword k of s rows) -> one [8][2 s]: x's s, then y's, for each k."""
    mask = [k * s + m for k in range(8) for m in range(s)]
    mask = [v for k in range(8) for v in mask[k * s : (k + 1) * s] + [8 * s + k * s + m for m in range(s)]]
    return b.shuffle_vector(x, y, ir.Constant(V(LI32, 16 * s), [ir.Constant(LI32, v) for v in mask]))


def _packer(block_bytes: int, elems: int, G: int, emit):
    """pack(w_0 .. w_{R-1}, n_blocks, pk, sp, lane): R = PACK_ROWS weight rows (n_blocks GGUF blocks
    at each w) into lanes ``lane .. lane + R - 1`` of a tile: their codes at pk [n_cols/4][16][4], s
    and o at sp [2][n_cols/G][16].

    Several rows at a time, so the tile's layout (4 codes of each of 16 rows per 64 bytes) is reached
    by a transpose in registers: each row's 32 codes of a block are 8 dwords, and R rows' dword j go
    out in one R x 4-byte store, where one row at a time had stored 8 dwords one by one (the packing
    had cost 2.1 matvecs of the same matrix, most of a small-batch product's time)."""
    R = PACK_ROWS
    VR_I, VR_F = V(LI32, R), V(LF32, R)

    def codegen(context, builder, sig, args):
        g = _G(builder)
        b = builder
        ws, (n, pk, sp, lane) = args[:R], args[R:]
        wps = [g.addr(w) for w in ws]
        pi = b.inttoptr(pk, LI32.as_pointer())
        fp = b.inttoptr(sp, LF32.as_pointer())
        nsub = b.mul(n, _i64(elems // G))
        op = b.gep(fp, [b.mul(nsub, _i64(16))])
        with cgutils.for_range(b, n) as loop:
            i = loop.index
            rows = [emit(g, g.off(wp, b.mul(i, _i64(block_bytes)))) for wp in wps]
            for c in range(len(rows[0])):
                vs, sz = [b.bitcast(rows[r][c][0], V8I32) for r in range(R)], 1
                while len(vs) > 1:  # [8][1] per row -> [8][R]: dword k of every row together
                    vs, sz = [_merge(b, vs[m], vs[m + 1], sz) for m in range(0, len(vs), 2)], 2 * sz
                k4 = b.add(b.mul(i, _i64(elems // 4)), _i64(8 * c))
                for j in range(8):  # dword j: columns 4 (k4 + j) .. + 3 of lanes lane .. lane + R - 1
                    q = b.shuffle_vector(vs[0], vs[0], ir.Constant(VR_I, [ir.Constant(LI32, j * R + m) for m in range(R)]))
                    idx = b.add(b.mul(b.add(k4, _i64(j)), _i64(16)), lane)
                    b.store(q, b.bitcast(b.gep(pi, [idx]), VR_I.as_pointer()), align=4)
                n_groups = len(rows[0][c][1])
                for e in range(n_groups):
                    sub = b.add(b.mul(i, _i64(elems // G)), _i64(n_groups * c + e))
                    idx = b.add(b.mul(sub, _i64(16)), lane)
                    for k, base in enumerate((fp, op)):
                        v = ir.Constant(VR_F, ir.Undefined)
                        for r in range(R):
                            v = b.insert_element(v, rows[r][c][1][e][k], ir.Constant(LI32, r))
                        b.store(v, b.bitcast(b.gep(base, [idx]), VR_F.as_pointer()), align=4)
        return context.get_dummy_value()

    def typer(typingctx, w0, w1, w2, w3, n, pk, sp, lane):  # noqa: ARG001
        return _PACK_SIG, codegen

    return intrinsic(typer)


pack_q4_0 = _packer(18, 32, 32, _q4_0)
pack_q4_1 = _packer(20, 32, 32, _q4_1)
pack_q5_0 = _packer(22, 32, 32, _q5_0)
pack_q5_1 = _packer(24, 32, 32, _q5_1)
pack_q8_0 = _packer(34, 32, 32, _q8_0)
pack_q4_k = _packer(144, 256, 32, _qk45(False))
pack_q5_k = _packer(176, 256, 32, _qk45(True))
pack_q6_k = _packer(210, 256, 16, _q6_k)
pack_q2_k = _packer(84, 256, 16, _q2_k)
pack_q3_k = _packer(110, 256, 16, _q3_k)
pack_iq4_nl = _packer(18, 32, 32, _iq4_nl)
pack_iq4_xs = _packer(136, 256, 32, _iq4_xs)
pack_mxfp4 = _packer(17, 32, 32, _mxfp4)
pack_iq3_xxs = _packer(98, 256, 32, _iq_signed("kvrun_iq3xxs_grid", _IQ3XXS_TAB, 0.25, _iq3_xxs_sub, None))
pack_iq3_s = _packer(110, 256, 32, _iq_signed("kvrun_iq3s_grid", _IQ3S_TAB, 1.0, _iq3_s_sub, None))
pack_iq2_xxs = _packer(66, 256, 32, _iq_signed("kvrun_iq2xxs_grid", _IQ2XXS_TAB, 0.125, _iq2_xxs_sub, None))
pack_iq2_xs = _packer(74, 256, 16, _iq_signed("kvrun_iq2xs_grid", _IQ2XS_TAB, 0.125, _iq2_xs_sub, 66))
pack_iq2_s = _packer(82, 256, 16, _iq_signed("kvrun_iq2s_grid", _IQ2S_TAB, 0.125, _iq2_s_sub, 74))
pack_iq1_s = _packer(50, 256, 32, _iq1_s)
pack_iq1_m = _packer(56, 256, 16, _iq1_m)


# ================================================================= drivers
@nb.njit(**EXACT_JIT)
def _pack_tile(kind, w, r0, pk, sp):
    """Rows r0.. (up to 16) of w into the tile (pk, sp); lanes past the last row hold zeros or copies of
    it (the kernel never stores their sums)."""
    n = min(ROWS, w.shape[0] - r0)
    if n < ROWS:
        pk[:] = 0
        sp[:] = 0.0
    wa = w.ctypes.data
    rs = w.strides[0]
    a, s = pk.ctypes.data, sp.ctypes.data
    rb = w.shape[1]
    for i in range(0, n, PACK_ROWS):  # four rows a call; past the last row, the last again (its lanes are never stored)
        p0 = wa + (r0 + i) * rs
        p1 = wa + (r0 + min(i + 1, n - 1)) * rs
        p2 = wa + (r0 + min(i + 2, n - 1)) * rs
        p3 = wa + (r0 + min(i + 3, n - 1)) * rs
        if kind == Q4_0:
            pack_q4_0(p0, p1, p2, p3, rb // 18, a, s, i)
        elif kind == Q4_1:
            pack_q4_1(p0, p1, p2, p3, rb // 20, a, s, i)
        elif kind == Q5_0:
            pack_q5_0(p0, p1, p2, p3, rb // 22, a, s, i)
        elif kind == Q5_1:
            pack_q5_1(p0, p1, p2, p3, rb // 24, a, s, i)
        elif kind == Q8_0:
            pack_q8_0(p0, p1, p2, p3, rb // 34, a, s, i)
        elif kind == Q4_K:
            pack_q4_k(p0, p1, p2, p3, rb // 144, a, s, i)
        elif kind == Q5_K:
            pack_q5_k(p0, p1, p2, p3, rb // 176, a, s, i)
        elif kind == Q6_K:
            pack_q6_k(p0, p1, p2, p3, rb // 210, a, s, i)
        elif kind == Q2_K:
            pack_q2_k(p0, p1, p2, p3, rb // 84, a, s, i)
        elif kind == Q3_K:
            pack_q3_k(p0, p1, p2, p3, rb // 110, a, s, i)
        elif kind == IQ4_NL:
            pack_iq4_nl(p0, p1, p2, p3, rb // 18, a, s, i)
        elif kind == IQ4_XS:
            pack_iq4_xs(p0, p1, p2, p3, rb // 136, a, s, i)
        elif kind == IQ3_XXS:
            pack_iq3_xxs(p0, p1, p2, p3, rb // 98, a, s, i)
        elif kind == IQ3_S:
            pack_iq3_s(p0, p1, p2, p3, rb // 110, a, s, i)
        elif kind == IQ2_XXS:
            pack_iq2_xxs(p0, p1, p2, p3, rb // 66, a, s, i)
        elif kind == IQ2_XS:
            pack_iq2_xs(p0, p1, p2, p3, rb // 74, a, s, i)
        elif kind == IQ2_S:
            pack_iq2_s(p0, p1, p2, p3, rb // 82, a, s, i)
        elif kind == IQ1_S:
            pack_iq1_s(p0, p1, p2, p3, rb // 50, a, s, i)
        elif kind == MXFP4:
            pack_mxfp4(p0, p1, p2, p3, rb // 17, a, s, i)
        else:
            pack_iq1_m(p0, p1, p2, p3, rb // 56, a, s, i)




@nb.njit(inline="always", **EXACT_JIT)
def _tiles(kind, w, sc, n_tok, n_cols, out, tiles0, tiles1, pk, sp):
    """Row tiles [tiles0, tiles1): pack each, then run every group of TOKENS tokens over it."""
    n_rows = w.shape[0]
    xs = sc.strides[0]
    ostr = out.strides[0] // 4
    g16 = kind == Q6_K or kind == Q2_K or kind == Q3_K or kind == IQ2_XS or kind == IQ2_S or kind == IQ1_M
    for tile in range(tiles0, tiles1):
        r0 = tile * ROWS
        _pack_tile(kind, w, r0, pk, sp)
        nr = min(ROWS, n_rows - r0)
        for t0 in range(0, n_tok, TOKENS):
            x = sc.ctypes.data + t0 * xs
            o = out.ctypes.data + (t0 * ostr + r0) * 4
            if g16:
                gemm_g16(pk.ctypes.data, sp.ctypes.data, x, xs, n_cols, o, ostr, n_tok - t0, nr)
            else:
                gemm_g32(pk.ctypes.data, sp.ctypes.data, x, xs, n_cols, o, ostr, n_tok - t0, nr)


@nb.njit(**EXACT_JIT)
def _quant_rows(x, sc):
    n = x.shape[1]
    for t in range(x.shape[0]):
        a = sc[t].ctypes.data
        quant_x8(x[t].ctypes.data, n // 32, a, a + 2 * n)


@nb.njit(**EXACT_JIT)
def _gemm_1(kind, w, x, out, sc, pk, sp):
    _quant_rows(x, sc)
    _tiles(kind, w, sc, x.shape[0], x.shape[1], out, 0, (w.shape[0] + ROWS - 1) // ROWS, pk[0], sp[0])


@nb.njit(parallel=prange_only(), **EXACT_JIT)
def _gemm_n(kind, w, x, out, sc, pk, sp, nt):
    _quant_rows(x, sc)
    n_tiles = (w.shape[0] + ROWS - 1) // ROWS
    chunk = (n_tiles + nt - 1) // nt
    for t in nb.prange(nt):
        _tiles(kind, w, sc, x.shape[0], x.shape[1], out, t * chunk, min(n_tiles, (t + 1) * chunk), pk[t], sp[t])


KINDS = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M,
         MXFP4)


#: products with fewer multiply-adds run on the calling thread.  Measured with packing four rows a call
#: (an Intel Xeon host, 2 vCPUs, SmolLM2's Q4_1 matrices): 192 x 576 at 8 tokens (0.9 M) 19.6 us on one
#: thread, 13.5 on two; 1536 x 576 at 4 (3.5 M) 100 / 59 us, at 8 (7.1 M) 102 / 60; an 8-token forward
#: 31.8 -> 26.7 ms, 4 tokens 25.4 -> 17.2 (this threshold at 16 M, then 1 M).  The earlier 16 M came from
#: a Zen 5 host with one row a call: 640 x 2048 Q4_K at 8 tokens 145 GOPS on one thread, 123 on two; on
#: such a host small products may now run ~15% slower, which the Xeon's 40% gain outweighs
PAR_MIN_MACS = 1 << 20


def matmul(w: np.ndarray, kind: int, x: np.ndarray, out: np.ndarray, threads: int | None = None) -> None:
    """out[n_tok, n_rows] = x @ W.T on VNNI integer products (see the module docstring).

    w: uint8 [n_rows, row_bytes] raw GGUF blocks of a :data:`KINDS` kind (``qmatmul``'s kind
    numbers); x: float32 [n_tok, n_cols]; out: float32 [n_tok, n_rows].  threads: Numba threads
    (None: the count in use).  Only on a host with :data:`HAVE_VNNI`.

    Raises ValueError for another kind or when the shapes do not match.
    """
    if kind not in KINDS:
        raise ValueError(f"no VNNI GEMM for kernel kind {kind}")
    n_tok, n_cols = x.shape
    _, elems, bbytes = next(t for t in _TYPES.values() if t[0] == kind)
    if n_cols % elems or w.shape[1] != n_cols // elems * bbytes or w.strides[1] != 1:
        raise ValueError(f"x has {n_cols} columns; the weight's rows are {w.shape[1]} bytes of {elems}-value blocks")
    if out.shape != (n_tok, w.shape[0]):
        raise ValueError(f"out has shape {out.shape}, expected {(n_tok, w.shape[0])}")
    x = np.ascontiguousarray(x, np.float32)
    dst = out if out.dtype == np.float32 and out.strides[1] == 4 else np.empty(out.shape, np.float32)
    sc = _scratch.get("gemm_x", n_tok + TOKENS, _scratch_bytes(n_cols), np.uint8)  # TOKENS rows of slack: read, never stored
    nt = max(1, num_threads() if threads is None else threads)
    pk = _scratch.get("gemm_pk", nt, n_cols * ROWS, np.uint8)
    sp = _scratch.get("gemm_sp", nt, 2 * (n_cols // 16) * ROWS)
    if nt > 1 and n_tok * n_cols * w.shape[0] >= PAR_MIN_MACS:
        _gemm_n(kind, w, x, dst, sc, pk, sp, nt)
    else:
        _gemm_1(kind, w, x, dst, sc, pk, sp)
    if dst is not out:
        out[...] = dst


__all__ = ["HAVE_VNNI", "KINDS", "LANES", "PAR_MIN_MACS", "ROWS", "TOKENS", "matmul"]
