"""Every GPU kernel against its CPU twin, on random inputs, and a tiny model end to end.

Each test runs on two runtimes:

* ``cuda``: the real kernels on an NVIDIA GPU through CuPy (``@pytest.mark.gpu``;
  skipped with a reason when ``kvrun.ops.gpu_available()`` is False);
* ``emulated``: the same CUDA sources compiled for the CPU by
  ``kvrun.ops.gpu.emulate`` (threads as fibers, barriers and shuffles
  emulated), so kernel arithmetic, indexing and synchronisation, and all of
  the Python orchestration, are tested on machines without a GPU.  What only
  hardware shows (timing, coalescing, races between real warps, the NVRTC
  build for the device) needs the ``cuda`` runs.

Tolerances:

* matmuls: NMSE against the CPU kernel < 1e-3 (the CPU matvec may quantize
  activations to 8 bits); against the float64 product of the dequantized
  weights < 1e-9 (the GPU keeps activations in float32 and decodes blocks
  exactly);
* norms, rope, element-wise: max abs error <= 1e-5 relative to the data's
  scale (float32 rounding, tanh/exp implementations);
* attention: max abs error <= 1e-4 against the CPU cache (same fp16 K/V bits,
  float32 softmax in another order); fp16 K/V bits equal exactly;
* tiny model: logits within 2e-2 of the CPU backend's (relative to the
  largest logit), >= 95% identical argmax, and within 2e-3 of the float64
  reference forward (tests/reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from kvrun.cache.base import KVCache, LayerSpec
from kvrun.cache.gpu_plain import GPUPlainLayerCache, make_gpu_plain_cache
from kvrun.cache.plain import PlainLayerCache, make_plain_cache
from kvrun.ops.cpu import nn
from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu import emulate

IQ_TYPES = [Q.IQ3_XXS, Q.IQ3_S, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_S, Q.IQ1_M]
QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS, *IQ_TYPES,
          Q.MXFP4]
#: every type the CPU backend reads (kernels.QTYPE_SUFFIX): QTYPES and the ternary ones (BitNet's)
EVERY_QTYPE = [*QTYPES, Q.TQ1_0, Q.TQ2_0]

# the `rt` fixture (real CUDA where a GPU is, else the kernel emulator) is in conftest.py


@pytest.fixture(scope="module")
def gpu(rt):
    from kvrun.ops.gpu.backend import GPUBackend

    return GPUBackend()


@pytest.fixture(scope="module")
def cpu():
    return CPUBackend()


def dev(rt, a):
    return rt.xp.asarray(np.ascontiguousarray(a))


def nmse(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(((got - ref) ** 2).sum() / (ref**2).sum())


# ----------------------------------------------------------------- weights
# types made of random bytes: the offsets of their f16 fields (d, dmin), which must be finite
# (IQ1_M's d is in the top nibbles of its scales: test_qmatmul.set_iq1_m_d)
RANDOM_BLOCK_F16 = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,),
                    **{t: (0,) for t in IQ_TYPES if t != Q.IQ1_M}, Q.IQ1_M: ()}  # fmt: skip


def random_weight(qtype: int, n_rows: int, n_cols: int, rng) -> np.ndarray:
    """Raw GGUF rows ``[n_rows, row_bytes]`` of random weights of ``qtype``."""
    a = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if qtype == Q.F32:
        return a.view(np.uint8).reshape(n_rows, -1)
    if qtype == Q.F16:
        return a.astype(np.float16).view(np.uint8).reshape(n_rows, -1)
    if qtype in RANDOM_BLOCK_F16:
        # gguf-py cannot quantize these: random blocks with sane f16 scales
        block, size = GGML_QUANT_SIZES[Q(qtype)]
        b = rng.integers(0, 256, (n_rows, n_cols // block, size), dtype=np.uint8)
        scales = rng.uniform(0.002, 0.02, (n_rows, n_cols // block, 2)).astype(np.float16).view(np.uint8)
        for i, off in enumerate(RANDOM_BLOCK_F16[qtype]):
            b[..., off : off + 2] = scales[..., 2 * i : 2 * i + 2]
        if qtype == Q.IQ1_M:
            from test_qmatmul import set_iq1_m_d

            set_iq1_m_d(b, scales[..., 0:2].view(np.float16)[..., 0])
        return b.reshape(n_rows, -1)
    return np.ascontiguousarray(quantize(a, qtype)).reshape(n_rows, -1)


def n_cols_for(qtype: int) -> int:
    # not a multiple of 64 where the type allows, so the last K-tile is partial;
    # float rows not even a multiple of 8, so the last chunk is too
    return {Q.F32: 100, Q.F16: 100, Q.BF16: 100}.get(qtype, 512 if GGML_QUANT_SIZES[Q(qtype)][0] == 256 else 288)


@pytest.mark.parametrize("n_tok", [1, 3, 70], ids=["matvec", "matvec-3tok", "matmul"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: Q(q).name)
def test_linear(rt, gpu, cpu, qtype, n_tok):
    rng = np.random.default_rng(int(qtype) * 10 + n_tok)
    n_rows, n_cols = 72, n_cols_for(qtype)  # 72 rows: a partial 64-row tile
    raw = random_weight(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    out = rt.xp.full((n_tok, n_rows), np.nan, np.float32)
    gpu.linear(gpu.upload(raw, qtype, (n_rows, n_cols)), dev(rt, x), out)
    got = rt.asnumpy(out)
    exact = x.astype(np.float64) @ dequantize(raw, qtype).reshape(n_rows, n_cols).astype(np.float64).T
    assert nmse(got, exact) < 1e-9
    want = np.zeros((n_tok, n_rows), np.float32)
    cpu.linear(cpu.upload(raw, qtype, (n_rows, n_cols)), x, want)
    assert nmse(got, want) < 1e-3


@pytest.mark.parametrize("n_tok", [1, 3, 70], ids=["matvec", "matvec-3tok", "matmul"])
@pytest.mark.parametrize("qtype", [Q.F16, Q.Q4_1, Q.Q6_K], ids=lambda q: Q(q).name)
@pytest.mark.parametrize("rows", [(72, 24, 24), (40, 72)], ids=["qkv", "gate-up"])
def test_linear_many_is_each_linear(rt, gpu, cpu, qtype, n_tok, rows):
    """Projections of one input in one launch (matvec3_): each output as its own linear gives it."""
    rng = np.random.default_rng(int(qtype) + n_tok + len(rows))
    n_cols = n_cols_for(qtype)
    raws = [random_weight(qtype, n, n_cols, rng) for n in rows]
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    outs = [rt.xp.full((n_tok, n), np.nan, np.float32) for n in rows]
    gpu.linear_many([gpu.upload(r, qtype, (n, n_cols)) for r, n in zip(raws, rows)], dev(rt, x), outs)
    for r, n, out in zip(raws, rows, outs):
        want = np.zeros((n_tok, n), np.float32)
        cpu.linear(cpu.upload(r, qtype, (n, n_cols)), x, want)
        assert nmse(rt.asnumpy(out), want) < 1e-3


def test_every_qtype_is_every_type_the_kernels_read():
    """The every-type tests launch each type's instantiation of a template: a type the kernels gain joins them."""
    from kvrun.ops.gpu.kernels import QTYPE_SUFFIX

    assert sorted(int(q) for q in EVERY_QTYPE) == sorted(QTYPE_SUFFIX)


