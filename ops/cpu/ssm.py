"""Mamba-2's state-space mixer on the CPU (Numba): the causal convolution over a chunk, the selective
scan of its tokens, the gated grouped RMSNorm after it.  As llama.cpp's ``ggml_ssm_conv`` and
``ggml_ssm_scan`` (ggml-cpu/ops.cpp), Mamba-2's case: one decay per head.

The in-projection's ``xBC`` rows (``x`` [d_inner], then ``B`` and ``C`` [n_group, d_state] each) go
through a depthwise convolution of ``d_conv`` positions (each channel its own kernel) plus a bias and
SiLU; then, token after token, each head ``h`` (its group ``g = h // (n_head / n_group)``) updates its
state ``[head_dim, d_state]``::

    dt  = softplus(dt_raw + dt_bias)           (the raw value itself past 20)
    s   = s * exp(dt * A[h]) + outer(x * dt, B[g])
    y   = s @ C[g] + D[h] * x

A chunk's tokens run in one call, sequentially (a token's state is the next one's input) and with the
heads shared among the threads; each head's state stays in the core's cache over the chunk.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(**_JIT)
def ssm_conv(win: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[t] = silu(sum_j win[t + j] * w[j] + b)``: the causal depthwise convolution of a chunk.

    win: [d_conv - 1 + T, C] the inputs before the chunk, then the chunk's; w: [d_conv, C] each channel's
    kernel, oldest position first; b: [C]; out: [T, C]."""
    T, C = out.shape
    K = w.shape[0]
    for t in range(T):
        o = out[t]  # (rows as 1-D arrays, the channel loops unit-stride: they vectorise)
        o[:] = 0.0
        for j in range(K):  # (ggml's order: a float32 sum over the window, then the bias)
            wr, wj = win[t + j], w[j]
            for c in range(C):
                o[c] += wr[c] * wj[c]
        for c in range(C):
            v = o[c] + b[c]
            o[c] = v / (np.float32(1.0) + np.exp(-v))


@nb.njit(parallel=prange_only(), **_JIT)
def ssm_scan(state: np.ndarray, xbc: np.ndarray, dt: np.ndarray, A: np.ndarray, D: np.ndarray, n_group: int,
             y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:  # fmt: skip
    """The selective scan of a chunk's ``T`` tokens, in place on ``state``; writes ``y`` (``s @ C + D * x``).

    state: [n_head, head_dim, d_state]; xbc: [T, d_inner + 2 * n_group * d_state] (after the convolution);
    dt: [T, n_head] (its bias added); A, D: [n_head]; y: [T, d_inner].  Checkpoints: after ``ck_t[j]`` tokens
    the state is copied into ``ck[ck_slot[j]]`` (ck: [slots, n_head, head_dim, d_state]; ck_t increasing)."""
    n_head, head_dim, d_state = state.shape
    T = xbc.shape[0]
    d_inner = n_head * head_dim
    per_group = n_head // n_group
    for h in nb.prange(n_head):
        g = h // per_group
        b0 = d_inner + g * d_state
        c0 = d_inner + (n_group + g) * d_state
        a = A[h]
        dd = D[h]
        s = state[h]
        j = 0
        for t in range(T):
            v = dt[t, h]
            dts = v if v > np.float32(20.0) else np.float32(math.log1p(math.exp(v)))
            da = np.float32(math.exp(dts * a))
            bt, ct = xbc[t, b0 : b0 + d_state], xbc[t, c0 : c0 + d_state]  # (1-D rows: the d_state loop vectorises, 4-5x)
            for i in range(head_dim):
                xi = xbc[t, h * head_dim + i]
                xdt = xi * dts
                si = s[i]
                acc = np.float32(0.0)
                for k in range(d_state):
                    sk = si[k] * da + bt[k] * xdt
                    si[k] = sk
                    acc += sk * ct[k]
                y[t, h * head_dim + i] = acc + xi * dd
            while j < ck_t.size and ck_t[j] == t + 1:
                ck[ck_slot[j], h] = s
                j += 1


@nb.njit(**_JIT)
def gated_group_norm(y: np.ndarray, z: np.ndarray, w: np.ndarray, n_group: int, eps: float) -> None:
    """``y = rms_norm(silu(z) * y) * w`` in place, the norm over each of ``n_group`` equal slices of a row.

    y, z: [T, d_inner]; w: [d_inner]."""
    T, n = y.shape
    width = n // n_group
    for t in range(T):
        for i in range(n):
            zi = z[t, i]
            y[t, i] = zi / (np.float32(1.0) + np.exp(-zi)) * y[t, i]
        for g in range(n_group):
            lo = g * width
            ss = np.float32(0.0)
            for i in range(lo, lo + width):
                ss += y[t, i] * y[t, i]
            inv = np.float32(1.0 / math.sqrt(ss / width + eps))
            for i in range(lo, lo + width):
                y[t, i] = y[t, i] * inv * w[i]
