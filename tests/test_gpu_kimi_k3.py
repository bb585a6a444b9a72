"""Kimi K3's device kernels (models/kimi_k3.py on ``--device gpu``): the cross-layer residual attention's bank and mix
(ops/gpu/attn_res.cu) and situ (moe2.cu: element by element, and as the latent experts' act), each against the host
numpy of the CPU's forward on random inputs, on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the
kernel emulator).  The model itself against the CPU, prefill and replayed decode steps, is tests/test_kimi_k3.py's.

Tolerances: the mix within 1e-5 relative, 1e-6 absolute (a few sums in another order, rsqrtf and expf against numpy's);
situ likewise (tanhf against numpy's tanh); the experts within 1e-4 relative, 1e-5 absolute (dot products of 64 in
another order, against float64 sums); the bank exact."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.models.kimi_k3 import KimiK3Model, situ
from kvrun.ops import gpu_available
from kvrun.ops.gpu import attn_res, emulate
from kvrun.ops.gpu.backend import GPUBackend

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

EPS = 1e-5


def _host_mix(banked: list[np.ndarray], x: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The CPU's residual mix (models/kimi_k3.py ``res_mix``), as its forward calls it."""
    return KimiK3Model.res_mix(SimpleNamespace(cfg=SimpleNamespace(norm_eps=EPS)), banked, x, score)


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("n_bank", [1, 3])
def test_the_residual_mix_is_the_cpus(rt, T, n_bank):
    """``out = sum_s softmax_s(sum(rms_norm(src_s) * score)) src_s`` over the banked checkpoints and the stream (last);
    sources of other scales (the RMS norm in the score, the raw rows in the sum) and a score that sets them far apart
    (a mix, not a mean: the softmax's weights show)."""
    rng = np.random.default_rng(T * 10 + n_bank)
    n_slot, n_embd = 4, 96
    bank = (rng.standard_normal((T, n_slot, n_embd)) * rng.uniform(0.5, 4.0, (1, n_slot, 1))).astype(np.float32)
    x = (rng.standard_normal((T, n_embd)) * 2).astype(np.float32)
    score = (rng.standard_normal(n_embd) * 0.5).astype(np.float32)
    want = _host_mix([bank[:, s].copy() for s in range(n_bank)], x, score)
    mean = (bank[:, :n_bank].sum(axis=1) + x) / (n_bank + 1)
    assert np.abs(want - mean).max() > 0.1  # (the weights differ)
    out = rt.xp.zeros((T, n_embd), np.float32)
    attn_res.mix(rt.xp.asarray(bank), n_bank, rt.xp.asarray(x), rt.xp.asarray(score), EPS, out)
    np.testing.assert_allclose(rt.asnumpy(out), want, rtol=1e-5, atol=1e-6)


def test_with_nothing_banked_the_mix_is_the_stream(rt):
    """(The model calls no kernel then, as the CPU returns ``x``; the kernel agrees: one source, weight 1.)"""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    out = rt.xp.zeros((3, 64), np.float32)
    attn_res.mix(rt.xp.zeros((3, 2, 64), np.float32), 0, rt.xp.asarray(x), rt.xp.asarray(np.ones(64, np.float32)), EPS, out)
    np.testing.assert_allclose(rt.asnumpy(out), x, rtol=1e-6, atol=0)


def test_banking_writes_one_slot_and_leaves_the_others(rt):
    rng = np.random.default_rng(8)
    T, n_slot, n_embd = 3, 4, 40
    before = rng.standard_normal((T, n_slot, n_embd)).astype(np.float32)
    x = rng.standard_normal((T, n_embd)).astype(np.float32)
    bank = rt.xp.asarray(before.copy())
    attn_res.bank(rt.xp.asarray(x), bank, 2)
    want = before.copy()
    want[:, 2] = x
    np.testing.assert_array_equal(rt.asnumpy(bank), want)


