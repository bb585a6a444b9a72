"""Kernels compiled once and called through a symbol (ops/cpu/outline.py).

The big vector-IR kernels (row decoders, tile kernels, integer key scores) are C functions that
njit code calls by name: a caller's own module holds the call, not the kernel, so Numba does
not optimise and generate the kernel again at every level of callers on a first run.
"""

import numba as nb
import numpy as np

from numba import types

from kvrun.ops.cpu import qattention
from kvrun.ops.cpu.outline import outline


@nb.njit  # not cached, so its LLVM can be read
def _decode_half(x, out, n):
    qattention._rows(16, 32, x.ctypes.data, x.strides[0], 0, 0, 0, 0.0, out.ctypes.data, x.shape[1], n)


def test_an_outlined_kernel_computes_what_it_did_inline():
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float16)
    out = np.full(5 * 64, np.nan, np.float32)
    _decode_half(x.view(np.uint16), out, 5)
    assert np.array_equal(out, x.astype(np.float32).ravel())


def test_a_caller_holds_the_call_not_the_kernel():
    x = np.zeros((1, 64), np.uint16)
    _decode_half(x, np.zeros(64, np.float32), 1)
    ir = "\n".join(_decode_half.inspect_llvm().values())
    assert "declare void @kvrun_rows(" in ir
    # the decoders of every (width, group) are thousands of lines of IR; the caller is Numba's wrappers
    assert len(ir.splitlines()) < 600


def test_every_outlined_kernel_has_its_compiled_function():
    from kvrun.ops.cpu import qkeys, qmatmul

    calls = [qattention._rows, qattention._half_tiles, qattention._float_tiles, qkeys._key_blocks]
    if qmatmul.HAVE_AVX2:  # (else the row dots stay plain njit: their AVX2 intrinsics would not compile)
        calls.append(qmatmul._dot_rows)
    for call in calls:
        call.leaf.ensure()  # (registered at import where cached, else when a caller compiles)
        assert call.leaf.ready and call.leaf.cfunc.address != 0


def test_a_kernel_the_host_cannot_run_stays_a_plain_function():
    def twice(a, p):
        p[0] = 2 * a

    plain = outline("kvrun_test_never", types.void(types.int64, types.int64), when=False)(twice)
    assert isinstance(plain, nb.core.registry.CPUDispatcher)  # compiled only when a caller is

    @nb.njit
    def caller(a):
        p = np.zeros(1, np.int64)
        plain(a, p)
        return p[0]

    assert caller(21) == 42
