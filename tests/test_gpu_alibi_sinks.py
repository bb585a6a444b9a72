"""ALiBi, attention sinks and xIELU on ``--device gpu``: the kernels against the CPU's, then the models that need them.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator that
compiles the same .cu sources for the host), the models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU).

* ALiBi: the GPU caches take the slopes in the layer spec (``LayerSpec.alibi_slopes``) and the attention kernels add
  ``slope_h * (key_pos - query_pos)`` to each score, as llama.cpp's soft_max_ext with its ``-|i - j|`` mask; the CPU
  carries the same bias as one more key channel (models/bloom.py).  The two agree within 1e-4 absolute on outputs of
  order 1 (the softmax drops the ``-slope_h * query_pos`` the CPU leaves out; float32 rounding of the larger CPU scores).
* Sinks (gpt-oss): each head's sink logit joins its softmax's denominator, in the decode kernel (one split and
  several, merged by the reduce), the prefill tiles and the compressed cache's decode, policy probabilities and
  prefill: within 1e-4 of the CPU plain cache, 2e-3 relative of the CPU compressed one (test_gpu_qattention.py's bound
  for device-quantized steps).
* xIELU: the element-wise kernel within 1e-5 relative of ``ops/cpu/nn.xielu``.
* The fixtures of every ALiBi architecture and of Apertus: the CPU's logits within 2e-3 (test_gpu_archs2.py's bound,
  float32 weights) over a prefill and decode steps replayed from captured CUDA graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import LayerSpec
from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.factory import make_cache
from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
from kvrun.cache.gpu_plain import GPUPlainLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.models.jina_bert import alibi_slopes
from kvrun.ops import gpu_available
from kvrun.ops.cpu import nn
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

# the `rt` fixture (real CUDA where a GPU is, else the kernel emulator) is in conftest.py


def _qkv(rng, spec: LayerSpec, T: int, head_dim: int):
    q = rng.standard_normal((T, spec.n_head, head_dim)).astype(np.float32)
    k = rng.standard_normal((T, spec.n_head_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((T, spec.n_head_kv, spec.head_dim_v)).astype(np.float32)
    return q, k, v


def _gpu_step(rt, cache, q, k, v, pos) -> np.ndarray:
    out = rt.xp.full((q.shape[0], q.shape[1], v.shape[2]), np.nan, np.float32)
    cache.update_and_attend(rt.xp.asarray(q), rt.xp.asarray(k), rt.xp.asarray(v), pos, out)
    return rt.asnumpy(out)


# ----------------------------------------------------------------- ALiBi
#: (n_head, n_kv, head_dim, max_bias, scale): BLOOM's form; Jais's 1/head_dim scale and a head count that is not a power
#: of two (its interleaved slopes); Refact's multi-query heads
ALIBI_CASES = {
    "bloom-like": (4, 4, 32, 8.0, 32**-0.5),
    "jais-like-6-heads": (6, 3, 16, 8.0, 1.0 / 16),
    "refact-like-mqa": (8, 1, 32, 8.0, 32**-0.5),
}


@pytest.mark.parametrize("case", list(ALIBI_CASES))
def test_alibi_kernels_match_the_cpus_position_channel(rt, case):
    """Prefill tiles, then decode steps over one split and over several (the reduce): the GPU cache with the slopes gives
    the CPU cache's output with Q and K one channel wider (``slope_h / scale`` times the key's position)."""
    H, n_kv, D, bias, scale = ALIBI_CASES[case]
    slopes = alibi_slopes(H, bias)
    gpu_spec = LayerSpec(H, n_kv, D, D, 0, scale, alibi_slopes=tuple(map(float, slopes)))
    cpu_spec = LayerSpec(H, n_kv, D + 1, D, 0, scale, position_channel=True)
    cap = 200
    cpu_c, gpu_c = PlainLayerCache(cpu_spec, cap), GPUPlainLayerCache(gpu_spec, cap)
    rng = np.random.default_rng(5)
    p = 0
    for T in [20, 40, 1, 3, 1, 90, 1, 2]:  # (past 128 slots the decode kernel splits)
        q, k, v = _qkv(rng, gpu_spec, T, D)
        pos = np.arange(p, p + T, dtype=np.int32)
        qa = np.concatenate([q, np.broadcast_to((slopes / np.float32(scale)).astype(np.float32)[None, :, None], (T, H, 1))], axis=2)
        ka = np.concatenate([k, np.broadcast_to(pos.astype(np.float32)[:, None, None], (T, n_kv, 1))], axis=2)
        want = np.zeros((T, H, D), np.float32)
        cpu_c.update_and_attend(np.ascontiguousarray(qa), np.ascontiguousarray(ka), v, pos, want)
        got = _gpu_step(rt, gpu_c, q, k, v, pos)
        assert np.abs(got - want).max() <= 1e-4, f"chunk of {T} at position {p}"
        p += T


def test_alibi_kernels_are_llama_cpps_formula(rt):
    """softmax(scale q.k + slope_h (j - i)) V over the fp16 cache, in float64, for a prefill chunk and a decode step."""
    H, n_kv, D = 4, 2, 16
    slopes = alibi_slopes(H, 8.0)
    spec = LayerSpec(H, n_kv, D, D, 0, 0.25, alibi_slopes=tuple(map(float, slopes)))
    gpu_c = GPUPlainLayerCache(spec, 64)
    rng = np.random.default_rng(9)
    q, k, v = _qkv(rng, spec, 13, D)
    got = np.concatenate([_gpu_step(rt, gpu_c, q[:12], k[:12], v[:12], np.arange(12, dtype=np.int32)),
                          _gpu_step(rt, gpu_c, q[12:], k[12:], v[12:], np.array([12], np.int32))])  # fmt: skip
    kf, vf = (x.astype(np.float16).astype(np.float64) for x in (k, v))
    i = np.arange(13)
    for h in range(H):
        kh = h // (H // n_kv)
        s = 0.25 * q[:, h].astype(np.float64) @ kf[:, kh].T + slopes[h] * (i[None, :] - i[:, None])
        s = np.where(i[None, :] <= i[:, None], s, -np.inf)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        np.testing.assert_allclose(got[:, h], (e / e.sum(axis=1, keepdims=True)) @ vf[:, kh], atol=1e-5)


def test_alibi_slopes_take_the_gpus_caches_and_compressed_ones(rt):
    """The slopes are the GPU's form (the CPU's plain cache takes the position channel): refused there in one line; the
    compressed caches add them from their slots' positions (tests/test_alibi_compressed.py)."""
    spec = LayerSpec(2, 2, 16, 16, 0, 0.25, alibi_slopes=(0.5, 0.25))
    with pytest.raises(ValueError, match="^ALiBi's slopes .* have no plain CPU cache; load the model with --device cpu$"):
        make_cache([spec], 64, 16)
    assert isinstance(make_cache([spec], 64, 16, KVConfig(bits=4), device="gpu")[0], GPUCompressedLayerCache)