@pytest.mark.parametrize("qtype", EVERY_QTYPE, ids=lambda q: Q(q).name)
def test_linear_many_reads_every_type(rt, gpu, cpu, qtype):
    """matvec3_ of each type (one token, three small matrices, the last rows a partial block of 4) as the CPU's linear."""
    rng = np.random.default_rng(int(qtype) + 100)
    n_cols, rows = n_cols_for(qtype), (6, 4, 3)
    raws = [random_weight(qtype, n, n_cols, rng) for n in rows]
    x = rng.standard_normal((1, n_cols)).astype(np.float32)
    outs = [rt.xp.full((1, n), np.nan, np.float32) for n in rows]
    gpu.linear_many([gpu.upload(r, qtype, (n, n_cols)) for r, n in zip(raws, rows)], dev(rt, x), outs)
    for r, n, out in zip(raws, rows, outs):
        want = np.zeros((1, n), np.float32)
        cpu.linear(cpu.upload(r, qtype, (n, n_cols)), x, want)
        assert nmse(rt.asnumpy(out), want) < 1e-3


def test_linear_many_of_mixed_types_falls_back(rt, gpu, cpu):
    rng = np.random.default_rng(5)
    a, b = random_weight(Q.Q4_K, 16, 512, rng), random_weight(Q.Q6_K, 8, 512, rng)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    outs = [rt.xp.zeros((1, 16), np.float32), rt.xp.zeros((1, 8), np.float32)]
    gpu.linear_many([gpu.upload(a, Q.Q4_K, (16, 512)), gpu.upload(b, Q.Q6_K, (8, 512))], dev(rt, x), outs)
    for raw, qt, n, out in ((a, Q.Q4_K, 16, outs[0]), (b, Q.Q6_K, 8, outs[1])):
        want = np.zeros((1, n), np.float32)
        cpu.linear(cpu.upload(raw, qt, (n, 512)), x, want)
        assert nmse(rt.asnumpy(out), want) < 1e-3

