"""Gated DeltaNet (qwen35, qwen35moe, qwen3next) and Kimi Delta Attention (kimi-linear) layers on ``--device gpu``
(ops/gpu/delta.cu, the state in cache/gpu_delta.py): the kernels against the CPU's Numba ops on random inputs, and the
architectures against the CPU over a prefill, decode steps replayed from captured CUDA graphs, a run past the kept
inputs and the state's copies, and going back and feeding again.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_ssm.py.

Tolerances: the kernels within 2e-5 relative of the CPU's ops (float32 both; the d_k sums a warp's tree, not the CPU's
row order).  The models' logits within test_gpu_archs2.py's 2e-3 (float32 weights), over the long run too: the delta
rule carries every step's rounding into the next, but each step multiplies the state by a decay exp(g) < 1 and by
(I - beta k k^T) with |k| = 1, beta < 1 (a contraction), so the error stays at the size of one step's; measured here
at most 9e-5 (kimi-linear's prefill, its MLA's sums the most), 1e-5 for the others."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_decode_copies_only_logits, check_going_back, check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.ops import gpu_available
from kvrun.ops.cpu.deltanet import gated_delta_rule, gated_rms_norm
from kvrun.ops.cpu.kda import kda_delta_rule
from kvrun.ops.gpu import delta as G
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

BOUND = 2e-3


def _dev(rt, a: np.ndarray):
    return rt.xp.asarray(np.ascontiguousarray(a))


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("per_channel", [False, True], ids=["gated-deltanet", "kda"])
def test_the_delta_rule_updates_the_state_and_copies_it_as_the_cpu(rt, per_channel):
    """Qwen's one decay a head and Kimi's one a key channel, value heads reading their key heads tiled (h % n_k), the
    state copied after 3 and 7 tokens into the slots the plan names."""
    rng = np.random.default_rng(int(per_channel))
    T, nk, nv, dk = 7, 2, 4, 16
    ch = 2 * nk * dk + nv * dk
    ng = nv * dk if per_channel else nv
    state = rng.standard_normal((nv, dk, dk)).astype(np.float32) * 0.3
    qkv = rng.standard_normal((T, ch)).astype(np.float32)
    g = -np.exp(rng.standard_normal((T, ng))).astype(np.float32) * 0.5
    beta = (1 / (1 + np.exp(-rng.standard_normal((T, nv))))).astype(np.float32)
    k_of_v = np.arange(nv) % nk
    s_cpu, y_cpu, ck_cpu = state.copy(), np.empty((T, nv * dk), np.float32), np.zeros((2, nv, dk, dk), np.float32)
    rule = kda_delta_rule if per_channel else gated_delta_rule
    rule(s_cpu, qkv, g, beta, k_of_v, 1e-6, y_cpu, np.array([3, 7]), np.array([1, 0]), ck_cpu)
    gb = np.zeros((T, 3 + ng + nv), np.float32)  # (g then beta at a column offset of wider rows: the ring's layout)
    gb[:, 3 : 3 + ng], gb[:, 3 + ng :] = g, beta
    s_gpu, y_gpu, ck_gpu = _dev(rt, state), rt.xp.zeros((T, nv * dk), np.float32), rt.xp.zeros((2, nv, dk, dk), np.float32)
    plan = rt.xp.asarray(np.array([3, 1, 7, 0], np.int32))
    G.rule(s_gpu, _dev(rt, qkv), _dev(rt, gb), 3, _dev(rt, k_of_v.astype(np.int32)), y_gpu, plan, 2, ck_gpu, nk, per_channel, 1e-6)
    assert rel_err(y_cpu, rt.asnumpy(y_gpu)) < 2e-5
    assert rel_err(s_cpu, rt.asnumpy(s_gpu)) < 2e-5 and rel_err(ck_cpu, rt.asnumpy(ck_gpu)) < 2e-5


def test_the_decay_beta_and_gated_norm_as_the_model_computes_them(rt):
    rng = np.random.default_rng(7)
    T, H, d = 3, 4, 32
    a, beta = rng.standard_normal((T, H * d)).astype(np.float32) * 8, rng.standard_normal((T, H)).astype(np.float32) * 4
    dt_b, A = rng.standard_normal(H * d).astype(np.float32), -np.exp(rng.standard_normal(H)).astype(np.float32)
    want = np.concatenate([(np.logaddexp(0, a + dt_b).reshape(T, H, d) * A[:, None]).reshape(T, -1), 0.5 + 0.5 * np.tanh(0.5 * beta)], 1)
    gb = rt.xp.zeros((T, H * d + H), np.float32)
    G.decay_beta(_dev(rt, a), _dev(rt, beta), _dev(rt, dt_b), _dev(rt, A), gb, d)  # (KDA's: a decay per key channel)
    assert rel_err(want, rt.asnumpy(gb)) < 2e-5
    y, z, w = (rng.standard_normal(s).astype(np.float32) for s in ((T, H * d), (T, H * d), d))
    want = y.copy()
    gated_rms_norm(want, z, w, 1e-6)
    got = _dev(rt, y)
    G.norm_gate(got, _dev(rt, z), _dev(rt, w), 1e-6, sigmoid_gate=False)
    assert rel_err(want, rt.asnumpy(got)) < 2e-5


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["qwen35", "qwen3next", "kimi-linear"])
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    """Qwen3.5 (key heads tiled, interleaved rope, a dense FFN), Qwen3-Next (key heads repeated, experts) and Kimi
    Linear (the decay per key channel, MLA layers beside): the first decode step is captured, the others replayed."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    _, cb = check_prefill_and_replayed_decode(path, capsys=capsys, steps=(5, 9, 14), bound=BOUND)
    assert any(type(layer).__name__ == "GPUDeltaNetLayerCache" for layer in cb.layers)  # (the state on the device)


