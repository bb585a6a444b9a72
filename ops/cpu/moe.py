"""One decode token's mixture-of-experts FFN in one Numba call (CPU).

``x += sum_j w_j down_e(silu(gate_e xn) * up_e xn)`` over the ``k`` chosen experts ``e = experts[j]``,
the experts' weights being the file's stacked 3-D tensors seen as ``[n_expert * rows, row_bytes]``
(expert ``e`` is rows ``[e * rows, (e + 1) * rows)``).  ``xn`` is quantized once for the gate and up
products, each expert's ``silu(g) * u`` once for its down product, as in ``qmatmul.matvec``; the
experts are shared among the threads (a ``prange`` over the ``k`` slots).  Per token this replaces
~3 k product calls and numpy's gathers with one call: Python and fork/join overhead was most of a
small MoE's decode step (a 4-layer, 32-expert, 8-used synthetic model: 518 tok/s against
llama.cpp's 970 before).

The sum over the experts is taken in slot order and then added to ``x``, as llama.cpp adds them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .parallel import prange_only
from .qmatmul import BF16, Q8_0, _TYPES, _dot_rows, _quant_x, _scratch, _scratch_bytes, quant_x8, quant_x16, readonly

_JIT = dict(cache=True, fastmath=True, nogil=True)


#: the experts' GLU: silu(gate) * up, or gpt-oss's clamped one (:func:`swiglu_oai`)
ACT_SILU, ACT_OAI = 0, 1
#: gpt-oss's clamped SwiGLU: ggml's swiglu_oai with the alpha and limit llama.cpp fixes for it
OAI_ALPHA = 1.702
OAI_LIMIT = 7.0


@nb.njit(inline="always", **_JIT)
def _oai(g, u):
    """One value of gpt-oss's GLU: ``x sigmoid(1.702 x) (y + 1)``, ``x = min(g, 7)``, ``y = clamp(u, -7, 7)``."""
    lim = np.float32(OAI_LIMIT)
    x = min(g, lim)
    return x / (np.float32(1.0) + np.exp(-np.float32(OAI_ALPHA) * x)) * (max(min(u, lim), -lim) + np.float32(1.0))


@nb.njit(parallel=prange_only(), **_JIT)
def _moe_token(kg, wg, ku, wu, kd, wd, n_ff, experts, wts, xn, x, sx, g, u, sh, d, gb, ub, db, act):
    """See the module docstring.  g, u: [k, n_ff], sh: [k, scratch bytes of n_ff], d: [k, n_embd] scratch;
    gb, ub: [n_expert, n_ff], db: [n_expert, n_embd] the experts' biases (gpt-oss) or [0, 0]; act: ACT_*."""
    n_embd = xn.size
    has_b = gb.shape[0] > 0
    xq, xd, xs, x16 = _quant_x(kg, xn, sx)
    for j in nb.prange(experts.size):
        e = experts[j]
        r0 = e * n_ff
        # out addresses shifted back by r0 rows: _dot_rows writes row r at op + r * 4
        _dot_rows(kg, wg.ctypes.data, wg.strides[0], wg.shape[1], r0, r0 + n_ff, g[j].ctypes.data - r0 * 4, 4, xq, xd, xs, x16)
        _dot_rows(ku, wu.ctypes.data, wu.strides[0], wu.shape[1], r0, r0 + n_ff, u[j].ctypes.data - r0 * 4, 4, xq, xd, xs, x16)
        for i in range(n_ff):
            gi = g[j, i]
            ui = u[j, i]
            if has_b:
                gi += gb[e, i]
                ui += ub[e, i]
            if act == ACT_OAI:
                g[j, i] = _oai(gi, ui)
            else:
                g[j, i] = gi / (np.float32(1.0) + np.exp(-gi)) * ui
        # g[j] quantized as qmatmul._quant_x does (without its contiguity check: a raise in the loop
        # would keep Numba from running it in parallel)
        hq = sh[j].ctypes.data
        hd = hq + 2 * n_ff
        if kd == Q8_0:
            quant_x16(g[j].ctypes.data, n_ff // 32, hq, hd)
        else:
            quant_x8(g[j].ctypes.data, n_ff // 32, hq, hd)
        hs, h16 = hd + 4 * (n_ff // 32), hd + 8 * (n_ff // 32)
        e0 = e * n_embd
        _dot_rows(kd, wd.ctypes.data, wd.strides[0], wd.shape[1], e0, e0 + n_embd, d[j].ctypes.data - e0 * 4, 4, hq, hd, hs, h16)
        if has_b:
            for i in range(n_embd):
                d[j, i] += db[e, i]
    for i in range(n_embd):
        acc = np.float32(0.0)
        for j in range(experts.size):
            acc += wts[j] * d[j, i]
        x[i] += acc


_NO_BIAS = np.zeros((0, 0), np.float32)


def moe_token(gate: np.ndarray, gate_type: int, up: np.ndarray, up_type: int, down: np.ndarray, down_type: int,
              n_ff: int, experts: np.ndarray, wts: np.ndarray, xn: np.ndarray, x: np.ndarray,
              biases: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, act: str = "silu") -> bool:  # fmt: skip
    """``x[n_embd] += MoE(xn[n_embd])`` for one token (module docstring).  gate, up: uint8
    ``[n_expert * n_ff, row_bytes]``; down: ``[n_expert * n_embd, row_bytes]``; experts: int ``[k]``;
    wts: float32 ``[k]``; biases: gpt-oss's (gate ``[n_expert, n_ff]``, up likewise, down ``[n_expert,
    n_embd]``) or None; act: "silu" or "swiglu_oai".  Returns False, doing nothing, where the kernel
    does not apply (float weights; gate and up whose activations are quantized differently): the
    caller then takes the product-by-product path."""
    kinds = [_TYPES[t][0] if t in _TYPES else -1 for t in (gate_type, up_type, down_type)]
    if min(kinds) <= BF16 or (kinds[0] == Q8_0) != (kinds[1] == Q8_0):
        return False
    if x.dtype != np.float32 or xn.dtype != np.float32 or not (x.flags.c_contiguous and xn.flags.c_contiguous):
        return False
    k, n_embd = len(experts), xn.size
    g = _scratch.get("moe_g", k, n_ff)
    u = _scratch.get("moe_u", k, n_ff)
    d = _scratch.get("moe_d", k, n_embd)
    sh = _scratch.get("moe_sh", k, _scratch_bytes(n_ff), np.uint8)
    sx = _scratch.x(n_embd)
    gb, ub, db = (np.ascontiguousarray(b, np.float32) for b in biases) if biases is not None else (_NO_BIAS,) * 3
    _moe_token(kinds[0], readonly(gate), kinds[1], readonly(up), kinds[2], readonly(down), n_ff, np.asarray(experts, np.int64), np.asarray(wts, np.float32), xn, x, sx,
               g, u, sh, d, gb, ub, db, ACT_OAI if act == "swiglu_oai" else ACT_SILU)  # fmt: skip
    return True


@nb.njit(**_JIT)
def swiglu_oai(g: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    """``out = x sigmoid(1.702 x) (y + 1)`` with ``x = min(g, 7)``, ``y = clamp(u, -7, 7)``, elementwise
    over ``[T, n]`` float32 (``out`` may be ``g``).  The clamps keep gpt-oss's large activations from
    overflowing its experts, as it was trained."""
    for t in range(g.shape[0]):
        for i in range(g.shape[1]):
            out[t, i] = _oai(g[t, i], u[t, i])
