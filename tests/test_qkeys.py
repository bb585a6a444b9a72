"""Integer key scores (``kvrun.ops.cpu.qkeys``): 2- and 4-bit keys meet int8 queries in integer dot products (VNNI, or AVX2).

The specification: a key's score is ``q8 . k``, ``k`` the dequantized key and ``q8`` the query
rounded to int8 per group of G (``dq = max|q_g| / 127``), to float32 rounding; nothing else is
written; decode attention over a compressed cache with integer keys is attention whose pool
slots are scored with ``q8`` (fp16 slots keep the float query).
"""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.cache.quant import dequantize, quantize
from kvrun.ops.cpu import qkeys
from kvrun.ops.cpu.qattention import attend_decode_q

needs_int_keys = pytest.mark.skipif(not qkeys.HAVE_INT_KEYS, reason="integer key scores need a host with VNNI or AVX2")


def quantize_q(q: np.ndarray, G: int) -> np.ndarray:
    """The int8 queries of the specification, dequantized (float64): rint(q / dq) dq per group of G."""
    g = np.ascontiguousarray(q, np.float32).reshape(*q.shape[:-1], -1, G)
    amax = np.abs(g).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, np.float32(1.0)), np.float32(0.0)).astype(np.float32)
    qi = np.clip(np.rint(g * inv), -127, 127)
    return (qi * (amax / np.float32(127.0)).astype(np.float64)).reshape(q.shape)


def _prepared(q: np.ndarray, w: int, G: int) -> tuple:
    n, L = q.shape[0], qkeys.L
    kq = (np.zeros((n, G * L), np.int8), np.zeros((n, 2 * L), np.float32))
    qkeys.prep_queries(q, w, G, *kq)
    return kq


