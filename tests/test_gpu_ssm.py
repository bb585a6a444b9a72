"""Mamba's and Mamba-2's state-space layers on ``--device gpu`` (ops/gpu/ssm.cu, the state in cache/gpu_ssm.py): the
kernels against the CPU's Numba ops on random inputs, and every architecture built on them against the CPU over a
prefill, decode steps replayed from captured CUDA graphs, a long run past the kept inputs' ring and the state's copies,
and going back (a refused draft, a re-rendered turn) and feeding again.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_archs2.py.

Tolerances: the kernels within 2e-5 relative of the CPU's ops (float32 both, the same order of the state's sums; exp
and log1p of two libraries).  The models' logits within test_gpu_archs2.py's 2e-3 (float32 weights), over the long run
too: a recurrent state carries every step's rounding into the next, but the scan only contracts what it carries (each
step multiplies the state by exp(dt * A) < 1, A < 0), so the error stays at the size of one step's and does not grow
with the steps; measured here, at most 1.7e-4 over 100 positions (PLaMo 2, its attention's per-head norms the most),
2e-6 to 1e-5 for the others."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import (check_cli_text_matches_cpu, check_decode_copies_only_logits, check_going_back, check_prefill_and_replayed_decode,
                        rel_err)  # fmt: skip
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.ops import gpu_available
from kvrun.ops.cpu.mamba import mamba_scan
from kvrun.ops.cpu.ssm import gated_group_norm, ssm_conv, ssm_scan
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import ssm as S
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: every fixture (tests/tinymodel.py) with Mamba or Mamba-2 layers that runs on the GPU, variants included
ON_GPU = ["mamba", "mamba-falcon", "mamba2", "granitehybrid", "granitehybrid-dense-rope", "falcon-h1", "nemotron_h", "jamba",
          "jamba-dense", "plamo2"]  # fmt: skip
#: (nemotron_h_moe's, its ungated experts beside the Mamba-2 layers, runs: tests/test_gpu_refusals2.py)

BOUND = 2e-3


def _dev(rt, a: np.ndarray):
    return rt.xp.asarray(np.ascontiguousarray(a, np.float32))


# ----------------------------------------------------------------- kernels
def test_the_convolution_reads_the_ring_before_the_chunk_as_the_cpu_reads_its_window(rt):
    rng = np.random.default_rng(0)
    T, C, Kc, n_ring, p0 = 5, 24, 4, 11, 9
    hist = rng.standard_normal((p0 + T, C)).astype(np.float32)  # every position's input
    ring = np.zeros((n_ring, C + 3), np.float32)
    for p in range(p0):
        ring[p % n_ring, :C] = hist[p]
    zx = np.zeros((T, C + 7), np.float32)
    zx[:, 2 : 2 + C] = hist[p0:]  # (the chunk's inputs as a column range of wider rows)
    w, b = rng.standard_normal((Kc, C)).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    want = np.empty((T, C), np.float32)
    ssm_conv(hist[p0 - Kc + 1 :], w, b, want)
    out = rt.xp.zeros((T, C), np.float32)
    S.conv(_dev(rt, zx), zx.shape[1], 2, _dev(rt, ring), n_ring, rt.xp.asarray(np.arange(p0, p0 + T, dtype=np.int32)), _dev(rt, w),
           _dev(rt, b), out)  # fmt: skip
    assert rel_err(want, rt.asnumpy(out)) < 2e-5


@pytest.mark.parametrize("n_group", [1, 2])
def test_the_mamba2_scan_updates_the_state_and_copies_it_as_the_cpu(rt, n_group):
    rng = np.random.default_rng(n_group)
    T, H, P, Sd = 7, 4, 8, 16
    d = H * P
    ch = d + 2 * n_group * Sd
    state = rng.standard_normal((H, P, Sd)).astype(np.float32)
    xbc = rng.standard_normal((T, ch)).astype(np.float32)
    dt = rng.standard_normal((T, H)).astype(np.float32) * 2
    dt[0, 0] = 25.0  # (past 20: the raw step, no softplus)
    dt_b, A, D = rng.standard_normal(H).astype(np.float32), -np.exp(rng.standard_normal(H)).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    s_cpu, y_cpu, ck_cpu = state.copy(), np.empty((T, d), np.float32), np.zeros((2, H, P, Sd), np.float32)
    ssm_scan(s_cpu, xbc, dt + dt_b, A, D, n_group, y_cpu, np.array([3, 7]), np.array([1, 0]), ck_cpu)
    s_gpu, y_gpu, ck_gpu = _dev(rt, state), rt.xp.zeros((T, d), np.float32), rt.xp.zeros((2, H, P, Sd), np.float32)
    plan = rt.xp.asarray(np.array([3, 1, 7, 0], np.int32))
    S.scan(s_gpu, _dev(rt, xbc), ch, _dev(rt, dt), H, 0, _dev(rt, dt_b), _dev(rt, A), 1, 0, _dev(rt, xbc), ch, d, d + n_group * Sd,
           _dev(rt, D), n_group, y_gpu, plan, 2, ck_gpu)  # fmt: skip
    assert rel_err(y_cpu, rt.asnumpy(y_gpu)) < 2e-5
    assert rel_err(s_cpu, rt.asnumpy(s_gpu)) < 2e-5 and rel_err(ck_cpu, rt.asnumpy(ck_gpu)) < 2e-5


def test_the_mamba1_scan_decays_each_channel_by_its_own_row_of_a(rt):
    rng = np.random.default_rng(3)
    T, di, Sd, r = 6, 24, 16, 4
    state = rng.standard_normal((di, Sd)).astype(np.float32)
    x, dt = rng.standard_normal((T, di)).astype(np.float32), rng.standard_normal((T, di)).astype(np.float32)
    dbc = rng.standard_normal((T, r + 2 * Sd)).astype(np.float32)  # (dt's raw columns, then B and C, as ssm_x gives them)
    dt_b, D = rng.standard_normal(di).astype(np.float32), rng.standard_normal(di).astype(np.float32)
    A = -np.exp(rng.standard_normal((di, Sd))).astype(np.float32)
    s_cpu, y_cpu = state.copy(), np.empty((T, di), np.float32)
    B, C = np.ascontiguousarray(dbc[:, r : r + Sd]), np.ascontiguousarray(dbc[:, r + Sd :])
    mamba_scan(s_cpu, x, dt + dt_b, A, B, C, D, y_cpu, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((1, di, Sd), np.float32))
    s_gpu, y_gpu = _dev(rt, state.reshape(di, 1, Sd)), rt.xp.zeros((T, di), np.float32)
    none = rt.xp.asarray(np.array([0, -1], np.int32))
    S.scan(s_gpu, _dev(rt, x), di, _dev(rt, dt), di, 0, _dev(rt, dt_b), _dev(rt, A), Sd, 1, _dev(rt, dbc), r + 2 * Sd, r, r + Sd,
           _dev(rt, D), 1, y_gpu, none, 1, rt.xp.zeros((1, di, 1, Sd), np.float32))  # fmt: skip
    assert rel_err(y_cpu, rt.asnumpy(y_gpu)) < 2e-5 and rel_err(s_cpu, rt.asnumpy(s_gpu).reshape(di, Sd)) < 2e-5


@pytest.mark.parametrize("n_group", [0, 1, 4], ids=["gate-alone", "one-group", "four-groups"])
def test_the_gate_and_grouped_norm_as_the_cpu(rt, n_group):
    rng = np.random.default_rng(n_group)
    T, d = 3, 64
    y, zx = rng.standard_normal((T, d)).astype(np.float32), rng.standard_normal((T, d + 10)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    want = y.copy()
    z = np.ascontiguousarray(zx[:, 10:])
    if n_group:
        gated_group_norm(want, z, w, n_group, 1e-5)
    else:
        want *= z / (1.0 + np.exp(-z))
    got = _dev(rt, y)
    S.gate_norm(got, _dev(rt, zx), d + 10, 10, _dev(rt, w) if n_group else None, max(n_group, 1), 1e-5)
    assert rel_err(want, rt.asnumpy(got)) < 2e-5


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: the convolution, the scan and the state's copies are
    # kernels a graph holds, and the step's one host decision (the copy's slot) comes through the graph's input buffer
    _, cb = check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys, bound=BOUND)
    assert any(type(layer).__name__.startswith("GPU") and hasattr(layer, "ring") for layer in cb.layers)  # (the state on the device)


@pytest.mark.parametrize("name", ["mamba2", "mamba", "falcon-h1", "plamo2"])
def test_a_long_run_and_going_back_match_the_cpu(gpu_env, tmp_path, capsys, name):
    """90 positions of prompt (past the 64 kept inputs and two copies of the state), 10 replayed decode steps (a copy
    made inside a replay at position 96; the prompt, not more steps, brings them there: CI time), then back 5
    positions (from a copy, the kept inputs fed again) and back 20, each time fed on: the GPU goes back exactly where
    the CPU does and gives its logits."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    rng = np.random.default_rng(5)
    cpu = Engine(path, device="cpu", n_ctx=160, n_batch=16)
    gpu = Engine(path, device="gpu", n_ctx=160, n_batch=16)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    ids = list(rng.integers(0, 200, 90))
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < BOUND
    for tok in rng.integers(0, 200, 10):
        assert rel_err(cpu.eval(ca, [int(tok)]), gpu.eval(cb, [int(tok)])) < BOUND
    for back in (5, 20):
        check_going_back(cpu, ca, gpu, cb, back, rng, n_steps=3, bound=BOUND)
    assert gpu.graphs.n_captures == 1 and gpu.graphs.n_replays == 15
    assert "CUDA graphs off" not in capsys.readouterr().err


