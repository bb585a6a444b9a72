"""Moving arguments between host and device for the GPU wrappers.

Kernels take C-contiguous device arrays.  A wrapper may still be handed a
host (numpy) array - today's models allocate their activation buffers with
numpy and keep token ids, positions and rope tables on the host - so inputs
are uploaded and outputs written back.  That is correct but costs a transfer
per call; a model that allocates through ``backend.zeros`` pays nothing.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import numpy as np

from . import kernels as K


def is_device(a: Any) -> bool:
    return isinstance(a, K.runtime().xp.ndarray)


def _c_contiguous(a: Any) -> bool:
    """Whether ``a`` is C-contiguous.  CuPy arrays keep the bit (``_c_contiguous``); their ``flags``
    builds an object per call, and the wrappers ask ~800 times a decode token."""
    fast = _HAS_BIT.get(type(a))
    if fast is None:
        fast = _HAS_BIT[type(a)] = isinstance(getattr(type(a), "_c_contiguous", None), types.GetSetDescriptorType)
    return a._c_contiguous if fast else a.flags.c_contiguous


_HAS_BIT: dict[type, bool] = {}  # array type -> whether it has CuPy's _c_contiguous bit


def to_device(a: Any, dtype: Any = np.float32) -> Any:
    """``a`` as a C-contiguous device array of ``dtype`` (no copy when it already is one)."""
    xp = K.runtime().xp
    if isinstance(a, xp.ndarray):
        if a.dtype == dtype and _c_contiguous(a):
            return a
        return xp.ascontiguousarray(a, dtype=dtype)
    return xp.asarray(np.ascontiguousarray(a, dtype=dtype))


_last_positions: tuple[bytes, Any] | None = None


def positions(pos: Any) -> Any:
    """Token positions [T] as a device int32 array, uploaded once per forward.

    Every layer's RoPE and cache take the same host positions: one upload
    instead of three a layer (each a host-to-device copy of a few bytes at
    several microseconds of host time).  The copy is remembered by content,
    so a caller may reuse its host array; kernels only read positions.
    """
    global _last_positions
    if is_device(pos) and not isinstance(pos, np.ndarray):  # CuPy positions: nothing to remember
        return to_device(pos, np.int32)
    h = np.ascontiguousarray(pos, dtype=np.int32)
    key = h.tobytes()
    last = _last_positions
    if last is not None and last[0] == key and isinstance(last[1], K.runtime().xp.ndarray):
        return last[1]  # (also what serve_positions set)
    if is_device(pos):  # the emulator's device arrays are numpy's: nothing to upload
        return to_device(pos, np.int32)
    d = to_device(h, np.int32)
    if d is h:  # a runtime whose device arrays are host arrays (the emulator): no copy to remember
        d = h.copy()
    _last_positions = (key, d)
    return d


def serve_positions(pos: Any, d: Any) -> None:
    """Make :func:`positions` answer the host positions ``pos`` with the device array ``d``
    (``d=None``: forget it, so the next call uploads).  A captured decode step reads its
    position from a buffer that each replay refills; nothing may be uploaded while capturing."""
    global _last_positions
    _last_positions = None if d is None else (np.ascontiguousarray(pos, dtype=np.int32).tobytes(), d)


class device_out:  # noqa: N801 - used as a function: ``with device_out(a) as d``
    """A device array to write ``a``'s new contents into; copied back into ``a`` on exit.

    Holds ``a``'s current values too, for kernels that update in place.  A
    class, not a generator context manager: it wraps every kernel's output,
    ~500 times a decode token, and costs a fifth as much.
    """

    __slots__ = ("a", "d")

    def __init__(self, a: Any, dtype: Any = np.float32) -> None:
        self.a = a
        self.d = to_device(a, dtype)

    def __enter__(self) -> Any:
        return self.d

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()

    def close(self) -> None:
        """Copy the device array back into ``a`` (when they differ); what ``with`` does on a clean exit."""
        d, a = self.d, self.a
        if d is not a:
            if is_device(a):
                a[...] = d
            else:
                a[...] = K.runtime().asnumpy(d).reshape(a.shape)


class ConstCache:
    """Device copies of host arrays that never change (rope tables), keyed by identity."""

    def __init__(self) -> None:
        self._copies: dict[int, tuple[Any, Any]] = {}

    def get(self, a: Any, dtype: Any = np.float32) -> Any:
        if is_device(a):
            return to_device(a, dtype)
        hit = self._copies.get(id(a))
        if hit is not None and hit[0]() is a:
            return hit[1]
        d = to_device(a, dtype)
        try:
            ref = weakref.ref(a)
        except TypeError:  # not weak-referenceable: do not cache
            return d
        self._copies[id(a)] = (ref, d)
        return d