@pytest.mark.parametrize("n_tok", [1, 3, 70], ids=["matvec", "matvec-3tok", "matmul"])
@pytest.mark.parametrize("kinds", [(Q.Q4_1, Q.Q4_1, Q.Q4_1), (Q.Q4_K, Q.Q6_K)], ids=["qkv-one-type", "gate-up-mixed"])
def test_norm_linear_many_is_the_norm_then_the_projections(rt, gpu, cpu, n_tok, kinds):
    """The pre-attention/pre-FFN RMSNorm riding in the matvecs gives what a norm launch and linear_many give, xn included."""
    rng = np.random.default_rng(len(kinds) * 10 + n_tok)
    n_cols = 512
    rows = [40, 24, 24][: len(kinds)]
    raws = [random_weight(qt, n, n_cols, rng) for qt, n in zip(kinds, rows)]
    x = (rng.standard_normal((n_tok, n_cols)) * 4).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, n_cols).astype(np.float32)
    want_xn = np.zeros_like(x)
    wants = [np.zeros((n_tok, n), np.float32) for n in rows]
    cpu.norm_linear_many(x, nw, 1e-6, want_xn, [cpu.upload(r, qt, (n, n_cols)) for r, qt, n in zip(raws, kinds, rows)], wants)
    xn = rt.xp.full((n_tok, n_cols), np.nan, np.float32)
    outs = [rt.xp.full((n_tok, n), np.nan, np.float32) for n in rows]
    ws = [gpu.upload(r, qt, (n, n_cols)) for r, qt, n in zip(raws, kinds, rows)]
    gpu.norm_linear_many(dev(rt, x), gpu.vector(nw), 1e-6, xn, ws, outs)
    close(rt.asnumpy(xn), want_xn)
    for out, want in zip(outs, wants):
        assert nmse(rt.asnumpy(out), want) < 1e-3



@pytest.mark.parametrize("n_tok", [1, 70], ids=["matvec", "matmul"])
@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_linear_add_adds_into_the_output(rt, gpu, cpu, n_tok, backend):
    rng = np.random.default_rng(n_tok)
    raw = random_weight(Q.Q8_0, 40, 288, rng)
    x = rng.standard_normal((n_tok, 288)).astype(np.float32)
    resid = rng.standard_normal((n_tok, 40)).astype(np.float32)
    be = gpu if backend == "gpu" else cpu
    put = (lambda a: dev(rt, a)) if backend == "gpu" else (lambda a: a)  # (the emulator's device arrays are numpy: no aliasing)
    get = rt.asnumpy if backend == "gpu" else (lambda a: a)
    w = be.upload(raw, Q.Q8_0, (40, 288))
    prod = put(np.zeros((n_tok, 40), np.float32))
    be.linear(w, put(x), prod)  # the backend's own product (the CPU's prefill may quantize x, the GPU's does not)
    out = put(resid.copy())
    be.linear_add(w, put(x), out)
    assert nmse(get(out), resid + get(prod)) < 1e-9


