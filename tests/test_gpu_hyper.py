"""The hyper-connections' streams on the device (ops/gpu/hyper.cu, HY V4's iHC and GLM-5.3-Flash's mHC): each kernel
against the host numpy of models/hy_v4.py's and models/glm5_next.py's CPU forwards on random inputs, on the ``rt``
fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator).  The models themselves against the CPU,
prefill and replayed decode steps, are tests/test_hy_v4.py's and tests/test_glm5_next.py's.

Tolerances: the pre and post weights within 1e-5 relative, 1e-6 absolute (tanh against numpy's), the reduce, the
spread, the mHC mix and the mean likewise (a sum of a few products, in another order); the Sinkhorn matrix within 1e-5
relative (expf against numpy's exp, then a few divisions); the fill exact."""

from __future__ import annotations

import types

import numpy as np
import pytest

from kvrun.models.glm5_next import Glm5NextModel, sinkhorn
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu.hyper import MAX_HC, HyperConnections
from kvrun.ops.host import sigmoid

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

EPS, MAGNITUDE = 0.05, 2.0  # (tests/tiny_hy_v4.py's: an epsilon large enough to be seen)


def _site(rng, T: int, n_hc: int, n_embd: int, n_mix: int, n_scale: int = 2):
    """A site's mixes (some large: the sigmoid saturates), base and scale, and the streams."""
    mixes = (rng.standard_normal((T, n_mix)) * 4).astype(np.float32)
    mixes[0, 0], mixes[-1, -1] = 60.0, -60.0
    base = rng.standard_normal(n_mix).astype(np.float32)
    scale = (1.0 + 0.2 * rng.standard_normal(n_scale)).astype(np.float32)
    streams = rng.standard_normal((T, n_hc, n_embd)).astype(np.float32)
    return mixes, base, scale, streams


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
def test_a_layers_site_gives_hy_v4s_pre_reduce_and_post(rt, T):
    """``cur = sum_h pre_h stream_h``, ``pre = sigmoid(mixes[:hc] s0 + b[:hc]) + eps``, ``post = magnitude
    sigmoid(mixes[hc:] s1 + b[hc:]) + eps`` (models/hy_v4.py ``hc_pre``); a row wider than the block (300 > 256)."""
    rng = np.random.default_rng(T)
    n_hc, n_embd = 4, 300
    mixes, base, scale, streams = _site(rng, T, n_hc, n_embd, 2 * n_hc)
    pre = sigmoid(mixes[:, :n_hc] * scale[0] + base[:n_hc]) + np.float32(EPS)
    want_post = np.float32(MAGNITUDE) * sigmoid(mixes[:, n_hc:] * scale[1] + base[n_hc:]) + np.float32(EPS)
    want_cur = np.einsum("th,the->te", pre, streams)
    cur, post = rt.xp.full((T, n_embd), np.nan, np.float32), rt.xp.full((T, n_hc), np.nan, np.float32)
    HyperConnections(EPS, MAGNITUDE).pre(rt.xp.asarray(mixes), base, scale, rt.xp.asarray(streams), cur, post)
    np.testing.assert_allclose(rt.asnumpy(post), want_post, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rt.asnumpy(cur), want_cur, rtol=1e-5, atol=1e-5)


def test_the_output_heads_reduce_has_one_scale_and_no_post(rt):
    """``output_hc``: ``hc`` mixes and one scale weigh the streams into the final norm's row; nothing else is written."""
    rng = np.random.default_rng(7)
    T, n_hc, n_embd = 3, 4, 64
    mixes, base, _, streams = _site(rng, T, n_hc, n_embd, n_hc)
    scale = np.array([1.3], np.float32)
    want = np.einsum("th,the->te", sigmoid(mixes * scale[0] + base) + np.float32(EPS), streams)
    buf = rt.xp.full((T + 1, n_embd), np.nan, np.float32)  # (a row past T: the kernel stays in its T rows)
    HyperConnections(EPS, MAGNITUDE).pre(rt.xp.asarray(mixes), base, scale, rt.xp.asarray(streams), buf[:T])
    got = rt.asnumpy(buf)
    np.testing.assert_allclose(got[:T], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[T]).all()


