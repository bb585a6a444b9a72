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
  ``.item()``, ``.tolist()``, ``.get()``, ``.tobytes()``, ``format()`` (an f-string), ``complex()``;
* ``xp`` names that CuPy 14 lacks (:data:`NOT_IN_CUPY`: ``xp.insert``, ``xp.block``, ...) are refused, as
  ``cupy.insert`` is an AttributeError;
* numpy functions called on device arrays are refused (use ``xp``);
* results that numpy gives as scalars (reductions, integer indexing,
  ``argmin``) are 0-d device arrays, as in CuPy, and ``argsort`` is stable.

While :meth:`StrictRuntime.capture` runs, nothing runs on the "device", as in
a CUDA stream capture: kernel launches are recorded (the emulator's capture),
and so is every operation on device arrays, in order with them.  An operation
that writes an existing array (``a[i] = v``, ``a += b``, ``out=``, ``fill``) is
only recorded; one that makes a new array computes it now for its shape and
records a recomputation into that same array (memory the graph owns), so a
replay sees the arrays' current contents; views are views.  Operations whose
result's shape depends on the data (boolean masks, ``nonzero``) are refused,
as CuPy must synchronise for them; so are host index arrays (a numpy array or a list in an index), which CuPy
uploads, a copy that a stream capture refuses.

Not caught: ``np.asarray(device_array)`` (numpy views a subclass without
asking it); no code under test does that, it goes through ``asnumpy``.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from kvrun.ops.gpu.emulate import EmulatedRuntime

COPIES: list[tuple[str, tuple[int, ...]]] = []  # (how, shape) of every device-to-host copy since the last clear


_tape: list | None = None  # inside StrictRuntime.capture: the graph's recorded launches, device array operations among them


def _up() -> None:
    if _tape is not None:
        raise RuntimeError("a host-to-device copy while capturing a CUDA graph")


def _down(how: str, a: np.ndarray) -> None:
    if _tape is not None:
        raise RuntimeError(f"{how}: a device-to-host copy while capturing a CUDA graph")
    COPIES.append((how, tuple(a.shape)))


def _in_place(run: Any) -> None:
    """An operation writing existing device memory: run now, or recorded while capturing (a captured kernel does not run)."""
    if _tape is None:
        run()
    else:
        _tape.append(run)


def _made(compute: Any, *inputs: Any) -> Any:
    """The result of an operation on device arrays (``compute()``, numpy on the bases).  While capturing, a result
    in new memory is also recorded: each replay computes it again into the same array; a view of an input
    (basic indexing, a reshape that needs no copy) shares its memory and needs nothing."""
    if _tape is None:
        return _dev(compute())
    with np.errstate(all="ignore"):  # computed on whatever the arrays hold now, for its shape only
        r = _dev(compute())
    if not isinstance(r, DeviceArray):
        if isinstance(r, tuple):
            raise RuntimeError("an operation returning several arrays while capturing a CUDA graph")
        return r
    srcs = [x.view(np.ndarray) for x in _flat(inputs) if isinstance(x, np.ndarray)]
    if any(np.may_share_memory(r.view(np.ndarray), x) for x in srcs):
        return r
    dst = r.view(np.ndarray)

    def again() -> None:
        dst[...] = compute()

    _tape.append(again)
    return r


def _flat(x: Any) -> list:
    if isinstance(x, (tuple, list)):
        return [v for e in x for v in _flat(e)]
    if isinstance(x, dict):
        return _flat(list(x.values()))
    return [x]


def _no_mask(idx: Any) -> None:
    if _tape is not None and any(isinstance(x, np.ndarray) and x.dtype == bool for x in _flat(idx)):
        raise RuntimeError("boolean-mask indexing while capturing a CUDA graph (its shape needs the data)")


def _no_host_index(idx: Any) -> None:
    if _tape is None:  # (outside a capture CuPy uploads a host index array: allowed)
        return
    for x in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(x, list) or isinstance(x, np.ndarray) and not isinstance(x, DeviceArray):
            raise RuntimeError("a host index array while capturing a CUDA graph (CuPy uploads it: a host-to-device copy)")


# numpy functions that CuPy 14.2 does not have (``dir(numpy)`` less ``dir(cupy)``, measured on CuPy 14.2 / numpy 2.4):
# ``xp.<name>`` is an AttributeError there, so it is one here
NOT_IN_CUPY = frozenset(
    "asmatrix block bmat busday_count busday_offset datetime_as_string datetime_data einsum_path frompyfunc fromregex "
    "geomspace get_include getbufsize geterr geterrcall histogram_bin_edges info insert is_busday isnat matvec "
    "nanpercentile nanquantile nested_iters polyder polydiv polyint setbufsize seterr seterrcall show_runtime spacing "
    "test unstack vecdot vecmat".split()
)


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
        args = _base(inputs)
        if out is not None:
            _refuse_host(out, f"device {ufunc.__name__} out=")
            kw = {**kwargs, "out": _base(out)}
            _in_place(lambda: getattr(ufunc, method)(*args, **kw))
            return out[0] if len(out) == 1 else out
        return _made(lambda: getattr(ufunc, method)(*args, **kwargs), inputs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise TypeError(f"numpy.{func.__name__} called on a device array (use xp.{func.__name__})")

    def __getitem__(self, idx: Any) -> Any:
        _no_mask(idx)
        _no_host_index(idx)
        a, i = self.view(np.ndarray), _base(idx)
        return _made(lambda: a[i], self)

    def __setitem__(self, idx: Any, value: Any) -> None:
        _refuse_host((value,), "device setitem")
        _no_mask(idx)
        _no_host_index(idx)
        a, i, v = self.view(np.ndarray), _base(idx), _base(value)
        _in_place(lambda: a.__setitem__(i, v))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _method(self, name: str, *args: Any, **kwargs: Any) -> Any:
        a = self.view(np.ndarray)
        return _made(lambda: getattr(a, name)(*args, **kwargs), self)

    def argmin(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("argmin", *args, **kwargs)

    def argmax(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("argmax", *args, **kwargs)

    def argsort(self, axis: int = -1, kind: Any = None) -> Any:
        return self._method("argsort", axis=axis, kind="stable")  # CuPy sorts stably, always

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("astype", *args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("copy", *args, **kwargs)

    def reshape(self, *args: Any, **kwargs: Any) -> Any:  # a copy where the layout needs one
        return self._method("reshape", *args, **kwargs)

    def fill(self, value: Any) -> None:
        a = self.view(np.ndarray)
        _in_place(lambda: a.fill(value))

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

    def tobytes(self, order: str = "C") -> bytes:  # (cupy.ndarray.tobytes: a copy down)
        _down("tobytes", self)
        return self.view(np.ndarray).tobytes(order)

    def __format__(self, spec: str) -> str:  # (f"{x:.3f}" of a device value: CuPy brings it down to format it)
        _down("format", self)
        return format(self.view(np.ndarray), spec)

    def __complex__(self) -> complex:
        _down("complex", self)
        return complex(self.view(np.ndarray))

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
        if self._prefix == "xp." and name in NOT_IN_CUPY:
            raise AttributeError(f"xp.{name}: CuPy has no {name} (numpy's alone)")
        obj = getattr(self._ns, name)
        if isinstance(obj, types.ModuleType):  # xp.linalg, xp.random, ...
            return _DeviceNamespace(obj, f"{self._prefix}{name}.")
        if isinstance(obj, type) or not callable(obj):  # dtypes, iinfo, constants
            return obj
        what = f"{self._prefix}{name}"

        def on_device(*args: Any, **kwargs: Any) -> Any:
            _refuse_host(args, what)
            _refuse_host(tuple(kwargs.values()), what)
            a, kw = _base(args), {k: _base(v) for k, v in kwargs.items()}
            if kwargs.get("out") is not None:
                _in_place(lambda: obj(*a, **kw))
                return kwargs["out"]
            if _tape is not None and name in ("nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract"):
                raise RuntimeError(f"{what} while capturing a CUDA graph (its shape needs the data)")
            return _made(lambda: obj(*a, **kw), args, kwargs)

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
            return np.array(a, dtype=dtype).view(DeviceArray)
        b = a.view(np.ndarray)
        return _made(lambda: np.array(b, dtype=dtype), a)

    def ascontiguousarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            b = a.view(np.ndarray)
            return _made(lambda: np.ascontiguousarray(b, dtype=dtype), a)
        _up()
        return np.array(a, dtype=dtype, order="C").view(DeviceArray)

    def argsort(self, a: Any, axis: int = -1, kind: Any = None) -> DeviceArray:
        _refuse_host((a,), "xp.argsort")
        b = _base(a)
        return _made(lambda: np.argsort(b, axis=axis, kind="stable"), a)


class StrictRuntime(EmulatedRuntime):
    """The kernel emulator on :class:`DeviceArray` s: the GPU code runs as on CuPy, copies down logged in :data:`COPIES`."""

    name = "strict-emulated"
    xp = DeviceModule()
    records_xp = True  # operations on device arrays are recorded in a capture, as CuPy's kernels are

    def capture(self, step: Any) -> Any:
        """As the emulator's, recording the device array operations too (see the module docstring); like
        CUDA stream capture it refuses copies between host and device."""

        def recorded() -> None:
            global _tape
            _tape = self._recording  # the emulator's list of the capture's launches
            step()

        global _tape
        try:
            return super().capture(recorded)
        finally:
            _tape = None

    def asnumpy(self, a: Any) -> np.ndarray:
        if not isinstance(a, DeviceArray):  # as cupy.asnumpy: a host array passes through
            return np.asarray(a)
        _down("asnumpy", a)
        return np.array(a.view(np.ndarray))
