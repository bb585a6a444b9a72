"""Gemma 3n and Gemma 4 on ``--device gpu``: their own steps (AltUp, LAuReL, the per-layer inputs, the sparse FFN gates,
K/V sharing, heads of two widths, GELU experts) in backend ops and ops/gpu/gemma.cu's kernels, against the host numpy
the CPU's forwards do them in.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), each
against the host expression it replaces (models/gemma3n.py, models/gemma4.py), within 1e-5 relative (float32 sums in
another order).  The models (tests/tinymodel.py's fixtures, float32 weights) run on ``--device gpu``
(``KVRUN_GPU_EMULATE=1`` without a GPU) against the CPU over a prefill and decode steps replayed from captured CUDA
graphs, within tests/test_gpu_archs2.py's 2e-3; measured here: Gemma 3n 2.2e-4 (its 25 layers of unscaled attention
over QK-normed heads, whose sharp softmax shows the fp16 cache's rounding on either side), Gemma 4 6e-7, Gemma 4's
26B-A4B layout 8e-6.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gpu_checks import check_decode_copies_only_logits, check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.factory import make_cache
from kvrun.cache.kvconfig import KVConfig
from kvrun.models.gemma3n import Gemma3nModel
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: the fixtures of Gemma 3n and Gemma 4 (tests/tinymodel.py), every one running on the GPU
ON_GPU = [pytest.param("gemma3n", marks=pytest.mark.heavy_emulation), "gemma4", "gemma4_moe"]  # (on the emulator, tens of seconds: tests/conftest.py's sample leaves it out)

TOL = 1e-5


# ----------------------------------------------------------------- the kernels against the host's numpy
def test_altup_predicts_every_stream_as_its_routed_mix_plus_itself(rt, gpu):
    rng = np.random.default_rng(0)
    n, n_batch, T, E = 4, 6, 5, 64
    xs = rng.standard_normal((n, n_batch, E)).astype(np.float32)
    xr = rng.standard_normal((T, E)).astype(np.float32)  # (the active stream, router-normed)
    router, coef = rng.standard_normal((n, E)).astype(np.float32), rng.standard_normal((n * n, n)).astype(np.float32)
    cp, pred = gpu.zeros((T, n * n)), gpu.zeros((n, n_batch, E))
    gpu.altup_coefs(gpu.vector(xr), gpu.vector(router), gpu.vector(coef), cp, 1.0 / E, 0.0)
    gpu.altup_predict(gpu.vector(xs), cp, pred, T)
    # Gemma3nModel.router_modalities and .altup_predict
    coefs = np.tanh((xr * (1.0 / E)) @ router.T) @ coef.T
    want = np.einsum("trc,cte->rte", coefs.reshape(T, n, n), xs[:, :T]) + xs[:, :T]
    assert rel_err(coefs, rt.asnumpy(cp)) < TOL
    assert rel_err(want, rt.asnumpy(pred)[:, :T]) < TOL


def test_altup_corrects_every_stream_by_the_innovation_times_one_plus_its_coefficient(rt, gpu):
    rng = np.random.default_rng(1)
    n, n_batch, T, E, act = 4, 6, 3, 64, 0
    pred = rng.standard_normal((n, n_batch, E)).astype(np.float32)
    out, xr = rng.standard_normal((T, E)).astype(np.float32), rng.standard_normal((T, E)).astype(np.float32)
    router, coef = rng.standard_normal((n, E)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    cc, xs = gpu.zeros((T, n)), gpu.zeros((n, n_batch, E))
    gpu.altup_coefs(gpu.vector(xr), gpu.vector(router), gpu.vector(coef), cc, 1.0 / E, 1.0)
    gpu.altup_correct(gpu.vector(pred), gpu.vector(out), cc, xs, T, act)
    coefs = np.tanh((xr * (1.0 / E)) @ router.T) @ coef.T + 1.0  # Gemma3nModel.altup_correct
    want = pred[:, :T] + coefs.T[:, :, None] * (out - pred[act, :T])[None]
    assert rel_err(want, rt.asnumpy(xs)[:, :T]) < TOL


@pytest.mark.parametrize("accumulate", [False, True])
def test_match_norm_rescales_each_row_to_the_norm_of_another(rt, gpu, accumulate):
    rng = np.random.default_rng(2)
    a, src, x = (rng.standard_normal((5, 96)).astype(np.float32) for _ in range(3))
    out = gpu.vector(x)
    gpu.match_norm(gpu.vector(a), gpu.vector(src), out, accumulate)
    want = a * Gemma3nModel.magnitude(src) / Gemma3nModel.magnitude(a) + (x if accumulate else 0.0)
    assert rel_err(want, rt.asnumpy(out)) < TOL


def test_gaussian_top_k_keeps_what_exceeds_the_rows_95th_percentile_shifted_down(rt, gpu):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 300)).astype(np.float32) * 2 + 0.5
    d = gpu.vector(x)
    gpu.gaussian_topk(d, 1.6448533535003662)
    host = SimpleNamespace(cfg=SimpleNamespace(sparsity_std_mul=1.6448533535003662))
    want = Gemma3nModel.gaussian_topk(host, x)
    got = rt.asnumpy(d)
    assert rel_err(want, got) < TOL
    assert 0.02 < (got > 0).mean() < 0.10  # (about 5% of a gaussian row survives)


def test_the_small_steps_per_layer_gate_row_scale_copy_expert_scale(rt, gpu):
    rng = np.random.default_rng(4)
    T, A, n_layer = 3, 32, 5
    g, pl = rng.standard_normal((T, A)).astype(np.float32), rng.standard_normal((T, n_layer * A)).astype(np.float32)
    d = gpu.vector(g)
    gpu.gelu_mul_strided(d, gpu.vector(pl), 2 * A)
    gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    assert rel_err(gelu * pl[:, 2 * A : 3 * A], rt.asnumpy(d)) < TOL

    w = rng.standard_normal(A).astype(np.float32)
    out = gpu.zeros((T, A))
    gpu.mul_vec(gpu.vector(g), gpu.vector(w), out)
    assert rel_err(g * w, rt.asnumpy(out)) < TOL
    gpu.copy(gpu.vector(pl), cp := gpu.zeros((T, n_layer * A)))
    assert (rt.asnumpy(cp) == pl).all()

    ids = np.array([[0, 3], [2, 1], [3, 3]], np.int32)
    wts, scale = rng.random((3, 2)).astype(np.float32), rng.random(4).astype(np.float32)
    wd = gpu.vector(wts)
    gpu.scale_by_expert(wd, rt.xp.asarray(ids), gpu.vector(scale))
    assert rel_err(wts * scale[ids], rt.asnumpy(wd)) < TOL


# ----------------------------------------------------------------- the models against the CPU
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: every op the step launches is a kernel a graph holds
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys)


def test_global_heads_wider_than_the_decode_kernels_take_the_tiled_one(gpu_env, monkeypatch, tmp_path, capsys):
    """Gemma 4's global layers have heads 512 wide (the window layers' 256), past the decode kernel's 256
    (ops/gpu/attention.py DECODE_MAX_D): their decode steps, and those of the layers sharing their K/V, run the tiled
    prefill kernel over whole decode splits, so they are captured and replayed as the others."""
    import tiny_gemma4

    from kvrun.ops.gpu.attention import DECODE_MAX_D

    n_embd, n_head, hd_swa, _, kv_swa, kv_full, n_ff = tiny_gemma4.GEOMETRY
    monkeypatch.setattr(tiny_gemma4, "GEOMETRY", (n_embd, n_head, hd_swa, 2 * DECODE_MAX_D, kv_swa, kv_full, n_ff))
    path = write_tiny_model(tmp_path / "wide.gguf", **FIXTURE_MODELS["gemma4"])
    cpu, gpu = Engine(path, device="cpu", n_ctx=64, n_batch=16), Engine(path, device="gpu", n_ctx=64, n_batch=16)
    assert max(s.head_dim for s in gpu.model.layer_specs()) == 2 * DECODE_MAX_D
    ids = list(np.random.default_rng(3).integers(0, 200, 12))
    ca, cb = cpu.new_cache(), gpu.new_cache()
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < 2e-3
    for tok in (5, 9, 14):
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < 2e-3
    assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (1, 2)
    assert "CUDA graphs off" not in capsys.readouterr().err


@pytest.mark.parametrize("name,qtype", [pytest.param("gemma3n", Q.Q8_0, marks=pytest.mark.heavy_emulation), ("gemma4_moe", Q.Q4_0)])
def test_quantized_weights_give_the_cpus_logits_on_the_same_weights_dequantized(gpu_env, monkeypatch, tmp_path, name, qtype):
    """The GPU's products keep float32 activations, the CPU's round them to int8 (llama.cpp's), which these fixtures'
    sharp attention and near-tied experts amplify (up to 3e-1 here): so the GPU on quantized weights (AltUp's maps,
    the per-layer table, a fused ffn_gate_up_exps split on the device) is held to the CPU on those weights decoded to
    float32.  Measured: 1.6e-4 (Gemma 3n), 3e-6 (Gemma 4's experts)."""
    from kvrun.ops.cpu.backend import CPUBackend

    upload = CPUBackend.upload

    def decoded(self, data, qt, shape):
        if int(qt) == int(Q.F32):
            return upload(self, data, qt, shape)
        rows = dequantize(np.asarray(data).reshape(shape[0], -1), Q(int(qt)))
        return upload(self, np.ascontiguousarray(rows, np.float32).view(np.uint8), Q.F32, shape)

    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name], qtype=qtype)
    gpu = Engine(path, device="gpu", n_ctx=64, n_batch=16)
    monkeypatch.setattr(CPUBackend, "upload", decoded)
    cpu = Engine(path, device="cpu", n_ctx=64, n_batch=16)
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    ca, cb = cpu.new_cache(), gpu.new_cache()
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < 2e-3
    for tok in (5, 9):
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < 2e-3


