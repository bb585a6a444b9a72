"""Numba's ``parallel`` option for the CPU kernels."""

from __future__ import annotations


def prange_only() -> dict:
    """Numba's ``parallel`` option for a kernel whose only parallel loop is its explicit prange.

    With plain ``parallel=True`` Numba also turns whole-array statements (``o[:] = 0.0``,
    ``qt[:] = q[t]``, ``np.zeros``) into parallel regions of their own, each a thread-pool
    launch: ~12 of them a decode-attention step cost 10-14 us, as much as the arithmetic at
    a few hundred slots (SmolLM2, 150 slots: 29 -> 15 us a layer).  A fresh dict each time:
    Numba empties the one it is given while compiling, and an empty dict means all passes on.
    """
    return dict(prange=True, comprehension=False, setitem=False, numpy=False, reduction=False,
                inplace_binop=False, stencil=False, fusion=False)  # fmt: skip
