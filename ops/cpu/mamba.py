"""Mamba 1's selective scan on the CPU (Numba), as llama.cpp's ``ggml_ssm_scan`` (ggml-cpu/ops.cpp) in Mamba 1's case:
``A`` has a row per channel (``[d_inner, d_state]``), not one decay per head as Mamba-2's (``ops/cpu/ssm.py``).

Mamba 1 has no heads (llama.cpp: ``n_head = d_inner``, ``head_dim = 1``): every channel ``c`` of the convolution's
output ``x`` has its own time step and keeps a state ``s[c]`` of ``d_state`` values, which the token's ``B`` and
``C`` (shared by all channels) write and read::

    dt   = softplus(dt_raw)                    (the raw value itself past 20; dt_raw has its bias)
    s[c] = s[c] * exp(dt[c] * A[c]) + B * x[c] * dt[c]
    y[c] = s[c] . C + D[c] * x[c]

A chunk's tokens run in one call, sequentially (a token's state is the next one's input), the channels shared among
the threads.  The convolution before it is Mamba-2's (``ops/cpu/ssm.py``'s ``ssm_conv``: the same depthwise kernel).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(parallel=prange_only(), **_JIT)
def mamba_scan(state: np.ndarray, x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray,
               y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:  # fmt: skip
    """The selective scan of a chunk's ``T`` tokens, in place on ``state``; writes ``y`` (``s . C + D * x``).

    state: [d_inner, d_state]; x, dt: [T, d_inner] (the convolution's output; the time step with its bias, before
    the softplus); A: [d_inner, d_state]; B, C: [T, d_state]; D: [d_inner]; y: [T, d_inner].  Checkpoints: after
    ``ck_t[j]`` tokens the state is copied into ``ck[ck_slot[j]]`` (ck: [slots, d_inner, d_state]; ck_t increasing)."""
    d_inner, d_state = state.shape
    T = x.shape[0]
    for c in nb.prange(d_inner):
        s, a, dd = state[c], A[c], D[c]
        j = 0
        for t in range(T):
            v = dt[t, c]
            dts = v if v > np.float32(20.0) else np.float32(math.log1p(math.exp(v)))
            xc = x[t, c]
            xdt = xc * dts
            bt, ct = B[t], C[t]
            acc = np.float32(0.0)
            for k in range(d_state):
                sk = s[k] * np.float32(math.exp(dts * a[k])) + bt[k] * xdt
                s[k] = sk
                acc += sk * ct[k]
            y[t, c] = acc + xc * dd
            while j < ck_t.size and ck_t[j] == t + 1:
                ck[ck_slot[j], c] = s
                j += 1
