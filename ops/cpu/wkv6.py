"""RWKV-6's WKV recurrence on the CPU (Numba), as ggml's ``rwkv_wkv6`` (ggml-cpu/ops.cpp) runs it, less the bonus.

Each head keeps a state ``S`` [head_size, head_size] (row i: what the head returns for value dimension i, over
the key dimensions j; ggml keeps the transpose).  A token gives, per head, the receptance ``r``, the decay ``w``
(a multiplier in (0, 1), data-dependent in RWKV-6: ``exp(-exp(.))`` of the decay LoRA), the key ``k`` and the
value ``v``, and::

    y[i]    = sum_j r[j] S[i, j]                   (the old S: the token reads the past before it joins it)
    S[i, j] = S[i, j] * w[j] + v[i] * k[j]

ggml's op adds the token's own ``v k`` to what ``r`` reads, weighted by the bonus ``u`` (``time_faaaa``):
``y[i] += v[i] sum_j r[j] u[j] k[j]``.  That term needs no state, so the model adds it (models/rwkv6.py), and the
kernel's inputs are a position's alone, which the cache keeps to replay after going back (cache/rwkv.py), as it
does RWKV-7's (ops/cpu/wkv7.py, whose layout and threading this follows).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(parallel=prange_only(), **_JIT)
def wkv6(state: np.ndarray, x: np.ndarray, y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:
    """The WKV-6 recurrence of a chunk's ``T`` tokens (without the bonus), in place on ``state``; writes ``y``.

    state: [n_head, head_size, head_size]; x: [T, 4 * C] each token's ``r``, ``w``, ``k``, ``v`` (C = n_head *
    head_size wide each, heads consecutive); y: [T, C].  Checkpoints: after ``ck_t[j]`` tokens the state is copied
    into ``ck[ck_slot[j]]`` (ck: [slots, n_head, head_size, head_size]; ck_t increasing)."""
    H, N = state.shape[0], state.shape[1]
    C = H * N
    T = x.shape[0]
    for h in nb.prange(H):
        s = state[h]
        o = h * N
        j = 0
        for t in range(T):
            row = x[t]
            r, w, k, v = row[o : o + N], row[C + o : C + o + N], row[2 * C + o : 2 * C + o + N], row[3 * C + o : 3 * C + o + N]
            for i in range(N):
                si = s[i]  # (1-D rows: the j loop vectorises)
                vi = v[i]
                acc = np.float32(0.0)
                for jj in range(N):
                    u = si[jj]
                    acc += u * r[jj]
                    si[jj] = u * w[jj] + vi * k[jj]
                y[t, o + i] = acc
            while j < ck_t.size and ck_t[j] == t + 1:
                ck[ck_slot[j], h] = s
                j += 1
