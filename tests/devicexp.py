"""A CuPy stand-in for tests without a GPU: numpy underneath, device arrays that refuse host arrays and log every copy down.

The kernel emulator's runtime (:class:`kvrun.ops.gpu.emulate.EmulatedRuntime`)
uses numpy itself as its array module, so there "device" and host arrays are
one type: nothing shows code that mixes them (which CuPy refuses) or that
quietly brings device state back to the host.  :class:`StrictRuntime` runs the
same emulated kernels on :class:`DeviceArray`, a numpy subclass that behaves
like ``cupy.ndarray`` where it matters:

* a host (plain numpy) array is refused as an operand of device arithmetic,
  of an ``xp`` function or as a value assigned into a device array, as CuPy
  refuses it: data goes up only through ``xp.asarray`` / ``xp.array`` /
  ``xp.ascontiguousarray``, which always copy, as an upload does;
* every way data comes down is logged in :data:`COPIES` as ``(how, shape)``:
  ``asnumpy``, ``int()``, ``float()``, ``bool()``, ``operator.index``,
  ``.item()``, ``.tolist()``, ``.get()``;
* numpy functions called on device arrays are refused (use ``xp``);
* results that numpy gives as scalars (reductions, integer indexing,
  ``argmin``) are 0-d device arrays, as in CuPy, and ``argsort`` is stable.

Not caught: ``np.asarray(device_array)`` (numpy views a subclass without
asking it); no code under test does that, it goes through ``asnumpy``.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from kvrun.ops.gpu.emulate import EmulatedRuntime

COPIES: list[tuple[str, tuple[int, ...]]] = []  # (how, shape) of every device-to-host copy since the last clear


_capturing = False  # inside StrictRuntime.capture: CUDA refuses copies either way


def _up() -> None:
    if _capturing:
        raise RuntimeError("a host-to-device copy while capturing a CUDA graph")


def _down(how: str, a: np.ndarray) -> None:
    if _capturing:
        raise RuntimeError(f"{how}: a device-to-host copy while capturing a CUDA graph")
    COPIES.append((how, tuple(a.shape)))


def _base(x: Any) -> Any:
    """Device arrays (also inside tuples and lists, as in an index) as plain numpy views, for numpy to work on."""
    if isinstance(x, DeviceArray):
        return x.view(np.ndarray)
    if isinstance(x, (tuple, list)):
        return type(x)(_base(v) for v in x)
    return x


def _refuse_host(args: Any, what: str) -> None:
    for x in args:
        if isinstance(x, (tuple, list)):
            _refuse_host(x, what)
        elif isinstance(x, np.ndarray) and not isinstance(x, DeviceArray):
            raise TypeError(f"{what}: a host numpy array {x.shape} where CuPy needs a device array (upload it with xp.asarray)")


def _dev(r: Any) -> Any:
    """A numpy result on the device: arrays viewed as :class:`DeviceArray`, numpy scalars as 0-d ones."""
    if isinstance(r, tuple):
        return tuple(_dev(v) for v in r)
    if isinstance(r, DeviceArray) or not isinstance(r, (np.ndarray, np.generic)):
        return r
    return np.asarray(r).view(DeviceArray)


class DeviceArray(np.ndarray):
    """An array "on the device"; see the module docstring for what it refuses and logs."""

    # ------------------------------------------------------------ arithmetic stays on the device
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, out: Any = None, **kwargs: Any) -> Any:
        _refuse_host(inputs, f"device {ufunc.__name__}")
        if out is not None:
            _refuse_host(out, f"device {ufunc.__name__} out=")
            kwargs["out"] = _base(out)
        r = getattr(ufunc, method)(*_base(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _dev(r)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise TypeError(f"numpy.{func.__name__} called on a device array (use xp.{func.__name__})")

    def __getitem__(self, idx: Any) -> Any:
        return _dev(super().__getitem__(_base(idx)))

    def __setitem__(self, idx: Any, value: Any) -> None:
        _refuse_host((value,), "device setitem")
        super().__setitem__(_base(idx), _base(value))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def argmin(self, *args: Any, **kwargs: Any) -> Any:
        return _dev(self.view(np.ndarray).argmin(*args, **kwargs))

    def argmax(self, *args: Any, **kwargs: Any) -> Any:
        return _dev(self.view(np.ndarray).argmax(*args, **kwargs))

    def argsort(self, axis: int = -1, kind: Any = None) -> Any:
        return _dev(self.view(np.ndarray).argsort(axis=axis, kind="stable"))  # CuPy sorts stably, always

    # ------------------------------------------------------------ everything that comes down is logged
    def __int__(self) -> int:
        _down("int", self)
        return int(self.view(np.ndarray))

    def __float__(self) -> float:
        _down("float", self)
        return float(self.view(np.ndarray))

    def __bool__(self) -> bool:
        _down("bool", self)
        return bool(self.view(np.ndarray))

    def __index__(self) -> int:
        _down("index", self)
        return self.view(np.ndarray).__index__()

    def item(self, *args: Any) -> Any:
        _down("item", self)
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        _down("tolist", self)
        return self.view(np.ndarray).tolist()

    def get(self) -> np.ndarray:
        _down("get", self)
        return np.array(self.view(np.ndarray))

    def set(self, arr: np.ndarray) -> None:
        """CuPy's upload into an existing array (host to device: not logged)."""
        _up()
        if tuple(np.shape(arr)) != self.shape:
            raise ValueError(f"set: shape {np.shape(arr)} into {self.shape}")
        self.view(np.ndarray)[...] = arr

    def __repr__(self) -> str:  # for assertion messages: not a copy the code made
        return f"DeviceArray({np.ndarray.__repr__(self.view(np.ndarray))})"


