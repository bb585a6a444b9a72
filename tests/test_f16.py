"""float16 inside Numba (``kvrun.ops.cpu.f16``): the conversions that fill fp16 KV slots round as numpy's
``astype(np.float16)`` does, bit for bit, over every kind of float32 (subnormals, halfway cases,
overflow to inf, inf, NaN)."""

from __future__ import annotations

import warnings

import numpy as np

from kvrun.ops.cpu.f16 import scatter_f16, through_f16


def _floats(n: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    scaled = np.concatenate([rng.standard_normal(20_000) * s for s in (1e-8, 3e-5, 1.0, 3e4, 1e5)]).astype(np.float32)
    edges = np.array([np.inf, -np.inf, 0.0, -0.0, 65504, 65519.99, 65520, 6.1035e-5, 5.96e-8, 2.98e-8, 2.99e-8], np.float32)
    halfway = (np.arange(1, 2000, dtype=np.uint32) << 13 | 0x1000).view(np.float32)  # exactly between two halves
    bits = rng.integers(0, 2**32, n, dtype=np.uint32).view(np.float32)  # any pattern
    return np.concatenate([scaled, edges, halfway, -halfway, bits])


def _numpy_f16(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf is the point
        return x.astype(np.float16)


def test_through_f16_is_numpys_round_trip():
    x = _floats()
    got, want = through_f16(x), _numpy_f16(x).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()


def test_scatter_f16_stores_numpys_bits_in_the_ring_slots():
    x = np.random.default_rng(2).permutation(_floats(60_000))[: 80 * 3 * 128].reshape(80, 3, 128)
    x[np.isnan(x)] = 1.0  # (NaN payloads aside)
    slots = np.random.default_rng(1).permutation(100)[:80]
    ring = np.zeros((3, 100, 128), np.uint16)
    scatter_f16(x, slots, ring)
    want = np.zeros_like(ring)
    want[:, slots] = _numpy_f16(x).view(np.uint16).transpose(1, 0, 2)
    np.testing.assert_array_equal(ring, want)
