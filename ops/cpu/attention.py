"""Grouped-query prefill attention over an fp16 KV ring buffer (Numba, CPU).

(Decode over the same ring uses :func:`kvrun.ops.cpu.qattention.attend_decode_q`
with no quantized pools: its fused fp16 row kernels and split-K.)

The cache is position-addressed: every slot carries the absolute position of
the token it holds (-1 when empty), so causal and sliding-window masks are
decided per slot from positions, whatever order the ring has put them in.

Shapes (``cap`` = slots of the layer's ring buffer)::

    q     [T, n_head, head_dim]        float32
    k     [n_head_kv, cap, head_dim]   uint16 (float16 bits)
    v     [n_head_kv, cap, head_dim_v] uint16 (float16 bits)
    kpos  [cap]                         int32, -1 = empty
    qpos  [T]                           int32
    out   [T, n_head, head_dim_v]       float32

A key at position pk is visible to a query at pq when ``0 <= pk <= pq`` and,
for a sliding window w > 0, ``pq - pk < w`` (llama.cpp's standard SWA mask).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np



def attend_prefill_f16(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    kpos: np.ndarray,
    qpos: np.ndarray,
    window: int,
    scale: float,
    softcap: float,
    out: np.ndarray,
) -> None:
    """Attention for a block of queries over the ring (BLAS, :func:`attend_group`).

    The occupied slots are widened to float32 once per KV head.
    """
    T, H, D = q.shape
    n_kv = k.shape[0]
    gqa = H // n_kv
    slots = np.flatnonzero(kpos >= 0)
    if slots.size == 0:
        out[:] = 0.0
        return
    pk = kpos[slots]
    for kh in range(n_kv):
        g = slice(kh * gqa, (kh + 1) * gqa)
        kf = k[kh, slots].view(np.float16).astype(np.float32)  # [n, D]
        vf = v[kh, slots].view(np.float16).astype(np.float32)  # [n, Dv]
        attend_group(q[:, g], kf, vf, pk, qpos, window, scale, softcap, out[:, g])


def attend_group(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    kpos: np.ndarray,
    qpos: np.ndarray,
    window: int,
    scale: float,
    softcap: float,
    out: np.ndarray,
    bias: np.ndarray | None = None,
    probs: bool = False,
) -> np.ndarray | None:
    """Prefill attention of one KV head's query group, as two GEMMs.

    q [T, gqa, D] float32; k [n, D], v [n, Dv] float32; kpos [n], qpos [T]
    positions; out [T, gqa, Dv] (a view is fine); bias [n] float32 added to
    the scores after scaling and soft-capping (merge log-weights), or None.
    Returns the probabilities summed over the group, [T, n], when ``probs``
    (eviction policies score from them), else None.

    The group's queries ``[T * gqa, D]`` meet the keys in one GEMM (not T
    small ones); one Numba pass scales, caps, masks and shifts the scores
    (:func:`_mask_shift`); numpy's SIMD ``exp`` makes them weights in place,
    several times faster than a scalar exp in a Numba loop; a second GEMM
    applies them to the values, and the rows are normalised at the end,
    ``[T * gqa, Dv]`` divisions instead of ``[T * gqa, n]``.  Queries go
    :data:`QUERY_BLOCK` at a time, each block with only the keys some query of
    it may see: a causal chunk skips most of its masked upper triangle.
    """
    T, gqa, D = q.shape
    qf = np.ascontiguousarray(q, np.float32).reshape(T * gqa, D)
    kp = np.ascontiguousarray(kpos, np.int32)
    qp = np.ascontiguousarray(qpos, np.int32)
    b = _NO_BIAS if bias is None else np.ascontiguousarray(bias, np.float32)
    p = np.zeros((T, k.shape[0]), np.float32) if probs else None
    for t0 in range(0, T, QUERY_BLOCK):
        t1 = min(T, t0 + QUERY_BLOCK)
        see = kp <= qp[t1 - 1]  # keys some query of the block may see (positions increase along the chunk)
        if window > 0:
            see &= kp > qp[t0] - window
        cols = None if see.all() else np.flatnonzero(see)
        kb, vb, pb = (k, v, kp) if cols is None else (k[cols], v[cols], kp[cols])
        bb = b if cols is None or b.size == 0 else b[cols]
        s = np.matmul(qf[t0 * gqa : t1 * gqa], kb.T)  # [(t1 - t0) * gqa, n_cols]
        _mask_shift(s, bb, pb, qp[t0:t1], gqa, window, scale, softcap)
        np.exp(s, out=s)  # masked keys: exp(-inf) = 0
        ob = np.matmul(s, vb)
        tot = s.sum(axis=1, keepdims=True)
        tot[tot == 0] = 1  # a query that sees no key gets zeros
        ob /= tot
        out[t0:t1] = ob.reshape(t1 - t0, gqa, -1)
        if p is not None:
            s /= tot
            pg = s.reshape(t1 - t0, gqa, -1).sum(axis=1)
            if cols is None:
                p[t0:t1] = pg
            else:
                p[t0:t1, cols] = pg
    return p


#: queries per block in prefill attention (a block attends only the keys it may see)
QUERY_BLOCK = 128
_NO_BIAS = np.zeros(0, np.float32)


# Serial on purpose: a Numba thread pool spinning between the GEMMs of numpy's
# BLAS pool made both 5-20x slower here.  Fast-math without nnan/ninf: masked keys are -inf.
@nb.njit(cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"}, nogil=True)
def _mask_shift(s: np.ndarray, bias: np.ndarray, pk: np.ndarray, pq: np.ndarray, gqa: int, window: int, scale: float, softcap: float) -> None:
    """In place: row r of ``s`` (query ``r // gqa``) becomes ``cap(scale * s) + bias - max``
    over the keys it may see, -inf elsewhere.

    s: [T * gqa, n] float32 raw q.k; bias: [n] or empty; pk: [n] key positions; pq: [T] query positions.
    """
    R, n = s.shape
    sc = np.float32(scale)
    cap = np.float32(softcap)
    has_bias = bias.size > 0
    for r in range(R):
        qp = pq[r // gqa]
        row = s[r]
        m = -np.inf
        for j in range(n):
            x = row[j] * sc
            if cap > 0:
                x = cap * np.tanh(x / cap)
            if has_bias:
                x += bias[j]
            if pk[j] <= qp and (window <= 0 or qp - pk[j] < window):
                row[j] = x
                m = max(m, x)
            else:
                row[j] = -np.inf
        if m > -np.inf:
            for j in range(n):
                row[j] -= m


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
