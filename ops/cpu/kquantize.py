"""The K-quant quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): ggml's reference C ported to Numba, bit for bit.

``gguf.quants`` quantizes Q4_0 ... Q8_0 and BF16 exactly as ggml does, but has no K-quant quantizer; llama.cpp's
``llama-quantize`` without an importance matrix runs ggml's ``quantize_row_q*_K_ref`` (ggml/src/ggml-quants.c),
so that is what this file ports: ``nearest_int``, ``make_qx_quants`` (rmse_type 1, unweighted), ``make_q3_quants``,
``make_qkx2_quants``, ``get_scale_min_k4`` and the five row quantizers.  The byte layouts are
``loaders/quants.py``'s; ``runtime/quantize.py`` chooses the type of every tensor and calls :func:`quantize_k`.

Bit exactness.  The C takes every step in float32, in source order, with no FMA (ggml-base is built without
``-march`` flags): so do these kernels, written with explicit ``np.float32`` constants and conversions
(an ``int * float`` in C is a float32 product; in Numba it would be float64) and compiled without fastmath.
``nearest_int`` is the C's own trick (add 1.5 * 2^23, read the mantissa bits), so its rounding (to nearest,
ties to even) and its result on out-of-range input are the same.  f16 scales are rounded to nearest even and
read back as the C does (``ops/cpu/f16.py``), and the later steps use the rounded value, as the C.
``tests/test_quantize.py`` holds the output to llama.cpp's, byte for byte (tests/fixtures/quantize_*.json).

Blocks of 256 are independent, so a tensor's blocks run in parallel (``prange``); the result does not depend
on the thread count.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from gguf import GGMLQuantizationType as T

from .f16 import bitcast_f32_u32, f16_to_f32, f32_to_f16
from .parallel import EXACT_JIT, prange_only
from .variant import variant

QK_K = 256
#: bytes of a block of 256 weights
TYPE_SIZE = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}

F0 = np.float32(0.0)
F1 = np.float32(1.0)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23
_GROUP_MAX_EPS = np.float32(1e-15)
_TENTH = np.float32(0.1)


# ----------------------------------------------------------------------------- helpers (ggml-quants.c)
@nb.njit(inline="always", **EXACT_JIT)
def nearest_int(fval):
    """ggml's ``nearest_int``: ``fval`` rounded to the nearest integer, ties to even (|fval| < 2^22)."""
    v = np.float32(np.float32(fval) + _MAGIC)
    return np.int64(bitcast_f32_u32(v) & np.uint32(0x007FFFFF)) - np.int64(0x00400000)


@nb.njit(inline="always", **EXACT_JIT)
def _f16_round(x):
    """``x`` stored as an f16 (rounded to nearest even): (the bits, the float32 the C reads back)."""
    h = f32_to_f16(np.float32(x))
    return h, f16_to_f32(h)


@nb.njit(inline="always", **EXACT_JIT)
def _put_f16(out, at, h):
    out[at] = np.uint8(h & np.uint16(0xFF))
    out[at + 1] = np.uint8(h >> np.uint16(8))


@nb.njit(**EXACT_JIT)
def _make_qx_quants(n, nmax, x, L, qw):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: a signed scale for ``n`` weights and their levels ``L``
    (0 .. 2 nmax - 1, biased by nmax), fitted by least squares weighted by ``qw`` over 19 trial inverse scales
    (``qw == NULL`` in the C weights by ``x^2``: pass ``x * x``, the same float32 products).  Q6_K's sub-block
    quantizer, and the importance-weighted Q3_K's, Q4_0's and Q5_0's (ops/cpu/iquantize.py)."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < _GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        fl = np.float32(l)
        sumlx += qw[i] * x[i] * fl
        suml2 += qw[i] * fl * fl
    scale = sumlx / suml2 if suml2 != F0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + _TENTH * np.float32(step)) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            fl = np.float32(max(-nmax, min(nmax - 1, nearest_int(iscale * x[i]))))
            sumlx += qw[i] * x[i] * fl
            suml2 += qw[i] * fl * fl
        if suml2 > F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@nb.njit(**EXACT_JIT)