def test_each_sites_base_is_its_own(rt):
    """The bases go up once, kept by the host array they came from: two sites, two bases, two answers."""
    rng = np.random.default_rng(8)
    T, n_hc, n_embd = 2, 4, 32
    mixes, base_a, scale, streams = _site(rng, T, n_hc, n_embd, 2 * n_hc)
    base_b = base_a + np.float32(3.0)
    hc = HyperConnections(EPS, MAGNITUDE)
    for base in (base_a, base_b, base_a):
        cur, post = rt.xp.zeros((T, n_embd), np.float32), rt.xp.zeros((T, n_hc), np.float32)
        hc.pre(rt.xp.asarray(mixes), base, scale, rt.xp.asarray(streams), cur, post)
        pre = sigmoid(mixes[:, :n_hc] * scale[0] + base[:n_hc]) + np.float32(EPS)
        np.testing.assert_allclose(rt.asnumpy(cur), np.einsum("th,the->te", pre, streams), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
def test_the_post_spreads_a_blocks_output_into_every_stream(rt, T):
    """``streams += post[:, :, None] * out[:, None, :]`` (llama.cpp's build_hc_post)."""
    rng = np.random.default_rng(10 + T)
    n_hc, n_embd = 4, 96
    streams = rng.standard_normal((T, n_hc, n_embd)).astype(np.float32)
    post = (rng.random((T, n_hc)) * 2).astype(np.float32)
    out = rng.standard_normal((T, n_embd)).astype(np.float32)
    got = rt.xp.asarray(streams.copy())
    HyperConnections.post(got, rt.xp.asarray(post), rt.xp.asarray(out))
    np.testing.assert_allclose(rt.asnumpy(got), streams + post[:, :, None] * out[:, None, :], rtol=1e-5, atol=1e-6)


def test_the_fill_makes_every_stream_the_embedding(rt):
    """The streams of the first T rows of an n_batch buffer each the token's row; the rows past T untouched."""
    rng = np.random.default_rng(12)
    T, n_hc, n_embd = 3, 4, 40
    x = rng.standard_normal((T, n_embd)).astype(np.float32)
    buf = rt.xp.full((T + 2, n_hc, n_embd), np.nan, np.float32)
    HyperConnections.fill(buf[:T], rt.xp.asarray(x))
    got = rt.asnumpy(buf)
    np.testing.assert_array_equal(got[:T], np.broadcast_to(x[:, None, :], (T, n_hc, n_embd)))
    assert np.isnan(got[T:]).all()


# ------------------------------------------------------------------------------------------------------- GLM's mHC
MHC_EPS, MHC_ITERS = 0.05, 3  # (tests/tiny_glm5_next.py's)


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
def test_an_mhc_site_gives_glms_pre_reduce_post_and_sinkhorn_mix(rt, T):
    """GLM's ``(2 + hc) hc`` mixes (models/glm5_next.py ``hc_pre``): ``pre`` as HY V4's, ``post = 2 sigmoid(mixes[hc:2hc]
    s1 + b[hc:2hc])`` with no eps, ``comb = sinkhorn(mixes[2hc:] s2 + b[2hc:])`` ``[src, dst]``; the kernels' answers
    are the CPU model's own (its ``hc_pre`` on the same mixes)."""
    rng = np.random.default_rng(20 + T)
    n_hc, n_embd = 4, 300
    mixes, base, scale, streams = _site(rng, T, n_hc, n_embd, (2 + n_hc) * n_hc, 3)
    mixes[0, n_hc] = 60.0 / scale[1]  # (a post that saturates: 2 exactly, no eps on it)
    cpu = types.SimpleNamespace(n_hc=n_hc, hc_eps=MHC_EPS, hc_post_scale=2.0, hc_iters=MHC_ITERS, hc_mixes=lambda hc, s: mixes,
                                hc_dev=None)  # (the CPU model's attributes hc_pre reads)
    want_cur = np.empty((T, n_embd), np.float32)
    want_post, want_comb = Glm5NextModel.hc_pre(cpu, types.SimpleNamespace(base=base, scale=scale), streams, want_cur)
    hc = HyperConnections(MHC_EPS, 2.0, post_eps=0.0)
    cur, post = rt.xp.full((T, n_embd), np.nan, np.float32), rt.xp.full((T, n_hc), np.nan, np.float32)
    comb = rt.xp.full((T, n_hc, n_hc), np.nan, np.float32)
    hc.pre(rt.xp.asarray(mixes), base, scale, rt.xp.asarray(streams), cur, post)
    hc.sinkhorn(rt.xp.asarray(mixes), base, scale, comb, MHC_ITERS)
    np.testing.assert_allclose(rt.asnumpy(post), want_post, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rt.asnumpy(cur), want_cur, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.asnumpy(comb), want_comb, rtol=1e-5, atol=1e-7)
    assert want_post[0, 0] == rt.asnumpy(post)[0, 0] == 2.0


@pytest.mark.parametrize("n_iter", [1, 20])
def test_the_sinkhorn_kernel_is_glm5_nexts(rt, n_iter):
    """One iteration (the softmax and the columns) and many (near doubly stochastic), with logits far apart (a softmax
    that would overflow without its max), each token its own matrix, as models/glm5_next.py ``sinkhorn``."""
    rng = np.random.default_rng(30 + n_iter)
    T, n_hc = 3, 4
    mixes, base, scale, _ = _site(rng, T, n_hc, 8, (2 + n_hc) * n_hc, 3)
    mixes[1, 2 * n_hc] = 100.0
    want = sinkhorn((mixes[:, 2 * n_hc :] * scale[2] + base[2 * n_hc :]).reshape(T, n_hc, n_hc), n_iter, MHC_EPS)
    got = rt.xp.full((T + 1, n_hc, n_hc), np.nan, np.float32)  # (a token past T: the kernel stays in its T)
    HyperConnections(MHC_EPS, 2.0, post_eps=0.0).sinkhorn(rt.xp.asarray(mixes), base, scale, got[:T], n_iter)
    got = rt.asnumpy(got)
    np.testing.assert_allclose(got[:T], want, rtol=1e-5, atol=1e-7)
    assert np.isnan(got[T]).all()
    if n_iter == 20:  # (near doubly stochastic: each sum 1 less about what its eps keeps)
        for axis in (1, 2):
            assert (np.abs(got[:T].sum(axis=axis) - 1.0) < 2 * MHC_EPS).all()


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
def test_the_mhc_mix_spreads_the_output_and_mixes_the_streams(rt, T):
    """``stream_dst = post_dst * out + sum_src comb[src, dst] stream_src`` in place (models/glm5_next.py ``hc_post``);
    a row wider than the block (300 > 256)."""
    rng = np.random.default_rng(40 + T)
    n_hc, n_embd = 4, 300
    streams = rng.standard_normal((T, n_hc, n_embd)).astype(np.float32)
    post = (rng.random((T, n_hc)) * 2).astype(np.float32)
    comb = rng.random((T, n_hc, n_hc)).astype(np.float32)
    out = rng.standard_normal((T, n_embd)).astype(np.float32)
    want = streams.copy()
    Glm5NextModel.hc_post(types.SimpleNamespace(hc_dev=None), want, out, post, comb)
    got = rt.xp.asarray(streams.copy())
    HyperConnections.mix(got, rt.xp.asarray(post), rt.xp.asarray(comb), rt.xp.asarray(out))
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-5)


