"""numpy's BLAS thread count, so that ``--threads`` bounds prefill too.

Prefill hands its GEMMs (attention's; on hosts without VNNI the weight products'
too) to the BLAS numpy ships (OpenBLAS), which starts its own thread
pool of one thread per core whatever Numba was told.  OpenBLAS has
a C call to resize that pool; this finds the library numpy loaded and calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from collections.abc import Iterator

import numpy as np

# the exported names of each call, in the builds numpy has shipped
_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads_64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


@functools.lru_cache(maxsize=1)
def _openblas() -> ctypes.CDLL | None:
    base = os.path.dirname(os.path.dirname(np.__file__))  # site-packages
    for pat in ("numpy.libs/*openblas*", "numpy/.libs/*openblas*", "numpy/.dylibs/*openblas*"):
        for path in glob.glob(os.path.join(base, pat)):
            try:
                return ctypes.CDLL(path)  # already loaded by numpy: the same library, not a second copy
            except OSError:
                continue
    return None


def _function(names: tuple[str, ...]):
    """The first of ``names`` that numpy's OpenBLAS exports, or None."""
    lib = _openblas()
    return next((f for f in (getattr(lib, n, None) for n in names) if f is not None), None) if lib is not None else None


_CHOSEN: list[int] = []  # the count set_blas_threads (``--threads``) gave last, if any


def set_blas_threads(n: int) -> bool:
    """Give numpy's OpenBLAS ``n`` threads, the count its products run on from now (a prefill's holding
    at one thread aside); False where numpy's BLAS is another library (nothing changes)."""
    _CHOSEN[:] = [n]
    return resize_blas_threads(n)


def chosen_blas_threads() -> int:
    """The BLAS thread count kvrun's float products run on: the last :func:`set_blas_threads`'s, else the count
    OpenBLAS started with.  Fixed while a process runs, whatever Numba's count does meanwhile (the decode thread
    tuner's switches): OpenBLAS rounds a product otherwise on another thread count."""
    if not _CHOSEN:
        _CHOSEN.append(_STARTED)
    return _CHOSEN[0]


def resize_blas_threads(n: int) -> bool:
    """OpenBLAS at ``n`` threads for a while (a prefill's holding at one, a float product's at the chosen count), the
    chosen count unchanged; False where numpy's BLAS is another library."""
    fn = _function(_SET)
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return True


@contextlib.contextmanager
def one_thread_beside_the_gemm() -> Iterator[None]:
    """For a prefill: BLAS at one thread where prefill's products run on Numba's pool (the VNNI
    GEMM, ``qmatmul.HAVE_VNNI``) and BLAS serves only attention's GEMMs; restored after, so an
    application's own numpy keeps its threads.

    OpenBLAS's idle threads spin for a while after each call: run between Numba's parallel
    products, they took the cores from them (Gemma 3 pp512, 2 vCPUs: 630-880 tok/s with two
    BLAS threads, 1850-2000 with one).  One BLAS thread runs on the calling thread and leaves
    the pool asleep; attention shares its query blocks among threads of its own instead.
    """
    from .qmatmul import HAVE_VNNI

    held = blas_threads() if HAVE_VNNI else None
    if held is None or held == 1:
        yield
        return
    resize_blas_threads(1)
    try:
        yield
    finally:
        resize_blas_threads(held)


def blas_threads() -> int | None:
    """OpenBLAS's current thread count, or None where it cannot be read."""
    fn = _function(_GET)
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


_STARTED = blas_threads() or 1  # OpenBLAS's own count, read once at import (before any of kvrun's changes it)