def _make_q3_quants(n, nmax, x, L):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: a signed scale and levels (biased by nmax), refined by
    up to 5 rounds of moving single levels while the weighted (``x^2``) fit improves.  Q3_K's."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < _GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l
        w = x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = np.float32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > F0:
                sl2 = suml2 - w * li * li
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = max(-nmax, min(nmax - 1, new_l))
                if new_l != L[i]:
                    fn = np.float32(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if sl2 > F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > F0 else F0


@nb.njit(**EXACT_JIT)
def _make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """``make_qkx2_quants``: an unsigned scale and a min (returned as ``(scale, -min)``, the min <= 0) for
    ``n`` weights, levels 0..nmax in ``L``; the weighted error (squared or absolute) is minimised over
    ``nstep + 1`` trial inverse scales ``(rmin + rdelta * is + nmax) / (max - min)``, each refitted by least
    squares.  Q2_K's, Q4_K's and Q5_K's."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F0:
        mn = F0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F0, -mn
    iscale = np.float32(nmax) / (mx - mn)
    scale = F1 / iscale
    best_error = F0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = max(0, min(nmax, l))
        diff = scale * np.float32(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + np.float32(nmax)) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@nb.njit(inline="always", **EXACT_JIT)
def _scale_min_k4(j, q, at):
    """``get_scale_min_k4``: sub-block ``j``'s 6-bit scale and min from the 12 bytes at ``q[at:]``."""
    if j < 4:
        return np.int64(q[at + j]) & 63, np.int64(q[at + j + 4]) & 63
    d = (np.int64(q[at + j + 4]) & 0xF) | ((np.int64(q[at + j - 4]) >> 6) << 4)
    m = (np.int64(q[at + j + 4]) >> 4) | ((np.int64(q[at + j]) >> 6) << 4)
    return d, m


@nb.njit(inline="always", **EXACT_JIT)
def _pack_2bit(L, out, at):
    """Four 2-bit levels a byte, as Q2_K's and Q3_K's ``qs``: byte ``j/4 + l`` of each half of 128 holds
    levels ``j + l``, ``+32``, ``+64``, ``+96``."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            out[at + j // 4 + l] = np.uint8(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6))


@nb.njit(inline="always", **EXACT_JIT)
def _q2_k_levels(x, out, L, d_all, m_all):
    """Q2_K's levels 0..3 from the stored 4-bit scales and mins (``out[0:16]``, ``d_all`` and ``m_all`` their
    f16 multipliers), packed into ``qs``."""
    for j in range(16):
        d = d_all * np.float32(out[j] & np.uint8(0xF))
        if d == F0:
            continue
        dm = m_all * np.float32(out[j] >> np.uint8(4))
        for ii in range(16):
            l = nearest_int((x[16 * j + ii] + dm) / d)
            L[16 * j + ii] = max(0, min(3, l))
    _pack_2bit(L, out, 16)


@nb.njit(inline="always", **EXACT_JIT)
def _q3_k_levels(x, out, L, d_all):
    """Q3_K's levels -4..3 from the stored 6-bit scales (``out[96:108]``, ``d_all`` their f16 multiplier): the high
    bits into ``hmask``, the low two into ``qs``."""
    sb = 96
    for j in range(16):
        sc = np.int64(out[sb + j] & np.uint8(0xF)) if j < 8 else np.int64(out[sb + j - 8] >> np.uint8(4))
        sc = (sc | ((np.int64(out[sb + 8 + j % 4] >> np.uint8(2 * (j // 4))) & 3) << 4)) - 32
        d = d_all * np.float32(sc)
        if d == F0:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            L[16 * j + ii] = max(-4, min(3, l)) + 4
    # the high bit of the first 32 levels in bit 0 of hmask[0..31], the next 32 in bit 1, ...
    for m in range(32):
        out[m] = 0
    m = 0
    hm = 1
    for j in range(QK_K):
        if L[j] > 3:
            out[m] |= np.uint8(hm)
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    _pack_2bit(L, out, 32)


@nb.njit(inline="always", **EXACT_JIT)
def _put_scale_min_k4(out, j, ls, lm):
    """The inverse of ``get_scale_min_k4``: sub-block ``j``'s 6-bit scale ``ls`` and min ``lm`` into ``out[4:16]``."""
    sb = 4
    if j < 4:
        out[sb + j] = np.uint8(ls)
        out[sb + j + 4] = np.uint8(lm)
    else:
        out[sb + j + 4] = np.uint8((ls & 0xF) | ((lm & 0xF) << 4))
        out[sb + j - 4] |= np.uint8((ls >> 4) << 6)
        out[sb + j] |= np.uint8((lm >> 4) << 6)