@pytest.mark.parametrize("n_tok", [1, 70], ids=["matvec", "matmul"])
@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
def test_linear_glu_is_the_activation_then_the_product(rt, gpu, cpu, n_tok, act, accumulate):
    """An FFN's down projection reading gate and up (in decode the matvec applies the activation as it reads x)."""
    rng = np.random.default_rng(n_tok + len(act))
    raw = random_weight(Q.Q4_K, 24, 512, rng)
    gate = rng.standard_normal((n_tok, 512)).astype(np.float32)
    up = rng.standard_normal((n_tok, 512)).astype(np.float32)
    resid = rng.standard_normal((n_tok, 24)).astype(np.float32)
    want = resid.copy()
    cpu.linear_glu(cpu.upload(raw, Q.Q4_K, (24, 512)), gate.copy(), up, want, act, accumulate)
    out = dev(rt, resid.copy())
    gpu.linear_glu(gpu.upload(raw, Q.Q4_K, (24, 512)), dev(rt, gate.copy()), dev(rt, up), out, act, accumulate)
    g = gate / (1 + np.exp(-gate)) if act == "silu" else 0.5 * gate * (1 + np.tanh(0.7978845608 * (gate + 0.044715 * gate**3)))
    exact = (resid if accumulate else 0) + (g * up).astype(np.float64) @ dequantize(raw, Q.Q4_K).reshape(24, 512).astype(np.float64).T
    assert nmse(rt.asnumpy(out), exact) < 1e-9
    assert nmse(rt.asnumpy(out), want) < 1e-3  # (the CPU's decode quantizes x per 32)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: Q(q).name)
def test_get_rows(rt, gpu, cpu, qtype):
    rng = np.random.default_rng(int(qtype))
    n_rows, n_cols = 20, n_cols_for(qtype)
    raw = random_weight(qtype, n_rows, n_cols, rng)
    ids = np.array([19, 0, 7, 7], np.int32)
    want = np.zeros((4, n_cols), np.float32)
    cpu.get_rows(cpu.upload(raw, qtype, (n_rows, n_cols)), ids, want)
    np.testing.assert_array_equal(want, dequantize(raw, qtype).reshape(n_rows, n_cols)[ids])
    out = rt.xp.zeros((4, n_cols), np.float32)
    gpu.get_rows(gpu.upload(raw, qtype, (n_rows, n_cols)), ids, out)
    np.testing.assert_array_equal(rt.asnumpy(out), want)  # decoding is exact on both


def test_get_rows_past_4gib(rt, gpu):
    """A row whose byte offset row * row_bytes passes 2^32 (Gemma 3's vocabulary, 262144 rows, at n_embd 4096 in F32:
    16 KiB a row) is read from its own bytes: the offset is taken in 64 bits.  In 32 bits, row 262145's would wrap to
    row 1's.  The 4 GiB weight is zeros but for the two rows read (numpy's zeros map their pages as they are touched,
    so the emulator holds two rows of it; a GPU allocates it whole)."""
    from kvrun.ops.backend import Weight

    if getattr(rt, "guard", False):
        pytest.skip("guard mode copies every argument array whole")
    n_rows, n_cols = 262146, 4096
    try:
        data = rt.xp.zeros((n_rows, 4 * n_cols), np.uint8)
    except MemoryError:
        pytest.skip("no room for a 4 GiB weight here")
    rows = np.stack([np.full(n_cols, -1.0, np.float32), np.arange(n_cols, dtype=np.float32)])
    data[1] = dev(rt, rows[0].view(np.uint8))
    data[n_rows - 1] = dev(rt, rows[1].view(np.uint8))
    out = rt.xp.zeros((2, n_cols), np.float32)
    gpu.get_rows(Weight(data, Q.F32, (n_rows, n_cols)), np.array([1, n_rows - 1], np.int32), out)
    np.testing.assert_array_equal(rt.asnumpy(out), rows)


