"""numpy's BLAS thread count, so that ``--threads`` bounds prefill too.

Prefill hands its GEMMs to the BLAS numpy ships (OpenBLAS), which starts its
own thread pool of one thread per core whatever Numba was told.  OpenBLAS has
a C call to resize that pool; this finds the library numpy loaded and calls it.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

# exported names of openblas_set_num_threads in the builds numpy has shipped
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_", "openblas_set_num_threads64_", "openblas_set_num_threads")


def _openblas() -> ctypes.CDLL | None:
    base = os.path.dirname(os.path.dirname(np.__file__))  # site-packages
    pats = ("numpy.libs/*openblas*", "numpy/.libs/*openblas*", "numpy/.dylibs/*openblas*")
    for pat in pats:
        for path in glob.glob(os.path.join(base, pat)):
            try:
                return ctypes.CDLL(path)  # already loaded by numpy: the same library, not a second copy
            except OSError:
                continue
    return None


def set_blas_threads(n: int) -> bool:
    """Give numpy's OpenBLAS ``n`` threads; False where numpy's BLAS is another library (nothing changes)."""
    lib = _openblas()
    if lib is None:
        return False
    for name in _SETTERS:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn(ctypes.c_int(n))
            return True
    return False


def blas_threads() -> int | None:
    """OpenBLAS's current thread count, or None where it cannot be read."""
    lib = _openblas()
    for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads_64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn.restype = ctypes.c_int
            return int(fn())
    return None
