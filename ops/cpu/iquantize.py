"""Quantizers that take an importance matrix, and the 4-bit non-linear types IQ4_NL and IQ4_XS: ggml's C ported
to Numba, bit for bit.

``llama-quantize --imatrix`` hands each tensor's importance weights (the mean square of the activations that enter
each of its columns, :mod:`kvrun.runtime.imatrix`) to ggml's ``quantize_q*`` (ggml/src/ggml-quants.c), which then
run ``quantize_row_*_impl`` instead of the reference quantizers of ``ops/cpu/kquantize.py``: every least-squares fit
is weighted by ``qw[i] * sqrt(sigma2 + x[i]^2)`` (Q6_K: ``qw[i]`` alone), the K-quants' sub-block fits are
``make_qkx3_quants`` (36 trial scales) and their 6-bit / 4-bit block scales are themselves fitted by
``make_qp_quants`` (weighted by the sub-blocks' total weight) instead of being rounded from the largest.  Q8_0
ignores the matrix.  IQ4_NL (blocks of 32) and IQ4_XS (256, eight 6-bit sub-block scales) map each weight to the
nearest of 16 non-uniform levels (``kvalues_iq4nl``) after a search over 15 scales; without an importance matrix
they weight by ``x^2`` (``quantize_row_iq4_nl_impl`` with ``quant_weights == NULL``).

Bit exactness as in kquantize.py: float32 in source order, no FMA, no fastmath, ggml's ``nearest_int`` and f16
rounding; the C's integer truncations (a level stored in a ``uint8_t``) are kept.  ``tests/test_imatrix.py``
holds every type, with and without a matrix, to ``ggml_quantize_chunk``'s bytes
(tests/fixtures/imatrix_quants.json, tools/make_imatrix_fixture.py).

Rows are independent (Q4_0 ... Q5_1 share a row-wide ``sigma2``), so a tensor's rows run in parallel.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from gguf import GGMLQuantizationType as T

from .kquantize import (QK_K, _f16_round, _make_qx_quants, _pack_q4_k, _pack_q5_k, _put_f16, _put_scale_min_k4, _q2_k_levels,
                        _q3_k_levels, _q6_k_finish, _qk45_levels, nearest_int, quantize_k)  # fmt: skip
from .parallel import EXACT_JIT, prange_only

F0 = np.float32(0.0)
F1 = np.float32(1.0)
_EPS = np.float32(1e-15)  # GROUP_MAX_EPS
_TENTH = np.float32(0.1)

#: ggml's kvalues_iq4nl: IQ4_NL's and IQ4_XS's 16 levels
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)

#: bytes of a block, and weights in it
BLOCK = {T.Q4_0: (18, 32), T.Q4_1: (20, 32), T.Q5_0: (22, 32), T.Q5_1: (24, 32), T.IQ4_NL: (18, 32),
         T.Q2_K: (84, 256), T.Q3_K: (110, 256), T.Q4_K: (144, 256), T.Q5_K: (176, 256), T.Q6_K: (210, 256),
         T.IQ4_XS: (136, 256)}  # fmt: skip


# ----------------------------------------------------------------------------- helpers (ggml-quants.c)
@nb.njit(**EXACT_JIT)
def _make_qkx3_quants(n, nmax, x, w, L, Laux, rmin, rdelta, nstep):
    """``make_qkx3_quants(..., use_mad=false)`` with weights: an unsigned scale and ``-min`` for levels 0..nmax,
    the weighted squared error minimised over ``nstep + 1`` trial scales, each refitted by least squares."""
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if mn > F0:
        mn = F0
    if mx <= mn:
        for i in range(n):
            L[i] = 0
        return F0, -mn
    iscale = np.float32(nmax) / (mx - mn)
    scale = F1 / iscale
    best_mad = F0
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        diff = scale * np.float32(L[i]) + mn - x[i]
        best_mad += w[i] * (diff * diff)
    fmax = np.float32(nmax)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + fmax) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            v = iscale * (x[i] - mn)
            l = nearest_int(v if v < fmax else fmax) if v > F0 else 0  # (v may be inf or nan: the C's guard)
            Laux[i] = l
            fl = np.float32(l)
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            mad = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                mad += w[i] * (diff * diff)
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                mn = this_min
    return scale, -mn


@nb.njit(**EXACT_JIT)
def _make_qp_quants(n, nmax, x, L, qw):
    """``make_qp_quants``: one positive scale for ``n`` non-negative values (the K-quants' sub-block scales or
    mins), levels 0..nmax in ``L`` (a ``uint8_t`` in the C: kept mod 256), fitted by weighted least squares and
    up to 5 rounds of moving single levels."""
    mx = F0
    for i in range(n):
        mx = max(mx, x[i])
    if mx < _EPS:
        for i in range(n):
            L[i] = 0
        return F0
    fmax = np.float32(nmax)
    iscale = fmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = F1 / iscale
    best_mse = F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += qw[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_TENTH * np.float32(step) + fmax) / mx
        scale_is = F1 / iscale_is
        mse = F0
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * np.float32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        fl = np.float32(l)
        sumlx += qw[i] * x[i] * fl
        suml2 += qw[i] * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            li = np.float32(L[i])
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > F0 and sl2 > F0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    fn = np.float32(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > F0 else F0


@nb.njit(inline="always", **EXACT_JIT)
def _best_index_iq4(x):
    """``best_index_int8(16, kvalues_iq4nl, x)``: the level nearest ``x`` (ties to the upper one)."""
    v = KVALUES_IQ4NL
    if x <= np.float32(v[0]):
        return 0
    if x >= np.float32(v[15]):
        return 15
    ml = 0
    mu = 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < np.float32(v[mav]):
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - np.float32(v[mu - 1]) < np.float32(v[mu]) - x else mu


@nb.njit(inline="always", **EXACT_JIT)
def _weights(xb, qw, at, sigma2, out, n):
    """``weight[j] = qw[j] * sqrtf(sigma2 + x[j]^2)``: the importance scaled by the weight's own size."""
    for j in range(n):
        out[j] = qw[at + j] * np.sqrt(sigma2 + xb[j] * xb[j])


