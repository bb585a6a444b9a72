"""The compressed cache's Hadamard rotation on heads that are no power of two: block-diagonal, on both devices.

A head of ``n = m * 2^k`` channels (``2^k`` the largest power of two dividing it: Phi-3's 96 = 3 x 32, MLA's latent
576 = 9 x 64, the tiny fixtures' 40 = 5 x 8) rotates by ``blockdiag(H_{2^k}, ..., H_{2^k})`` (``cache/quant.py``
hadamard): orthonormal, symmetric and its own inverse as Sylvester's ``H`` is, so every place that applies it (keys,
queries, values in, outputs back) stays exact for attention.  The butterflies turn each block on its own, on the CPU
(``ops/cpu/hadamard.py`` fwht: the vector IR for blocks of 64, 128, 256) and on the device (``kvquant.cu`` kq_fwht:
the stages below the block pair channels within a block already).  Power-of-two heads are rotated as before.

The default cache rotates where every block is at least ``MIN_ROTATION_BLOCK`` (8) channels wide, and not below;
``rotate=1`` takes any even head (an odd one, blocks of a single channel, is refused in one line).  Held to: the matrix
(exactly), the butterflies to the matrix product (float32 rounding), a 96- and a 576/512-wide 4-bit cache rotated by
default with a smaller attention error than unrotated on K/V with outlier channels (relative RMS, 0.74 and 0.72 of
the unrotated cache's), and the device's compressed cache
(on the emulator where there is no GPU) within 2e-3 of the CPU's (tests/test_gpu_alibi_sinks.py's bound).
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import rel_err

from kvrun.cache.base import LayerSpec
from kvrun.cache.factory import make_cache
from kvrun.cache.insert import fwht_copy
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.cache.quant import MIN_ROTATION_BLOCK, hadamard, rotation_block
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

needs_device = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

WIDTHS = [24, 40, 80, 96, 192, 576, 512]  # tiny fixtures, Phi-2 / StableLM, Phi-3, DeepSeek's expanded, MLA's latent, its values


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


@pytest.mark.parametrize("n", WIDTHS)
def test_the_rotation_is_block_diagonal_hadamard_orthonormal_and_its_own_inverse(n):
    b = rotation_block(n)
    assert b & (b - 1) == 0 and n % b == 0 and (n // b) % 2 == 1  # (the largest power of two dividing n)
    h = hadamard(n).astype(np.float64)
    np.testing.assert_allclose(h, np.kron(np.eye(n // b), _sylvester(b)), atol=1e-7)
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_allclose(h @ h, np.eye(n), atol=1e-6)


def test_power_of_two_heads_keep_sylvesters_matrix_and_odd_heads_are_refused():
    for n in (8, 64, 256):
        np.testing.assert_allclose(hadamard(n), _sylvester(n), atol=1e-7)
    with pytest.raises(ValueError, match="needs an even head size .*, got 41$"):
        hadamard(41)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cpu_butterflies_turn_each_block_as_the_matrix(dtype):
    rng = np.random.default_rng(0)
    for n in WIDTHS + [6, 64]:
        x = rng.standard_normal((3, 2, n)).astype(dtype)
        want = x.astype(np.float64) @ hadamard(n).astype(np.float64)
        got = fwht_copy(x)
        assert got.dtype == dtype and np.abs(got - want).max() <= (2e-6 if dtype == np.float32 else 1e-6), n
        np.testing.assert_allclose(fwht_copy(got), x, atol=2e-6)  # (its own inverse)


@needs_device
def test_the_device_butterflies_are_the_cpus(rt):
    """``kv_fwht_rows`` (a decode step's output back from the rotated V basis) on rows that are no power of two:
    the CPU's butterflies in the same order, so the same floats."""
    from kvrun.ops.gpu import kvquant

    rng = np.random.default_rng(1)
    for n in (24, 96, 576):
        x = rng.standard_normal((5, n)).astype(np.float32)
        out = rt.xp.zeros((5, n), np.float32)
        kvquant.fwht_rows(rt.xp.asarray(x), out)
        np.testing.assert_array_equal(rt.asnumpy(out), fwht_copy(x))
    with pytest.raises(ValueError, match="rows of 41 .even"):
        kvquant.fwht_rows(rt.xp.zeros((1, 41), np.float32), rt.xp.zeros((1, 41), np.float32))


# ----------------------------------------------------------------- the cache
SPECS = {  # name -> (spec, the block its keys / values rotate by)
    "phi3-96": (LayerSpec(4, 2, 96, 96, 0, 96**-0.5), (32, 32)),
    "mla-576/512": (LayerSpec(4, 1, 576, 512, 0, 576**-0.5), (64, 512)),
}


def _outlier_qkv(rng: np.random.Generator, spec: LayerSpec, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys and values with a few channels ten times the rest (as real keys have: what the rotation is for)."""
    q = rng.standard_normal((T, spec.n_head, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((T, spec.n_head_kv, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((T, spec.n_head_kv, spec.head_dim_v)).astype(np.float32)
    for x in (k, v):
        x[..., 3 :: 37] *= 10.0
    return q, k, v


def _rms(want: np.ndarray, got: np.ndarray) -> float:
    """The relative RMS error (the keys' smoothing already tames their outlier channels, so the gain shows over all
    outputs rather than in the largest one)."""
    return float(np.sqrt(((got - want) ** 2).sum() / (want**2).sum()))


def _outputs(cache, q, k, v, chunks) -> np.ndarray:
    out, p = [], 0
    for T in chunks:
        o = np.zeros((T, q.shape[1], v.shape[2]), np.float32)
        cache.update_and_attend(q[p : p + T], k[p : p + T], v[p : p + T], np.arange(p, p + T, dtype=np.int32), o)
        out.append(o)
        p += T
    return np.concatenate(out)


@pytest.mark.parametrize("name", list(SPECS))
def test_the_default_4_bit_cache_rotates_heads_of_any_block_and_loses_less_for_it(name):
    """Rotated by default (keys, queries, values; the blocks as the matrix says), the attention output closer to the
    fp16 cache's than with ``rotate=0``; an explicit ``rotate=1`` is the default."""
    spec, (bk, bv) = SPECS[name]
    n_ctx, chunks = 64, (24, 1, 1, 1)
    layer = make_cache([spec], n_ctx, 32, KVConfig(bits=4, residual=2))[0]
    assert layer.basis.rot is not None and layer.rot_v is not None
    assert rotation_block(spec.head_dim) == bk >= MIN_ROTATION_BLOCK and rotation_block(spec.head_dim_v) == bv
    np.testing.assert_array_equal(layer.rot_v, hadamard(spec.head_dim_v))
    q, k, v = _outlier_qkv(np.random.default_rng(2), spec, sum(chunks))
    want = _outputs(PlainLayerCache(spec, n_ctx), q, k, v, chunks)
    rotated = _outputs(layer, q, k, v, chunks)
    plain = _outputs(make_cache([spec], n_ctx, 32, KVConfig(bits=4, residual=2, rotate=False))[0], q, k, v, chunks)
    asked = _outputs(make_cache([spec], n_ctx, 32, KVConfig(bits=4, residual=2, rotate=True))[0], q, k, v, chunks)
    np.testing.assert_array_equal(asked, rotated)
    assert _rms(want, rotated) < 0.85 * _rms(want, plain), (_rms(want, rotated), _rms(want, plain))  # (measured 0.74, 0.72)


def test_the_default_skips_blocks_under_the_threshold_and_refuses_odd_heads_in_one_line():
    small = LayerSpec(2, 1, 12, 12, 0, 0.3)  # (blocks of 4)
    assert make_cache([small], 32, 8, KVConfig(bits=4))[0].rot_v is None
    assert make_cache([small], 32, 8, KVConfig(bits=4, rotate=True))[0].rot_v.shape == (12, 12)  # (asked for: it can)
    with pytest.raises(ValueError, match="needs an even head size .*, got 9$"):
        make_cache([LayerSpec(2, 1, 9, 9, 0, 0.3)], 32, 8, KVConfig(bits=4, rotate=True))


@needs_device
@pytest.mark.parametrize("name", list(SPECS))
def test_the_devices_compressed_cache_rotates_as_the_cpus(gpu_env, name):
    """The default 4-bit cache on the device (rows rotated and quantized by kvquant.cu, the output turned back by
    kv_fwht_rows): a prefill past the fp16 window, then decode steps, within 2e-3 of the CPU's."""
    from kvrun.ops.gpu import kernels as K

    spec, _ = SPECS[name]
    kv = KVConfig(bits=4, residual=2)
    cpu, gpu = make_cache([spec], 64, 32, kv)[0], make_cache([spec], 64, 32, kv, device="gpu")[0]
    assert gpu.basis.rot is not None and gpu.d_rot_v is not None
    cpu.int_keys = False  # float queries, as the device's
    q, k, v = _outlier_qkv(np.random.default_rng(3), spec, 12)
    xp, p = K.runtime().xp, 0
    for T in (9, 1, 1, 1):
        pos = np.arange(p, p + T, dtype=np.int32)
        want, got = np.zeros((T, spec.n_head, spec.head_dim_v), np.float32), xp.zeros((T, spec.n_head, spec.head_dim_v), np.float32)
        cpu.update_and_attend(q[p : p + T], k[p : p + T], v[p : p + T], pos, want)
        gpu.update_and_attend(xp.asarray(q[p : p + T]), xp.asarray(k[p : p + T]), xp.asarray(v[p : p + T]), pos, got)
        assert rel_err(want, K.runtime().asnumpy(got)) <= 2e-3, f"chunk of {T} at {p}"
        p += T
