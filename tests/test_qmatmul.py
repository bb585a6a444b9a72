"""ops/cpu/qmatmul against a float64 numpy reference built from ``gguf.quants.dequantize``.

Tolerances (relative to the norm of the exact result, per call):

* block types with 4/5/6-bit weights: ``matvec`` and few-token ``matmul``
  quantize the activations to int8 per 32 (as llama.cpp), ~0.5% -> 1.5e-2;
* Q8_0 weights: int16 activations, ~2e-5 -> 2e-4;
* float weights (F32/F16/BF16) and the tile + BLAS ``matmul``: float32 -> 1e-5;
* many-token ``matmul`` of block types on a VNNI host (``qgemm``,
  tested on its own in test_qgemm.py): int8 activations for every type -> 1.5e-2;
* ``get_rows`` is bit-identical to ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T

from kvrun.ops.cpu import qmatmul as Q

IQ_TYPES = [T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M]
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, *IQ_TYPES,
         T.MXFP4]
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_XS, *IQ_TYPES)
# byte offsets of the float16 scales of the types gguf cannot quantize (random bytes otherwise);
# IQ1_M's d is the top nibbles of its scales (set_iq1_m_d)
F16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.Q2_K: (80, 82), T.Q3_K: (108,), T.IQ4_NL: (0,), T.IQ4_XS: (0,),
              **{t: (0,) for t in IQ_TYPES if t != T.IQ1_M}, T.IQ1_M: ()}  # fmt: skip
# (n_rows, n_cols): rows not a multiple of the thread count; an odd number of
# 32-blocks per row (the kernels unroll by 2) for the 32-block types
SHAPES = {False: [(67, 96), (131, 576)], True: [(67, 256), (45, 768)]}


def _weights(qtype: T, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid raw blocks [n, row_bytes]: gguf's quantizer where it has one, else random bytes with finite scales."""
    rng = np.random.default_rng(seed)
    if qtype not in F16_FIELDS:
        w = quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qtype)
        return np.ascontiguousarray(w).view(np.uint8).reshape(n, -1)
    bs, ts = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n, k // bs, ts), dtype=np.uint8)
    f16 = lambda lo, hi: rng.uniform(lo, hi, (n, k // bs, 1)).astype(np.float16).view(np.uint8)  # noqa: E731
    for o in F16_FIELDS[qtype]:
        raw[:, :, o : o + 2] = f16(1e-3, 1e-2)
    if qtype == T.IQ1_M:
        set_iq1_m_d(raw, rng.uniform(1e-3, 1e-2, (n, k // bs)))
    return raw.reshape(n, -1)


def set_iq1_m_d(raw: np.ndarray, d: np.ndarray) -> None:
    """IQ1_M blocks ``[..., 56]``: write the f16 of ``d`` [...] into the top nibbles of the four u16 scales (bytes 48-55)."""
    h = d.astype(np.float16).view(np.uint16)
    for k in range(4):
        raw[..., 49 + 2 * k] = (raw[..., 49 + 2 * k] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)


def _ref(w: np.ndarray, qtype: T, n: int, k: int) -> np.ndarray:
    return quants.dequantize(w, qtype).reshape(n, k).astype(np.float64)


def _tol(qtype: T, quantized_x: bool) -> float:
    if qtype in (T.F32, T.F16, T.BF16) or not quantized_x:
        return 1e-5
    return 2e-4 if qtype == T.Q8_0 else 1.5e-2


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _cases():
    for qt in TYPES:
        for n, k in SHAPES[GGML_QUANT_SIZES[qt][0] == 256]:
            yield pytest.param(qt, n, k, id=f"{qt.name}-{n}x{k}")


@pytest.fixture
def threads():
    """Run with 2 Numba threads and every matrix taking the parallel path; restore after."""
    old = (nb.get_num_threads(), Q.PAR_MIN_BYTES)
    nb.set_num_threads(min(2, nb.config.NUMBA_NUM_THREADS))
    Q.PAR_MIN_BYTES = 0
    yield
    nb.set_num_threads(old[0])
    Q.PAR_MIN_BYTES = old[1]


@pytest.mark.parametrize("qtype,n,k", list(_cases()))
def test_matvec(qtype, n, k):
    w = _weights(qtype, n, k)
    W = _ref(w, qtype, n, k)
    rng = np.random.default_rng(1)
    for x in (rng.standard_normal(k).astype(np.float32), (rng.standard_normal(k) * 100).astype(np.float32)):
        out = np.full(n, np.nan, np.float32)
        Q.matvec(w, qtype, x, out)
        assert _rel(out, W @ x) < _tol(qtype, True)


@pytest.mark.parametrize("qtype", [t for t in TYPES if t not in (T.F32, T.F16, T.BF16, T.Q8_0)], ids=lambda t: t.name)
def test_matvec_is_w_dot_quantized_x_to_float32_rounding(qtype):
    """The 1.5e-2 above is x's quantization; the integer kernels themselves are exact: W . x_q."""
    from reference import quantize_x8

    n, k = SHAPES[GGML_QUANT_SIZES[qtype][0] == 256][1]
    w = _weights(qtype, n, k, seed=4)
    x = (np.random.default_rng(5).standard_normal(k) * 3).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    Q.matvec(w, qtype, x, out)
    assert _rel(out, _ref(w, qtype, n, k) @ quantize_x8(x[None])[0]) < 1e-5


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matvec_parallel(qtype, threads):
    """Split over threads, every row is the same arithmetic as on one thread, bit for bit: a
    token's logits do not depend on ``--threads`` (nor on the count the tuner picks meanwhile)."""
    n, k = (131, 512)
    w = _weights(qtype, n, k)
    x = np.random.default_rng(2).standard_normal(k).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    Q.matvec(w, qtype, x, out)
    assert _rel(out, _ref(w, qtype, n, k) @ x) < _tol(qtype, True)
    out1 = np.empty_like(out)
    Q._mv_1(Q._type(qtype)[0], Q.readonly(w), x, out1, np.zeros(Q._scratch_bytes(k), np.uint8))  # (as matvec passes it)
    np.testing.assert_array_equal(out, out1)  # same per-row arithmetic on any thread


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=pytest.mark.skipif(not Q.HAVE_VNNI, reason="no VNNI on this host"))])
@pytest.mark.parametrize("qtype,n,k", list(_cases()))
def test_matmul(qtype, n, k, vnni, monkeypatch):
    monkeypatch.setattr(Q, "_USE_VNNI", vnni)
    w = _weights(qtype, n, k)
    W = _ref(w, qtype, n, k)
    rng = np.random.default_rng(3)
    for n_tok in (3, Q.GEMM_MIN_TOKENS, Q.BLAS_MIN_TOKENS + 5):  # integer kernel, then the VNNI GEMM (from 4) or tile + BLAS
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        out = np.full((n_tok, n), np.nan, np.float32)
        Q.matmul(w, qtype, x, out)
        gemm = n_tok >= (Q.GEMM_MIN_TOKENS if vnni else Q.BLAS_MIN_TOKENS)
        tol = 1.5e-2 if gemm and vnni and qtype not in (T.F32, T.F16, T.BF16) else _tol(qtype, not gemm)
        assert _rel(out, x @ W.T) < tol, n_tok


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL], ids=lambda t: t.name)
def test_a_few_tokens_at_once_get_the_bits_each_gets_alone(qtype, monkeypatch):
    """Small batches (2-7 tokens: a server's parallel slots, lookup's drafts) take the 2- and 4-token row dots,
    which decode each block once for all the tokens; every token's result is its own matvec's, bit for bit."""
    monkeypatch.setattr(Q, "GEMM_MIN_TOKENS", 16)  # (the integer kernel for every width here, on any host)
    monkeypatch.setattr(Q, "BLAS_MIN_TOKENS", 16)
    n, k = 37, 512  # (rows not a multiple of the 16-row chunks)
    w = _weights(qtype, n, k)
    rng = np.random.default_rng(5)
    for n_tok in range(2, 8):
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        out = np.full((n_tok, n), np.nan, np.float32)
        Q.matmul(w, qtype, x, out)
        for t in range(n_tok):
            one = np.empty(n, np.float32)
            Q.matvec(w, qtype, x[t], one)
            np.testing.assert_array_equal(out[t], one, err_msg=f"token {t} of {n_tok}")


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_K], ids=lambda t: t.name)
def test_matmul_parallel(qtype, threads):
    n, k = (67, 512)
    w = _weights(qtype, n, k)
    x = np.random.default_rng(4).standard_normal((3, k)).astype(np.float32)
    out = np.full((3, n), np.nan, np.float32)
    Q.matmul(w, qtype, x, out)
    assert _rel(out, x @ _ref(w, qtype, n, k).T) < _tol(qtype, True)
    out1 = np.empty_like(out)
    Q._mm_int_1(Q._type(qtype)[0], Q.readonly(w), x, out1, np.zeros((3, Q._scratch_bytes(k)), np.uint8))
    np.testing.assert_array_equal(out, out1)