@nb.njit(inline="always", **EXACT_JIT)
def _qk45_levels(x, out, L, nmax, d_block, m_block):
    """Q4_K's / Q5_K's ``d`` and ``dmin`` (``d_block``, ``m_block`` stored as f16) in ``out[0:4]``, then every weight's
    level 0..nmax from the stored scales and mins."""
    hd, d_all = _f16_round(d_block)
    hm, m_all = _f16_round(m_block)
    _put_f16(out, 0, hd)
    _put_f16(out, 2, hm)
    for j in range(8):
        sc, m = _scale_min_k4(j, out, 4)
        d = d_all * np.float32(sc)
        if d == F0:
            continue
        dm = m_all * np.float32(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))


@nb.njit(inline="always", **EXACT_JIT)
def _pack_q4_k(L, out):
    """Q4_K's ``qs``: each 32 bytes sub-block 2c in the low nibbles, 2c + 1 in the high ones."""
    for c in range(4):
        for l in range(32):
            out[16 + 32 * c + l] = np.uint8(L[64 * c + l] | (L[64 * c + l + 32] << 4))


@nb.njit(inline="always", **EXACT_JIT)
def _pack_q5_k(L, out):
    """Q5_K's ``qh`` (the fifth bits) and ``qs`` (the low four, as Q4_K's)."""
    qh = 16
    ql = 48
    for j in range(32):
        out[qh + j] = 0
    m1 = 1
    m2 = 2
    for c in range(4):
        for j in range(32):
            l1 = L[64 * c + j]
            if l1 > 15:
                l1 -= 16
                out[qh + j] |= np.uint8(m1)
            l2 = L[64 * c + j + 32]
            if l2 > 15:
                l2 -= 16
                out[qh + j] |= np.uint8(m2)
            out[ql + 32 * c + j] = np.uint8(l1 | (l2 << 4))
        m1 <<= 2
        m2 <<= 2


@nb.njit(inline="always", **EXACT_JIT)
def _q6_k_finish(x, out, L, scales, max_scale, max_abs_scale):
    """Q6_K from its 16 sub-block scales (``max_scale`` the one of largest magnitude): the 8-bit scales and ``d``,
    every weight's level -32..31, packed into ``ql`` and ``qh``; an all-zero block all zero bytes."""
    if max_abs_scale < _GROUP_MAX_EPS:  # an all-zero block
        for j in range(210):
            out[j] = 0
        return
    iscale = np.float32(-128.0) / max_scale
    hd, d_all = _f16_round(F1 / iscale)
    _put_f16(out, 208, hd)
    sc = np.empty(16, np.int64)
    for ib in range(16):
        v = min(127, nearest_int(iscale * scales[ib]))
        sc[ib] = ((v + 128) & 0xFF) - 128  # an int8_t
        out[192 + ib] = np.uint8(v & 0xFF)
    for j in range(16):
        d = d_all * np.float32(sc[j])
        if d == F0:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            L[16 * j + ii] = max(-32, min(31, l)) + 32
    for h in range(2):
        j = 128 * h
        for l in range(32):
            q1 = L[j + l] & 0xF
            q2 = L[j + l + 32] & 0xF
            q3 = L[j + l + 64] & 0xF
            q4 = L[j + l + 96] & 0xF
            out[64 * h + l] = np.uint8(q1 | (q3 << 4))
            out[64 * h + l + 32] = np.uint8(q2 | (q4 << 4))
            out[128 + 32 * h + l] = np.uint8((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                             | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))  # fmt: skip


