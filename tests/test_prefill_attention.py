"""Prefill attention (ops/cpu/attention.py) equals softmax attention written out in float64."""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.ops.cpu.attention import QUERY_BLOCK, attend_group


def _reference(q, k, v, kpos, qpos, window, scale, softcap, bias):
    s = np.einsum("tgd,nd->tgn", q.astype(np.float64), k.astype(np.float64)) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    s = s + bias
    vis = (kpos[None, :] <= qpos[:, None]) & ((window <= 0) | (qpos[:, None] - kpos[None, :] < window))
    s = np.where(vis[:, None, :], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("tgn,nd->tgd", p, v), p.sum(axis=1)


@pytest.mark.parametrize("window", [0, 100])
@pytest.mark.parametrize("softcap,with_bias", [(0.0, False), (30.0, True)])
def test_blocked_prefill_equals_dense_softmax(window, softcap, with_bias):
    rng = np.random.default_rng(window + int(softcap))
    T, gqa, D, n_old = 2 * QUERY_BLOCK + 44, 3, 32, 90  # three query blocks after 90 cached keys
    n = n_old + T
    q = rng.standard_normal((T, gqa, D)).astype(np.float32)
    k = rng.standard_normal((n, D)).astype(np.float32)
    v = rng.standard_normal((n, D)).astype(np.float32)
    kpos = np.arange(n, dtype=np.int32)
    order = rng.permutation(n)  # a ring holds its slots in any order
    k, v, kpos = k[order], v[order], kpos[order]
    qpos = np.arange(n_old, n, dtype=np.int32)
    bias = (rng.standard_normal(n) * 0.3).astype(np.float32) if with_bias else np.zeros(n, np.float32)
    out = np.empty((T, gqa, D), np.float32)
    probs = attend_group(q, k, v, kpos, qpos, window, 0.2, softcap, out, bias if with_bias else None, probs=True)
    want, want_p = _reference(q, k, v, kpos, qpos, window, 0.2, softcap, bias)
    assert np.abs(out - want).max() < 1e-4
    assert np.abs(probs - want_p).max() < 1e-5
    assert np.allclose(probs.sum(axis=1), gqa, atol=1e-4)


def test_a_query_that_sees_no_key_gets_zeros():
    """Keys only at positions 10..19: the queries at 3 and 5 see none and get zeros (and no
    probability), the query at 15 attends to positions 10..15 as the dense softmax does."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 2, 16)).astype(np.float32)
    k = rng.standard_normal((10, 16)).astype(np.float32)
    v = rng.standard_normal((10, 16)).astype(np.float32)
    kpos = np.arange(10, 20, dtype=np.int32)
    qpos = np.array([3, 5, 15], np.int32)
    out = np.full((3, 2, 16), np.nan, np.float32)
    probs = attend_group(q, k, v, kpos, qpos, 0, 0.25, 0.0, out, probs=True)
    assert not out[:2].any() and not probs[:2].any()
    want, want_p = _reference(q[2:], k, v, kpos, qpos[2:], 0, 0.25, 0.0, np.zeros(10))
    assert np.abs(out[2:] - want).max() < 1e-5
    assert np.abs(probs[2:] - want_p).max() < 1e-5


def test_query_blocks_on_threads_give_the_same_bits(monkeypatch):
    """Beside the VNNI GEMM (BLAS on one thread) the query blocks are shared among threads;
    each block is the same arithmetic on any thread, so the result does not depend on them."""
    from kvrun.ops.cpu import attention

    rng = np.random.default_rng(7)
    T, gqa, D = 3 * QUERY_BLOCK + 5, 2, 32
    q = rng.standard_normal((T, gqa, D)).astype(np.float32)
    k = rng.standard_normal((T, D)).astype(np.float32)
    v = rng.standard_normal((T, D)).astype(np.float32)
    pos = np.arange(T, dtype=np.int32)
    got = {}
    for nt in (1, 3):
        monkeypatch.setattr(attention, "numpy_threads", lambda nt=nt: nt)
        out = np.empty((T, gqa, D), np.float32)
        probs = attend_group(q, k, v, pos, pos, 0, 0.2, 0.0, out, probs=True)
        got[nt] = (out, probs)
    np.testing.assert_array_equal(got[1][0], got[3][0])
    np.testing.assert_array_equal(got[1][1], got[3][1])
    want, _ = _reference(q, k, v, pos, pos, 0, 0.2, 0.0, np.zeros(T))
    assert np.abs(got[3][0] - want).max() < 1e-4


@pytest.mark.parametrize("gqa", [1, 3])
@pytest.mark.parametrize("cols", ["all", "prefix", "scattered"])
def test_group_probs_are_numpys_divide_sum_and_copy_bit_for_bit(gqa, cols):
    """The one-pass sum of a block's probabilities over the group (what eviction policies score
    from) keeps the arithmetic of the numpy lines it replaced: ``s /= tot``, ``sum(axis=1)``, the copy."""
    from kvrun.ops.cpu.attention import _ALL, _group_probs

    rng = np.random.default_rng(gqa)
    T, n, width = 9, 40, 64
    s = rng.random((T * gqa, n)).astype(np.float32)
    tot = (rng.random((T * gqa, 1)) + 0.1).astype(np.float32)
    idx = {"all": None, "prefix": slice(0, n), "scattered": np.sort(rng.choice(width, n, replace=False))}[cols]
    want, got = np.zeros((T + 4, width), np.float32), np.zeros((T + 4, width), np.float32)
    ref = s.copy()
    ref /= tot
    want[3 : 3 + T, slice(0, n) if idx is None else idx] = ref.reshape(T, gqa, -1).sum(axis=1)
    _group_probs(s, tot[:, 0], gqa, got, 3, _ALL if not isinstance(idx, np.ndarray) else idx.astype(np.int64))
    np.testing.assert_array_equal(got, want)