def test_a_mix_that_does_not_fit_is_refused(rt):
    """More sources than a block keeps (attn_res.cu's ATTN_RES_MAX_SRC), a slot past the bank, an out of another width."""
    xp = rt.xp
    big = xp.zeros((1, attn_res.MAX_SOURCES, 8), np.float32)
    with pytest.raises(ValueError, match="mix"):
        attn_res.mix(big, attn_res.MAX_SOURCES, xp.zeros((1, 8), np.float32), xp.zeros(8, np.float32), EPS, xp.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="mix"):
        attn_res.mix(xp.zeros((1, 2, 8), np.float32), 1, xp.zeros((1, 8), np.float32), xp.zeros(8, np.float32), EPS, xp.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="bank"):
        attn_res.bank(xp.zeros((1, 8), np.float32), xp.zeros((1, 2, 8), np.float32), 2)


@pytest.mark.parametrize("linear_beta", [3.0, 0.0], ids=["bent", "up-as-is"])
def test_the_element_wise_situ_is_the_cpus(rt, linear_beta):
    """``beta tanh(g / beta) sigmoid(g) * lb tanh(u / lb)`` (``u`` as it is where lb <= 0), in place, as
    models/kimi_k3.py ``situ``; gates and ups large enough for the tanhs to bend."""
    rng = np.random.default_rng(9)
    g, u = ((rng.standard_normal((5, 64)) * 5).astype(np.float32) for _ in range(2))
    want = situ(g, u, 2.0, linear_beta)
    got = rt.xp.asarray(g.copy())
    GPUBackend().situ_mul(got, rt.xp.asarray(u), got, 2.0, linear_beta)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-6)


def test_the_latent_experts_run_situ_at_their_own_width(rt):
    """moe2.cu's act ``"situ"`` (beta ``limit``, linear beta ``limit2``): each chosen expert's situ GLU at the latent
    width (narrower than the model's), summed by the slots' weights into a fresh output, against numpy on float32
    experts; SiLU in its place gives other sums."""
    rng = np.random.default_rng(10)
    T, k, n_expert, width, n_ff, beta, lb = 3, 2, 4, 48, 32, 1.5, 2.0
    wg, wu, wd = (rng.standard_normal((n_expert, r, c)).astype(np.float32) * 0.4 for r, c in ((n_ff, width),) * 2 + ((width, n_ff),))
    xe = rng.standard_normal((T, width)).astype(np.float32)
    ids = np.array([[0, 3], [2, 1], [3, 2]], np.int32)
    wts = rng.uniform(0.2, 0.8, (T, k)).astype(np.float32)
    want, swiglu = np.zeros((T, width)), np.zeros((T, width))
    for t in range(T):
        for j, e in enumerate(ids[t]):
            g, u = wg[e] @ xe[t].astype(np.float64), wu[e] @ xe[t].astype(np.float64)
            want[t] += wts[t, j] * (wd[e] @ (beta * np.tanh(g / beta) / (1 + np.exp(-g)) * lb * np.tanh(u / lb)))
            swiglu[t] += wts[t, j] * (wd[e] @ (g / (1 + np.exp(-g)) * u))
    assert np.abs(want - swiglu).max() > 1e-2
    be = GPUBackend()
    gate, up, down = (be.upload(w.reshape(-1, w.shape[2]).view(np.uint8), Q.F32, (n_expert * w.shape[1], w.shape[2])) for w in (wg, wu, wd))
    got = rt.xp.asarray(np.full((T, width), 9.0, np.float32))  # (overwritten: accumulate False)
    h = rt.xp.zeros((T, k * n_ff), np.float32)
    be.moe_experts_x(gate, up, down, n_ff, rt.xp.asarray(ids), rt.xp.asarray(wts), rt.xp.asarray(xe), got, h, "situ", beta,
                     accumulate=False, limit2=lb)  # fmt: skip
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-4, atol=1e-5)
