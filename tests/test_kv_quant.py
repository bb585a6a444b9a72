"""Group-wise KV quantization: layout, packing, error bounds, scale table, rotation, and the decode kernel.

The layout is documented in ``kvrun.ops.cpu.qattention``; ``_unpack_reference``
below re-reads it independently of the kernels.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import pytest

from kvrun.cache.quant import calibrate_lut, dequantize, hadamard, quantize, row_bytes
from kvrun.ops.cpu.qattention import attend_decode_q, decode_rows, dequantize_rows, tile_add, tile_add16, tile_dot, tile_dot16

D, G = 64, 32


def _gauss(n: int = 64, d: int = D, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d)) * 3).astype(np.float32)


def _unpack_reference(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, D: int) -> np.ndarray:
    """The documented layout, read with plain Python: group-planar codes, s = lut[u], z = zc (2^b-1)/255.

    3 bits: a 2-bit plane of the low bits (G/4 bytes), then a 1-bit plane of the high bits (G/8 bytes)."""
    per, nb = 8 // bits, G * bits // 8
    L = (1 << bits) - 1
    out = np.zeros((codes.shape[0], D))
    for r in range(codes.shape[0]):
        for g in range(D // G):
            s = float(lut[meta[r, g, 0]])
            z = int(meta[r, g, 1]) * L / 255
            if bits == 3:
                lo = _unpack_reference(codes[r : r + 1, g * nb : g * nb + G // 4], np.zeros((1, 1, 2), np.uint8), np.ones(256, np.float32), 2, G, G)
                hi = _unpack_reference(codes[r : r + 1, g * nb + G // 4 : (g + 1) * nb], np.zeros((1, 1, 2), np.uint8), np.ones(256, np.float32), 1, G, G)
                out[r, g * G : (g + 1) * G] = s * (lo[0] + 4 * hi[0] - z)
                continue
            for i in range(nb):
                byte = int(codes[r, g * nb + i])
                for m in range(per):
                    c = (byte >> (m * bits)) & ((1 << bits) - 1)
                    out[r, g * G + m * nb + i] = s * (c - z)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_layout_matches_documentation(bits):
    x = _gauss(8)
    codes, meta, lut = quantize(x, bits, G)
    np.testing.assert_allclose(dequantize(codes, meta, lut, bits, G, D), _unpack_reference(codes, meta, lut, bits, G, D), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("G", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_vector_decoders_read_the_documented_layout(bits, G):
    """Every (width, group) decoder the attention kernel uses (vector IR, or the plain loop for other groups)."""
    rng = np.random.default_rng(bits * 1000 + G)
    D, n = 128, 70
    codes = rng.integers(0, 256, (n, D * bits // 8), dtype=np.uint8)
    meta = rng.integers(0, 256, (n, D // G if bits < 16 else 0, 2), dtype=np.uint8)
    lut = (2.0 ** (-12 + np.arange(256) / 16)).astype(np.float32)
    if bits == 16:
        codes = rng.standard_normal((n, D)).astype(np.float16).view(np.uint8)
        want = codes.view(np.float16).astype(np.float32)
    else:
        want = _unpack_reference(codes, meta, lut, bits, G, D)
    got = np.full((n, D), np.nan, np.float32)
    dequantize_rows(codes, meta, lut, bits, G, got)
    tol = 1e-6 * float(np.abs(want).max())  # float32 rounding of s c - s z
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=tol)
    tile = np.full(5 * D + 3, np.nan, np.float32)  # rows r0..r0+5 of the pool into a flat tile
    decode_rows(codes, meta, lut, bits, G, 11, 5, tile)
    np.testing.assert_allclose(tile[: 5 * D].reshape(5, D), want[11:16], rtol=1e-6, atol=tol)
    assert np.isnan(tile[5 * D :]).all()


@pytest.mark.parametrize("bits, nbytes", [(2, 16), (3, 24), (4, 32), (8, 64), (16, 128)])
def test_codes_really_shrink(bits, nbytes):
    """2-bit: 4 codes per byte; 3-bit: 8 codes in 3 bytes; 4-bit: 2 per byte; 8: 1; 16: fp16."""
    assert row_bytes(D, bits) == nbytes
    codes, meta, _ = quantize(_gauss(4), bits, G)
    assert codes.shape == (4, nbytes)
    assert meta.shape == ((4, D // G, 2) if bits < 16 else (4, 0, 2))
    assert codes.dtype == meta.dtype == np.uint8


# relative RMS error bounds on Gaussian rows (optimal uniform 2-bit on a Gaussian is ~0.34)
@pytest.mark.parametrize("bits, bound", [(2, 0.34), (3, 0.17), (4, 0.085), (8, 0.006), (16, 0.001)])
def test_reconstruction_error_bound(bits, bound):
    x = _gauss(256)
    codes, meta, lut = quantize(x, bits, G)
    y = dequantize(codes, meta, lut, bits, G, D)
    rel = np.sqrt(((y - x) ** 2).mean()) / x.std()
    assert rel < bound, f"{bits}-bit relative RMS error {rel:.4f}"


def test_clipping_search_and_refit_beat_min_max():
    """MSE-optimal clipping plus a least-squares refit: clearly better than plain
    min-max rounding at 2 bits, and each part helps on its own."""
    from kvrun.cache import quant

    x = _gauss(256)
    lut = calibrate_lut(x, 2)
    g = x.reshape(-1, G).astype(np.float64)  # plain min-max: the range split into 3 steps
    lo = g.min(axis=1, keepdims=True)
    s = (g.max(axis=1, keepdims=True) - lo) / 3
    naive = ((lo + s * np.round((g - lo) / s) - g) ** 2).mean()
    errs = {}
    for name, clips in (("refit only", np.array([1.0], np.float32)), ("search", quant.CLIPS[2])):
        saved = quant.CLIPS[2]
        quant.CLIPS[2] = clips
        try:
            c, m, _ = quantize(x, 2, G, lut)
        finally:
            quant.CLIPS[2] = saved
        errs[name] = ((dequantize(c, m, lut, 2, G, D) - x) ** 2).mean()
    assert errs["search"] < 0.7 * naive
    assert errs["refit only"] < naive and errs["search"] < errs["refit only"]


def _candidates(g: np.ndarray, bits: int, lut: np.ndarray, clips: np.ndarray) -> list[tuple[int, int]]:
    """Every (scale code, zero code) the quantizer tries on group ``g``, in plain float64: each clipping
    ratio's step rounded up to the table, and the least-squares refit of that candidate's codes."""
    L = (1 << bits) - 1
    e0 = math.log2(lut[0])
    lo, hi = min(float(g.min()), 0.0), max(float(g.max()), 0.0)
    out = []
    for c in clips.astype(np.float64):
        u = min(255, max(0, math.ceil((math.log2((hi - lo) * c / L) - e0) * 16 - 1e-6)))
        zc = min(255, max(0, round(-lo * c / lut[u] * 255 / L)))
        out.append((u, zc))
        s, z = float(lut[u]), zc * L / 255
        q = np.clip(np.floor(g / s + z + 0.5), 0, L)
        den = len(g) * (q * q).sum() - q.sum() ** 2
        a = (len(g) * (q * g).sum() - q.sum() * g.sum()) / den if den > 0 else 0.0
        if a > 0:
            b = (g.sum() - a * q.sum()) / len(g)
            u = min(255, max(0, round((math.log2(a) - e0) * 16)))
            out.append((u, min(255, max(0, round(-b / lut[u] * 255 / L)))))
    return out


@pytest.mark.parametrize("bits, G", [(2, 32), (2, 64), (3, 32), (4, 64), (4, 128)])
def test_the_quantizer_keeps_the_candidate_of_least_error(bits, G):
    """Of all clipping candidates and their refits (tried in phases, not one after another), each
    group keeps the one whose codes reconstruct it best (to float32 rounding of the errors)."""
    from kvrun.cache import quant

    x = _gauss(64, 2 * G, seed=bits + G)
    x[:, :3] += 6.0  # an outlier channel, as keys have
    lut = calibrate_lut(x, bits)
    c, m, _ = quantize(x, bits, G, lut)
    y = dequantize(c, m, lut, bits, G, 2 * G).reshape(-1, G).astype(np.float64)
    L = (1 << bits) - 1
    for i, g in enumerate(x.reshape(-1, G).astype(np.float64)):
        kept = ((y[i] - g) ** 2).sum()
        errs = []
        for u, zc in _candidates(g, bits, lut, quant.CLIPS[bits]):
            s, z = float(lut[u]), zc * L / 255
            errs.append(((s * (np.clip(np.floor(g / s + z + 0.5), 0, L) - z) - g) ** 2).sum())
        assert kept <= min(errs) * (1 + 1e-4) + 1e-9, (i, kept, min(errs))
        assert (int(m.reshape(-1, 2)[i, 0]), int(m.reshape(-1, 2)[i, 1])) in _candidates(g, bits, lut, quant.CLIPS[bits])


def test_a_short_quantizer_scratch_is_refused():
    """Numba checks no bounds, so the quantizer checks its scratch (a short one would corrupt the heap)."""
    from kvrun.cache.quant import CLIPS, quant_scratch, quantize_row

    x = _gauss(1, 64)[0]
    lut = calibrate_lut(x, 4)
    codes, meta = np.zeros(32, np.uint8), np.zeros((1, 2), np.uint8)
    with pytest.raises(ValueError, match="quant_scratch"):
        quantize_row(x, 4, 64, lut, CLIPS[4], codes, meta, np.zeros(2 * 64, np.int32))
    quantize_row(x, 4, 64, lut, CLIPS[4], codes, meta, quant_scratch(64))
    assert meta[0, 0] > 0


def test_a_16_bit_row_is_its_float16_bytes_as_numpy_rounds_them():
    """The one-call steps store fp16 pools with quantize_row: its bytes are numpy's float16 ones
    (the Python path's), ties to even, subnormals, overflow to inf and signed zeros included."""
    from kvrun.cache.quant import CLIPS, quant_scratch, quantize_row

    rng = np.random.default_rng(5)
    x = np.concatenate([
        _gauss(1, 448)[0] * 100,
        rng.standard_normal(32).astype(np.float32) * 1e-6,  # float16 subnormals
        np.array([65504, 65520, 70000, -1e9, 0.0, -0.0, 2049, 2051, 6e-8, 3e-8, 1 + 2**-11, 1 + 3 * 2**-11], np.float32),
        np.zeros(20, np.float32),
    ]).astype(np.float32)  # fmt: skip
    codes, meta = np.zeros(2 * x.size, np.uint8), np.zeros((0, 2), np.uint8)
    quantize_row(x, 16, 32, calibrate_lut(x, 4), CLIPS[16], codes, meta, quant_scratch(32))
    with np.errstate(over="ignore"):  # (the overflows to inf are meant)
        np.testing.assert_array_equal(codes, x.astype(np.float16).view(np.uint8))


def test_scale_table_rounds_up_and_zero_groups_are_exact():
    lut = calibrate_lut(np.array([[-4.0, 8.0]], np.float32), 4)
    steps = np.diff(np.log2(lut))
    np.testing.assert_allclose(steps, 1 / 16, rtol=1e-4)  # 16 steps per octave
    assert lut[-1] >= 2**6 * 12 / 15 * 0.99  # 6 octaves of headroom over the calibration range
    x = np.zeros((2, D), np.float32)
    x[1, :G] = 1.0  # one group constant, one group zero
    c, m, lut = quantize(x, 2, G)
    y = dequantize(c, m, lut, 2, G, D)
    assert (y[0] == 0).all() and (y[1, G:] == 0).all()
    assert np.abs(y[1, :G] - 1.0).max() < 0.05


def test_hadamard_is_orthonormal_and_self_inverse():
    for n in (64, 256):
        h = hadamard(n)
        np.testing.assert_allclose(h @ h, np.eye(n), atol=1e-5)
        np.testing.assert_allclose(h, h.T)
    with pytest.raises(ValueError, match="even head size"):  # (96: blocks of 32, tests/test_block_rotation.py)
        hadamard(97)


def test_rotation_spreads_an_outlier_channel():
    """Keys with one huge channel, met by queries that weigh that channel: after
    rotation the attention logits err far less (the point of QuaRot/RotateKV)."""
    x = _gauss(128, seed=3) * 0.3
    x[:, 5] = 40.0 * np.random.default_rng(4).standard_normal(128).astype(np.float32)
    q = _gauss(16, seed=5) * 0.3
    q[:, 5] *= 10.0
    h = hadamard(D)
    e = {}
    for name, a, back in (("plain", x, np.eye(D, dtype=np.float32)), ("rotated", x @ h, h)):
        c, m, lut = quantize(a, 2, G)
        err = dequantize(c, m, lut, 2, G, D) @ back - x  # [128, D] in the original basis
        e[name] = ((err @ q.T) ** 2).mean()
    assert e["rotated"] < 0.5 * e["plain"]


def _reference_attention(q, k, v, scale):
    """float64 softmax attention of q [H, D] over k, v [n_kv, n, D] (GQA)."""
    H = q.shape[0]
    n_kv = k.shape[0]
    out = np.zeros((H, v.shape[2]))
    probs = np.zeros((n_kv, k.shape[1]))
    for h in range(H):
        kh = h // (H // n_kv)
        s = k[kh].astype(np.float64) @ q[h] * scale
        p = np.exp(s - s.max())
        p /= p.sum()
        out[h] = p @ v[kh]
        probs[kh] += p
    return out, probs


@pytest.mark.parametrize("geometry", [(2, 4, 3, 20, 0), (1, 4, 40, 2000, 2), (1, 4, 1100, 1000, 3), (2, 6, 16, 1500, 8), (3, 9, 600, 600, 2), (2, 14, 40, 300, 2), (1, 5, 7, 90, 1)])
@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_decode_kernel_equals_attention_over_dequantized_cache(bits, group, geometry):
    """The kernel reads fp16 slots and a quantized pool in place; same result as dequantize-then-attend.

    Group 32 takes the vector-IR row decoders, group 16 the plain-loop fallback.
    Long caches whose KV heads do not share out evenly over the threads are split
    (split-K; chunk borders inside the fp16 area and inside the pool): fewer heads
    than threads, and three heads on two threads.
    """
    _check_decode_kernel(bits, group, geometry, D)


@pytest.mark.parametrize(
    "head_dim, bits, group",
    [(96, 4, 32), (80, 2, 16), (256, 8, 32), (128, 16, 32), (12, 16, 4)],
)
def test_decode_kernel_takes_any_head_size(head_dim, bits, group):
    """Head sizes that are not a multiple of 64 (the tile kernels' register block) take its
    8-float columns; one that is not a multiple of 8 takes plain loops.  Same result either way."""
    _check_decode_kernel(bits, group, (1, 3, 37, 300, 2), head_dim)


@nb.njit(cache=False)
def _tiles(half, tile, n, D, y, gqa, x, acc):
    ts = tile.strides[0] // (2 if half else 4)
    if half:
        tile_dot16(tile.ctypes.data, ts, n, D, y.ctypes.data, gqa, x.ctypes.data, x.strides[0] // 4)
        tile_add16(tile.ctypes.data, ts, n, D, acc.ctypes.data, gqa, x.ctypes.data, x.strides[0] // 4)
    else:
        tile_dot(tile.ctypes.data, ts, n, D, y.ctypes.data, gqa, x.ctypes.data, x.strides[0] // 4)
        tile_add(tile.ctypes.data, ts, n, D, acc.ctypes.data, gqa, x.ctypes.data, x.strides[0] // 4)


@pytest.mark.parametrize("half", [False, True], ids=["float32 tile", "float16 in place"])
@pytest.mark.parametrize("gqa", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("D, n", [(64, 64), (80, 51), (256, 13), (72, 33)])
def test_tile_kernels_serve_every_query_head_of_the_group(D, n, gqa, half):
    """The key pass gives every head's dot with every row, the value pass adds every row weighted
    into every head's accumulators: heads go several at a time and rows several a step, with
    leftover heads and rows (n not a multiple of the step) and head sizes not a multiple of 64
    (72: not of 16 either, the 8-float vectors on an AVX-512 host)."""
    rng = np.random.default_rng(gqa)
    rows = rng.standard_normal((n + 3, D)).astype(np.float16 if half else np.float32)
    y = rng.standard_normal((gqa, D)).astype(np.float32)
    x = np.full((gqa, n + 5), np.nan, np.float32)
    acc0 = rng.standard_normal((gqa, D)).astype(np.float32)
    acc = acc0.copy()
    _tiles(half, rows.view(np.uint16) if half else rows, n, D, y, gqa, x, acc)
    r = rows[:n].astype(np.float64)
    np.testing.assert_allclose(x[:, :n], y @ r.T, rtol=1e-5, atol=1e-4)
    assert np.isnan(x[:, n:]).all()  # nothing written past the tile
    np.testing.assert_allclose(acc, acc0 + x[:, :n].astype(np.float64) @ r, rtol=1e-5, atol=1e-3)


def _check_decode_kernel(bits: int, group: int, geometry: tuple, D: int) -> None:
    G = group
    rng = np.random.default_rng(7)
    n_kv, H, F, C, n_threads = geometry
    N = F + C
    k = rng.standard_normal((n_kv, N, D)).astype(np.float32)
    v = rng.standard_normal((n_kv, N, D)).astype(np.float32)
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    k16 = k[:, :F].astype(np.float16)
    v16 = v[:, :F].astype(np.float16)
    kc, km, klut = quantize(k[:, F:].reshape(-1, D), bits, G)
    vc, vm, vlut = quantize(v[:, F:].reshape(-1, D), bits, G)
    kd = dequantize(kc, km, klut, bits, G, D).reshape(n_kv, C, D)
    vd = dequantize(vc, vm, vlut, bits, G, D).reshape(n_kv, C, D)
    kc, km, vc, vm = (a.reshape(n_kv, C, *a.shape[1:]) for a in (kc, km, vc, vm))
    e_c = np.zeros((n_kv, 0, max(D // 4, 1)), np.uint8)
    e_m = np.zeros((n_kv, 0, D // G, 2), np.uint8)
    pos = np.arange(N, dtype=np.int32)[None, :]
    out = np.zeros((1, H, D), np.float32)
    gqa = H // n_kv
    probs = np.zeros((n_kv, N), np.float32)
    scratch = (np.zeros((n_kv, gqa, N), np.float32),)
    attend_decode_q(
        q, np.array([N - 1], np.int32), k16.view(np.uint16), v16.view(np.uint16),
        kc, km, vc, vm, bits, bits, e_c, e_m, e_c, e_m, 2, 2,
        klut, vlut, klut, vlut, G, pos, np.zeros((0, 0), np.float32), 0, 0.125, 0.0, out, *scratch, probs, split_for=n_threads,
        int_keys=False,  # the float tiles (tests/test_qkeys.py: the integer key scores)
    )  # fmt: skip
    kk = np.concatenate([k16.astype(np.float32), kd], axis=1)
    vv = np.concatenate([v16.astype(np.float32), vd], axis=1)
    ref, ref_probs = _reference_attention(q[0], kk, vv, 0.125)
    np.testing.assert_allclose(out[0], ref, atol=2e-5)
    np.testing.assert_allclose(probs, ref_probs, atol=2e-5)
    assert math.isclose(probs.sum(), H, rel_tol=1e-5)


@pytest.mark.parametrize("geometry", [(3, 9, 64, 600, 1), (3, 9, 64, 600, 2), (1, 4, 256, 516, 2), (2, 4, 96, 37, 1)])
def test_fp16_slots_read_in_place_equal_the_same_rows_decoded_first(geometry):
    """The fp16 area is read in place (float16 converted on the way into the FMAs), and so are 16-bit
    pools (an eviction policy over fp16 slots).  Bitwise the same output and probabilities from the
    same rows in either, with and without a split over threads, from a ring larger than the slots
    used; and the same to float rounding with the rows cut over the area and two 16-bit pools."""
    n_kv, H, D, N, n_threads = geometry
    rng = np.random.default_rng(5)
    ring = rng.standard_normal((2, n_kv, N + 50, D)).astype(np.float16).view(np.uint16)
    k16, v16 = ring[0][:, :N], ring[1][:, :N]  # row stride D, head stride N + 50 rows
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    pos = np.arange(N, dtype=np.int32)[None, :]
    none = np.zeros((0, 0), np.float32)

    def attend(area, pool, pool1=None):
        out, probs = np.zeros((1, H, D), np.float32), np.zeros((n_kv, N), np.float32)
        (k16_, v16_), (kc, vc) = area, pool
        e_m = np.zeros((n_kv, kc.shape[1], 0, 2), np.uint8)
        e_c = np.zeros((n_kv, 0, 2 * D), np.uint8)
        kc1, vc1 = pool1 or (e_c, e_c)
        e_cm = np.zeros((n_kv, kc1.shape[1], 0, 2), np.uint8)
        lut = np.ones(256, np.float32)
        attend_decode_q(
            q, np.array([N], np.int32), k16_, v16_, kc, e_m, vc, e_m, 16, 16, kc1, e_cm, vc1, e_cm, 16, 16,
            lut, lut, lut, lut, 32, pos, none, 0, 0.125, 0.0, out, np.zeros((n_kv, H // n_kv, N), np.float32), probs,
            split_for=n_threads,
        )  # fmt: skip
        return out, probs

    no_rows = np.zeros((n_kv, 0, D), np.uint16)
    as_pool = [np.ascontiguousarray(x).view(np.uint8) for x in (k16, v16)]
    out_area, probs_area = attend((k16, v16), [np.zeros((n_kv, 0, 2 * D), np.uint8)] * 2)
    out_pool, probs_pool = attend((no_rows, no_rows), as_pool)
    assert np.array_equal(out_area, out_pool)
    assert np.array_equal(probs_area, probs_pool)
    a, b = N // 3, 2 * N // 3  # the area, pool 0 and pool 1 a third each
    thirds = [[np.ascontiguousarray(x[:, lo:hi]).view(np.uint8) for x in (k16, v16)] for lo, hi in ((a, b), (b, N))]
    out_3, probs_3 = attend((k16[:, :a], v16[:, :a]), *thirds)
    np.testing.assert_allclose(out_3, out_area, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs_3, probs_area, rtol=0, atol=1e-6)
    ref, _ = _reference_attention(q[0], k16.view(np.float16).astype(np.float32), v16.view(np.float16).astype(np.float32), 0.125)
    np.testing.assert_allclose(out_area[0], ref, atol=2e-5)


@pytest.mark.parametrize(
    "held0, held1",
    [((700, 900, 650), (0, 0, 0)), ((1500, 1500, 1500), (300, 1100, 5)), ((0, 0, 0), (40, 0, 0)), ((1500, 3, 0), (1200, 0, 64))],
)
def test_decode_kernel_reads_each_pool_up_to_its_last_held_slot(held0, held1):
    """Pools are sized for the whole context and read only up to their last held slot (any KV
    head's): per-head positions with holes, each head's last slot in a different place, one pool
    empty, and a split over two threads with chunks in both pools.  Same result as attention over
    the held tokens alone, and no probability on an empty slot."""
    rng = np.random.default_rng(11)
    n_kv, H, D, F, G = 3, 9, 64, 20, 32
    caps, widths = (1500, 1200), (4, 2)
    N = F + sum(caps)
    pos = np.full((n_kv, N), -1, np.int32)
    pos[:, :F] = np.arange(F)
    lo = F
    for cap, held in zip(caps, (held0, held1)):
        for h in range(n_kv):
            pos[h, lo : lo + held[h]] = rng.permutation(np.arange(100, 100 + held[h])) + 10_000 * (lo > F)
            holes = rng.choice(held[h], size=held[h] // 10, replace=False) if held[h] > 1 else []
            pos[h, lo + np.asarray(holes, np.int64)] = -1
            if held[h]:
                pos[h, lo + held[h] - 1] = 20_000 + h  # the last held slot stays held
        lo += cap
    k = rng.standard_normal((n_kv, N, D)).astype(np.float32)
    v = rng.standard_normal((n_kv, N, D)).astype(np.float32)
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    k16, v16 = k[:, :F].astype(np.float16), v[:, :F].astype(np.float16)
    kf, vf = [k16.astype(np.float32)], [v16.astype(np.float32)]
    pools = []
    lo = F
    for cap, bits in zip(caps, widths):
        kc, km, klut = quantize(k[:, lo : lo + cap].reshape(-1, D), bits, G)
        vc, vm, vlut = quantize(v[:, lo : lo + cap].reshape(-1, D), bits, G)
        kf.append(dequantize(kc, km, klut, bits, G, D).reshape(n_kv, cap, D))
        vf.append(dequantize(vc, vm, vlut, bits, G, D).reshape(n_kv, cap, D))
        pools.append([a.reshape(n_kv, cap, *a.shape[1:]) for a in (kc, km, vc, vm)] + [klut, vlut])
        lo += cap
    (kc0, km0, vc0, vm0, klut0, vlut0), (kc1, km1, vc1, vm1, klut1, vlut1) = pools
    out = np.zeros((1, H, D), np.float32)
    probs = np.zeros((n_kv, N), np.float32)
    attend_decode_q(
        q, np.array([30_000], np.int32), k16.view(np.uint16), v16.view(np.uint16),
        kc0, km0, vc0, vm0, 4, 4, kc1, km1, vc1, vm1, 2, 2,
        klut0, vlut0, klut1, vlut1, G, pos, np.zeros((0, 0), np.float32), 0, 0.125, 0.0, out,
        np.zeros((n_kv, H // n_kv, N), np.float32), probs, split_for=2, int_keys=False,
    )  # fmt: skip
    kk, vv = np.concatenate(kf, axis=1), np.concatenate(vf, axis=1)
    gqa = H // n_kv
    for h in range(H):
        held = pos[h // gqa] >= 0
        ref, _ = _reference_attention(q[0, h : h + 1], kk[h // gqa : h // gqa + 1, held], vv[h // gqa : h // gqa + 1, held], 0.125)
        np.testing.assert_allclose(out[0, h], ref[0], atol=2e-5)
    assert not probs[pos < 0].any()
    np.testing.assert_allclose(probs.sum(axis=1), gqa, rtol=1e-5)
