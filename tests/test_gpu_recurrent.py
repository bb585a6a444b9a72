"""RWKV-6/7's and LFM2's recurrent layers on ``--device gpu`` (ops/gpu/recurrent.cu, cache/gpu_recurrent.py,
models/gpu_recurrent.py): the WKV recurrences and LFM2's convolution against the CPU's on random inputs, then every
architecture against the CPU over a prefill and decode steps replayed from captured CUDA graphs, going back (from a copy
of the state, the kept inputs fed again) as the CPU does, and a decode step that brings down its logits alone.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_ssm.py.

Tolerances: the kernels' outputs and states within 2e-5 relative of the CPU's (the same float32 sums in the same
order, but a compiler may contract them into FMAs); the models' logits within test_gpu_archs2.py's 2e-3 (float32
weights: the largest error measured over these fixtures, variants included, is 2.2e-6, RWKV6-Qwen2's prefill).  The
fixtures checked here cover every path: RWKV-7's gate, group norm and value residual (``rwkv7``) and neither gate nor
group norm (``arwkv7-nogate``), RWKV-6's bonus and group norm (``rwkv6``), gated linear attention with fewer K/V heads
and r/k/v biases (``rwkv6qwen2``), LFM2's convolution beside attention (``lfm2``); the other variants (``rwkv6-unfused``,
``arwkv7``, ``rwkv6qwen2-mha``, ``lfm2moe``) load differently and run the same kernels, and matched as closely.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_decode_copies_only_logits, check_going_back, check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.conv import ConvLayerCache
from kvrun.cache.base import LayerSpec
from kvrun.ops import gpu_available
from kvrun.ops.cpu.wkv6 import wkv6
from kvrun.ops.cpu.wkv7 import wkv7
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import recurrent as R
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: one fixture for each path through the GPU's layers (the module docstring says which)
ON_GPU = ["rwkv7", "arwkv7-nogate", "rwkv6", "rwkv6qwen2", "lfm2"]

BOUND = 2e-3
KERNEL_BOUND = 2e-5


def _dev(rt, a: np.ndarray):
    return rt.xp.asarray(np.ascontiguousarray(a))


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("version,N", [(7, 64), (6, 64), (7, 32)])
def test_the_wkv_kernel_updates_the_state_and_copies_it_as_the_cpu(rt, version, N):
    """Five tokens from a random state through two heads (of 64, RWKV's, which the kernel unrolls, or another size),
    the inputs a column range of the rows the cache keeps; the state copied after the second token into slot 1 and
    after the fifth into slot 0, as the CPU's ck_t / ck_slot."""
    rng = np.random.default_rng(version + N)
    H, T = 2, 5
    C, n_in = H * N, 6 if version == 7 else 4
    x = rng.standard_normal((T, n_in * C + 3)).astype(np.float32)  # (wider rows: the kernel steps by their stride)
    x[:, C : 2 * C] = rng.uniform(0.5, 1.0, (T, C))  # the decays, in (0, 1)
    if version == 7:  # a = -kk, b = kk * iclr for a unit removal key kk per head, as the model hands them over
        kk = rng.standard_normal((T, H, N)).astype(np.float32)
        kk /= np.linalg.norm(kk, axis=2, keepdims=True)
        x[:, 4 * C : 5 * C] = -kk.reshape(T, C)
        x[:, 5 * C : 6 * C] = (kk * rng.uniform(0, 1, (T, H, 1))).reshape(T, C)
    state = rng.standard_normal((H, N, N)).astype(np.float32) * 0.1
    want_state, want_y, want_ck = state.copy(), np.empty((T, C), np.float32), np.zeros((2, H, N, N), np.float32)
    (wkv7 if version == 7 else wkv6)(want_state, np.ascontiguousarray(x[:, : n_in * C]), want_y, np.array([2, 5]), np.array([1, 0]), want_ck)
    d_state, y, ck = _dev(rt, state), rt.xp.zeros((T, C), np.float32), rt.xp.zeros((2, H, N, N), np.float32)
    R.wkv(d_state, _dev(rt, x), y, version, rt.xp.asarray(np.array([2, 1, 5, 0], np.int32)), 2, ck)
    assert rel_err(want_y, rt.asnumpy(y)) < KERNEL_BOUND
    assert rel_err(want_state, rt.asnumpy(d_state)) < KERNEL_BOUND
    assert rel_err(want_ck, rt.asnumpy(ck)) < KERNEL_BOUND


def test_the_short_convolution_reads_the_ring_before_the_chunk_as_the_cpu_reads_its_window(rt):
    """LFM2's gated convolution of a chunk at position 9 (its kernel of 3 reaching two positions into the ring); the
    chunk's ``B * x`` kept in the ring after it, as the CPU's cache keeps them."""
    rng = np.random.default_rng(0)
    n, K, p0, T = 24, 3, 9, 4
    spec = LayerSpec(1, 1, 1, 1, conv=n, conv_kernel=K)
    cpu = ConvLayerCache(spec)
    w = rng.standard_normal((n, K)).astype(np.float32)
    ring = rt.xp.zeros((cpu.ring.shape[0], n), np.float32)
    for p in range(p0):  # (the history, a token at a time)
        bcx = rng.standard_normal((1, 3 * n)).astype(np.float32)
        cpu.window(bcx[:, :n] * bcx[:, 2 * n :], np.array([p]))
        R.shortconv(_dev(rt, bcx), ring, rt.xp.asarray(np.array([p], np.int32)), _dev(rt, w), rt.xp.zeros((1, n), np.float32))
    bcx = rng.standard_normal((T, 3 * n)).astype(np.float32)
    win = cpu.window(bcx[:, :n] * bcx[:, 2 * n :], np.arange(p0, p0 + T))
    want = np.zeros((T, n), np.float32)
    for j in range(K):  # (models/lfm2.py _conv)
        want += win[j : j + T] * w[:, j]
    want *= bcx[:, n : 2 * n]
    y = rt.xp.zeros((T, n), np.float32)
    R.shortconv(_dev(rt, bcx), ring, rt.xp.asarray(np.arange(p0, p0 + T, dtype=np.int32)), _dev(rt, w), y)
    assert rel_err(want, rt.asnumpy(y)) < KERNEL_BOUND
    assert rel_err(cpu.ring, rt.asnumpy(ring)) < KERNEL_BOUND


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: every op the step launches is a kernel a graph holds
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys, bound=BOUND)