def test_a_long_run_and_going_back_match_the_cpu(gpu_env, tmp_path):
    """70 positions of prompt (past the 64 kept inputs and two copies of the state), replayed decode steps up to a copy
    made inside a replay (position 80), then back 5 positions (from a copy, the kept inputs fed again) and fed on."""
    path = write_tiny_model(tmp_path / "q.gguf", **FIXTURE_MODELS["qwen35"])
    rng = np.random.default_rng(5)
    cpu, gpu = Engine(path, device="cpu", n_ctx=128, n_batch=16), Engine(path, device="gpu", n_ctx=128, n_batch=16)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    ids = list(rng.integers(0, 200, 70))
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < BOUND
    for tok in rng.integers(0, 200, 12):
        assert rel_err(cpu.eval(ca, [int(tok)]), gpu.eval(cb, [int(tok)])) < BOUND
    check_going_back(cpu, ca, gpu, cb, 5, rng, n_steps=2, bound=BOUND)
    assert gpu.graphs.n_captures == 1 and gpu.graphs.n_replays == 13  # (the steps after going back replayed too)


def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path):
    """On the strict CuPy stand-in (devicexp.py): the state, its copies and the kept inputs stay on the device, so the
    step is captured (the stand-in refuses any copy while capturing, as CUDA does) and a replay brings down the logits
    alone, one that makes a copy of the state (position 32) included."""
    path = write_tiny_model(tmp_path / "k.gguf", **FIXTURE_MODELS["kimi-linear"])
    # (positions 28 .. 31: 32 is reached by the last)
    check_decode_copies_only_logits(monkeypatch, path, prompt=range(3, 30), steps=range(5, 9), state_copy_at=32)


def test_beside_compressed_attention_caches_the_state_matches_the_cpu(gpu_env, tmp_path):
    """The attention layers' K/V compressed (their own caches), the delta rule's state as ever."""
    from kvrun.cache.kvconfig import KVConfig

    path = write_tiny_model(tmp_path / "q.gguf", **FIXTURE_MODELS["qwen35"])
    kv = KVConfig.parse("4,group=8,rotate=0")
    cpu, gpu = Engine(path, device="cpu", n_ctx=64, n_batch=16, kv=kv), Engine(path, device="gpu", n_ctx=64, n_batch=16, kv=kv)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    assert [type(layer).__name__ for layer in cb.layers] == ["GPUDeltaNetLayerCache", "GPUCompressedLayerCache"] * 2
    ids = list(np.random.default_rng(2).integers(0, 200, 20))
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < BOUND
    for tok in (5, 9):
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < BOUND


def test_several_sequences_in_one_forward_are_refused_in_one_line(gpu_env, tmp_path):
    """The GPU feeds one sequence a forward (a server's parallel slots take turns); the CPU batches attention layers only."""
    from kvrun.loaders.errors import KvrunError

    gpu = Engine(write_tiny_model(tmp_path / "q.gguf", **FIXTURE_MODELS["qwen35"]), device="gpu", n_ctx=64, n_batch=16)
    caches, chunks = [gpu.new_cache(), gpu.new_cache()], [np.array([1, 2]), np.array([3])]
    with pytest.raises(KvrunError, match="one sequence a forward") as e:
        gpu.forward_batch(caches, chunks, [1, 0], [None, None])
    assert "\n" not in str(e.value) and all(c.offset == 0 for c in caches)