# ----------------------------------------------------------------- sinks
SINK_SPECS = {
    # gpt-oss's: GQA, sinks on every head (one dominating, one negligible)
    "gqa": LayerSpec(4, 2, 32, 32, 0, 32**-0.5, sink_logits=(0.5, 6.0, -30.0, 1.5)),
    # its sliding-window layers: the window ring wrapping
    "window": LayerSpec(4, 1, 32, 32, 8, 32**-0.5, sink_logits=(2.0, -1.0, 0.0, 3.0)),
}


@pytest.mark.parametrize("name", list(SINK_SPECS))
def test_sinks_in_the_plain_caches_kernels_match_the_cpu(rt, name):
    """Prefill tiles, decode over one split (the partial kernel writes the output) and several (the reduce)."""
    spec = SINK_SPECS[name]
    cap = 200 if spec.window == 0 else spec.window + 100
    cpu_c, gpu_c = PlainLayerCache(spec, cap), GPUPlainLayerCache(spec, cap)
    rng = np.random.default_rng(6)
    p = 0
    for T in [30, 1, 2, 100, 1, 3, 1]:
        q, k, v = _qkv(rng, spec, T, spec.head_dim)
        pos = np.arange(p, p + T, dtype=np.int32)
        want = np.zeros((T, spec.n_head, spec.head_dim_v), np.float32)
        cpu_c.update_and_attend(q, k, v, pos, want)
        got = _gpu_step(rt, gpu_c, q, k, v, pos)
        assert np.abs(got - want).max() <= 1e-4, f"chunk of {T} at position {p}"
        p += T
    no_sinks = GPUPlainLayerCache(LayerSpec(4, spec.n_head_kv, 32, 32, spec.window, spec.scale), cap)
    q, k, v = _qkv(rng, spec, 4, 32)
    assert np.abs(_gpu_step(rt, no_sinks, q, k, v, np.arange(4, dtype=np.int32)) - _gpu_step(
        rt, GPUPlainLayerCache(spec, cap), q, k, v, np.arange(4, dtype=np.int32))).max() > 1e-2  # (the sinks do act)


