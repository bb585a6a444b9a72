"""Gated DeltaNet on the CPU (Numba): the delta-rule recurrence of a chunk of tokens and the gated RMSNorm
after it, as llama.cpp's ``ggml_gated_delta_net`` (ggml-cpu/ops.cpp) and ``build_norm_gated``
(models/qwen35.cpp, qwen3next.cpp).  The causal convolution before it is Mamba-2's (``ssm.ssm_conv``).

After the convolution (and its SiLU) a token's row is ``q`` [n_k_heads, d_k], ``k`` [n_k_heads, d_k] and
``v`` [n_v_heads, d_v].  Each value head ``h`` reads the key head ``k_of_v[h]`` (Qwen3.5's files tile the key
heads over the value heads, Qwen3-Next's repeat each in place: the model says which) and keeps a state
``S`` [d_v, d_k], updated token after token::

    q, k  = q / max(|q|, eps), k / max(|k|, eps)       (L2 norm, llama.cpp's eps the RMS eps)
    S     = S * exp(g[h])                               (g: the decay's log, <= 0)
    S    += outer(beta[h] * (v - S k), k)               (the delta rule: write v where S k was)
    o     = S q / sqrt(d_k)

A chunk's tokens run in one call, sequentially (a token's state is the next one's input) with the value
heads shared among the threads; each head's state stays in the core's cache over the chunk.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(parallel=prange_only(), **_JIT)
def gated_delta_rule(state: np.ndarray, qkv: np.ndarray, g: np.ndarray, beta: np.ndarray, k_of_v: np.ndarray, eps: float,
                     y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:  # fmt: skip
    """The delta-rule recurrence of a chunk's ``T`` tokens, in place on ``state``; writes ``y`` (``S q / sqrt(d_k)``).

    state: [n_v_heads, d_v, d_k] (row j of a head's state: what it returns for value dimension j);
    qkv: [T, 2 * n_k_heads * d_k + n_v_heads * d_v] (after the convolution); g, beta: [T, n_v_heads] (the
    decay's log, the write strength in (0, 1)); k_of_v: [n_v_heads] the key head each value head reads;
    y: [T, n_v_heads * d_v].  Checkpoints: after ``ck_t[j]`` tokens the state is copied into ``ck[ck_slot[j]]``
    (ck: [slots, n_v_heads, d_v, d_k]; ck_t increasing)."""
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
        j = 0
        for t in range(T):
            row = qkv[t]
            sq = np.float32(0.0)
            sk = np.float32(0.0)
            for i in range(d_k):
                sq += row[q0 + i] * row[q0 + i]
                sk += row[k0 + i] * row[k0 + i]
            iq = np.float32(1.0) / max(np.float32(math.sqrt(sq)), np.float32(eps)) * scale  # (the 1/sqrt(d_k) folded into q)
            ik = np.float32(1.0) / max(np.float32(math.sqrt(sk)), np.float32(eps))
            for i in range(d_k):
                qn[i] = row[q0 + i] * iq
                kn[i] = row[k0 + i] * ik
            decay = np.float32(math.exp(g[t, h]))
            b = beta[t, h]
            for jv in range(d_v):
                sj = s[jv]  # (1-D rows: the d_k loops vectorise)
                acc = np.float32(0.0)
                for i in range(d_k):
                    sj[i] *= decay
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


@nb.njit(**_JIT)
def gated_rms_norm(y: np.ndarray, z: np.ndarray, w: np.ndarray, eps: float) -> None:
    """``y = rms_norm(y) * w * silu(z)`` in place, the norm over each head of ``w.size`` values (the norm first,
    then the gate: Mamba-2's gated norm gates first).    y, z: [T, n_v_heads * d_v]; w: [d_v]."""
    T, n = y.shape
    d = w.size
    for t in range(T):
        for lo in range(0, n, d):
            ss = np.float32(0.0)
            for i in range(lo, lo + d):
                ss += y[t, i] * y[t, i]
            inv = np.float32(1.0 / math.sqrt(ss / d + eps))
            for i in range(lo, lo + d):
                zi = z[t, i]
                y[t, i] = y[t, i] * inv * w[i - lo] * (zi / (np.float32(1.0) + np.exp(-zi)))