@pytest.mark.parametrize("name", ["rwkv7", "lfm2"])
def test_going_back_matches_the_cpu(gpu_env, tmp_path, capsys, name):
    """36 positions of prompt (RWKV: a copy of the state at 32), 4 replayed decode steps, then back 6 positions (RWKV:
    from that copy, the kept inputs fed again before the next chunk) and fed on: the GPU goes back where the CPU does
    and gives its logits."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    rng = np.random.default_rng(5)
    cpu, gpu = Engine(path, device="cpu", n_ctx=64, n_batch=16), Engine(path, device="gpu", n_ctx=64, n_batch=16)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    ids = list(rng.integers(0, 200, 36))
    assert rel_err(cpu.eval(ca, ids), gpu.eval(cb, ids)) < BOUND
    for tok in rng.integers(0, 200, 4):
        assert rel_err(cpu.eval(ca, [int(tok)]), gpu.eval(cb, [int(tok)])) < BOUND
    check_going_back(cpu, ca, gpu, cb, 6, rng, n_steps=2, bound=BOUND)
    assert "CUDA graphs off" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["rwkv6", "lfm2"])
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, name):
    """On the strict CuPy stand-in (devicexp.py): the state, its copies and the kept rows stay on the device and the
    layers' host vectors are uploaded once, so the step is captured (the stand-in refuses any copy while capturing, as
    CUDA does) and a replay brings down the logits alone, one that copies RWKV's state (position 32) included."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    # (positions 27 .. 32)
    check_decode_copies_only_logits(monkeypatch, path, prompt=range(3, 29), steps=range(5, 11), state_copy_at=32 if name == "rwkv6" else None)
