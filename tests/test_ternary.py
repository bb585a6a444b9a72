"""The ternary types TQ1_0 and TQ2_0 (BitNet b1.58) and the ``bitnet`` architecture: what the type-generic tests
(test_quants: the numpy decoders equal gguf's bit for bit) and test_forward_matches_llamacpp (the ``bitnet`` and
``bitnet-tq2_0`` fixtures) do not already hold.

* The CPU kernels against the numpy reference (``loaders.quants``) on random blocks: ``get_rows`` bit for bit, the
  decode row dot (one token, one and two threads) and the few-token integer path as W . x_q (x quantized per 32,
  float32 rounding only), the prefill's tile + BLAS path as W . x (float32).
* gguf's quantizer's ternary values come back exactly (the fixture's F32 and TQ files hold the same weights).
* The tiny BitNet's fixtures fail without its sub-norms, its scale tensors or its SiLU; a missing sub-norm is a
  one-line error naming the tensor (``--device gpu``: tests/test_gpu_bitnet_llama4.py).
"""

from __future__ import annotations

from pathlib import Path

import numba as nb
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

from kvrun.loaders import quants as LQ
from kvrun.ops.cpu import qmatmul as Q
from reference import quantize_x8
from tinymodel import FIXTURE_MODELS, write_tiny_model

TQ_TYPES = [T.TQ1_0, T.TQ2_0]