def test_mxfp4_every_scale_exponent(rt, gpu):
    """MXFP4's E8M0 scale on the device as in gguf (2^(e - 128): subnormal for e < 2, 2^127 for 255), every e;
    rows of one 17-byte block, so every other row starts at an odd address (byte loads only).  On a GPU the subnormal
    scales are zero: CuPy compiles every kernel with -ftz=true (appended after ours, and NVRTC takes the last), so the
    device flushes subnormal operands and results, in every kernel; the emulator (and the CPU) keep them."""
    from kvrun.ops.gpu import emulate

    raw = random_weight(Q.MXFP4, 256, 32, np.random.default_rng(9))
    raw[:, 0] = np.arange(256)
    ids = np.arange(256, dtype=np.int32)[::-1].copy()
    out = rt.xp.zeros((256, 32), np.float32)
    gpu.get_rows(gpu.upload(raw, Q.MXFP4, (256, 32)), ids, out)
    with np.errstate(all="ignore"):
        want = dequantize(raw, Q.MXFP4).reshape(256, 32)[ids]
    if not isinstance(rt, emulate.EmulatedRuntime):  # (flush to zero: e = 0 and 1, 2^-128 and 2^-127)
        want[raw[ids, 0] < 2] = 0.0
    np.testing.assert_array_equal(rt.asnumpy(out), want)


def test_host_arrays_are_accepted(rt, gpu, cpu):
    """Models that still allocate numpy buffers get the right answer (through transfers)."""
    rng = np.random.default_rng(5)
    raw = random_weight(Q.Q8_0, 8, 64, rng)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    out = np.zeros((2, 8), np.float32)
    gpu.linear(gpu.upload(raw, Q.Q8_0, (8, 64)), x, out)
    exact = x @ dequantize(raw, Q.Q8_0).reshape(8, 64).T
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_ids_are_refused(rt, gpu):
    w = gpu.upload(random_weight(Q.Q4_0, 8, 64, np.random.default_rng(0)), Q.Q4_0, (8, 64))
    with pytest.raises(ValueError, match="do not match"):
        gpu.linear(w, rt.xp.zeros((1, 32), np.float32), rt.xp.zeros((1, 8), np.float32))
    with pytest.raises(IndexError):
        gpu.get_rows(w, np.array([8], np.int32), rt.xp.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="no GPU kernel"):
        gpu.upload(np.zeros((1, 292), np.uint8), Q.Q8_K, (1, 256))


# ----------------------------------------------------------------- nn
def close(got, want, tol=1e-5):
    got = np.asarray(got)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= tol, f"max error {err:.2e} relative to the data's scale"


@pytest.mark.parametrize("aliased", [False, True], ids=["out", "in-place"])
def test_rms_norm(rt, gpu, aliased):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    want = np.zeros_like(x)
    nn.rms_norm(x, w, 1e-6, want)
    xd = dev(rt, x)
    out = xd if aliased else rt.xp.zeros_like(xd)
    gpu.rms_norm(xd, gpu.vector(w), 1e-6, out)
    close(rt.asnumpy(out), want)


def test_rms_norm_heads(rt, gpu):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    want = x.copy()
    nn.rms_norm_heads(want, w, 1e-6)
    xd = dev(rt, x)
    gpu.rms_norm_heads(xd, gpu.vector(w), 1e-6)
    close(rt.asnumpy(xd), want)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("aliased", [False, True], ids=["out", "in-place"])
def test_layer_norm(rt, gpu, cpu, aliased, bias):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 300)) + 4.0).astype(np.float32)  # off-centre: the mean matters
    w = rng.standard_normal(300).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32) if bias else None
    want = np.zeros_like(x)
    cpu.layer_norm(x, w, b, 1e-5, want)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w + (0 if b is None else b)
    close(want, ref)
    xd = dev(rt, x)
    out = xd if aliased else rt.xp.zeros_like(xd)
    gpu.layer_norm(xd, gpu.vector(w), None if b is None else gpu.vector(b), 1e-5, out)
    close(rt.asnumpy(out), want)