@pytest.mark.parametrize("qtype,n,k", list(_cases()))
def test_get_rows_bit_exact(qtype, n, k):
    w = _weights(qtype, n, k)
    ids = np.array([n - 1, 0, 5, 5], np.int32)
    out = np.full((len(ids), k), np.nan, np.float32)
    Q.get_rows(w, qtype, ids, out)
    np.testing.assert_array_equal(out, quants.dequantize(w, qtype).reshape(n, k)[ids])


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_0, T.Q6_K, T.MXFP4], ids=lambda t: t.name)
def test_fallback_without_simd(qtype, monkeypatch):
    """The plain-Numba path used on hosts without AVX2 gives the float32 answer."""
    monkeypatch.setattr(Q, "_USE_SIMD", False)
    monkeypatch.setattr(Q, "_USE_VNNI", False)  # no AVX2, no AVX-512 either
    n, k = (33, 512)
    w = _weights(qtype, n, k)
    W = _ref(w, qtype, n, k)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, k)).astype(np.float32)
    out = np.empty((3, n), np.float32)
    Q.matvec(w, qtype, x[0], out[0])
    assert _rel(out[0], W @ x[0]) < 1e-5
    Q.matmul(w, qtype, x, out)
    assert _rel(out, x @ W.T) < 1e-5
    g = np.empty((2, k), np.float32)
    Q.get_rows(w, qtype, np.array([3, 1]), g)
    np.testing.assert_array_equal(g, W[[3, 1]].astype(np.float32))


