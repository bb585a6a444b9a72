"""The CPU backend's ``sigmoid_mul`` (ops/cpu/backend.py): ``x *= sigmoid(s)`` in place, each of ``s``'s values over
``x.size / s.size`` consecutive values of ``x``: an attention gate element by element (Kimi K3's, HY-V4's) or one
a head (Step-3.5's, Ling's).  The GPU's kernel against it: test_gpu_moe2.py."""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.ops.cpu.backend import CPUBackend

T, H, D = 3, 4, 8


def _sigmoid64(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-s.astype(np.float64)))


def _inputs(s_shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    return x, (rng.standard_normal(s_shape) * 30).astype(np.float32)  # (large gates: saturated both ways)


def test_an_element_wise_gate_multiplies_each_value_by_its_own_sigmoid():
    x, s = _inputs((T, H, D))
    got = x.copy()
    with np.errstate(all="raise"):  # (no overflow where a gate is large and negative)
        CPUBackend().sigmoid_mul(got, s)
    np.testing.assert_allclose(got, x * _sigmoid64(s), rtol=1e-6, atol=1e-7)
    # bit for bit the host product the models multiplied by before (and the GPU kernel's formula): 0.5 + 0.5 tanh(s / 2)
    np.testing.assert_array_equal(got, x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * s)))


def test_a_gate_a_head_multiplies_that_heads_values():
    x, s = _inputs((T, H), seed=1)
    want = x * _sigmoid64(s)[:, :, None]
    got3, got2 = x.copy(), x.reshape(T, H * D).copy()
    CPUBackend().sigmoid_mul(got3, s)  # x [T, H, D]
    CPUBackend().sigmoid_mul(got2, s)  # x [T, H * D]: the same consecutive runs
    np.testing.assert_allclose(got3, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got2.reshape(T, H, D), got3)


def test_a_view_that_no_reshape_can_see_is_written_in_place():
    x, s = _inputs((T, H, D), seed=2)
    wide = np.zeros((T, H, 2 * D), np.float32)  # (x the first half of each row: flat, its values are not one run)
    wide[:, :, :D] = x
    CPUBackend().sigmoid_mul(wide[:, :, :D], s)
    np.testing.assert_allclose(wide[:, :, :D], x * _sigmoid64(s), rtol=1e-6, atol=1e-7)
    assert not wide[:, :, D:].any()


@pytest.mark.parametrize("s_shape", [(T, 5), (0,)], ids=["not whole", "empty"])
def test_x_not_a_whole_number_of_s_is_one_line(s_shape):
    x = np.ones((T, H, D), np.float32)
    with pytest.raises(ValueError, match=r"^sigmoid_mul: x \(3, 4, 8\) is not a whole number of s \(") as e:
        CPUBackend().sigmoid_mul(x, np.zeros(s_shape, np.float32))
    assert "\n" not in str(e.value)
    assert (x == 1).all()