def test_layer_norm_heads(rt, gpu, cpu):
    """StableLM 2 12B's QK-norm: each head LayerNormed with its own weights."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((3, 4, 40)) + 1.0).astype(np.float32)
    w = rng.standard_normal((4, 40)).astype(np.float32)
    want = x.copy()
    cpu.layer_norm_heads(want, w, 1e-5)
    x64 = x.astype(np.float64)
    close(want, (x64 - x64.mean(2, keepdims=True)) / np.sqrt(x64.var(2, keepdims=True) + 1e-5) * w)
    xd = dev(rt, x)
    gpu.layer_norm_heads(xd, gpu.vector(w), 1e-5)
    close(rt.asnumpy(xd), want)


@pytest.mark.parametrize("neox", [False, True], ids=["normal", "neox"])
def test_rope(rt, gpu, neox):
    rng = np.random.default_rng(3)
    cos, sin = nn.rope_tables(64, 24, 10000.0)  # n_rot 24 < head_dim 32: the tail passes through
    x = rng.standard_normal((5, 3, 32)).astype(np.float32)
    pos = np.array([0, 7, 8, 40, 63], np.int32)
    want = x.copy()
    nn.rope(want, pos, cos, sin, neox)
    xd = dev(rt, x)
    gpu.rope(xd, pos, cos, sin, neox)  # host tables and positions, as models pass them
    close(rt.asnumpy(xd), want)


def test_rms_norm_add_adds_the_norm_to_the_residual(rt, gpu, cpu):
    rng = np.random.default_rng(7)
    y = rng.standard_normal((3, 300)).astype(np.float32)
    x = rng.standard_normal((3, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    want = x.copy()
    cpu.rms_norm_add(y.copy(), w, 1e-6, want)
    xd = dev(rt, x)
    gpu.rms_norm_add(dev(rt, y), gpu.vector(w), 1e-6, xd)
    close(rt.asnumpy(xd), want)
    assert not np.allclose(want, x)


@pytest.mark.parametrize("neox", [False, True], ids=["normal", "neox"])
def test_norm_rope_qk_is_qk_norm_then_rope(rt, gpu, cpu, neox):
    """Gemma 3's QK-norm and RoPE in one launch, as rms_norm_heads twice and rope_qk give (n_rot < head_dim)."""
    rng = np.random.default_rng(8)
    cos, sin = nn.rope_tables(64, 72, 10000.0)  # head_dim 80: lanes own pairs past 32, and an unrotated tail
    q = (rng.standard_normal((3, 4, 80)) * 3).astype(np.float32)
    k = (rng.standard_normal((3, 2, 80)) * 3).astype(np.float32)
    wq, wk = rng.uniform(0.5, 1.5, 80).astype(np.float32), rng.uniform(0.5, 1.5, 80).astype(np.float32)
    pos = np.array([1, 9, 50], np.int32)
    want_q, want_k = q.copy(), k.copy()
    cpu.norm_rope_qk(want_q, want_k, wq, wk, 1e-6, pos, cos, sin, neox)
    qd, kd = dev(rt, q), dev(rt, k)
    gpu.norm_rope_qk(qd, kd, gpu.vector(wq), gpu.vector(wk), 1e-6, pos, cos, sin, neox)
    close(rt.asnumpy(qd), want_q)
    close(rt.asnumpy(kd), want_k)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_qk_is_rope_of_each(rt, gpu, cpu, neox):
    """Queries and keys (GQA: fewer key heads) rotated in one launch, as two rope calls would."""
    rng = np.random.default_rng(6)
    cos, sin = nn.rope_tables(64, 24, 10000.0)
    q = rng.standard_normal((5, 6, 32)).astype(np.float32)
    k = rng.standard_normal((5, 2, 32)).astype(np.float32)
    pos = np.array([0, 7, 8, 40, 63], np.int32)
    wq, wk = q.copy(), k.copy()
    cpu.rope_qk(wq, wk, pos, cos, sin, neox)
    qd, kd = dev(rt, q.copy()), dev(rt, k.copy())
    gpu.rope_qk(qd, kd, pos, cos, sin, neox)
    close(rt.asnumpy(qd), wq)
    close(rt.asnumpy(kd), wk)
    assert not np.allclose(wq, q)  # (the reference did rotate)


