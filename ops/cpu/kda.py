"""Kimi Delta Attention on the CPU (Numba): the delta rule of ``ops/cpu/deltanet.py`` with a decay per key channel,
as llama.cpp's ``ggml_gated_delta_net`` runs it where the gate is ``[d_k]`` wide a head (its "KDA" branch).

Gated DeltaNet (Qwen3.5, Qwen3-Next) forgets a head's whole state at one rate a token, ``S *= exp(g[h])``.  KDA
(Kimi Linear) forgets each key channel at its own rate, ``S[:, i] *= exp(g[h, i])`` (S [d_v, d_k]: a row per value
dimension, so the decay runs along each row), the rest unchanged::

    q, k  = q / max(|q|, eps), k / max(|k|, eps)
    S     = S * exp(g[h])[None, :]                      (g[h]: [d_k] logs of the decay, <= 0)
    S    += outer(beta[h] * (v - S k), k)
    o     = S q / sqrt(d_k)

A separate kernel rather than a ``[d_k]`` gate in ``gated_delta_rule``: Qwen's kernel keeps its scalar broadcast.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(parallel=prange_only(), **_JIT)
def kda_delta_rule(state: np.ndarray, qkv: np.ndarray, g: np.ndarray, beta: np.ndarray, k_of_v: np.ndarray, eps: float,
                   y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:  # fmt: skip
    """The per-channel delta rule of a chunk's ``T`` tokens, in place on ``state``; writes ``y``.

    As ``ops.cpu.deltanet.gated_delta_rule`` but ``g``: [T, n_v_heads * d_k] (each head's d_k decay logs; beta
    [T, n_v_heads] as there).  state: [n_v_heads, d_v, d_k]; qkv: [T, 2 * n_k_heads * d_k + n_v_heads * d_v];
    y: [T, n_v_heads * d_v]; ck_t, ck_slot, ck: the state's copies after ``ck_t[j]`` tokens (see there)."""
    n_v, d_v, d_k = state.shape
    T = qkv.shape[0]
    n_k = (qkv.shape[1] - n_v * d_v) // (2 * d_k)
    scale = np.float32(1.0 / math.sqrt(d_k))
    for h in nb.prange(n_v):
        kh = k_of_v[h]
        q0, k0, v0 = kh * d_k, (n_k + kh) * d_k, 2 * n_k * d_k + h * d_v
        s = state[h]
        qn = np.empty(d_k, np.float32)
        kn = np.empty(d_k, np.float32)
        decay = np.empty(d_k, np.float32)
        j = 0
        for t in range(T):
            row = qkv[t]
            sq = np.float32(0.0)
            sk = np.float32(0.0)
            for i in range(d_k):
                sq += row[q0 + i] * row[q0 + i]
                sk += row[k0 + i] * row[k0 + i]
            iq = np.float32(1.0) / max(np.float32(math.sqrt(sq)), np.float32(eps)) * scale
            ik = np.float32(1.0) / max(np.float32(math.sqrt(sk)), np.float32(eps))
            for i in range(d_k):
                qn[i] = row[q0 + i] * iq
                kn[i] = row[k0 + i] * ik
                decay[i] = np.float32(math.exp(g[t, h * d_k + i]))
            b = beta[t, h]
            for jv in range(d_v):
                sj = s[jv]
                acc = np.float32(0.0)
                for i in range(d_k):
                    sj[i] *= decay[i]
                    acc += sj[i] * kn[i]
                d = (row[v0 + jv] - acc) * b
                o = np.float32(0.0)
                for i in range(d_k):
                    sj[i] += kn[i] * d
                    o += sj[i] * qn[i]
                y[t, h * d_v + jv] = o
            while j < ck_t.size and ck_t[j] == t + 1:
                ck[ck_slot[j], h] = s
                j += 1