# ----------------------------------------------------------------------------- one block of 256
@nb.njit(**EXACT_JIT)
def _block_q2_k(x, out):
    """``quantize_row_q2_K_ref`` for one block: ``scales u8[16] | qs u8[64] | d f16 | dmin f16``."""
    L = np.empty(QK_K, np.int64)
    Laux = np.empty(16, np.int64)
    weights = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    q4scale = np.float32(15.0)
    max_scale = F0
    max_min = F0
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        for l in range(16):
            weights[l] = abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(16, 3, xs, weights, L[16 * j : 16 * j + 16], Laux,
                                               np.float32(-0.5), _TENTH, 15, True)  # fmt: skip
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    if max_scale > F0:
        iscale = q4scale / max_scale
        for j in range(16):
            out[j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
        hd, d_all = _f16_round(max_scale / q4scale)
    else:
        for j in range(16):
            out[j] = 0
        hd, d_all = _f16_round(F0)
    if max_min > F0:
        iscale = q4scale / max_min
        for j in range(16):
            l = nearest_int(iscale * mins[j])
            out[j] = np.uint8((np.int64(out[j]) | (l << 4)) & 0xFF)
        hm, m_all = _f16_round(max_min / q4scale)
    else:
        hm, m_all = _f16_round(F0)
    _put_f16(out, 80, hd)
    _put_f16(out, 82, hm)
    _q2_k_levels(x, out, L, d_all, m_all)


@nb.njit(**EXACT_JIT)
def _block_q3_k(x, out):
    """``quantize_row_q3_K_ref`` for one block: ``hmask u8[32] | qs u8[64] | scales u8[12] | d f16``."""
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    max_scale = F0
    amax = F0
    for j in range(16):
        scales[j] = _make_q3_quants(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16])
        scale = abs(scales[j])
        if scale > amax:
            amax = scale
            max_scale = scales[j]
    sb = 96  # the 12 scale bytes
    for j in range(12):
        out[sb + j] = 0
    if max_scale != F0:
        iscale = np.float32(-32.0) / max_scale
        for j in range(16):
            l = nearest_int(iscale * scales[j])
            l = ((l + 128) & 0xFF) - 128  # the C stores it in an int8_t
            l = max(-32, min(31, l)) + 32
            if j < 8:
                out[sb + j] = np.uint8(l & 0xF)
            else:
                out[sb + j - 8] |= np.uint8((l & 0xF) << 4)
            l >>= 4
            out[sb + j % 4 + 8] |= np.uint8(l << (2 * (j // 4)))
        hd, d_all = _f16_round(F1 / iscale)
    else:
        hd, d_all = _f16_round(F0)
    _put_f16(out, 108, hd)
    _q3_k_levels(x, out, L, d_all)


@nb.njit(inline="always", **EXACT_JIT)
def _qk45_scales(x, out, L, nmax, rmin, nstep):
    """The common first half of ``quantize_row_q4_K_ref`` / ``q5_K_ref``: 8 sub-blocks of 32 fitted by
    ``make_qkx2_quants`` (weights ``sqrt(mean x^2) + |x|``), their scales and mins to 6 bits in ``out[4:16]``,
    ``d`` and ``dmin`` in ``out[0:4]``; then every weight's level 0..nmax from the stored scales."""
    Laux = np.empty(32, np.int64)
    weights = np.empty(32, np.float32)
    mins = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    max_scale = F0
    max_min = F0
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = F0
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / np.float32(32.0))
        for l in range(32):
            weights[l] = av_x + abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(32, nmax, xs, weights, L[32 * j : 32 * j + 32], Laux,
                                               rmin, _TENTH, nstep, False)  # fmt: skip
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    f63 = np.float32(63.0)
    inv_scale = f63 / max_scale if max_scale > F0 else F0
    inv_min = f63 / max_min if max_min > F0 else F0
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # (a uint8_t in the C)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        _put_scale_min_k4(out, j, ls, lm)
    _qk45_levels(x, out, L, nmax, max_scale / f63, max_min / f63)


@nb.njit(**EXACT_JIT)
def _block_q4_k(x, out):
    """``quantize_row_q4_K_ref`` for one block: ``d f16 | dmin f16 | scales u8[12] | qs u8[128]``."""
    L = np.empty(QK_K, np.int64)
    _qk45_scales(x, out, L, 15, np.float32(-1.0), 20)
    _pack_q4_k(L, out)


@nb.njit(**EXACT_JIT)
def _block_q5_k(x, out):
    """``quantize_row_q5_K_ref`` for one block: ``d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128]``."""
    L = np.empty(QK_K, np.int64)
    _qk45_scales(x, out, L, 31, np.float32(-0.5), 15)
    _pack_q5_k(L, out)


@nb.njit(**EXACT_JIT)
def _block_q6_k(x, out):
    """``quantize_row_q6_K_ref`` for one block: ``ql u8[128] | qh u8[64] | scales i8[16] | d f16``."""
    L = np.empty(QK_K, np.int64)
    w = np.empty(QK_K, np.float32)
    for i in range(QK_K):
        w[i] = x[i] * x[i]  # (make_qx_quants without weights weighs by x^2)
    scales = np.empty(16, np.float32)
    max_scale = F0
    max_abs_scale = F0
    for ib in range(16):
        scale = _make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16], L[16 * ib : 16 * ib + 16], w[16 * ib :])
        scales[ib] = scale
        if abs(scale) > max_abs_scale:
            max_abs_scale = abs(scale)
            max_scale = scale
    _q6_k_finish(x, out, L, scales, max_scale, max_abs_scale)