@pytest.mark.parametrize("op", ["silu_mul", "gelu_mul", "gelu", "relu_sqr", "add", "add_bias", "scale", "softcap"])
def test_elementwise(rt, gpu, op):
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((3, 1000)) * 3).astype(np.float32)
    b = rng.standard_normal((3, 1000)).astype(np.float32)
    bias = rng.standard_normal(1000).astype(np.float32)
    want = a.copy()
    ad = dev(rt, a)
    if op in ("silu_mul", "gelu_mul"):
        getattr(nn, op)(a, b, want)
        getattr(gpu, op)(ad, dev(rt, b), ad)  # out aliasing gate, as the models call it
    elif op == "gelu":
        nn.gelu(a, want)
        gpu.gelu(ad, ad)
    elif op == "relu_sqr":
        nn.relu_sqr(a, want)
        gpu.relu_sqr(ad, ad)
    elif op == "add":
        nn.add_inplace(want, b)
        gpu.add(ad, dev(rt, b))
    elif op == "add_bias":
        want += bias
        gpu.add_bias(ad, gpu.vector(bias))
    elif op == "scale":
        nn.scale_inplace(want, 0.37)
        gpu.scale(ad, 0.37)
    else:
        nn.softcap_inplace(want, 2.5)
        gpu.softcap(ad, 2.5)
    close(rt.asnumpy(ad), want)


# ----------------------------------------------------------------- attention
SPECS = {
    "gqa2": LayerSpec(n_head=4, n_head_kv=2, head_dim=32, head_dim_v=32, window=0, scale=32**-0.5),
    "mqa-window-softcap": LayerSpec(n_head=4, n_head_kv=1, head_dim=64, head_dim_v=64, window=8, scale=0.125, softcap=20.0),
    "dv-differs": LayerSpec(n_head=2, n_head_kv=2, head_dim=48, head_dim_v=24, window=0, scale=0.2),
}


def _feed(caches, rt, spec, chunks, rng, p=0):
    """Feed the same random q/k/v chunks from position p to both caches; compare their outputs."""
    for T in chunks:
        q = rng.standard_normal((T, spec.n_head, spec.head_dim)).astype(np.float32)
        k = rng.standard_normal((T, spec.n_head_kv, spec.head_dim)).astype(np.float32)
        v = rng.standard_normal((T, spec.n_head_kv, spec.head_dim_v)).astype(np.float32)
        pos = np.arange(p, p + T, dtype=np.int32)
        outs = []
        for c in caches:
            if isinstance(c, PlainLayerCache):
                o = np.zeros((T, spec.n_head, spec.head_dim_v), np.float32)
                c.update_and_attend(q, k, v, pos, o)
                outs.append(o)
            else:
                o = rt.xp.full((T, spec.n_head, spec.head_dim_v), np.nan, np.float32)
                c.update_and_attend(dev(rt, q), dev(rt, k), dev(rt, v), pos, o)
                outs.append(rt.asnumpy(o))
        assert np.abs(outs[1] - outs[0]).max() <= 1e-4, f"chunk of {T} at position {p}"
        p += T


@pytest.mark.parametrize("name", list(SPECS))
def test_cache_attention_prefill_then_decode(rt, name):
    """Prefill chunks (tiled kernel) then decode steps (split-K), ring wrapping on the window layer."""
    spec = SPECS[name]
    cap = 40 if spec.window == 0 else spec.window + 12
    cpu_c, gpu_c = PlainLayerCache(spec, cap), GPUPlainLayerCache(spec, cap)
    _feed([cpu_c, gpu_c], rt, spec, [12, 9, 1, 2, 1, 1, 5], np.random.default_rng(6))
    # the fp16 bits in the ring are the same (round to nearest even on both)
    np.testing.assert_array_equal(rt.asnumpy(gpu_c.k).view(np.uint16), cpu_c.k)
    np.testing.assert_array_equal(rt.asnumpy(gpu_c.v).view(np.uint16), cpu_c.v)
    np.testing.assert_array_equal(rt.asnumpy(gpu_c.pos), cpu_c.pos)
    assert gpu_c.n_tokens() == cpu_c.n_tokens() and gpu_c.nbytes() == cpu_c.nbytes()


def test_decode_over_many_splits(rt):
    """Hundreds of slots: several decode chunks of 128 merged by the reduce kernel."""
    spec = SPECS["gqa2"]
    cpu_c, gpu_c = PlainLayerCache(spec, 320), GPUPlainLayerCache(spec, 320)
    _feed([cpu_c, gpu_c], rt, spec, [100, 100, 100, 1, 3], np.random.default_rng(7))


