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
for a sliding window w > 0, ``pq - pk < w`` (llama.cpp's standard SWA mask); a
negative ``window`` -c is Llama 4's chunked attention (llama.cpp's
``LLAMA_SWA_TYPE_CHUNKED``): ``pk >= pq - pq % c``, the keys of the query's own
chunk of c positions.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import each_shared, numpy_threads
from .qattention import decode_half_slots
from .qmatmul import _scratch
from .vexp import exp32


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
    sink_logits: np.ndarray | None = None,
    v_in_k: bool = False,
) -> None:
    """Attention for a block of queries over the ring (BLAS, :func:`attend_group`).

    The occupied slots are widened to float32 once per KV head (vector row decoders, into
    per-thread buffers reused across calls).  sink_logits: [n_head] (gpt-oss) or None, as
    :func:`attend_group`'s.  v_in_k: ``v`` is a view of k's last ``head_dim_v`` channels (MLA's
    latent, ``LayerSpec.v_in_k``), widened with the keys.
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
        kf = scratch("attention.k", slots.size, k.shape[2])
        vf = scratch("attention.v", slots.size, v.shape[2])
        decode_half_slots(k[kh], slots, kf)
        if v_in_k:  # (the widened keys' channels: the floats v's own rows would widen to, and no decoder for strided rows)
            np.copyto(vf, kf[:, k.shape[2] - v.shape[2] :])
        else:
            decode_half_slots(v[kh], slots, vf)
        sl = None if sink_logits is None or len(sink_logits) == 0 else sink_logits[g]
        attend_group(q[:, g], kf, vf, pk, qpos, window, scale, softcap, out[:, g], sink_logits=sl)


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
    sink_logits: np.ndarray | None = None,
    alibi: np.ndarray | None = None,
) -> np.ndarray | None:
    """Prefill attention of one KV head's query group, as two GEMMs.

    q [T, gqa, D] float32; k [n, D], v [n, Dv] float32; kpos [n], qpos [T]
    positions; out [T, gqa, Dv] (a view is fine); bias [n] float32 added to
    the scores after scaling and soft-capping (merge log-weights), or None.
    Returns the probabilities summed over the group, [T, n], when ``probs``
    (eviction policies score from them), else None.  sink_logits: [gqa] float32, gpt-oss's learned
    attention sinks of the group's heads (a logit that joins the softmax's denominator and adds no
    value), or None.  alibi: [gqa] float32 ALiBi slopes of the group's heads, each score getting
    ``slope * (key_pos - query_pos)`` after ``bias`` (the compressed cache's ALiBi), or None.

    The group's queries ``[T * gqa, D]`` meet the keys in one GEMM (not T
    small ones); vectorised Numba loops scale, cap, mask and exponentiate the
    scores in place and sum each row (:func:`_softmax_rows`); a second GEMM
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
    sl = _NO_BIAS if sink_logits is None else np.ascontiguousarray(sink_logits, np.float32)
    ab = _NO_BIAS if alibi is None else np.ascontiguousarray(alibi, np.float32)
    p = np.zeros((T, k.shape[0]), np.float32) if probs else None

    def block(t0: int) -> None:
        t1 = min(T, t0 + QUERY_BLOCK)
        see = kp <= qp[t1 - 1]  # keys some query of the block may see (positions increase along the chunk)
        if window > 0:
            see &= kp > qp[t0] - window
        elif window < 0:  # (chunked: the first query's chunk starts first)
            see &= kp >= qp[t0] - qp[t0] % -window
        cols = None if see.all() else np.flatnonzero(see)
        if cols is not None and cols.size and cols[-1] == cols.size - 1:
            cols = slice(0, cols.size)  # a prefix (stored keys, then the chunk's own: causal): views, not copies
        kb, vb, pb = (k, v, kp) if cols is None else (k[cols], v[cols], kp[cols])
        bb = b if cols is None or b.size == 0 else b[cols]
        s = _scores((t1 - t0) * gqa, kb.shape[0])
        np.matmul(qf[t0 * gqa : t1 * gqa], kb.T, out=s)
        tot = np.empty((s.shape[0], 1), np.float32)
        _softmax_rows(s, bb, pb, qp[t0:t1], gqa, window, scale, softcap, tot[:, 0], sl, ab)
        ob = np.matmul(s, vb)
        tot[tot == 0] = 1  # a query that sees no key gets zeros
        ob /= tot
        out[t0:t1] = ob.reshape(t1 - t0, gqa, -1)
        if p is not None:
            _group_probs(s, tot[:, 0], gqa, p, t0, _ALL if cols is None or isinstance(cols, slice) else cols)

    # a prefill holds BLAS at one thread beside the VNNI GEMM: the query blocks go to threads instead
    # (numpy's GEMMs and the Numba softmax release the GIL; scores live in per-thread scratch)
    each_shared(block, range(0, T, QUERY_BLOCK), numpy_threads())
    return p


#: queries per block in prefill attention (a block attends only the keys it may see)
QUERY_BLOCK = 128


# Scores and widened K/V go into per-thread buffers reused across calls (qmatmul's scratch).
# A fresh multi-megabyte array each call is fresh pages each call: SmolLM2's 256-token chunk
# at depth 2048 spent 0.72 s of its 2.4 in the first GEMM, 0.24 s writing into a reused buffer.
def scratch(name: str, rows: int, cols: int) -> np.ndarray:
    """This thread's reused [rows, cols] float32 buffer ``name`` (overwritten by the next call that asks for it)."""
    return _scratch.grown(name, rows, cols)


