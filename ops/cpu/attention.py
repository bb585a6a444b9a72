"""Grouped-query attention over an fp16 KV ring buffer (Numba, CPU).

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

from .f16 import f16_to_f32

_NEG_INF = np.float32(-np.inf)


@nb.njit(cache=True, fastmath=True, nogil=True)
def attend_decode_f16(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    kpos: np.ndarray,
    n_slots: int,
    qpos: np.ndarray,
    window: int,
    scale: float,
    softcap: float,
    out: np.ndarray,
    scores: np.ndarray,
    probs_acc: np.ndarray,
) -> None:
    """Attention for a few queries, reading the fp16 cache in place.

    Only slots ``[0, n_slots)`` are looked at (the ring fills from slot 0).

    scores: [cap] float32 scratch.  probs_acc: [n_head_kv, cap] float32; when it
    has cap columns the softmax probabilities are added to it (per KV head,
    summed over the heads of its group) so eviction policies can score tokens
    without a second pass; pass a ``[0, 0]`` array to skip.
    """
    T, H, D = q.shape
    n_kv, _, Dv = v.shape
    cap = n_slots
    gqa = H // n_kv
    acc_probs = probs_acc.shape[1] >= cap
    sc = np.float32(scale)
    cap_f = np.float32(softcap)
    for t in range(T):
        pq = qpos[t]
        for h in range(H):
            kh = h // gqa
            m = _NEG_INF
            for j in range(cap):
                pk = kpos[j]
                if pk < 0 or pk > pq or (window > 0 and pq - pk >= window):
                    scores[j] = _NEG_INF
                    continue
                s = np.float32(0.0)
                for d in range(D):
                    s += q[t, h, d] * f16_to_f32(k[kh, j, d])
                s *= sc
                if softcap > 0:
                    s = cap_f * np.tanh(s / cap_f)
                scores[j] = s
                if s > m:
                    m = s
            total = np.float32(0.0)
            for j in range(cap):
                if scores[j] == _NEG_INF:
                    scores[j] = 0.0
                else:
                    e = np.exp(scores[j] - m)
                    scores[j] = e
                    total += e
            inv = np.float32(1.0) / total if total > 0 else np.float32(0.0)
            for d in range(Dv):
                out[t, h, d] = 0.0
            for j in range(cap):
                p = scores[j] * inv
                if p == 0.0:
                    continue
                if acc_probs:
                    probs_acc[kh, j] += p
                for d in range(Dv):
                    out[t, h, d] += p * f16_to_f32(v[kh, j, d])


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
    """Attention for a block of queries as matrix-matrix work (BLAS).

    Prefill is compute-bound: the occupied slots are widened to float32 once
    per call and each KV head's group of queries is one GEMM.
    """
    T, H, D = q.shape
    n_kv = k.shape[0]
    gqa = H // n_kv
    slots = np.flatnonzero(kpos >= 0)
    if slots.size == 0:
        out[:] = 0.0
        return
    pk = kpos[slots].astype(np.int64)
    pq = qpos.astype(np.int64)
    mask = pk[None, :] <= pq[:, None]  # [T, n]
    if window > 0:
        mask &= (pq[:, None] - pk[None, :]) < window
    for kh in range(n_kv):
        kf = k[kh, slots].view(np.float16).astype(np.float32)  # [n, D]
        vf = v[kh, slots].view(np.float16).astype(np.float32)  # [n, Dv]
        qg = q[:, kh * gqa : (kh + 1) * gqa, :]  # [T, gqa, D]
        s = np.matmul(qg, kf.T) * np.float32(scale)  # [T, gqa, n]
        if softcap > 0:
            s = np.float32(softcap) * np.tanh(s / np.float32(softcap))
        s = np.where(mask[:, None, :], s, -np.inf)
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        np.matmul(s, vf, out=out[:, kh * gqa : (kh + 1) * gqa, :])


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
