"""BitNet b1.58's ternary weights and Llama 4's chunked attention on ``--device gpu``.

* The ternary types TQ1_0 and TQ2_0 in the GPU's block decoders (ops/gpu/quants.cuh): every product kernel (matvec,
  matmul, the embedding lookup) against the CPU backend's, as tests/test_gpu_kernels.py tests every other type, on
  random blocks (every byte value: TQ1_0's any byte, TQ2_0's code 3 too).
* BitNet files (float32 with scale tensors, TQ2_0, TQ1_0 with the squared ReLU) on the GPU against the CPU over a
  prefill and decode steps replayed from captured CUDA graphs, as tests/test_gpu_archs2.py checks its architectures.
* Llama 4's chunked attention (a negative ``LayerSpec.window`` -c: a query sees the keys from the start of its own
  chunk of c positions, ``ops/cpu/attention.py``) in the plain GPU cache's kernels, decode and prefill, against the
  CPU's plain cache across chunk boundaries, and in the compressed cache's decode kernel against the CPU's (the
  compressed caches on the llama4 fixture: tests/test_wide_heads_chunks.py).
* Llama 4's fixtures on the GPU against the CPU (within the first chunk: tiny models cannot reach 8192 positions on
  the emulator), and the NoPE layers' query temperature past the first chunks against the CPU's.

Tolerances (test_gpu_kernels.py's): products within NMSE 1e-9 of the float64 product of the dequantized weights (the
kernels decode blocks exactly and keep x in float32) and 1e-3 of the CPU's (its ternary row dots quantize x to int8 per
32); decoded rows bit for bit; attention within 1e-4 of the CPU cache's (the same fp16 K/V, float32 softmax in another
order); the temperature's factors exactly (x t, on both); models' logits within 2e-3 of the CPU's, relative to the
largest (test_gpu_archs2.py's bound), a TQ file's against the CPU on its float32 twin (the same weights; the CPU's on
the TQ file part from those by its int8 activations, 5e-3 here).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gpu_checks import check_prefill_and_replayed_decode
from test_gpu_kernels import nmse

from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

TERNARY = [Q.TQ1_0, Q.TQ2_0]


def ternary_blocks(qtype: int, n_rows: int, n_cols: int, rng) -> np.ndarray:
    """Raw rows [n_rows, row_bytes] of random ternary blocks: any code byte, a finite f16 ``d`` (the block's last 2 B)."""
    ts = {Q.TQ1_0: 54, Q.TQ2_0: 66}[qtype]
    raw = rng.integers(0, 256, (n_rows, n_cols // 256, ts), dtype=np.uint8)
    raw[..., ts - 2 :] = rng.uniform(0.002, 0.05, (n_rows, n_cols // 256, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n_rows, -1)


# ----------------------------------------------------------------- ternary kernels
@pytest.mark.parametrize("n_tok", [1, 3, 70], ids=["matvec", "matvec-3tok", "matmul"])
@pytest.mark.parametrize("qtype", TERNARY, ids=lambda q: Q(q).name)
def test_ternary_linear(rt, gpu, cpu, qtype, n_tok):
    rng = np.random.default_rng(int(qtype) * 10 + n_tok)
    n_rows, n_cols = 72, 512  # (72 rows: a partial 64-row tile; two blocks a row)
    raw = ternary_blocks(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    out = rt.xp.full((n_tok, n_rows), np.nan, np.float32)
    gpu.linear(gpu.upload(raw, qtype, (n_rows, n_cols)), rt.xp.asarray(x), out)
    got = rt.asnumpy(out)
    exact = x.astype(np.float64) @ dequantize(raw, qtype).reshape(n_rows, n_cols).astype(np.float64).T
    assert nmse(got, exact) < 1e-9
    want = np.zeros((n_tok, n_rows), np.float32)
    cpu.linear(cpu.upload(raw, qtype, (n_rows, n_cols)), x, want)
    assert nmse(got, want) < 1e-3


@pytest.mark.parametrize("qtype", TERNARY, ids=lambda q: Q(q).name)
def test_ternary_get_rows_decode_exactly(rt, gpu, cpu, qtype):
    rng = np.random.default_rng(int(qtype))
    raw = ternary_blocks(qtype, 20, 512, rng)
    ids = np.array([19, 0, 7, 7], np.int32)
    want = np.zeros((4, 512), np.float32)
    cpu.get_rows(cpu.upload(raw, qtype, (20, 512)), ids, want)
    out = rt.xp.zeros((4, 512), np.float32)
    gpu.get_rows(gpu.upload(raw, qtype, (20, 512)), ids, out)
    np.testing.assert_array_equal(rt.asnumpy(out), want)


# ----------------------------------------------------------------- models
#: BitNet's files and what each adds: float32 with the scale tensors (tests/tinymodel.py's ``bitnet-scales``), the two
#: ternary types without (the output projections' adds then ride in their matvecs), the squared ReLU (newer llama.cpp's).
#: A TQ file holds its float32 twin's weights exactly (tests/tiny_bitnet.py), and the GPU keeps x in float32: its logits
#: are held to the CPU's on the twin (the CPU's own on the TQ file part from those by its int8 activations, by 5e-3 here)
BITNET = {"f32-scales": {"scales": True}, "tq2_0": {"qtype": Q.TQ2_0}, "tq1_0-relu2": {"qtype": Q.TQ1_0, "seed": 1, "act": "relu2"}}


@pytest.mark.parametrize("name", BITNET)
def test_bitnet_on_the_gpu_gives_the_cpus_logits(gpu_env, tmp_path, capsys, name):
    from tiny_bitnet import write_tiny_bitnet

    kw = BITNET[name]
    path = write_tiny_bitnet(tmp_path / f"{name}.gguf", **kw)
    twin = path if "qtype" not in kw else write_tiny_bitnet(tmp_path / "f32.gguf", **{k: v for k, v in kw.items() if k != "qtype"})
    check_prefill_and_replayed_decode(twin, path, capsys)


# ----------------------------------------------------------------- chunked attention (Llama 4)
def test_chunked_attention_in_the_plain_gpu_cache_matches_the_cpus(rt):
    """Chunks of 24 positions: prefill calls of 40 and 30 tokens (several query blocks and K/V tiles, tiles before the
    chunk skipped) and decode steps, each query seeing its own chunk only, as the CPU's plain cache."""
    from test_gpu_kernels import _feed

    from kvrun.cache.base import LayerSpec
    from kvrun.cache.gpu_plain import GPUPlainLayerCache
    from kvrun.cache.plain import PlainLayerCache

    spec = LayerSpec(n_head=4, n_head_kv=2, head_dim=32, head_dim_v=32, window=-24, scale=0.2)
    cpu_c, gpu_c = PlainLayerCache(spec, 128), GPUPlainLayerCache(spec, 128)
    _feed([cpu_c, gpu_c], rt, spec, [40, 30, 1, 2, 1, 5], np.random.default_rng(11))


def test_chunked_attention_in_the_compressed_decode_kernel_matches_the_cpus(rt, monkeypatch):
    """qattention.cu over fp16 rows and two quantized pools, chunks of 37: of the 4 queries (positions 290 .. 299) the
    first two see the chunk from 259, the last two the one from 296 (test_gpu_qattention.py's case, its window -37)."""
    import test_gpu_qattention as tq

    monkeypatch.setitem(tq.CASES, "4x4-mixed2x2-chunked", ((4, 4), (2, 2), 4, 2, 64, 64, 32, 4, True, False, -37, 0.0, True))
    tq.test_decode_kernel_matches_cpu(rt, "4x4-mixed2x2-chunked")


# ----------------------------------------------------------------- Llama 4
@pytest.mark.parametrize("name", ["llama4", "llama4-128e"])  # Scout's QK L2 norm; Maverick's none
def test_llama4_on_the_gpu_gives_the_cpus_logits(gpu_env, tmp_path, capsys, name):
    from tinymodel import FIXTURE_MODELS, write_tiny_model

    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    check_prefill_and_replayed_decode(path, path, capsys)


def test_llama4_nope_temperature_past_the_first_chunk(rt, gpu, cpu, tmp_path):
    """The NoPE layers' query temperature (1 within the first 8192 positions) on the GPU, a rope launch reading the
    positions on the device, gives the CPU's factors exactly, up to and past the chunk boundaries."""
    from tinymodel import FIXTURE_MODELS, write_tiny_model

    from kvrun.loaders.config import load_config
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.models import model_class

    g = GGUFFile(write_tiny_model(tmp_path / "l4.gguf", **FIXTURE_MODELS["llama4"]))
    cfg = load_config(g)
    n_ctx = 3 * 8192
    mc, mg = (model_class("llama4")(g, cfg, be, n_ctx, 16) for be in (cpu, gpu))
    L = mc.layers[3]
    assert not L.rope and not mg.layers[3].rope  # (every 4th layer NoPE)
    pos = np.array([0, 8190, 8191, 8192, 16382, 16383, n_ctx - 1], np.int32)
    q = np.random.default_rng(2).standard_normal((len(pos), cfg.n_head * cfg.head_dim)).astype(np.float32)
    k = np.zeros((len(pos), cfg.n_head_kv * cfg.head_dim), np.float32)
    want = q.copy()
    mc.qk_norm_rope(L, want, k, want.reshape(len(pos), cfg.n_head, -1), k.reshape(len(pos), cfg.n_head_kv, -1), pos, None, None)
    qd, kd = rt.xp.asarray(q.copy()), rt.xp.asarray(k)  # (a copy: the emulator's device arrays are numpy's)
    mg.qk_norm_rope(mg.layers[3], qd, kd, qd.reshape(len(pos), cfg.n_head, -1), kd.reshape(len(pos), cfg.n_head_kv, -1), rt.xp.asarray(pos), None, None)
    np.testing.assert_array_equal(rt.asnumpy(qd), want)
    assert (want[:2] == q[:2]).all() and (want[2:] != q[2:]).all()  # (1 up to position 8190, above from 8191 on)
