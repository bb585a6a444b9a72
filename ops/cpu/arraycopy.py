"""Array copies inside Numba kernels.

``dst[:] = src`` between arrays makes Numba compile its shape-mismatch error with the message's
string formatting, ~1.5 s of a first run for each shape tuple (1-D, 2-D) it meets in a process,
and that compile is not cached on disk.  Kernels copy with :func:`copy_into` instead: the same
values, a loop that vectorises, nothing else to compile; :func:`copy_range` for short pieces at
offsets, where making the two views would cost more than the copy.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(inline="always", cache=True, nogil=True)
def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[i] = src[i]`` for the 1-D arrays' ``len(dst)`` elements (src at least as long)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@nb.njit(inline="always", cache=True, nogil=True)
def copy_range(dst: np.ndarray, d0: int, src: np.ndarray, s0: int, n: int) -> None:
    """``dst[d0 + i] = src[s0 + i]`` for ``i < n`` (1-D arrays)."""
    for i in range(n):
        dst[d0 + i] = src[s0 + i]