class _DeviceNamespace:
    """Functions of a numpy namespace (numpy itself, ``numpy.linalg``) on device arrays: host operands refused."""

    def __init__(self, ns: Any, prefix: str) -> None:
        self._ns, self._prefix = ns, prefix

    def __getattr__(self, name: str) -> Any:
        obj = getattr(self._ns, name)
        if isinstance(obj, types.ModuleType):  # xp.linalg, xp.random, ...
            return _DeviceNamespace(obj, f"{self._prefix}{name}.")
        if isinstance(obj, type) or not callable(obj):  # dtypes, iinfo, constants
            return obj
        what = f"{self._prefix}{name}"

        def on_device(*args: Any, **kwargs: Any) -> Any:
            _refuse_host(args, what)
            _refuse_host(tuple(kwargs.values()), what)
            return _dev(obj(*_base(args), **{k: _base(v) for k, v in kwargs.items()}))

        return on_device


class DeviceModule(_DeviceNamespace):
    """The stand-in's ``xp``: numpy's names, device arrays in and out (host arrays only through the uploads)."""

    ndarray = DeviceArray

    def __init__(self) -> None:
        super().__init__(np, "xp.")

    # ------------------------------------------------------------ uploads: always a copy
    def asarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        _up()
        return np.array(a, dtype=dtype).view(DeviceArray)

    def array(self, a: Any, dtype: Any = None) -> DeviceArray:
        if not isinstance(a, DeviceArray):
            _up()
        return np.array(_base(a), dtype=dtype).view(DeviceArray)

    def ascontiguousarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return _dev(np.ascontiguousarray(_base(a), dtype=dtype))
        _up()
        return np.array(a, dtype=dtype, order="C").view(DeviceArray)

    def argsort(self, a: Any, axis: int = -1, kind: Any = None) -> DeviceArray:
        _refuse_host((a,), "xp.argsort")
        return _dev(np.argsort(_base(a), axis=axis, kind="stable"))


class StrictRuntime(EmulatedRuntime):
    """The kernel emulator on :class:`DeviceArray` s: the GPU code runs as on CuPy, copies down logged in :data:`COPIES`."""

    name = "strict-emulated"
    xp = DeviceModule()

    def capture(self, step: Any) -> Any:
        """As the emulator's, and like CUDA stream capture it refuses copies between host and device."""
        global _capturing
        _capturing = True
        try:
            return super().capture(step)
        finally:
            _capturing = False

    def asnumpy(self, a: Any) -> np.ndarray:
        if not isinstance(a, DeviceArray):  # as cupy.asnumpy: a host array passes through
            return np.asarray(a)
        _down("asnumpy", a)
        return np.array(a.view(np.ndarray))
