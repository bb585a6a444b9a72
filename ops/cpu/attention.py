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