# ----------------------------------------------------------------------------- K-quants, one block (the *_impl)
@nb.njit(**EXACT_JIT)
def _q2_k(x, qw, qo, out):
    """``quantize_row_q2_K_impl`` for one block (weights ``qw[qo:qo+256]``)."""
    L = np.empty(QK_K, np.int64)
    Laux = np.empty(16, np.int64)
    mins = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    sw = np.zeros(16, np.float32)
    weight = np.empty(16, np.float32)
    Ls = np.empty(16, np.int64)
    Lm = np.empty(16, np.int64)
    sumx2 = F0
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = sumx2 / np.float32(QK_K)
    for j in range(16):
        _weights(x[16 * j :], qw, qo + 16 * j, sigma2, weight, 16)
        for l in range(16):
            sw[j] += weight[l]
        scales[j], mins[j] = _make_qkx3_quants(16, 3, x[16 * j : 16 * j + 16], weight, L[16 * j : 16 * j + 16], Laux,
                                               np.float32(-0.9), np.float32(0.05), 36)  # fmt: skip
    hd, dm = _f16_round(_make_qp_quants(16, 15, scales, Ls, sw))
    hm, mm = _f16_round(_make_qp_quants(16, 15, mins, Lm, sw))
    _put_f16(out, 80, hd)
    _put_f16(out, 82, hm)
    for j in range(16):
        out[j] = np.uint8((Ls[j] | (Lm[j] << 4)) & 0xFF)
    _q2_k_levels(x, out, L, dm, mm)


