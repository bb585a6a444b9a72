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


def test_ungated_gelu_is_the_gated_one_times_one_in_either_path():
    """Phi-2's FFN: gelu(x), prefill's block path and decode's loop, in place, equal to gelu_mul(x, 1)."""
    rng = np.random.default_rng(3)
    T = 2 * nn.WIDE_ROWS + 5
    x = (rng.standard_normal((T, 160)) * 20).astype(np.float32)
    want = np.empty_like(x)
    nn.gelu_mul(x, np.ones_like(x), want)
    loop = np.empty_like(x)
    nn._gelu_loop(x, loop)
    got = x.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.gelu(got, got)
    assert np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5) and np.allclose(loop, want, rtol=1e-5, atol=1e-5)


def test_squared_relu_is_ggmls_relu_then_sqr_in_place():
    """Arcee's FFN: relu(x)^2, zero where x <= 0 (NaN too, as ggml's ``x > 0 ? x : 0``), in place."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((nn.WIDE_ROWS + 3, 160)) * 20).astype(np.float32)
    x[0, :3] = (0.0, -0.0, np.nan)
    want = np.where(x > 0, x, np.float32(0.0)) ** 2
    got = x.copy()
    nn.relu_sqr(got, got)
    np.testing.assert_array_equal(got, want)