def test_mxfp4_every_scale_exponent():
    """MXFP4's scale byte e is 2^(e - 128) (ggml's GGML_E8M0_TO_FP32_HALF): subnormal for e < 2, 2^127 for 255.
    One row per e, the same codes in each: get_rows is gguf's for every e, bit for bit; matvec's rows are the
    e = 128 row's times 2^(e - 128), exactly while every partial sum stays normal and finite, and to the
    precision of a subnormal scale for e = 0, 1 (a wrong subnormal, 0 or 2^-127 for e = 0, is off by 100%)."""
    k = 96
    w = np.tile(_weights(T.MXFP4, 1, k, seed=7).reshape(1, k // 32, 17), (256, 1, 1))
    w[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    w = w.reshape(256, -1)
    out = np.full((256, k), np.nan, np.float32)
    Q.get_rows(w, T.MXFP4, np.arange(256), out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, quants.dequantize(w, T.MXFP4).reshape(256, k))
    y = np.full(256, np.nan, np.float32)
    Q.matvec(w, T.MXFP4, np.random.default_rng(8).standard_normal(k).astype(np.float32), y)
    scale = np.ldexp(np.float32(1.0), np.arange(256) - 128).astype(np.float32)
    e = np.arange(40, 200)
    np.testing.assert_array_equal(y[e], y[128] * scale[e])
    np.testing.assert_allclose(y[:2], y[128] * scale[:2], rtol=1e-3)


def test_strided_rows_and_zero_x():
    """Rows of a larger buffer (a view, as in a memory map) and an all-zero x."""
    n, k = 40, 256
    w = _weights(T.Q4_K, n, k)
    big = np.zeros((n, w.shape[1] + 16), np.uint8)
    big[:, 8 : 8 + w.shape[1]] = w
    view = big[:, 8 : 8 + w.shape[1]]
    x = np.random.default_rng(6).standard_normal(k).astype(np.float32)
    a, b = np.empty(n, np.float32), np.empty(n, np.float32)
    Q.matvec(view, T.Q4_K, x, a)
    Q.matvec(w, T.Q4_K, x, b)
    np.testing.assert_array_equal(a, b)
    Q.matvec(view, T.Q4_K, np.zeros(k, np.float32), a)
    np.testing.assert_array_equal(a, 0.0)


def test_errors():
    w = _weights(T.Q8_0, 8, 64)
    x = np.zeros(64, np.float32)
    out = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="Q8_1"):  # (ggml's activation types: no weights come in them)
        Q.matvec(w, T.Q8_1, x, out)
    with pytest.raises(ValueError, match="Q8_K"):
        Q.get_rows(w, T.Q8_K, np.array([0]), np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError):
        Q.matvec(w, T.Q8_0, np.zeros(96, np.float32), out)  # x length
    with pytest.raises(ValueError):
        Q.matvec(w, T.Q8_0, x, np.zeros(7, np.float32))  # out length
    with pytest.raises(IndexError):
        Q.get_rows(w, T.Q8_0, np.array([8]), np.zeros((1, 64), np.float32))


def test_float_products_get_the_chosen_threads_where_blas_holds_one(monkeypatch):
    """Beside the VNNI GEMM BLAS keeps one thread (for attention); a float weight's prefill product still
    runs on BLAS, with the count ``--threads`` chose whatever Numba's is now (the decode tuner's switch: OpenBLAS
    rounds otherwise on another count), and leaves BLAS at one thread after."""
    calls = []
    monkeypatch.setattr(Q, "blas_threads", lambda: 1)
    monkeypatch.setattr(Q, "chosen_blas_threads", lambda: 2)
    monkeypatch.setattr(Q, "resize_blas_threads", calls.append)
    monkeypatch.setattr(Q, "_n_threads", lambda: 1)
    n, k = 24, 64
    w = _weights(T.F16, n, k)
    x = np.random.default_rng(8).standard_normal((Q.BLAS_MIN_TOKENS, k)).astype(np.float32)
    out = np.empty((len(x), n), np.float32)
    Q.matmul(w, T.F16, x, out)
    assert calls == [2, 1]
    assert _rel(out, x @ _ref(w, T.F16, n, k).T) < 1e-5
