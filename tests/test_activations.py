"""Gated activations: the whole-block numpy path (prefill) equals the per-token loop (decode)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kvrun.ops.cpu import nn


@pytest.mark.parametrize("name", ["silu_mul", "gelu_mul"])
def test_block_path_equals_loop_and_may_write_over_gate(name):
    rng = np.random.default_rng(1)
    T = 2 * nn.WIDE_ROWS + 5  # whole steps and a remainder
    gate = (rng.standard_normal((T, 160)) * 20).astype(np.float32)  # includes exp overflow (g << 0)
    up = rng.standard_normal((T, 160)).astype(np.float32)
    want = np.empty_like(gate)
    getattr(nn, f"_{name}_loop")(gate, up, want)
    got = gate.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning reaches the user
        getattr(nn, name)(got, up, got)  # out is gate, as the models call it
    assert np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["silu_mul", "gelu_mul"])
def test_row_blocks_on_threads_give_the_same_bits(name, monkeypatch):
    """Beside the VNNI GEMM a prefill's row blocks are shared among threads; each block is the same
    numpy arithmetic on any thread, so the result does not depend on them."""
    rng = np.random.default_rng(2)
    T = 3 * nn.WIDE_ROWS + 7
    gate = (rng.standard_normal((T, 96)) * 20).astype(np.float32)
    up = rng.standard_normal((T, 96)).astype(np.float32)
    got = {}
    for nt in (1, 3):
        monkeypatch.setattr(nn, "numpy_threads", lambda nt=nt: nt)
        got[nt] = np.empty_like(gate)
        getattr(nn, name)(gate, up, got[nt])
    np.testing.assert_array_equal(got[1], got[3])