def _scores(rows: int, cols: int) -> np.ndarray:
    """The scores of a query block, [rows, cols] float32 (this thread's buffer)."""
    return scratch("attention.scores", rows, cols)


_NO_BIAS = np.zeros(0, np.float32)


_NEG = np.float32(-1e30)  # a masked logit: finite, so exp32 needs no branch and fast-math stays valid
_NO_LO = np.int32(-(2**31))  # no window: every key at or before the query is visible


# Serial on purpose: a Numba thread pool spinning between the GEMMs of numpy's
# BLAS pool made both 5-20x slower here.
@nb.njit(cache=True, fastmath=True, nogil=True)
def _softmax_rows(s: np.ndarray, bias: np.ndarray, pk: np.ndarray, pq: np.ndarray, gqa: int, window: int,
                  scale: float, softcap: float, tot: np.ndarray, sink_logits: np.ndarray, alibi: np.ndarray) -> None:
    """In place: row r of ``s`` (query ``r // gqa``) becomes ``exp(cap(scale * s) + bias - max)``
    over the keys it may see, 0 elsewhere, and ``tot[r]`` its sum (0 when it sees no key), plus
    ``exp(sink_logits[r % gqa] - max)`` where sink logits are given ([gqa], or empty).

    s: [T * gqa, n] float32 raw q.k; bias: [n] or empty; pk: [n] key positions; pq: [T] query
    positions; alibi: [gqa] ALiBi slopes (row r's ``alibi[r % gqa] * (pk - pq)`` joins the bias) or
    empty.  Every loop is branch-free (the mask a select, ``exp32`` polynomial arithmetic), so
    each vectorises: a 384 x 2304 block of SmolLM2 at depth 2048 took 7.4 ms as a scalar Numba
    mask pass, numpy's exp and a numpy sum.
    """
    R, n = s.shape
    sc = np.float32(scale)
    cap = np.float32(softcap)
    has_bias = bias.size > 0
    has_sinks = sink_logits.size > 0
    has_alibi = alibi.size > 0
    for r in range(R):
        qp = np.int32(pq[r // gqa])
        lo = np.int32(qp - window) if window > 0 else _NO_LO  # visible: lo < pk <= qp (int32 both: vector compares)
        if window < 0:  # chunked (Llama 4): the keys from the start of the query's chunk of -window positions
            lo = np.int32(qp - qp % -window - 1)
        row = s[r]
        mul = sc  # the common case (no softcap, no bias): the scaling rides in the masking pass
        if cap > 0:
            for j in range(n):
                row[j] = cap * np.tanh(row[j] * sc / cap)
            mul = np.float32(1.0)
        if has_bias or has_alibi:
            if mul != 1:
                for j in range(n):
                    row[j] = row[j] * sc
                mul = np.float32(1.0)
            if has_bias:
                for j in range(n):
                    row[j] += bias[j]
            if has_alibi:  # ALiBi: the head's slope times the key's distance (masked keys are overwritten below)
                sl = alibi[r % gqa]
                for j in range(n):
                    row[j] += sl * np.float32(pk[j] - qp)
        m = _NEG
        for j in range(n):
            x = row[j] * mul if (pk[j] <= qp) & (pk[j] > lo) else _NEG
            row[j] = x
            m = max(m, x)
        t = np.float32(0.0)
        if m > np.float32(0.5) * _NEG:
            for j in range(n):
                e = exp32(row[j] - m)  # exactly 0 for masked keys
                row[j] = e
                t += e
            if has_sinks:  # a learned logit with no value: it only takes its share of the probability
                t += np.exp(min(sink_logits[r % gqa] - m, np.float32(80.0)))
        else:
            row[:] = 0.0
        tot[r] = t


_ALL = np.zeros(0, np.int64)


@nb.njit(cache=True, nogil=True, fastmath=False)
def _group_probs(s: np.ndarray, tot: np.ndarray, gqa: int, p: np.ndarray, t0: int, cols: np.ndarray) -> None:
    """``p[t0 + t, cols] = sum_g s[t gqa + g] / tot[t gqa + g]``: a block's probabilities summed over the
    group's query heads, into the rows of ``p`` [T, n_keys] (``cols`` empty: its first ``s.shape[1]``
    columns).  One pass, where numpy's ``s /= tot``, ``sum(axis=1)`` and the copy into ``p`` had made
    three over the block's scores; the same divisions, added in the same order (g = 0, 1, ...)."""
    n = s.shape[1]
    row = np.empty(n, np.float32)
    for t in range(s.shape[0] // gqa):
        r = t * gqa
        d = tot[r]
        sr = s[r]
        for j in range(n):
            row[j] = sr[j] / d
        for g in range(1, gqa):
            d = tot[r + g]
            sr = s[r + g]
            for j in range(n):
                row[j] = row[j] + sr[j] / d
        dst = p[t0 + t]
        if cols.size == 0:
            for j in range(n):
                dst[j] = row[j]
        else:
            for j in range(n):
                dst[cols[j]] = row[j]


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
