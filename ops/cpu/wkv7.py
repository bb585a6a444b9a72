"""RWKV-7's WKV recurrence on the CPU (Numba), as ggml's ``rwkv_wkv7`` (ggml-cpu/ops.cpp) runs it.

Each head keeps a state ``S`` [head_size, head_size] (row i: what the head returns for value dimension i, over
the key dimensions j).  A token gives, per head, the receptance ``r``, the decay ``w`` (a multiplier in (0, 1)),
the key ``k``, the value ``v``, and the in-context learning rate's two vectors ``a`` and ``b`` (llama.cpp's graph
hands over ``a = -kk`` and ``b = kk * iclr``, kk the L2-normed "removal key"), and::

    S[i, j] = S[i, j] * w[j] + v[i] * k[j] + (sum_j' a[j'] S[i, j']) * b[j]      (the old S in the sum)
    y[i]    = sum_j S[i, j] * r[j]

a generalised delta rule: the state forgets along ``kk`` as much as ``iclr`` says before it writes ``v k``.
A chunk of tokens (a prompt's prefill, or one token while decoding) runs in one call, sequentially (a token's
state is the next one's input) with the heads shared among the threads; each head's state stays in the core's
cache over the chunk.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .parallel import prange_only

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(parallel=prange_only(), **_JIT)
def wkv7(state: np.ndarray, x: np.ndarray, y: np.ndarray, ck_t: np.ndarray, ck_slot: np.ndarray, ck: np.ndarray) -> None:
    """The WKV-7 recurrence of a chunk's ``T`` tokens, in place on ``state``; writes ``y``.

    state: [n_head, head_size, head_size]; x: [T, 6 * C] each token's ``r``, ``w``, ``k``, ``v``, ``a``, ``b``
    (C = n_head * head_size wide each, heads consecutive); y: [T, C].  Checkpoints: after ``ck_t[j]`` tokens
    the state is copied into ``ck[ck_slot[j]]`` (ck: [slots, n_head, head_size, head_size]; ck_t increasing)."""
    H, N = state.shape[0], state.shape[1]
    C = H * N
    T = x.shape[0]
    for h in nb.prange(H):
        s = state[h]
        o = h * N
        j = 0
        for t in range(T):
            row = x[t]
            r, w, k = row[o : o + N], row[C + o : C + o + N], row[2 * C + o : 2 * C + o + N]
            v, a, b = row[3 * C + o : 3 * C + o + N], row[4 * C + o : 4 * C + o + N], row[5 * C + o : 5 * C + o + N]
            for i in range(N):
                si = s[i]  # (1-D rows: the j loops vectorise)
                sa = np.float32(0.0)
                for jj in range(N):
                    sa += a[jj] * si[jj]
                vi = v[i]
                acc = np.float32(0.0)
                for jj in range(N):
                    u = si[jj] * w[jj] + vi * k[jj] + sa * b[jj]
                    si[jj] = u
                    acc += u * r[jj]
                y[t, o + i] = acc
            while j < ck_t.size and ck_t[j] == t + 1:
                ck[ck_slot[j], h] = s
                j += 1