@nb.njit(**EXACT_JIT)
def _q3_k(x, qw, qo, out):
    """``quantize_row_q3_K_impl`` for one block."""
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int64)
    sumx2 = F0
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    for j in range(16):
        _weights(x[16 * j :], qw, qo + 16 * j, sigma2, weight, 16)
        sumw = F0
        for l in range(16):
            sumw += weight[l]
        sw[j] = sumw
        scales[j] = _make_qx_quants(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16], weight)
    sb = 96
    for j in range(12):
        out[sb + j] = 0
    d_block = _make_qx_quants(16, 32, scales, Ls, sw)
    for j in range(16):
        l = Ls[j]
        if j < 8:
            out[sb + j] = np.uint8(l & 0xF)
        else:
            out[sb + j - 8] |= np.uint8((l & 0xF) << 4)
        l >>= 4
        out[sb + j % 4 + 8] |= np.uint8((l << (2 * (j // 4))) & 0xFF)
    hd, d_all = _f16_round(d_block)
    _put_f16(out, 108, hd)
    _q3_k_levels(x, out, L, d_all)


@nb.njit(inline="always", **EXACT_JIT)
def _q45_k(x, qw, qo, out, L, nmax):
    """The common part of ``quantize_row_q4_K_impl`` / ``q5_K_impl``: eight sub-blocks of 32 fitted by
    ``make_qkx3_quants``, their scales and mins by ``make_qp_quants`` (63 levels), then every weight's level."""
    Laux = np.empty(32, np.int64)
    Ls = np.empty(8, np.int64)
    Lm = np.empty(8, np.int64)
    weights = np.empty(32, np.float32)
    sw = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    sum_x2 = F0
    for l in range(QK_K):
        sum_x2 += x[l] * x[l]
    sigma2 = np.float32(2.0) * sum_x2 / np.float32(QK_K)
    for j in range(8):
        _weights(x[32 * j :], qw, qo + 32 * j, sigma2, weights, 32)
        sumw = F0
        for l in range(32):
            sumw += weights[l]
        sw[j] = sumw
        scales[j], mins[j] = _make_qkx3_quants(32, nmax, x[32 * j : 32 * j + 32], weights, L[32 * j : 32 * j + 32],
                                               Laux, np.float32(-0.9), np.float32(0.05), 36)  # fmt: skip
    d_block = _make_qp_quants(8, 63, scales, Ls, sw)
    m_block = _make_qp_quants(8, 63, mins, Lm, sw)
    for j in range(8):
        _put_scale_min_k4(out, j, min(63, Ls[j]), min(63, Lm[j]))
    _qk45_levels(x, out, L, nmax, d_block, m_block)


@nb.njit(**EXACT_JIT)
def _q4_k(x, qw, qo, out):
    """``quantize_row_q4_K_impl`` for one block."""
    L = np.empty(QK_K, np.int64)
    _q45_k(x, qw, qo, out, L, 15)
    _pack_q4_k(L, out)


@nb.njit(**EXACT_JIT)
def _q5_k(x, qw, qo, out):
    """``quantize_row_q5_K_impl`` for one block."""
    L = np.empty(QK_K, np.int64)
    _q45_k(x, qw, qo, out, L, 31)
    _pack_q5_k(L, out)


@nb.njit(**EXACT_JIT)
def _q6_k(x, qw, qo, out):
    """``quantize_row_q6_K_impl`` for one block: the sub-block fits weighted by the importance alone."""
    L = np.empty(QK_K, np.int64)
    scales = np.empty(16, np.float32)
    max_scale = F0
    max_abs_scale = F0
    for ib in range(16):
        scale = _make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16], L[16 * ib : 16 * ib + 16], qw[qo + 16 * ib :])
        scales[ib] = scale
        if abs(scale) > max_abs_scale:
            max_abs_scale = abs(scale)
            max_scale = scale
    _q6_k_finish(x, out, L, scales, max_scale, max_abs_scale)


# ----------------------------------------------------------------------------- Q4_0 ... Q5_1, one row (the *_impl)
@nb.njit(inline="always", **EXACT_JIT)
def _row_sigma2(x):
    s = F0
    for j in range(x.shape[0]):
        s += x[j] * x[j]
    return s / np.float32(x.shape[0])


@nb.njit(inline="always", **EXACT_JIT)
def _put_qh(L, out, at):
    """Q5_0's / Q5_1's ``qh``: the fifth bit of level j in bit j, of level j + 16 in bit j + 16 (little endian)."""
    qh = np.uint32(0)
    for j in range(16):
        qh |= np.uint32((L[j] & 0x10) >> 4) << np.uint32(j)
        qh |= np.uint32((L[j + 16] & 0x10) >> 4) << np.uint32(j + 16)
    for b in range(4):
        out[at + b] = np.uint8((qh >> np.uint32(8 * b)) & np.uint32(0xFF))


@nb.njit(**EXACT_JIT)
def _q4_0_row(x, qw, out):
    """``quantize_row_q4_0_impl``: each block of 32 a signed scale by ``make_qx_quants`` (8 levels a side)."""
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int64)
    for ib in range(x.shape[0] // 32):
        _weights(x[32 * ib :], qw, 32 * ib, sigma2, weight, 32)
        h, _ = _f16_round(_make_qx_quants(32, 8, x[32 * ib : 32 * ib + 32], L, weight))
        _put_f16(out, 18 * ib, h)
        for j in range(16):
            out[18 * ib + 2 + j] = np.uint8((L[j] | (L[j + 16] << 4)) & 0xFF)


@nb.njit(**EXACT_JIT)
def _q5_0_row(x, qw, out):
    """``quantize_row_q5_0_impl``: as Q4_0 with 16 levels a side, the fifth bits in ``qh``."""
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int64)
    for ib in range(x.shape[0] // 32):
        _weights(x[32 * ib :], qw, 32 * ib, sigma2, weight, 32)
        h, _ = _f16_round(_make_qx_quants(32, 16, x[32 * ib : 32 * ib + 32], L, weight))
        o = 22 * ib
        _put_f16(out, o, h)
        _put_qh(L, out, o + 2)
        for j in range(16):
            out[o + 6 + j] = np.uint8((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4))


@nb.njit(**EXACT_JIT)
def _q41_51_row(x, qw, out, nmax, size):
    """``quantize_row_q4_1_impl`` (nmax 15) / ``q5_1_impl`` (31): a scale and min a block by ``make_qkx3_quants``."""
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int64)
    Laux = np.empty(32, np.int64)
    for ib in range(x.shape[0] // 32):
        _weights(x[32 * ib :], qw, 32 * ib, sigma2, weight, 32)
        d, the_min = _make_qkx3_quants(32, nmax, x[32 * ib : 32 * ib + 32], weight, L, Laux,
                                       np.float32(-0.9), np.float32(0.05), 36)  # fmt: skip
        o = size * ib
        hd, _ = _f16_round(d)
        hm, _ = _f16_round(-the_min)
        _put_f16(out, o, hd)
        _put_f16(out, o + 2, hm)
        if nmax == 15:
            for j in range(16):
                out[o + 4 + j] = np.uint8((L[j] | (L[j + 16] << 4)) & 0xFF)
        else:
            _put_qh(L, out, o + 4)
            for j in range(16):
                out[o + 8 + j] = np.uint8((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4))


# ----------------------------------------------------------------------------- IQ4_NL / IQ4_XS
@nb.njit(**EXACT_JIT)
def _iq4(x, qw, qo, has_qw, out, super_block):
    """``quantize_row_iq4_nl_impl(super_block, 32, ..., kvalues_iq4nl, qw, ntry=7)`` for one super-block:
    IQ4_NL (32: ``d f16 | qs[16]``) or IQ4_XS (256: ``d f16 | scales_h u16 | scales_l[4] | qs[128]``)."""
    ntry = 7
    nblk = super_block // 32
    v0 = np.float32(KVALUES_IQ4NL[0])
    L = np.zeros(super_block, np.int64)
    scales = np.empty(nblk, np.float32)
    weight = np.empty(32, np.float32)
    sigma2 = F0
    for j in range(super_block):
        sigma2 += x[j] * x[j]
    sigma2 *= np.float32(2.0) / np.float32(super_block)
    max_scale = F0
    amax_scale = F0
    for ib in range(nblk):
        xb = x[32 * ib : 32 * ib + 32]
        if has_qw:
            _weights(xb, qw, qo + 32 * ib, sigma2, weight, 32)
        else:
            for j in range(32):
                weight[j] = xb[j] * xb[j]
        amax = F0
        mx = F0
        for j in range(32):
            ax = abs(xb[j])
            if ax > amax:
                amax = ax
                mx = xb[j]
        if amax < _EPS:
            scales[ib] = F0
            continue
        d = -mx / v0
        inv = F1 / d
        sumqx = F0
        sumq2 = F0
        for j in range(32):
            l = _best_index_iq4(inv * xb[j])
            L[32 * ib + j] = l
            q = np.float32(KVALUES_IQ4NL[l])
            sumqx += weight[j] * q * xb[j]
            sumq2 += weight[j] * q * q
        d = sumqx / sumq2
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            inv = np.float32(itry + np.int64(KVALUES_IQ4NL[0])) / mx
            sumqx = F0
            sumq2 = F0
            for j in range(32):
                q = np.float32(KVALUES_IQ4NL[_best_index_iq4(inv * xb[j])])
                sumqx += weight[j] * q * xb[j]
                sumq2 += weight[j] * q * q
            if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        if abs(d) > amax_scale:
            amax_scale = abs(d)
            max_scale = d
    if nblk > 1:
        for b in range(8):
            out[b] = 0
        d = -max_scale / np.float32(32.0)
        h, _ = _f16_round(d)
        _put_f16(out, 0, h)
        inv = F1 / d if d != F0 else F0
        sh = 0
        for ib in range(nblk):
            l = max(-32, min(31, nearest_int(inv * scales[ib])))
            dl = d * np.float32(l)
            idl = F1 / dl if dl != F0 else F0
            for j in range(32):
                L[32 * ib + j] = _best_index_iq4(idl * x[32 * ib + j])
            l += 32
            if ib % 2 == 0:
                out[4 + ib // 2] = np.uint8(l & 0xF)
            else:
                out[4 + ib // 2] |= np.uint8((l & 0xF) << 4)
            sh |= (l >> 4) << (2 * (ib % 8))
        out[2] = np.uint8(sh & 0xFF)
        out[3] = np.uint8((sh >> 8) & 0xFF)
        qs = 8
    else:
        h, _ = _f16_round(scales[0])
        _put_f16(out, 0, h)
        inv = F1 / scales[0] if scales[0] != F0 else F0
        for j in range(super_block):
            L[j] = _best_index_iq4(inv * x[j])
        qs = 2
    for i in range(super_block // 32):
        for j in range(16):
            out[qs + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


# ----------------------------------------------------------------------------- whole tensors
@nb.njit(parallel=prange_only(), **EXACT_JIT)
def _rows_k(x, qw, out, kind):
    """Every 256-weight block of every row of ``x`` by the K-quant ``kind`` (2..6, importance ``qw``) or IQ4_XS
    (104: with ``qw``, 105: without)."""
    nbl = x.shape[1] // QK_K
    size = out.shape[1] // nbl
    for r in nb.prange(x.shape[0]):
        for b in range(nbl):
            xb = x[r, QK_K * b : QK_K * (b + 1)]
            ob = out[r, size * b : size * (b + 1)]
            if kind == 2:
                _q2_k(xb, qw, QK_K * b, ob)
            elif kind == 3:
                _q3_k(xb, qw, QK_K * b, ob)
            elif kind == 4:
                _q4_k(xb, qw, QK_K * b, ob)
            elif kind == 5:
                _q5_k(xb, qw, QK_K * b, ob)
            elif kind == 6:
                _q6_k(xb, qw, QK_K * b, ob)
            else:
                _iq4(xb, qw, QK_K * b, kind == 104, ob, QK_K)


@nb.njit(parallel=prange_only(), **EXACT_JIT)
def _rows_32(x, qw, out, kind):
    """Every row of ``x`` as Q4_0 (0), Q4_1 (1), Q5_0 (2), Q5_1 (3) with importance ``qw``, or IQ4_NL (4: with,
    5: without)."""
    for r in nb.prange(x.shape[0]):
        if kind == 0:
            _q4_0_row(x[r], qw, out[r])
        elif kind == 1:
            _q41_51_row(x[r], qw, out[r], 15, 20)
        elif kind == 2:
            _q5_0_row(x[r], qw, out[r])
        elif kind == 3:
            _q41_51_row(x[r], qw, out[r], 31, 24)
        else:
            for b in range(x.shape[1] // 32):
                _iq4(x[r, 32 * b : 32 * b + 32], qw, 32 * b, kind == 4, out[r, 18 * b : 18 * b + 18], 32)


_KIND_K = {T.Q2_K: 2, T.Q3_K: 3, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6}
_KIND_32 = {T.Q4_0: 0, T.Q4_1: 1, T.Q5_0: 2, T.Q5_1: 3}
#: the types :func:`quantize_weighted` writes
TYPES = (*_KIND_32, *_KIND_K, T.IQ4_NL, T.IQ4_XS)


def quantize_weighted(x: np.ndarray, qtype: int, imatrix: np.ndarray | None) -> np.ndarray:
    """Rows ``x`` float32 [n, n_per_row] as ``qtype`` (:data:`TYPES`), as ``ggml_quantize_chunk(qtype, x, ...,
    imatrix)`` makes them: with ``imatrix`` (float32 [n_per_row], one weight a column) the weighted ``*_impl``
    quantizers; without, the reference ones (IQ4_NL / IQ4_XS: their own, weighted by ``x^2``).
    Returns uint8 [n, row bytes]."""
    qtype = T(qtype)
    if qtype not in TYPES:
        raise ValueError(f"{qtype.name}: no importance-weighted quantizer (have {', '.join(t.name for t in TYPES)})")
    x = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    size, block = BLOCK[qtype]
    n_rows, n_per_row = x.shape
    if n_per_row % block:
        raise ValueError(f"{qtype.name} needs rows that are a multiple of {block} weights, not {n_per_row}")
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, np.float32).reshape(-1)
        if imatrix.shape[0] != n_per_row:
            raise ValueError(f"importance matrix of {imatrix.shape[0]} columns for rows of {n_per_row}")
    if imatrix is None and qtype not in (T.IQ4_NL, T.IQ4_XS):
        if qtype in _KIND_K:
            return quantize_k(x, qtype)
        from gguf.quants import quantize

        with np.errstate(all="ignore"):
            return quantize(x, qtype).view(np.uint8).reshape(n_rows, -1)
    out = np.zeros((n_rows, n_per_row // block * size), np.uint8)
    if n_rows == 0:
        return out
    qw = imatrix if imatrix is not None else np.zeros(1, np.float32)
    with np.errstate(all="ignore"):
        if qtype == T.IQ4_XS:
            _rows_k(x, qw, out, 104 if imatrix is not None else 105)
        elif qtype == T.IQ4_NL:
            _rows_32(x, qw, out, 4 if imatrix is not None else 5)
        elif qtype in _KIND_K:
            _rows_k(x, qw, out, _KIND_K[qtype])
        else:
            _rows_32(x, qw, out, _KIND_32[qtype])
    return out
