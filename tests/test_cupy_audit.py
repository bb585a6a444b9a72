"""What CuPy does that the strict stand-in (tests/devicexp.py) now models, and a scan of the device code for numpy
names CuPy lacks.

The GPU code is tested on the kernel emulator and on the stand-in, whose arrays are numpy underneath; a numpy name that
CuPy lacks or a copy that a CUDA stream capture refuses fails only on a real GPU.  These tests pin the stand-in's
CuPy behaviour (each failed before it modelled it) and check, without a GPU, that the device code (the picture and
audio encoders' device ops, ops/gpu, the GPU caches and the batched graphs) names no ``xp`` function CuPy 14 does not
have, including paths no tiny fixture reaches.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from devicexp import COPIES, NOT_IN_CUPY, StrictRuntime

ROOT = pathlib.Path(__file__).resolve().parent.parent

# the device-array code: every file whose functions take ``xp`` / ``ops.xp`` / ``d.xp`` / ``be.xp``
DEVICE_FILES = sorted(
    {*ROOT.glob("models/*_image.py"), *ROOT.glob("ops/gpu/*.py"), *ROOT.glob("cache/gpu_*.py")}
    | {ROOT / f for f in ("models/vit_device.py", "models/vit_ops.py", "models/siglip.py", "models/whisper_audio.py",
                          "models/qwen3a_audio.py", "runtime/batch_graphs.py", "cache/batch.py")}  # fmt: skip
)


def _xp_names(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, name) of every ``xp.NAME`` / ``<anything>.xp.NAME`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            v = node.value
            if isinstance(v, ast.Name) and v.id == "xp" or isinstance(v, ast.Attribute) and v.attr == "xp":
                out.append((node.lineno, node.attr))
    return out


def test_the_device_code_names_no_numpy_function_that_cupy_lacks():
    bad = [f"{p.relative_to(ROOT)}:{line} xp.{name}" for p in DEVICE_FILES if p.exists() for line, name in _xp_names(p) if name in NOT_IN_CUPY]
    assert not bad, "numpy names CuPy 14 does not have: " + ", ".join(bad)


def test_the_scan_sees_the_encoders_device_calls():
    names = {n for _, n in _xp_names(ROOT / "models/vit_device.py")}
    assert {"pad", "stack", "matmul", "ascontiguousarray"} <= names


@pytest.fixture()
def rt():
    from kvrun.ops.gpu import kernels as K

    runtime = StrictRuntime()
    prev = K.set_runtime(runtime)
    COPIES.clear()
    yield runtime
    K.set_runtime(prev)


def test_an_xp_name_cupy_lacks_is_refused(rt):
    xp = rt.xp
    a = xp.asarray(np.arange(4, dtype=np.float32))
    with pytest.raises(AttributeError, match="CuPy has no insert"):
        xp.insert(a, 1, a[:1])
    with pytest.raises(AttributeError, match="CuPy has no unstack"):
        xp.unstack(a.reshape(2, 2))
    assert xp.concatenate([a, a]).shape == (8,)  # (what CuPy has still works)


def test_tobytes_and_formatting_a_device_value_are_copies_down(rt):
    x = rt.xp.asarray(np.float32([1.5, 2.5]))
    assert x.tobytes() == np.float32([1.5, 2.5]).tobytes()
    assert f"{x.sum():.1f}" == "4.0"
    assert COPIES == [("tobytes", (2,)), ("format", ())]
    with pytest.raises(RuntimeError, match="device-to-host copy while capturing"):
        rt.capture(lambda: x.tobytes())
    with pytest.raises(RuntimeError, match="device-to-host copy while capturing"):
        rt.capture(lambda: f"{x[0]:.1f}")


def test_a_host_index_array_is_an_upload_refused_while_capturing(rt):
    xp = rt.xp
    a = xp.asarray(np.arange(6, dtype=np.float32))
    host = np.array([4, 1])
    assert a[host].tolist() == [4.0, 1.0]  # (outside a capture CuPy uploads the index: allowed)
    for index in (lambda: a[host], lambda: a[[0, 2]], lambda: a.__setitem__(host, xp.zeros(2, np.float32))):
        with pytest.raises(RuntimeError, match="host index array while capturing"):
            rt.capture(index)
    dev = xp.asarray(host)
    out = xp.zeros(2, np.float32)

    def step() -> None:  # a device index, as a captured step must have it
        out[...] = a[dev]

    g = rt.capture(step)
    g.launch()
    assert out.tolist() == [4.0, 1.0]


def test_a_batch_table_address_is_the_views_first_element():
    """ops/gpu/batch_attention.py ``address``: CuPy's ``a.data.ptr`` is the view's first element (the memory pointer
    plus the view's offset), as the emulator's ``ctypes.data``; a ring's K, V and positions are whole arrays anyway."""
    from kvrun.ops.gpu.batch_attention import address

    a = np.zeros((2, 8, 4), np.float16)
    assert address(a[1]) - address(a) == 8 * 4 * 2
    assert address(a.reshape(-1)[3:]) - address(a) == 3 * 2

    class Pointer:  # (CuPy's MemoryPointer of a view: ptr already offset)
        ptr = 0x7F00_0000_1000 + 64

    class View:
        data = Pointer()

    assert address(View()) == 0x7F00_0000_1000 + 64
