"""The last refusals of text models on ``--device gpu`` (issue 5): what runs there now, and what still refuses, and why.

* Nemotron-H MoE (Nemotron 3 Nano, and Super's latent experts): its ungated squared-ReLU experts, ``down relu(up x)^2``,
  run in kernels (ops/gpu/moe3.cu's up product and squared ReLU, moe2.cu's down products, moe.cu's sigmoid routing
  with the selection bias and scale), so a decode step stays in a CUDA graph: the kernels against the float64 product
  and the CPU's ``moe_add``, the fixtures' logits against the CPU's over a prefill and replayed decode steps.
* A compressed cache (``--kv-bits``) with ALiBi (BLOOM, MPT, Jais, Refact, Baichuan 13B) still refuses, in one line,
  on both devices: cache/factory.py refuses the CPU's compressed cache, so there is no CPU reference to hold the
  device's to (and the GPU's host steps, a layer's calibration, are the CPU's).  ALiBi's CPU form, a key channel
  holding the position, would be quantized there.  (Llama 4's chunked attention runs in both compressed caches,
  eviction policies too: tests/test_wide_heads_chunks.py, tests/test_chunked_policy.py.)

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_moe.py.

Tolerances: the experts within NMSE 1e-9 of the float64 product of the dequantized weights (the kernels decode the
blocks exactly and keep the activations in float32) and 1e-3 of the CPU's ``moe_add`` (int8 activations there, as
llama.cpp's); the models' logits within 2e-3 of the CPU's (test_gpu_archs2.py's bound, float32 weights)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gpu_checks import check_decode_copies_only_logits, check_prefill_and_replayed_decode
from test_gpu_kernels import nmse, random_weight
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.models.common import Buffers
from kvrun.models.moe import MoE, device_unsupported, moe_add
from kvrun.ops import gpu_available
from kvrun.ops.backend import Weight
from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import moe as gpu_moe
from kvrun.ops.gpu.backend import GPUBackend
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: the fixtures (tests/tinymodel.py) whose refusals this stop lifts
ON_GPU = ["nemotron_h_moe", "nemotron_h_moe-latent"]  # (Super's: the experts in the latent space, accumulate=False)


# ----------------------------------------------------------------- ungated squared-ReLU experts
@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("up_q,down_q", [(Q.Q8_0, Q.Q4_0), (Q.F32, Q.Q4_K)], ids=lambda t: t.name)
def test_the_experts_are_the_float64_product(rt, up_q, down_q, T):
    """``x += sum_j w_j down_e relu(up_e x)^2`` for the ids and weights given, over the types' partial last chunks."""
    rng = np.random.default_rng(T + int(up_q))
    n_expert, k, n_embd, n_ff = 6, 3, 100 if up_q == Q.F32 else 64, 256 if down_q == Q.Q4_K else 96
    up_raw, down_raw = random_weight(up_q, n_expert * n_ff, n_embd, rng), random_weight(down_q, n_expert * n_embd, n_ff, rng)
    xn, x = (rng.standard_normal((T, n_embd)).astype(np.float32) for _ in range(2))
    ids = np.stack([rng.choice(n_expert, k, replace=False) for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    U = dequantize(up_raw, up_q).reshape(-1, n_embd).astype(np.float64)
    D = dequantize(down_raw, down_q).reshape(-1, n_ff).astype(np.float64)
    want = x.astype(np.float64).copy()
    for t in range(T):
        for e, w in zip(ids[t], wts[t]):
            want[t] += w * (D[e * n_embd : (e + 1) * n_embd] @ np.maximum(U[e * n_ff : (e + 1) * n_ff] @ xn[t], 0.0) ** 2)
    dev = rt.xp.asarray
    up, down = Weight(dev(up_raw), int(up_q), (n_expert * n_ff, n_embd)), Weight(dev(down_raw), int(down_q), (n_expert * n_embd, n_ff))
    out, h = dev(x.copy()), rt.xp.full((T, k * n_ff), np.nan, np.float32)
    gpu_moe.experts(None, up, down, n_ff, dev(ids), dev(wts), dev(xn), out, h, None, "relu_sqr", True)
    assert nmse(rt.asnumpy(out) - x, want - x) < 1e-9


@pytest.mark.parametrize("T,accumulate", [(1, True), (7, False)], ids=["decode", "prefill-latent"])
def test_moe_add_on_the_device_equals_the_cpus(rt, T, accumulate):
    """Nemotron 3 Nano's routing (sigmoid, the selection bias, renormalised, times 2.5) and experts through
    ``models/moe.py``'s ``moe_add`` on both backends; ``accumulate`` False: Super's latent experts' output alone."""
    rng = np.random.default_rng(11 + T)
    n_expert, k, n_embd, n_ff = 8, 2, 64, 96
    raw = {"router": (Q.F32, n_expert, n_embd), "up": (Q.Q8_0, n_expert * n_ff, n_embd), "down": (Q.Q8_0, n_expert * n_embd, n_ff)}
    raw = {r: (random_weight(q, rows, cols, rng), q, (rows, cols)) for r, (q, rows, cols) in raw.items()}
    bias = (rng.integers(0, 3, n_expert) * 0.25).astype(np.float32)
    xn = (rng.standard_normal((T, n_embd)) * 2).astype(np.float32)
    x = rng.standard_normal((T, n_embd)).astype(np.float32)
    outs = []
    for be in (CPUBackend(), GPUBackend()):
        w = {r: be.upload(d, q, s) for r, (d, q, s) in raw.items()}
        moe = MoE(router=w["router"], gate=None, up=w["up"], down=w["down"], n_expert=n_expert, n_used=k, norm_weights=True,
                  gating="sigmoid", bias=bias, act="relu_sqr", weights_scale=2.5)  # fmt: skip
        assert device_unsupported(moe) is None
        out = be.vector(x.copy()) if be.name != "cpu" else x.copy()
        moe_add(be, moe, be.vector(xn) if be.name != "cpu" else xn, out, Buffers(8, be.zeros), accumulate=accumulate)
        outs.append(be.to_host(out))
    base = x if accumulate else 0.0
    assert nmse(outs[1] - base, outs[0] - base) < 1e-3


def test_only_the_squared_relu_without_biases_runs_ungated():
    """moe3.cu knows one ungated expert, Nemotron-H MoE's: another activation without a gate, or biases on it, would
    route on the host (no architecture has them)."""
    w = Weight(np.zeros((8, 32), np.uint8), int(Q.Q8_0), (8, 32))
    moe = MoE(router=w, gate=None, up=w, down=w, n_expert=4, n_used=2, norm_weights=True, gating="sigmoid", act="relu_sqr")
    assert device_unsupported(moe) is None
    assert "silu" in device_unsupported(MoE(**{**moe.__dict__, "act": "silu"}))
    assert "biases" in device_unsupported(MoE(**{**moe.__dict__, "up_b": np.zeros((4, 2), np.float32)}))


@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: the Mamba-2 layers, the routing and the experts are
    # kernels a graph holds
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys, steps=(5, 9, 14))


def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path):
    """On the strict CuPy stand-in (devicexp.py): the router's choice never comes to the host, so the step is captured
    and a replay brings down the logits alone."""
    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / "nemotron_h_moe.gguf", "nemotron_h_moe"), steps=(5,))


# ----------------------------------------------------------------- compressed caches with ALiBi: no longer refused
@pytest.mark.parametrize("bits", [4, 8])
def test_a_compressed_cache_with_alibi_is_made_on_both_devices(gpu_env, tmp_path, bits):
    """Both devices' compressed caches take ALiBi now (a bias from the slots' positions: tests/test_alibi_compressed.py
    holds them to the plain cache and to each other)."""
    from kvrun.cache.compressed import CompressedLayerCache

    path = write_tiny_model(tmp_path / "bloom.gguf", **FIXTURE_MODELS["bloom"])
    for device in ("cpu", "gpu"):
        cache = Engine(path, device=device, n_ctx=64, n_batch=16, kv=KVConfig(bits=bits)).new_cache()
        assert all(isinstance(layer, CompressedLayerCache) for layer in cache.layers), device


def test_the_cli_runs_alibi_on_the_gpus_compressed_cache(gpu_env, tmp_path):
    path = write_tiny_model(tmp_path / "bloom.gguf", "bloom")
    r = CliRunner().invoke(main, ["run", str(path), "--device", "gpu", "--kv-bits", "4", "-p", "hi", "-n", "2", "--no-stats"])
    assert r.exit_code == 0 and "error" not in r.output, r.output