@pytest.mark.parametrize("name", ON_GPU)
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, name):
    """AltUp's streams, the per-layer inputs and the experts' choice stay on the device (the strict stand-in,
    tests/devicexp.py, logs every copy down and refuses one while a graph is captured).  (Replayed steps: an eager
    one of a soft-capped model copies its host logits down twice, models/common.py output_head's affair.)"""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    check_decode_copies_only_logits(monkeypatch, path, prompt=range(3, 15))


def test_layers_sharing_kv_read_their_sources_ring_on_the_gpu(gpu_env, tmp_path):
    """Gemma 3n's layers from the 20th on attend over layer 18's (window) or 19's (global) device ring and store
    nothing; over the compressed cache they read the source's compressed slots (tests/test_shared_compressed.py)."""
    from kvrun.cache.gpu_plain import GPUPlainLayerCache
    from kvrun.cache.gpu_shared import GPUSharedLayerCache

    eng = Engine(write_tiny_model(tmp_path / "g3n.gguf", **FIXTURE_MODELS["gemma3n"]), device="gpu", n_ctx=64, n_batch=16)
    layers = eng.new_cache().layers
    assert isinstance(layers[19], GPUPlainLayerCache) and isinstance(layers[24], GPUSharedLayerCache)
    assert layers[24].source is layers[19] and layers[20].source is layers[18] and layers[20].nbytes() == 0
    from kvrun.cache.gpu_shared_compressed import GPUSharedCompressedLayerCache

    compressed = make_cache(eng.model.layer_specs(), 64, 16, KVConfig(bits=4), device="gpu")
    assert isinstance(compressed[24], GPUSharedCompressedLayerCache) and compressed[24].source is compressed[19]
