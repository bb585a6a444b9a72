"""The backends' products by a gate or a vector.  The CPU backend's ``sigmoid_mul`` (ops/cpu/backend.py): ``x *= sigmoid(s)`` in place, each of ``s``'s values over
``x.size / s.size`` consecutive values of ``x``: an attention gate element by element (Kimi K3's, HY-V4's) or one
a head (Step-3.5's, Ling's).  The GPU's kernel against it: test_gpu_moe2.py.

Beside it, on both backends against numpy (the GPU's nn.cu kernels on the ``rt`` fixture: CUDA where a GPU is, else the
kernel emulator): ``softplus_mul``, ``x *= softplus(s)`` in ``sigmoid_mul``'s layout (Laguna's attention gate, ggml's
softplus: ``s`` itself above 20), and ``mul``, ``x *= w`` over each run of ``w.size`` values (Talkie's gain a query head
repeated over the head, ggml_mul's row broadcast)."""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu.backend import GPUBackend

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


# ----------------------------------------------------------------- softplus_mul
def _softplus64(s: np.ndarray) -> np.ndarray:
    """ggml's softplus in float64: ``s`` itself above 20, else log(1 + e^s)."""
    s = s.astype(np.float64)
    return np.where(s > 20.0, s, np.log1p(np.exp(np.minimum(s, 20.0))))


def _gates(s_shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ``[T, H, D]`` and gates of ``s_shape``, some of them past 20 (the branch that passes s), some far below 0."""
    x, s = _inputs(s_shape, seed)
    flat = s.reshape(-1)
    flat[:6] = [19.5, 20.0, 20.5, 60.0, -60.0, 0.0]
    return x, s


@pytest.mark.parametrize("per_head", [False, True], ids=["a gate a value", "a gate a head"])
def test_softplus_mul_multiplies_by_ggmls_softplus(per_head):
    x, s = _gates((T, H) if per_head else (T, H, D), seed=3)
    want = x * _softplus64(s)[..., None if per_head else slice(None)]
    got = x.copy()
    with np.errstate(all="raise"):  # (no overflow where a gate is large: exp is never taken past 20)
        CPUBackend().softplus_mul(got, s)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    flat_x, flat_got = x.reshape(-1, D if per_head else 1), got.reshape(-1, D if per_head else 1)
    np.testing.assert_array_equal(flat_got[3], flat_x[3] * np.float32(60.0))  # (past 20: s itself, exactly)


def test_softplus_mul_takes_sigmoid_muls_layouts():
    """x ``[T, H, D]`` or ``[T, H * D]`` with a gate a head: the same consecutive runs; a view no reshape can see,
    written in place."""
    x, s = _gates((T, H), seed=4)
    got3, got2 = x.copy(), x.reshape(T, H * D).copy()
    CPUBackend().softplus_mul(got3, s)
    CPUBackend().softplus_mul(got2, s)
    np.testing.assert_array_equal(got2.reshape(T, H, D), got3)
    wide = np.zeros((T, H, 2 * D), np.float32)
    wide[:, :, :D] = x
    CPUBackend().softplus_mul(wide[:, :, :D], s)
    np.testing.assert_array_equal(wide[:, :, :D], got3)
    assert not wide[:, :, D:].any()


# ----------------------------------------------------------------- mul
@pytest.mark.parametrize("m", [D, H * D], ids=["w a head wide", "w all heads wide"])
def test_mul_multiplies_each_run_of_w_size_values_by_w(m):
    x, _ = _inputs((1,), seed=5)
    w = np.random.default_rng(6).standard_normal(m).astype(np.float32)
    got = x.copy()
    CPUBackend().mul(got, w)
    np.testing.assert_array_equal(got, (x.reshape(-1, m) * w).reshape(x.shape))  # (one float32 product each: exact)


def test_mul_writes_a_view_that_no_reshape_can_see_in_place():
    x, _ = _inputs((1,), seed=7)
    w = np.arange(1, D + 1, dtype=np.float32)
    wide = np.zeros((T, H, 2 * D), np.float32)
    wide[:, :, :D] = x
    CPUBackend().mul(wide[:, :, :D], w)
    np.testing.assert_array_equal(wide[:, :, :D], x * w)
    assert not wide[:, :, D:].any()


@pytest.mark.parametrize("op, arg", [("softplus_mul", "s"), ("mul", "w")])
@pytest.mark.parametrize("shape", [(5,), (0,)], ids=["not whole", "empty"])
def test_x_not_a_whole_number_of_the_gate_or_gain_is_one_line(op, arg, shape):
    x = np.ones((T, H, D), np.float32)
    with pytest.raises(ValueError, match=rf"^{op}: x \(3, 4, 8\) is not a whole number of {arg} \(") as e:
        getattr(CPUBackend(), op)(x, np.zeros(shape, np.float32))
    assert "\n" not in str(e.value)
    assert (x == 1).all()


# ----------------------------------------------------------------- the GPU's kernels (nn.cu)
@pytest.mark.parametrize("per_head", [False, True], ids=["a gate a value", "a gate a head"])
def test_the_gpus_softplus_mul_is_ggmls_softplus(rt, per_head):
    x, s = _gates((T, H) if per_head else (T, H, D), seed=8)
    want = x * _softplus64(s)[..., None if per_head else slice(None)]
    got = rt.xp.asarray(x.copy())
    GPUBackend().softplus_mul(got, rt.xp.asarray(s))
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-7)  # (expf and log1pf against numpy's)


@pytest.mark.parametrize("m", [D, H * D], ids=["w a head wide", "w all heads wide"])
def test_the_gpus_mul_multiplies_each_run_of_w_size_values_by_w(rt, m):
    x, _ = _inputs((1,), seed=9)
    w = np.random.default_rng(10).standard_normal(m).astype(np.float32)
    got = rt.xp.asarray(x.copy())
    GPUBackend().mul(got, rt.xp.asarray(w))
    np.testing.assert_array_equal(rt.asnumpy(got), (x.reshape(-1, m) * w).reshape(x.shape))


@pytest.mark.parametrize("op, arg", [("softplus_mul", "s"), ("mul", "w"), ("sigmoid_mul", "s")])
def test_the_gpu_refuses_x_not_a_whole_number_in_one_line(rt, op, arg):
    x = rt.xp.ones((T, H, D), np.float32)
    with pytest.raises(ValueError, match=rf"^{op}: x \(3, 4, 8\) is not a whole number of {arg} \(") as e:
        getattr(GPUBackend(), op)(x, rt.xp.zeros(5, np.float32))
    assert "\n" not in str(e.value)
    assert (rt.asnumpy(x) == 1).all()
