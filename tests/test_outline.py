"""Kernels compiled once and called through a symbol (ops/cpu/outline.py).

The big vector-IR kernels (row decoders, tile kernels, integer key scores) are C functions that
njit code calls by name: a caller's own module holds the call, not the kernel, so Numba does
not optimise and generate the kernel again at every level of callers on a first run.
"""

import numba as nb
import numpy as np

from kvrun.ops.cpu import qattention


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
    from kvrun.ops.cpu import qkeys

    for call in (qattention._rows, qattention._half_tiles, qattention._float_tiles, qkeys._key_blocks):
        assert call.cfunc.address != 0