@pytest.mark.parametrize("kv", ["2,residual=8,group=16", "2,policy=h2o,budget=40,residual=4,sinks=2,group=16"])
def test_sinks_in_the_compressed_caches_kernels_match_the_cpu(rt, kv):
    """The compressed cache on the device (prefill over the gathered rows, decode over the codes in place, a policy's
    probabilities and its prefill scores) against the CPU's compressed cache with the same sinks."""
    spec = SINK_SPECS["gqa"]
    kv = KVConfig.parse(kv).validate(96)
    cpu_c = CompressedLayerCache(spec, kv, 96)
    cpu_c.int_keys = False  # float queries, as the device's
    gpu_c = GPUCompressedLayerCache(spec, kv, 96)
    rng = np.random.default_rng(7)
    p = 0
    for T in [24, 1, 1, 20, 1, 2, 1, 1, 1, 1, 1, 1]:
        q, k, v = _qkv(rng, spec, T, spec.head_dim)
        pos = np.arange(p, p + T, dtype=np.int32)
        want = np.zeros((T, spec.n_head, spec.head_dim_v), np.float32)
        cpu_c.update_and_attend(q, k, v, pos, want)
        got = _gpu_step(rt, gpu_c, q, k, v, pos)
        assert rel_err(want, got) <= 2e-3, f"chunk of {T} at {p}"
        if gpu_c.policy is not None:  # the probabilities it scores by (the sink takes its share of each denominator)
            np.testing.assert_allclose(rt.asnumpy(gpu_c.policy.score), cpu_c.policy.score, rtol=2e-3, atol=1e-6)
        p += T
    assert gpu_c.pools[0].calibrated and gpu_c.mirror_mismatches() == []


# ----------------------------------------------------------------- xIELU
def test_xielu_kernel_matches_the_cpu(rt):
    """Both sides of zero, past eps, and in place (as Apertus calls it)."""
    from kvrun.ops.gpu.backend import GPUBackend

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 1000)) * 4).astype(np.float32)
    for params in [(0.8, 0.8, 0.5, -1e-6), (-2.0, 30.0, 0.3, -0.5)]:  # (softplus past 20: its argument itself)
        want = np.empty_like(x)
        nn.xielu(x, want, *params)
        xd = rt.xp.asarray(x.copy())
        GPUBackend().xielu(xd, xd, *params)
        assert rel_err(want, rt.asnumpy(xd)) <= 1e-5


# ----------------------------------------------------------------- models
#: every ALiBi architecture's fixtures (tests/tinymodel.py) and Apertus's (xIELU)
ON_GPU = ["bloom", "bloom-output-head", "mpt", "mpt-clip-qkv", "jais", "refact", "baichuan-13b", "apertus"]


@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: the slopes are read on the device
    gpu, _ = check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys)
    if name != "apertus":  # on the GPU the keys keep their width: no position channel
        assert all(s.alibi_slopes and not s.position_channel for s in gpu.model.layer_specs())


def test_baichuan_13b_builds_its_alibi_view_once_at_load(tmp_path, monkeypatch):
    """On the CPU the 13B's ALiBi goes through a view of the cache built at load: a forward makes no object of its own."""
    from kvrun.models import baichuan

    eng = Engine(write_tiny_model(tmp_path / "b13.gguf", **FIXTURE_MODELS["baichuan-13b"]), device="cpu", n_ctx=64, n_batch=16)
    view = eng.model._alibi_view
    assert view is not None and len(view.layers) == eng.model.cfg.n_layer

    def no_new(*a, **k):
        raise AssertionError("a forward built an ALiBi proxy")

    monkeypatch.setattr(baichuan._AlibiCache, "__init__", no_new)
    monkeypatch.setattr(baichuan._AlibiLayer, "__init__", no_new)
    cache = eng.new_cache()
    eng.eval(cache, [1, 2, 3])
    eng.eval(cache, [4])
    assert eng.model._alibi_view is view