@pytest.mark.parametrize("name", ["gqa2", "mqa-window-softcap"])
def test_prefill_over_many_tiles(rt, name):
    """Long prefill chunks: several query blocks and K/V tiles (online softmax rescaling,
    tiles skipped by the causal and window masks), the window ring wrapping."""
    spec = SPECS[name]
    cap = 128 if spec.window == 0 else spec.window + 40
    cpu_c, gpu_c = PlainLayerCache(spec, cap), GPUPlainLayerCache(spec, cap)
    _feed([cpu_c, gpu_c], rt, spec, [40, 40, 30, 1], np.random.default_rng(10))


def test_truncate_and_reset(rt):
    spec = SPECS["gqa2"]
    cpu_c, gpu_c = PlainLayerCache(spec, 40), GPUPlainLayerCache(spec, 40)
    rng = np.random.default_rng(8)
    _feed([cpu_c, gpu_c], rt, spec, [10], rng)
    cpu_c.truncate(6)
    gpu_c.truncate(6)
    assert gpu_c.n_tokens() == 6
    _feed([cpu_c, gpu_c], rt, spec, [1, 3], rng, p=6)  # the truncated positions are written anew
    gpu_c.reset()
    assert gpu_c.n_tokens() == 0 and gpu_c.used == 0


# ----------------------------------------------------------------- tiny model
N_CTX, N_BATCH = 64, 16


def _model(path, backend):
    from kvrun.loaders.config import load_config
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.models import model_class

    g = GGUFFile(path)
    cfg = load_config(g)
    return cfg, model_class(cfg.arch)(g, cfg, backend, N_CTX, N_BATCH)


def _run(model, cfg, cache, tokens, chunks):
    out = np.zeros((len(tokens), cfg.n_vocab), np.float32)
    s = 0
    for T in chunks:
        ch = tokens[s : s + T]
        pos = np.arange(cache.offset, cache.offset + T, dtype=np.int32)
        model.forward(ch, pos, cache, np.arange(T), out[s : s + T])
        cache.offset += T
        s += T
    return out


@pytest.mark.parametrize(("arch", "qtype"), [("llama", Q.Q4_0), ("gemma3", Q.Q8_0), ("qwen2", Q.F16)], ids=["llama-q4_0", "gemma3-q8_0", "qwen2-f16"])
def test_tiny_model_forward_matches_cpu(rt, gpu, cpu, tmp_path, arch, qtype):
    from reference import Reference
    from tinymodel import write_tiny_model

    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype=qtype, sliding_window=8)
    tokens = np.random.default_rng(9).integers(0, 200, 24).astype(np.int32)
    chunks = [16, 5, 1, 1, 1]  # two prefill batches (one of 5: the tiled kernels), then decode
    cfg, m_cpu = _model(path, cpu)
    want = _run(m_cpu, cfg, KVCache(make_plain_cache(m_cpu.layer_specs(), N_CTX, N_BATCH)), tokens, chunks)
    cfg, m_gpu = _model(path, gpu)
    got = _run(m_gpu, cfg, KVCache(make_gpu_plain_cache(m_gpu.layer_specs(), N_CTX, N_BATCH)), tokens, chunks)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-2, f"max relative error {err:.2e}"
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    # and the float64 reference forward: the GPU decodes weights exactly and keeps
    # activations in float32, so only the fp16 KV cache separates them
    ref = Reference(path).logits(tokens)
    err_ref = np.abs(got - ref).max() / np.abs(ref).max()
    assert err_ref < 2e-3, f"max error {err_ref:.2e} against the float64 reference"


@pytest.mark.skipif(not emulate.available(), reason="no host C++ compiler for the kernel emulator")
def test_positions_are_uploaded_once_per_content(strict):
    """Every layer asks for the step's positions: one upload serves them all, and a reused host array is re-read.

    (On device arrays distinct from numpy's: the plain emulator's device arrays *are* host arrays.)"""
    from kvrun.ops.gpu.arrays import positions

    rt = strict
    pos = np.arange(5, 8)
    a = positions(pos)
    assert positions(pos.copy()) is a and positions(pos.astype(np.int64)) is a
    pos[:] = [8, 9, 10]  # the caller reuses its array for the next step
    b = positions(pos)
    assert b is not a and rt.asnumpy(b).tolist() == [8, 9, 10] and rt.asnumpy(a).tolist() == [5, 6, 7]