def test_the_reduction_tree_sums_each_group_of_every_layout():
    """Each (width, group) leaves a group's sum spread over G w / 32 lanes of one load: the tree's plan
    (checked inside by following every lane's sources) must bring each group's lanes together."""
    for w, G in qkeys.PAIRS:
        levels, perm = qkeys._tree_plan(G * w // 32)
        assert sorted(perm) == list(range(qkeys.L))
        assert len(levels) == (G * w // 32).bit_length() - 1


@needs_int_keys
@pytest.mark.parametrize(
    "w, G, D, gqa, n, r0",
    [(4, 64, 64, 3, 203, 3), (2, 64, 64, 3, 100, 0), (4, 64, 256, 4, 77, 5), (2, 32, 64, 3, 50, 1), (4, 32, 128, 2, 33, 0),
     (2, 128, 256, 4, 41, 2), (4, 128, 128, 1, 19, 0), (2, 64, 256, 4, 300, 7), (4, 64, 64, 3, 1, 0), (2, 32, 256, 2, 600, 9)],
)  # fmt: skip
def test_key_scores_are_the_int8_query_dot_products(w, G, D, gqa, n, r0):
    """Whole blocks and a range's last rows (a padded copy), several chunks, a row offset into the pool,
    1 to 8 groups a row: float32-close to q8 . k in float64, and only the asked slots written."""
    if (w, G) not in qkeys.PAIRS:
        pytest.skip(f"{w}-bit groups of {G} take the float tiles with {qkeys.L} lanes")
    rng = np.random.default_rng(w * 1000 + D + n)
    k = (rng.standard_normal((r0 + n, D)) * 2 + 0.5).astype(np.float32)
    kc, km, lut = quantize(k, w, G)
    kd = dequantize(kc, km, lut, w, G, D)
    q = rng.standard_normal((gqa, D)).astype(np.float32)
    kq = _prepared(q, w, G)
    s = np.full((gqa, n + 12), np.nan, np.float32)
    qkeys.key_scores(kc, km, lut, w, G, r0, n, *kq, np.zeros((gqa, qkeys.CHUNK_GROUPS), np.float32), s, 5)
    want = quantize_q(q, G) @ kd[r0:].astype(np.float64).T
    got = s[:, 5 : 5 + n]
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
    assert np.isnan(s[:, :5]).all() and np.isnan(s[:, 5 + n :]).all()


def _attend(q, k16, v16, pools, G, pos, int_keys, n_threads=2):
    (kc0, km0, vc0, vm0, w0, kl0, vl0), (kc1, km1, vc1, vm1, w1, kl1, vl1) = pools
    n_kv, N = k16.shape[0], pos.shape[1]
    T, H, D = q.shape
    out = np.zeros((T, H, D), np.float32)
    probs = np.zeros((n_kv, N), np.float32)
    attend_decode_q(
        q, np.array([10_000], np.int32), k16.view(np.uint16), v16.view(np.uint16),
        kc0, km0, vc0, vm0, w0, w0, kc1, km1, vc1, vm1, w1, w1, kl0, vl0, kl1, vl1, G, pos,
        np.zeros((0, 0), np.float32), 0, D**-0.5, 0.0, out, np.zeros((n_kv, H // n_kv, N), np.float32), probs,
        split_for=n_threads, int_keys=int_keys,
    )  # fmt: skip
    return out, probs


def _cache(rng, n_kv, D, F, caps, widths, G):
    """fp16 slots and two pools of the given widths: the stored arrays and their float rows."""
    k = (rng.standard_normal((n_kv, F + sum(caps), D)) * 1.5).astype(np.float32)
    v = rng.standard_normal((n_kv, F + sum(caps), D)).astype(np.float32)
    k16, v16 = k[:, :F].astype(np.float16), v[:, :F].astype(np.float16)
    pools, kf, vf = [], [], []
    lo = F
    for cap, w in zip(caps, widths, strict=True):
        kc, km, klut = quantize(k[:, lo : lo + cap].reshape(-1, D), w, G)
        vc, vm, vlut = quantize(v[:, lo : lo + cap].reshape(-1, D), w, G)
        kf.append(dequantize(kc, km, klut, w, G, D).reshape(n_kv, cap, D))
        vf.append(dequantize(vc, vm, vlut, w, G, D).reshape(n_kv, cap, D))
        pools.append((*(a.reshape(n_kv, cap, *a.shape[1:]) for a in (kc, km, vc, vm)), w, klut, vlut))
        lo += cap
    return k16, v16, pools, kf, vf


@needs_int_keys
@pytest.mark.parametrize("n_kv, H, D, G, widths", [(3, 9, 64, 32, (4, 2)), (1, 4, 256, 64, (4, 2)), (2, 4, 128, 64, (2, 4)), (3, 9, 64, 64, (4, 3))])
def test_decode_attention_with_integer_keys_scores_pool_slots_with_int8_queries(n_kv, H, D, G, widths):
    """fp16 slots, a pool of each width and a split over two threads: the output and probabilities of
    softmax attention whose fp16 scores use q and whose pool scores use q8 (a 3-bit pool: q, the float
    tiles); and within a few 1e-3 of float-query attention (the int8 rounding costs little)."""
    rng = np.random.default_rng(D + G + widths[1])
    F, caps = 40, (700, 300)
    k16, v16, pools, kf, vf = _cache(rng, n_kv, D, F, caps, widths, G)
    N = F + sum(caps)
    pos = np.arange(N, dtype=np.int32)[None, :]
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    out, probs = _attend(q, k16, v16, pools, G, pos, int_keys=True)
    q8 = quantize_q(q[0], G)
    gqa = H // n_kv
    for h in range(H):
        kh = h // gqa
        parts = [k16[kh].astype(np.float64) @ q[0, h].astype(np.float64)]
        for w, kd in zip(widths, kf, strict=True):
            qh = q8[h] if (w, G) in qkeys.PAIRS else q[0, h].astype(np.float64)
            parts.append(kd[kh].astype(np.float64) @ qh)
        s = np.concatenate(parts) * D**-0.5
        p = np.exp(s - s.max())
        p /= p.sum()
        vv = np.concatenate([v16[kh].astype(np.float64), *(x[kh] for x in vf)])
        np.testing.assert_allclose(out[0, h], p @ vv, atol=2e-5)
    float_out, _ = _attend(q, k16, v16, pools, G, pos, int_keys=False)
    assert np.abs(out - float_out).max() <= 2e-2 * np.abs(float_out).max()
    np.testing.assert_allclose(probs.sum(axis=1), gqa, rtol=1e-5)


def test_without_a_kernel_the_float_tiles_score_every_key():
    """3- and 8-bit pools (and any pool on a host without VNNI) take the float tiles: bitwise the
    same whether integer keys are asked for or not."""
    rng = np.random.default_rng(2)
    k16, v16, pools, _, _ = _cache(rng, 3, 64, 20, (300, 200), (3, 8), 32)
    pos = np.arange(520, dtype=np.int32)[None, :]
    q = rng.standard_normal((1, 9, 64)).astype(np.float32)
    a, b = _attend(q, k16, v16, pools, 32, pos, True), _attend(q, k16, v16, pools, 32, pos, False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@needs_int_keys
def test_the_8_lane_kernel_of_avx_vnni_hosts(tmp_path):
    """AVX-VNNI hosts (no AVX-512) score keys on 8-lane ymm vectors: half the groups a block, a 4-bit group
    of 128 left to the float tiles.  Forced here in a subprocess with a Numba cache of its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_qkeys import _prepared, quantize_q
from kvrun.cache.quant import dequantize, quantize
from kvrun.ops.cpu import qkeys
assert qkeys.L == 8 and (4, 128) not in qkeys.PAIRS
for w, G, D, gqa, n in [(4, 64, 64, 3, 203), (2, 32, 256, 4, 77), (2, 128, 128, 2, 40)]:
    rng = np.random.default_rng(n)
    k = rng.standard_normal((n, D)).astype(np.float32)
    kc, km, lut = quantize(k, w, G)
    q = rng.standard_normal((gqa, D)).astype(np.float32)
    s = np.full((gqa, n), np.nan, np.float32)
    qkeys.key_scores(kc, km, lut, w, G, 0, n, *_prepared(q, w, G), np.zeros((gqa, qkeys.CHUNK_GROUPS), np.float32), s, 0)
    want = quantize_q(q, G) @ dequantize(kc, km, lut, w, G, D).astype(np.float64).T
    assert np.abs(s - want).max() <= 2e-6 * np.abs(want).max(), (w, G, D)
print("ok")
"""
    env = dict(os.environ, KVRUN_GEMM_LANES="8", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