def _blocks(qtype: T, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random raw blocks [n, row_bytes]: any code bytes (TQ1_0: every byte value, TQ2_0: code 3 too), f16 d > 0."""
    rng = np.random.default_rng(seed)
    ts = LQ.quant_info(qtype).type_size
    raw = rng.integers(0, 256, (n, k // 256, ts), dtype=np.uint8)
    raw[:, :, ts - 2 :] = rng.uniform(1e-3, 1e-2, (n, k // 256, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@pytest.fixture
def two_threads():
    old = (nb.get_num_threads(), Q.PAR_MIN_BYTES)
    nb.set_num_threads(min(2, nb.config.NUMBA_NUM_THREADS))
    Q.PAR_MIN_BYTES = 0
    yield
    nb.set_num_threads(old[0])
    Q.PAR_MIN_BYTES = old[1]


@pytest.mark.parametrize("qtype", TQ_TYPES, ids=lambda t: t.name)
def test_quantizer_values_come_back_exactly(qtype):
    """``scale * {-1, 0, 1}`` (the converter's weight_quant) quantized by gguf decodes to itself: d is the scale."""
    rng = np.random.default_rng(1)
    a = (rng.integers(-1, 2, (8, 512)) * np.float32(np.float16(0.0371))).astype(np.float32)
    raw = np.ascontiguousarray(quantize(a, qtype)).view(np.uint8)
    np.testing.assert_array_equal(LQ.dequantize(raw, qtype, a.shape), a)


@pytest.mark.parametrize("qtype", TQ_TYPES, ids=lambda t: t.name)
def test_every_byte_and_code(qtype):
    """TQ1_0: all 256 byte values in every position of a block, TQ2_0 every code: get_rows equals the numpy decoder."""
    ts = LQ.quant_info(qtype).type_size
    raw = np.zeros((256, ts), np.uint8)
    raw[:, : ts - 2] = (np.arange(256)[:, None] + np.arange(ts - 2)[None, :]) % 256
    raw[:, ts - 2 :] = np.array([0.5], np.float16).view(np.uint8)
    got = np.full((256, 256), np.nan, np.float32)
    Q.get_rows(raw, qtype, np.arange(256), got)
    want = LQ.dequantize(raw, qtype, (256, 256))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert set(np.unique(want)) == ({-0.5, 0.0, 0.5} if qtype == T.TQ1_0 else {-0.5, 0.0, 0.5, 1.0})


@pytest.mark.parametrize("shape", [(67, 256), (45, 768), (130, 2560)], ids=str)
@pytest.mark.parametrize("qtype", TQ_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_the_numpy_reference(qtype, shape, threads, request):
    if threads == 2:
        request.getfixturevalue("two_threads")
    n, k = shape
    w = _blocks(qtype, n, k, seed=n)
    W = LQ.dequantize(w, qtype, (n, k)).astype(np.float64)
    got = np.full((n, k), np.nan, np.float32)
    Q.get_rows(w, qtype, np.arange(n)[::-1].copy(), got)
    np.testing.assert_array_equal(got.view(np.uint32), W[::-1].astype(np.float32).view(np.uint32))

    x = (np.random.default_rng(7).standard_normal((12, k)) * 3).astype(np.float32)
    x[:, :32] *= 4  # (one louder run: its own scale a 32)
    xq = quantize_x8(x)
    out = np.full(n, np.nan, np.float32)
    Q.matvec(w, qtype, x[0], out)  # decode: the row dot
    assert _rel(out, W @ xq[0]) < 1e-5
    few = np.full((3, n), np.nan, np.float32)
    Q.matmul(w, qtype, x[:3], few)  # a few tokens: the same row dots, token after token
    assert _rel(few, xq[:3] @ W.T) < 1e-5
    many = np.full((12, n), np.nan, np.float32)
    Q.matmul(w, qtype, x, many)  # prefill: decoded tiles and BLAS (no int8 GEMM for these types)
    assert _rel(many, x.astype(np.float64) @ W.T) < 1e-5


@pytest.mark.parametrize("qtype", TQ_TYPES, ids=lambda t: t.name)
def test_codes_offset_is_folded_into_the_sums(qtype):
    """All codes 0 (every weight -d) and all 2 (+d): the row dot is -/+ d * sum(x_q) exactly as the reference."""
    k = 512
    for code, sign in ((0, -1.0), (2, 1.0)):
        a = np.full((4, k), sign * 0.25, np.float32)
        w = np.ascontiguousarray(quantize(a, qtype)).view(np.uint8).reshape(4, -1)
        x = np.random.default_rng(code).standard_normal(k).astype(np.float32)
        out = np.zeros(4, np.float32)
        Q.matvec(w, qtype, x, out)
        np.testing.assert_allclose(out, sign * 0.25 * quantize_x8(x).sum(), rtol=1e-5)


# ----------------------------------------------------------------- the bitnet architecture
def _fixture_error(tmp_path, name, drop):
    from test_models import _fixture_error as err

    return err(tmp_path, name, drop)


class _SkipNorms:
    """A backend whose rms_norm copies x where its weights are one of ``skip`` (a sub-norm dropped, not only its weights)."""

    def __init__(self, be, skip) -> None:
        self._be, self._skip = be, skip

    def __getattr__(self, name):
        return getattr(self._be, name)

    def rms_norm(self, x, w, eps, out) -> None:
        if any(w is s for s in self._skip):
            out[...] = x
        else:
            self._be.rms_norm(x, w, eps, out)


def test_bitnet_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny BitNet's fixture fails without either sub-norm, with squared ReLU for llama.cpp 0.3.36's SiLU, with
    rope over consecutive pairs; ``bitnet-scales``'s without its scale tensors."""
    import dataclasses

    from kvrun.models.common import make_rope

    def no_sub_norm(attr):
        return lambda m: setattr(m, "be", _SkipNorms(m.be, [getattr(L, attr) for L in m.layers]))

    def relu2(m):
        m.relu_sqr = True

    def no_scales(m):
        for L in m.layers:
            L.scales = {}

    def pairs(m):
        m.cfg = dataclasses.replace(m.cfg, rope_neox=False)
        m.rope_cos, m.rope_sin = make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta)

    assert _fixture_error(tmp_path, "bitnet", lambda m: None) < 1e-3
    assert _fixture_error(tmp_path, "bitnet", no_sub_norm("attn_sub_norm")) > 3e-2
    assert _fixture_error(tmp_path, "bitnet", no_sub_norm("ffn_sub_norm")) > 3e-2
    assert _fixture_error(tmp_path, "bitnet", relu2) > 3e-2
    assert _fixture_error(tmp_path, "bitnet", pairs) > 3e-2
    assert _fixture_error(tmp_path, "bitnet-scales", no_scales) > 3e-2


def test_bitnet_tq2_0_is_the_f32_model_with_int8_activations(tmp_path):
    """The TQ2_0 fixture's file holds the F32 one's weights exactly; kvrun's TQ2_0 forward is within its x
    quantization of its own F32 forward (prefill: none at all, float x meets the decoded tiles)."""
    from kvrun.loaders.gguf_file import GGUFFile
    from test_models import N_BATCH, _build, _run

    f32 = GGUFFile(write_tiny_model(tmp_path / "f.gguf", **FIXTURE_MODELS["bitnet"]))
    tq = GGUFFile(write_tiny_model(tmp_path / "t.gguf", **FIXTURE_MODELS["bitnet-tq2_0"]))
    for name, t in tq.tensors.items():
        a = LQ.dequantize(t.data, t.qtype, t.shape)
        np.testing.assert_array_equal(a, LQ.dequantize(f32.tensors[name].data, f32.tensors[name].qtype, t.shape), err_msg=name)
    assert int(tq.tensors["blk.0.ffn_down.weight"].qtype) == T.TQ2_0
    ids = np.load(Path(__file__).parent / "fixtures" / "arch_bitnet.npz")["ids"]
    cfg, mf = _build(tmp_path / "f.gguf")
    _, mt = _build(tmp_path / "t.gguf")
    lf = _run(mf, cfg, ids, N_BATCH)
    prefill, decode = (np.abs(_run(mt, cfg, ids, chunk) - lf).max() / np.abs(lf).max() for chunk in (N_BATCH, 1))
    assert prefill < 1e-5  # (measured 3.6e-7)
    assert 1e-4 < decode < 1e-2  # x quantized to int8 per 32 (measured 3.5e-3)


def test_bitnet_missing_sub_norm_is_one_line(tmp_path):
    from kvrun.loaders.errors import GGUFError
    from test_models import _build

    path = write_tiny_model(tmp_path / "b.gguf", **FIXTURE_MODELS["bitnet"])
    data = path.read_bytes().replace(b"blk.1.ffn_sub_norm.weight", b"blk.1.ffn_sub_nurm.weight")
    path.write_bytes(data)
    with pytest.raises(GGUFError) as e:
        _build(path)
    assert "'blk.1.ffn_sub_norm.weight' is missing" in str(e.value) and "\n" not in str(e.value)