def test_the_mean_is_the_streams_average(rt):
    """The row GLM's final norm reads: the streams' mean, each token's; the rows past T untouched."""
    rng = np.random.default_rng(50)
    T, n_hc, n_embd = 3, 4, 300
    streams = rng.standard_normal((T, n_hc, n_embd)).astype(np.float32)
    x = rt.xp.full((T + 1, n_embd), np.nan, np.float32)
    HyperConnections.mean(rt.xp.asarray(streams), x[:T])
    got = rt.asnumpy(x)
    np.testing.assert_allclose(got[:T], streams.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert np.isnan(got[T]).all()


def test_shapes_that_do_not_match_are_refused(rt):
    """More streams than the kernel holds, a mix count that is neither hc, 2 hc nor (2 + hc) hc, a post of another shape;
    a Sinkhorn matrix without its mixes, a mix or a mean of other shapes."""
    xp, hc = rt.xp, HyperConnections(EPS, MAGNITUDE)
    n = MAX_HC + 1
    with pytest.raises(ValueError, match="pre"):
        hc.pre(xp.zeros((1, 2 * n), np.float32), np.zeros(2 * n, np.float32), np.ones(2, np.float32), xp.zeros((1, n, 8), np.float32),
               xp.zeros((1, 8), np.float32), xp.zeros((1, n), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="pre"):
        hc.pre(xp.zeros((1, 6), np.float32), np.zeros(6, np.float32), np.ones(2, np.float32), xp.zeros((1, 4, 8), np.float32),
               xp.zeros((1, 8), np.float32), xp.zeros((1, 4), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="post"):
        HyperConnections.post(xp.zeros((2, 4, 8), np.float32), xp.zeros((2, 3), np.float32), xp.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="sinkhorn"):  # (HY V4's 2 hc mixes: no Sinkhorn logits)
        hc.sinkhorn(xp.zeros((1, 8), np.float32), np.zeros(8, np.float32), np.ones(3, np.float32), xp.zeros((1, 4, 4), np.float32), 3)
    with pytest.raises(ValueError, match="mix"):
        HyperConnections.mix(xp.zeros((2, 4, 8), np.float32), xp.zeros((2, 4), np.float32), xp.zeros((2, 4, 3), np.float32),
                             xp.zeros((2, 8), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="mean"):
        HyperConnections.mean(xp.zeros((2, 4, 8), np.float32), xp.zeros((2, 4), np.float32))