# ----------------------------------------------------------------------------- whole tensors
_block = None  # (the block quantizer of each variant of _rows: _rows_for)


def _rows(x, out):
    """Each of the ``x.shape[0]`` blocks of ``x`` quantized into ``out``'s row by ``_block`` (each type's variant below)."""
    for b in nb.prange(x.shape[0]):
        _block(x[b], out[b])


def _rows_for(block, name: str):
    # (a copy of _rows with its own name and block function: Numba caches each by name, and a closure would not cache)
    return nb.njit(parallel=prange_only(), **EXACT_JIT)(variant(_rows, name, _block=block))


_rows_q2_k = _rows_for(_block_q2_k, "_rows_q2_k")
_rows_q3_k = _rows_for(_block_q3_k, "_rows_q3_k")
_rows_q4_k = _rows_for(_block_q4_k, "_rows_q4_k")
_rows_q5_k = _rows_for(_block_q5_k, "_rows_q5_k")
_rows_q6_k = _rows_for(_block_q6_k, "_rows_q6_k")


_KERNELS = {T.Q2_K: _rows_q2_k, T.Q3_K: _rows_q3_k, T.Q4_K: _rows_q4_k, T.Q5_K: _rows_q5_k, T.Q6_K: _rows_q6_k}


def quantize_k(x: np.ndarray, qtype: int) -> np.ndarray:
    """Quantize float32 weights ``x`` (last dimension a multiple of 256) to the K-quant ``qtype`` (Q2_K ... Q6_K)
    as ggml's reference quantizer does without an importance matrix.  Returns uint8 of shape
    ``x.shape[:-1] + (x.shape[-1] // 256 * type_size,)``, gguf.quants' byte shape."""
    qtype = T(qtype)
    if qtype not in _KERNELS:
        raise ValueError(f"{qtype.name} is not a K-quant kvrun can quantize (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim == 0 or x.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {QK_K} weights, not {x.shape[-1] if x.ndim else 0}")
    size = TYPE_SIZE[qtype]
    n_blocks = x.size // QK_K
    out = np.empty((n_blocks, size), np.uint8)
    if n_blocks:
        _KERNELS[qtype](x.reshape(n_blocks, QK_K), out)
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK_K * size)
