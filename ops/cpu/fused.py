"""Decode-step fusions: one Numba call where a layer's decode made two or three (CPU).

A decode token runs about ten small kernels a layer, and each call from Python into
Numba costs 1-2 us of dispatch (argument unboxing) plus the Python around it.  On
SmolLM2 (30 layers, ~9 ms a token on two threads here) everything but the products
took ~1.6 ms a token, mostly that overhead.  :func:`matvecs` does in one call what
``CPUBackend`` did in several: a prologue on the input, then one to three products
sharing it (``x`` quantized once), then an optional residual add:

* ``NORM``: RMSNorm into ``xn``, then Q/K/V or gate/up from it;
* ``SILU`` / ``GELU``: the gated activation ``act(gate) * up`` in place, then the down
  product, added into the residual stream or not;
* ``NONE``: a plain product added into the residual (the attention output).

The same kernels run in the same order, so the results are bit for bit those of the
separate calls (``tests/test_fused.py`` checks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np

from .nn import _gelu_mul_loop, _silu_mul_loop, rms_norm
from .parallel import num_threads, prange_only
from . import qmatmul
from .qmatmul import _TYPES, BF16, Q8_0, ROW0, _check, _quant_x, _row_range, _rows_q, _scratch

_JIT = dict(cache=True, fastmath=True, nogil=True)

NONE, NORM, SILU, GELU = 0, 1, 2, 3  # the prologue on the input
_NO_ROWS = np.zeros(0, np.float32)  # no residual to add into / no norm weight
_NO_OUT = np.zeros(1, np.float32)  # an unused product slot
_PAD = {n: [_NO_OUT] * (3 - n) for n in (1, 2, 3)}  # the unused product slots after n


@nb.njit(inline="always", **_JIT)
def _prologue(pre, x, y, nw, eps, src):
    if pre == NORM:
        rms_norm(x, nw, eps, src)
    elif pre == SILU:
        _silu_mul_loop(x, y, src)
    elif pre == GELU:
        _gelu_mul_loop(x, y, src)


@nb.njit(inline="always", **_JIT)
def _add(acc, o0):
    for i in range(acc.size):
        acc[i] += o0[i]


@nb.njit(inline="always", **_JIT)
def _input(pre, x, y, nw, eps, src, k0, k1, k2, n_w, w0, w1, w2, o0, o1, o2, sc):
    """The prologue, the shape checks, and src[0] quantized once: (xq, xd, xs, x16) as ``qmatmul._quant_x``."""
    _prologue(pre, x, y, nw, eps, src)
    v = src[0]
    _check(k0, w0, v.size, o0.size)
    if n_w > 1:
        _check(k1, w1, v.size, o1.size)
    if n_w > 2:
        _check(k2, w2, v.size, o2.size)
    return _quant_x(k0, v, sc)


@nb.njit(**_JIT)
def _fused_1(pre, x, y, nw, eps, src, k0, k1, k2, n_w, w0, w1, w2, o0, o1, o2, acc, sc):
    """One thread: prologue, ``o_i = W_i @ src[0]`` for the first n_w, then ``acc += o0`` when acc is not empty."""
    xq, xd, xs, x16 = _input(pre, x, y, nw, eps, src, k0, k1, k2, n_w, w0, w1, w2, o0, o1, o2, sc)
    _rows_q(k0, w0, ROW0, w0.shape[0], o0, xq, xd, xs, x16)
    if n_w > 1:
        _rows_q(k1, w1, ROW0, w1.shape[0], o1, xq, xd, xs, x16)
    if n_w > 2:
        _rows_q(k2, w2, ROW0, w2.shape[0], o2, xq, xd, xs, x16)
    _add(acc, o0)


@nb.njit(parallel=prange_only(), **_JIT)
def _fused_n(pre, x, y, nw, eps, src, k0, k1, k2, n_w, w0, w1, w2, o0, o1, o2, acc, sc, nt):
    """:func:`_fused_1` on nt threads (passed in, as ``qmatmul._mv_n``), each a contiguous row range of each product."""
    xq, xd, xs, x16 = _input(pre, x, y, nw, eps, src, k0, k1, k2, n_w, w0, w1, w2, o0, o1, o2, sc)
    for t in nb.prange(nt):
        _row_range(k0, w0, o0, t, nt, xq, xd, xs, x16)
        if n_w > 1:
            _row_range(k1, w1, o1, t, nt, xq, xd, xs, x16)
        if n_w > 2:
            _row_range(k2, w2, o2, t, nt, xq, xd, xs, x16)
    _add(acc, o0)


def matvecs(pre: int, x: np.ndarray, y: np.ndarray | None, nw: np.ndarray | None, eps: float, src: np.ndarray,
            ws: Sequence, outs: Sequence[np.ndarray], acc: np.ndarray | None = None) -> bool:  # fmt: skip
    """One decode token: ``pre`` on x into src, ``outs[i][0] = ws[i] @ src[0]``, then ``acc[0] += outs[0][0]``.

    x, src: [1, n] float32 (src is xn for NORM; x itself, made ``act(x) * y``, for SILU/GELU; x for NONE);
    y: [1, n] (the ``up`` of a gated activation); nw: [n] RMSNorm weight; ws: 1-3 :class:`Weight`;
    outs: [1, n_rows_i] float32; acc: [1, n_rows_0] or None.
    Returns False, doing nothing, where the fused kernels do not apply (float weights, mixed
    activation quantization, no AVX2): the caller then takes the separate calls.
    """
    n_w = len(ws)
    if not qmatmul._USE_SIMD or not 1 <= n_w <= 3:
        return False
    plan = _plan(ws)
    if plan is None:
        return False
    kinds, wd, nbytes = plan
    sc = _scratch.xsc.get(src.shape[1])
    if sc is None:
        sc = _scratch.x(src.shape[1])
    od = [o[0] for o in outs] + _PAD[n_w]
    a = _NO_ROWS if acc is None else acc[0]
    args = (pre, x, x if y is None else y, _NO_ROWS if nw is None else nw, eps, src, *kinds, n_w, *wd, *od, a, sc)
    if nbytes >= qmatmul.PAR_MIN_BYTES and (nt := num_threads()) > 1:
        _fused_n(*args, nt)
    else:
        _fused_1(*args)
    return True


def _plan(ws: Sequence) -> tuple | None:
    """The weights' part of :func:`matvecs`' arguments, worked out on a group's first call and kept on its first
    weight (``Weight.plans``: a SmolLM2 token made these checks and views 120 times, ~5 us of Python each): the
    kinds and read-only blocks, padded to three, and the group's bytes.  None where the group does not fuse.  The key
    is the group's identities, whose other weights the plan holds: no key of a live plan can name other objects."""
    key = tuple(map(id, ws))
    hit = ws[0].plans.get(key)
    if hit is not None:
        return hit[1]
    kinds = [_TYPES[w.qtype][0] if w.qtype in _TYPES else -1 for w in ws]
    q8 = kinds[0] == Q8_0
    if min(kinds) <= BF16 or any((k == Q8_0) != q8 for k in kinds):
        plan = None  # float rows, or int8 and int16 activations in one group
    else:
        wd = [qmatmul.readonly(w.data) for w in ws]
        n_w = len(ws)
        plan = ((*kinds, *[kinds[0]] * (3 - n_w)), (*wd, *[wd[0]] * (3 - n_w)), sum(w.nbytes for w in wd))
    ws[0].plans[key] = (tuple(ws[1:]), plan)
    return plan
