"""The device quantizer and decode push (ops/gpu/kvquant.cu) against their CPU twins.

``rt`` (conftest.py) is real CUDA where a GPU is, else the kernel emulator.
The quantizer follows ``cache.quant.quantize_row`` step for step; only the
order of a group's sums differs, so a near-tie between two clipping candidates
may go the other way: codes agree for almost every group, and where they do
not, the squared error of the device's choice is within a hair of the CPU's.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from devicexp import COPIES

from kvrun.cache.base import LayerSpec
from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.quant import CLIPS, calibrate_lut, dequantize, quantize
from kvrun.ops.gpu import emulate, kvquant


def _rows(rng, n: int, D: int) -> np.ndarray:
    x = rng.standard_normal((n, D)).astype(np.float32)
    x[:, :3] += 4.0  # outlier channels and an offset, as real keys have
    x[1::9] += 2.5
    x[::7] = 0.0  # all-zero rows: the flat-group branch
    return x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("D, G", [(64, 32), (128, 16), (256, 64), (96, 32), (16, 16), (48, 8)])
def test_quantize_rows_matches_the_cpu_quantizer(rt, bits, D, G):
    rng = np.random.default_rng(bits * 1000 + D + G)
    x = _rows(rng, 40, D)
    lut = calibrate_lut(x, bits)
    codes, meta, _ = quantize(x, bits, G, lut)
    xp = rt.xp
    d_codes = xp.zeros(codes.shape, np.uint8)
    d_meta = xp.zeros(meta.shape, np.uint8)
    clips = kvquant.clip_table([CLIPS[bits]])
    kvquant.quantize_rows(xp.asarray(x), bits, G, xp.asarray(lut), xp.asarray(clips[0]), d_codes, d_meta)
    gc, gm = rt.asnumpy(d_codes), rt.asnumpy(d_meta)
    same_meta = (gm == meta).all(axis=2).mean()
    assert same_meta >= 0.97, f"only {same_meta:.3f} of groups chose the CPU's (scale, zero)"
    ref = dequantize(codes, meta, lut, bits, G, D)
    got = dequantize(gc, gm, lut, bits, G, D)
    err_ref = ((ref - x) ** 2).reshape(40, D // G, G).sum(-1)
    err_got = ((got - x) ** 2).reshape(40, D // G, G).sum(-1)
    # a group that chose differently chose a candidate (nearly) as good
    assert np.all(err_got <= err_ref * 1.02 + 1e-6)
    assert np.all(got[::7] == 0.0)


@pytest.mark.parametrize("D", [64, 256, 48])
def test_16_bit_rows_are_the_cpus_float16_bytes(rt, D):
    """fp16 pools (an eviction policy alone) are stored on the device too: a 16-bit row is its float16
    bytes, bitwise what the CPU stores (subnormals, overflow to inf and all-zero rows included)."""
    rng = np.random.default_rng(D)
    x = _rows(rng, 40, D)
    x[3, :4] = [1e-6, -3e-8, 70000.0, -0.0]
    with np.errstate(over="ignore"):  # (the overflow to inf is meant)
        codes, meta, _ = quantize(x, 16, 32)
    xp = rt.xp
    d_codes, d_meta = xp.zeros(codes.shape, np.uint8), xp.zeros(meta.shape, np.uint8)
    clips = kvquant.clip_table([CLIPS[16]])
    kvquant.quantize_rows(xp.asarray(x), 16, 32 if D % 32 == 0 else 16, xp.asarray(np.ones(256, np.float32)), xp.asarray(clips[0]), d_codes, d_meta)
    np.testing.assert_array_equal(rt.asnumpy(d_codes), codes)


@pytest.mark.parametrize("n", [16, 64, 128, 256])
def test_fwht_rows_is_the_hadamard_product(rt, n):
    """A decode step's output back from the rotated V basis: x @ H, as the CPU's matmul by H (to float rounding)."""
    from kvrun.cache.quant import hadamard

    x = np.random.default_rng(n).standard_normal((3, 5, n)).astype(np.float32)
    out = rt.xp.zeros(x.shape, np.float32)
    kvquant.fwht_rows(rt.xp.asarray(x), out)
    np.testing.assert_allclose(rt.asnumpy(out), x @ hadamard(n), rtol=0, atol=2e-6 * np.abs(x).max() * np.sqrt(n))
    with pytest.raises(ValueError, match="even"):  # (48: blocks of 16, tests/test_block_rotation.py)
        kvquant.fwht_rows(rt.xp.zeros((2, 47), np.float32), rt.xp.zeros((2, 47), np.float32))


def test_unsupported_rows_are_refused(rt):
    assert kvquant.supported(64, 64, 32) is None
    assert "power of two" in kvquant.supported(64, 64, 24)
    assert "multiples of the group" in kvquant.supported(80, 80, 32)
    assert kvquant.supported(16, 16, 16) is None  # padded to a warp
    xp = rt.xp
    with pytest.raises(ValueError, match="no device quantizer"):
        kvquant.quantize_rows(xp.zeros((1, 64), np.float32), 5, 32, xp.zeros(256, np.float32), xp.zeros(8, np.float32), None, None)


# ----------------------------------------------------------------- the GPU layer cache's decode push
SPEC = LayerSpec(n_head=4, n_head_kv=2, head_dim=64, head_dim_v=64, scale=64**-0.5)
SPEC_SWA = LayerSpec(n_head=4, n_head_kv=2, head_dim=64, head_dim_v=64, scale=64**-0.5, window=40)
PUSH_KV = [
    ("2", SPEC),  # the default: a 4-bit-key warm tier cooling into 2 bits, groups of 64
    ("2,warm=0,group=32", SPEC),
    ("4", SPEC),
    ("3,residual=8,group=16", SPEC),
    ("8,residual=4", SPEC),
    ("2", SPEC_SWA),  # a sliding-window layer: a ring of its window
    ("4,rotate=0", SPEC),
]


@pytest.mark.skipif(not emulate.available(), reason="no host C++ compiler for the kernel emulator")
@pytest.mark.parametrize("spec, layer", PUSH_KV, ids=[f"{s}-{'swa' if l.window else 'global'}" for s, l in PUSH_KV])
def test_steady_state_decode_stays_on_the_device_and_stores_what_the_cpu_stores(strict, spec, layer):
    """Past calibration a decode step copies nothing down: the device quantizes the token that
    leaves the fp16 window (and cools the warm tier's oldest); the cache holds the CPU's positions,
    bitwise its fp16 window, its codes, and attends as it does.  Prefill chunks attend on the
    device too (stored rows dequantized to fp16 there: within 2e-3 of the CPU's float32 rows)."""
    n_ctx = 96
    kv = KVConfig.parse(spec).validate(n_ctx)
    cpu = CompressedLayerCache(layer, kv, n_ctx)
    cpu.int_keys = False  # float queries, as the device's kernels
    gpu = GPUCompressedLayerCache(layer, kv, n_ctx)
    xp, rng = strict.xp, np.random.default_rng(zlib.crc32(spec.encode()) + layer.window)
    n_kv, H, D = layer.n_head_kv, layer.n_head, layer.head_dim
    p, on_device = 0, 0
    for T in [24] + [1] * 80 + [40] + [1] * 70:  # the ring wraps (> 96 slots): the oldest tokens are replaced
        q = rng.standard_normal((T, H, D)).astype(np.float32)
        k = rng.standard_normal((T, n_kv, D)).astype(np.float32)
        k[..., :4] += 3.0  # an offset and outlier channels, as real keys have
        v = rng.standard_normal((T, n_kv, D)).astype(np.float32)
        pos = np.arange(p, p + T, dtype=np.int32)
        want = np.zeros((T, H, D), np.float32)
        cpu.update_and_attend(q, k, v, pos, want)
        out = xp.full((T, H, D), np.nan, np.float32)
        steady = gpu._steady_state(p)
        COPIES.clear()
        gpu.update_and_attend(xp.asarray(q), xp.asarray(k), xp.asarray(v), pos, out)
        if steady:  # calibrated: decode tokens and prefill chunks are stored on the device
            assert COPIES == [], f"at {p}: {COPIES}"
            on_device += 1
        elif T > 4:  # the first chunk attends on the device; the host calibrates from its K/V (and q)
            assert {s for _, s in COPIES} <= {(T, n_kv, D), (T, H, D)}, f"at {p}: {COPIES}"
        np.testing.assert_array_equal(gpu.pos, cpu.pos, err_msg=f"positions differ at {p}")
        got = strict.asnumpy(out)
        assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max(), f"attention differs at {p}"
        p += T
    assert on_device > 60
    gpu._pull()
    for a, b in ((gpu.k16, cpu.k16), (gpu.v16, cpu.v16)):
        # decode tokens are bitwise the CPU's (the same butterflies); a prefill chunk's
        # keys are (k t) @ H there, an einsum here: rarely one fp16 ulp apart
        ulps = np.abs(a.astype(np.int32) - b.astype(np.int32))
        assert ulps.max() <= 1 and (ulps > 0).mean() < 1e-3
    for a, b in zip(gpu.pools, cpu.pools, strict=True):
        for name in ("kc", "km", "vc", "vm"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.size == 0 or (x == y).mean() >= 0.99, f"{name}: {(x == y).mean():.4f} of bytes equal"
    np.testing.assert_array_equal(strict.asnumpy(gpu.d_pos), cpu.pos)
    # a prefill chunk after device writes works on the host copy, brought down first
    q = rng.standard_normal((8, H, D)).astype(np.float32)
    k = rng.standard_normal((8, n_kv, D)).astype(np.float32)
    v = rng.standard_normal((8, n_kv, D)).astype(np.float32)
    pos = np.arange(p, p + 8, dtype=np.int32)
    want = np.zeros((8, H, D), np.float32)
    cpu.update_and_attend(q, k, v, pos, want)
    out = xp.zeros((8, H, D), np.float32)
    gpu.update_and_attend(xp.asarray(q), xp.asarray(k), xp.asarray(v), pos, out)
    assert np.abs(strict.asnumpy(out) - want).max() <= 2e-3 * np.abs(want).max()
    assert gpu.mirror_mismatches() == []