def test_going_back_past_the_kept_inputs_starts_over_as_on_the_cpu(gpu_env, tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["mamba2"])
    cpu, gpu = Engine(path, device="cpu", n_ctx=160, n_batch=16), Engine(path, device="gpu", n_ctx=160, n_batch=16)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    ids = list(np.random.default_rng(1).integers(0, 200, 100))
    cpu.eval(ca, ids)
    gpu.eval(cb, ids)
    assert ca.truncate(10) == cb.truncate(10) == 0  # (no copy at or before 10 whose inputs are kept: both start over)
    assert rel_err(cpu.eval(ca, ids[:12]), gpu.eval(cb, ids[:12])) < BOUND


@pytest.mark.parametrize("name", ["mamba2", "mamba", "falcon-h1"])
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, name):
    """On the strict CuPy stand-in (devicexp.py): the state, its copies and the kept inputs stay on the device, so the
    step is captured (the stand-in refuses any copy while capturing, as CUDA does) and a replay brings down the logits
    alone, a replay that makes a copy of the state (position 32) included."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    check_decode_copies_only_logits(monkeypatch, path, steps=range(5, 13), state_copy_at=32)  # (positions 25 .. 32)


@pytest.mark.parametrize("name", ["falcon-h1", "jamba"])
def test_beside_a_compressed_cache_the_state_matches_the_cpu(gpu_env, tmp_path, name):
    """Falcon-H1's layers keep the state and a compressed K/V in one cache (its decode steps then run eagerly: the
    graph's buffer holds one plan a layer), Jamba's attention layers compressed caches of their own."""
    from kvrun.cache.kvconfig import KVConfig

    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    kv = KVConfig.parse("4,group=8,rotate=0")  # (the fixtures' heads of 24: no Hadamard rotation)
    cpu, gpu = Engine(path, device="cpu", n_ctx=64, n_batch=16, kv=kv), Engine(path, device="gpu", n_ctx=64, n_batch=16, kv=kv)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    kvs = [layer.kv if type(layer).__name__ == "GPUParallelSSMLayerCache" else layer for layer in cb.layers]
    assert any(type(layer).__name__ == "GPUCompressedLayerCache" for layer in kvs)
    ids = list(np.random.default_rng(2).integers(0, 200, 20))
    assert rel_err(cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)) < BOUND
    for tok in (5, 9, 14):
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < BOUND


@pytest.mark.parametrize("name", ["mamba", "granitehybrid"])
def test_the_cli_generates_the_cpus_text_on_the_gpu(gpu_env, tmp_path, name):
    check_cli_text_matches_cpu(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
