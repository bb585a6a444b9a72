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

Decode reads the cache in place: each visible row is unpacked and scaled
once (``s_g c_d + m_g``, a unit-stride loop specialised per width) into a
``D``-float scratch that stays in L1, and dotted with every query head of the
GQA group; values likewise.  So each byte of the cache is read once per step
and no float copy of the cache is ever made (prefill, compute-bound, may
dequantize into a per-call scratch and use BLAS).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .f16 import f16_to_f32

_JIT = dict(cache=True, fastmath=True, nogil=True)
_NEG_INF = np.float32(-1e30)  # masked logit: finite, so exp() needs no branch (and fastmath stays valid)


@nb.njit(inline="always", **_JIT)
def container(bits: int) -> int:
    """Bits a code occupies: 3-bit codes are stored in 4-bit containers."""
    return 4 if bits == 3 else bits


@nb.njit(inline="always", **_JIT)
def dequant_row(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, out: np.ndarray) -> None:
    """One row, dequantized: ``out[d] = s_g c_d + m_g``.

    codes: [D*w/8] uint8; meta: [D/G, 2] uint8; lut: [256] float32; out: [D]
    float32.  One specialised, unit-stride loop per width (vectorised by LLVM).
    """
    D = out.shape[0]
    if bits == 16:
        for d in range(D):
            out[d] = f16_to_f32(np.uint16(codes[2 * d]) | (np.uint16(codes[2 * d + 1]) << np.uint16(8)))
        return
    zs = np.float32((1 << bits) - 1) / np.float32(255.0)
    if bits == 2 and G == 32:
        _deq2_g32(codes, meta, lut, zs, out)
        return
    if bits in (3, 4) and G == 32:
        _deq4_g32(codes, meta, lut, zs, out)
        return
    for g in range(D // G):
        sg = lut[meta[g, 0]]
        mg = -sg * np.float32(meta[g, 1]) * zs
        o0 = g * G
        if bits == 2:
            nbg = G // 4
            b0 = g * nbg
            for m in range(4):
                sh = np.int32(2 * m)
                for i in range(nbg):
                    out[o0 + m * nbg + i] = sg * np.float32((np.int32(codes[b0 + i]) >> sh) & np.int32(3)) + mg
        elif bits == 8:
            for i in range(G):
                out[o0 + i] = sg * np.float32(codes[o0 + i]) + mg
        else:  # 3 or 4 bits in 4-bit containers
            nbg = G // 2
            b0 = g * nbg
            for m in range(2):
                sh = np.int32(4 * m)
                for i in range(nbg):
                    out[o0 + m * nbg + i] = sg * np.float32((np.int32(codes[b0 + i]) >> sh) & np.int32(15)) + mg


@nb.njit(inline="always", **_JIT)
def _deq2_g32(codes, meta, lut, zs, out):
    """2-bit rows, G = 32: 8 bytes per group, four 8-wide planes (one AVX2 vector each)."""
    for g in range(out.shape[0] // 32):
        sg = lut[meta[g, 0]]
        mg = -sg * np.float32(meta[g, 1]) * zs
        for m in range(4):
            for i in range(8):
                out[g * 32 + m * 8 + i] = sg * np.float32((np.int32(codes[g * 8 + i]) >> np.int32(2 * m)) & np.int32(3)) + mg


@nb.njit(inline="always", **_JIT)
def _deq4_g32(codes, meta, lut, zs, out):
    """4-bit (and 3-bit) rows, G = 32: 16 bytes per group, two 16-wide planes."""
    for g in range(out.shape[0] // 32):
        sg = lut[meta[g, 0]]
        mg = -sg * np.float32(meta[g, 1]) * zs
        for m in range(2):
            for i in range(16):
                out[g * 32 + m * 16 + i] = sg * np.float32((np.int32(codes[g * 16 + i]) >> np.int32(4 * m)) & np.int32(15)) + mg


@nb.njit(**_JIT)
def dequantize_rows(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, out: np.ndarray) -> None:
    """Rows of a pool back to float32 (prefill scratch, merging, tests).

    codes: [n, D*w/8] uint8; meta: [n, D/G, 2] uint8 ([n, 0, 2] for 16 bits);
    lut: [256] float32; out: [n, D] float32.
    """
    for r in range(out.shape[0]):
        dequant_row(codes[r], meta[r], lut, bits, G, out[r])


@nb.njit(inline="always", **_JIT)
def _visible(pk: int, pq: int, window: int) -> bool:
    return pk >= 0 and pk <= pq and not (window > 0 and pq - pk >= window)


@nb.njit(inline="always", **_JIT)
def _score_row(q, t, h0, gqa, row, sc, softcap, lw, s, j, m_run):
    """s[hh, j] = logit of query head h0+hh against a dequantized key row; tracks the max."""
    D = row.shape[0]
    for hh in range(gqa):
        a = np.float32(0.0)
        for d in range(D):
            a += q[t, h0 + hh, d] * row[d]
        a *= sc
        if softcap > 0:
            a = np.float32(softcap) * np.tanh(a / np.float32(softcap))
        a += lw
        s[hh, j] = a
        if a > m_run[hh]:
            m_run[hh] = a


@nb.njit(inline="always", **_JIT)
def _add_row(s, j, gqa, row, acc):
    """acc[hh] += p[hh, j] * row for every query head of the group."""
    Dv = row.shape[0]
    for hh in range(gqa):
        p = s[hh, j]
        for d in range(Dv):
            acc[hh, d] += p * row[d]


@nb.njit(**_JIT)
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
    acc_all: np.ndarray,
    cbuf_all: np.ndarray,
    m_all: np.ndarray,
    probs_acc: np.ndarray,
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

    Each visible row is dequantized once into ``cbuf`` and dotted with every
    query head of its GQA group, so the cache is read once per step.

    Scratch, per KV head (ready for a parallel loop over heads, which
    measured slower with Numba's threads on 2 vCPUs):
    s [n_kv, gqa, N], acc [n_kv, gqa, Dv], cbuf [n_kv, max(D, Dv)],
    m_run [n_kv, gqa] float32.  probs_acc: [n_kv, N] float32 receives the softmax probabilities
    summed over each KV head's query heads (what eviction policies score
    with), or ``[0, 0]`` to skip.
    """
    T, H, D = q.shape
    n_kv = k16.shape[0]
    F = k16.shape[1]
    Dv = v16.shape[2]
    C0 = kc0.shape[1]
    C1 = kc1.shape[1]
    N = F + C0 + C1
    gqa = H // n_kv
    sc = np.float32(scale)
    use_logw = logw.shape[0] > 0
    use_acc = probs_acc.shape[0] > 0
    ph = 1 if kpos.shape[0] > 1 else 0  # pos row stride over KV heads
    for t in range(T):
        pq = qpos[t]
        for kh in range(n_kv):
            kb = cbuf_all[kh, :D]
            vb = cbuf_all[kh, :Dv]
            s = s_all[kh]
            acc = acc_all[kh]
            m_run = m_all[kh]
            h0 = kh * gqa
            prow = kh * ph
            for hh in range(gqa):
                m_run[hh] = _NEG_INF
            # ---- scores
            for j in range(N):
                if not _visible(kpos[prow, j], pq, window):
                    for hh in range(gqa):
                        s[hh, j] = _NEG_INF
                    continue
                if j < F:
                    for d in range(D):
                        kb[d] = f16_to_f32(k16[kh, j, d])
                elif j < F + C0:
                    dequant_row(kc0[kh, j - F], km0[kh, j - F], klut0, kw0, G, kb)
                else:
                    dequant_row(kc1[kh, j - F - C0], km1[kh, j - F - C0], klut1, kw1, G, kb)
                lw = logw[kh, j] if use_logw else np.float32(0.0)
                _score_row(q, t, h0, gqa, kb, sc, softcap, lw, s, j, m_run)
            # ---- softmax
            for hh in range(gqa):
                tot = np.float32(0.0)
                mh = m_run[hh]
                for j in range(N):
                    e = np.exp(s[hh, j] - mh)  # exactly 0 for masked slots
                    s[hh, j] = e
                    tot += e
                inv = np.float32(1.0) / tot if mh > _NEG_INF else np.float32(0.0)
                for j in range(N):
                    s[hh, j] *= inv
                for d in range(Dv):
                    acc[hh, d] = 0.0
            if use_acc:
                for j in range(N):
                    a = np.float32(0.0)
                    for hh in range(gqa):
                        a += s[hh, j]
                    probs_acc[kh, j] += a
            # ---- values
            for j in range(N):
                live = False
                for hh in range(gqa):
                    if s[hh, j] != 0.0:
                        live = True
                if not live:
                    continue
                if j < F:
                    for d in range(Dv):
                        vb[d] = f16_to_f32(v16[kh, j, d])
                elif j < F + C0:
                    dequant_row(vc0[kh, j - F], vm0[kh, j - F], vlut0, vw0, G, vb)
                else:
                    dequant_row(vc1[kh, j - F - C0], vm1[kh, j - F - C0], vlut1, vw1, G, vb)
                _add_row(s, j, gqa, vb, acc)
            for hh in range(gqa):
                for d in range(Dv):
                    out[t, h0 + hh, d] = acc[hh, d]


@nb.njit(**_JIT)
def key_similarity(kvec: np.ndarray, kc: np.ndarray, km: np.ndarray, lut: np.ndarray, bits: int, G: int, kh: int, out: np.ndarray, cbuf: np.ndarray) -> None:
    """Cosine similarity of one key with every key of head ``kh`` in a pool.

    kvec: [D] float32; kc: [n_kv, C, D*w/8] uint8; km: [n_kv, C, D/G, 2] uint8;
    out: [C] float32; cbuf: [D] float32 scratch.  Used to find a merge target.
    """
    C = kc.shape[1]
    D = kvec.shape[0]
    nq = np.float32(0.0)
    for d in range(D):
        nq += kvec[d] * kvec[d]
    for j in range(C):
        dequant_row(kc[kh, j], km[kh, j], lut, bits, G, cbuf)
        dot = np.float32(0.0)
        nk = np.float32(0.0)
        for d in range(D):
            dot += cbuf[d] * kvec[d]
            nk += cbuf[d] * cbuf[d]
        den = np.sqrt(nq * nk)
        out[j] = dot / den if den > 0 else np.float32(0.0)
