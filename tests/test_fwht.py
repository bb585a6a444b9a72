"""The fast Walsh-Hadamard transform (``kvrun.ops.cpu.hadamard``): ``x @ H`` with the orthonormal
Sylvester-Hadamard matrix, and for every size the butterflies of the textbook loop in its order,
so the vector-IR sizes (64, 128, 256) and the loop sizes round alike, bit for bit."""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import pytest

from kvrun.cache.quant import hadamard
from kvrun.ops.cpu.hadamard import IR_SIZES, fwht


@nb.njit(cache=False)
def _rows(x: np.ndarray) -> None:
    for i in range(x.shape[0]):
        fwht(x[i])


def _butterflies(x: np.ndarray) -> np.ndarray:
    """The textbook transform in float32: stage h pairs each i (bit h clear) with i + h into (a + b, a - b)."""
    x = x.copy()
    n = x.shape[1]
    h = 1
    while h < n:
        y = x.reshape(x.shape[0], -1, 2, h)
        a, b = y[:, :, 0].copy(), y[:, :, 1].copy()
        y[:, :, 0], y[:, :, 1] = a + b, a - b
        h *= 2
    return x * np.float32(1.0 / math.sqrt(n))


@pytest.mark.parametrize("n", [1, 2, 8, 16, 32, 64, 128, 256, 512])
def test_fwht_is_the_hadamard_product_by_the_textbook_butterflies(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((50, n)) * rng.uniform(1e-3, 1e3, (50, 1))).astype(np.float32)
    got = x.copy()
    _rows(got)
    np.testing.assert_array_equal(got.view(np.uint32), _butterflies(x).view(np.uint32))
    want = x.astype(np.float64) @ hadamard(n).astype(np.float64)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert n not in IR_SIZES or n % 16 == 0


def test_a_strided_row_takes_the_loop_and_the_same_result():
    """The vector IR reads contiguous floats; a strided view of the same values gets the loop's (equal) result."""
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    wide = np.zeros((4, 128), np.float32)
    wide[:, ::2] = x
    _rows(wide[:, ::2])
    np.testing.assert_array_equal(wide[:, ::2], _butterflies(x))
    assert (wide[:, 1::2] == 0).all()
