"""Mixtures of experts on ``--device gpu`` (ops/gpu/moe.cu): the routing kernel against the host router, the experts'
kernels against the CPU's one-token call and the float64 product, and every architecture whose other ops the GPU has
against the CPU, over a prefill and decode steps replayed from captured CUDA graphs; the variants still host work are
refused in one line.

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_archs2.py.

Tolerances: the router's chosen experts equal the host's exactly (ties to the lower index on both), their weights
within 1e-5 relative (float32 sums in another order); the experts' products within NMSE 1e-9 of the float64 product of
the dequantized weights (the kernels decode blocks exactly and keep activations in float32) and 1e-3 of the CPU's
(int8 activations, as llama.cpp's); the models' logits within 2e-3 of the CPU's (test_gpu_archs2.py's bound, float32
weights: the largest error measured here is 1.8e-5, DeepSeek-MoE's)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gpu_checks import check_cli_text_matches_cpu, check_decode_copies_only_logits, check_prefill_and_replayed_decode
from test_gpu_kernels import EVERY_QTYPE, n_cols_for, nmse, random_weight
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.models.moe import MoE, device_unsupported, route
from kvrun.ops import gpu_available
from kvrun.ops.backend import Weight
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import moe as gpu_moe

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: the fixtures (tests/tinymodel.py) of every mixture of experts that runs on the GPU, variants included
ON_GPU = ["qwen3moe", "llama-moe", "granitemoe", "granitemoe-shared", "qwen2moe", "deepseek", "olmoe", "ernie4_5-moe", "qwen3vlmoe",
          "gpt-oss", "glm4moe", "glm4moe-nextn", "bailingmoe2", "bailingmoe2-nextn", "exaone-moe", "minimax-m2", "mimo2", "phimoe",
          "phimoe-long", "bailingmoe", "bailingmoe-scaled", "hunyuan-moe", "dots1", "arctic", "deepseek2-ocr"]  # fmt: skip

#: (no fixture's experts are host work any more: the other variants, Step-3.5's, Grok's, GroveMoE's, SmallThinker's,
#: AFMoE's and DBRX's, run in tests/test_gpu_moe2.py, Llama 4's in test_gpu_bitnet_llama4.py, Nemotron-H MoE's ungated
#: squared-ReLU experts in test_gpu_refusals2.py; a variant the kernels do not run is named: test_the_variants_the_kernels_do_not_run_are_named)


# ----------------------------------------------------------------- routing
ROUTES = {  # gating, k, renormalised, scale, selection bias, router bias, groups
    "softmax": ("softmax", 4, True, 1.0, False, False, (0, 0)),
    "softmax-raw-scaled": ("softmax", 3, False, 2.5, False, False, (0, 0)),
    "sigmoid-bias": ("sigmoid", 4, True, 1.0, True, False, (0, 0)),
    "sigmoid-groups": ("sigmoid", 4, True, 2.5, True, False, (8, 3)),  # DeepSeek-V3's group-limited routing
    "softmax-groups": ("softmax", 6, False, 1.0, False, False, (4, 2)),
    "softmax_weight": ("softmax_weight", 4, False, 1.0, False, True, (0, 0)),  # gpt-oss (its router bias)
}


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("name", ROUTES)
def test_the_routing_kernel_chooses_and_weighs_as_the_host_router(rt, name, ties):
    gating, k, norm, scale, has_bias, has_rb, groups = ROUTES[name]
    rng = np.random.default_rng(len(name) + ties)
    T, n_expert = 7, 32
    logits = (rng.standard_normal((T, n_expert)) * 2).astype(np.float32)
    if ties:  # logits on a coarse grid: equal ones give equal probabilities on both, and the lower index must win
        logits = np.round(logits * 2) / 2
    bias = (rng.integers(0, 3, n_expert) * 0.25).astype(np.float32) if has_bias else None
    router_b = rng.standard_normal((n_expert, 1)).astype(np.float32) if has_rb else None
    host = logits + router_b[:, 0] if has_rb else logits
    want_ids, want_w = route(host, k, norm, gating, bias, *groups)
    want_w *= np.float32(scale)
    ids, wts = rt.xp.full((T, k), -1, np.int32), rt.xp.full((T, k), np.nan, np.float32)
    dev = (lambda a: None if a is None else rt.xp.asarray(a))
    gpu_moe.route(dev(logits), k, gating, norm, scale, dev(bias), dev(router_b), groups, ids, wts)
    np.testing.assert_array_equal(rt.asnumpy(ids), want_ids)
    np.testing.assert_allclose(rt.asnumpy(wts), want_w, rtol=1e-5)


# ----------------------------------------------------------------- experts
def _stacked(qtype: int, n_expert: int, rows: int, cols: int, rng) -> np.ndarray:
    return random_weight(qtype, n_expert * rows, cols, rng)


def _reference(g, u, d, gq, uq, dq, ids, wts, xn, x, n_ff, biases, act) -> np.ndarray:
    """The experts in float64 from the dequantized weights."""
    n_embd = xn.shape[1]
    G, U = (dequantize(w, q).reshape(-1, n_embd).astype(np.float64) for w, q in ((g, gq), (u, uq)))
    D = dequantize(d, dq).reshape(-1, n_ff).astype(np.float64)
    out = x.astype(np.float64).copy()
    for t in range(xn.shape[0]):
        for e, w in zip(ids[t], wts[t]):
            a = G[e * n_ff : (e + 1) * n_ff] @ xn[t] + (biases[0][e] if biases else 0)
            b = U[e * n_ff : (e + 1) * n_ff] @ xn[t] + (biases[1][e] if biases else 0)
            if act == "swiglu_oai":
                a = np.minimum(a, 7.0)
                h = a / (1 + np.exp(-1.702 * a)) * (np.clip(b, -7.0, 7.0) + 1)
            elif act == "relu":  # (SmallThinker's ReGLU)
                h = np.maximum(a, 0.0) * b
            else:
                h = a * (0.5 + 0.5 * np.tanh(0.5 * a)) * b  # (silu, without exp's overflow)
            out[t] += w * (D[e * n_embd : (e + 1) * n_embd] @ h + (biases[2][e] if biases else 0))
    return out


def _run_experts(rt, gpu_w, xn, x, ids, wts, n_ff, biases, act, accumulate=True) -> np.ndarray:
    dev = rt.xp.asarray
    k = ids.shape[1]
    out = dev(x.copy())
    h = rt.xp.full((xn.shape[0], k * n_ff), np.nan, np.float32)
    b = tuple(dev(v) for v in biases) if biases is not None else None
    gpu_moe.experts(*gpu_w, n_ff, dev(ids), dev(wts), dev(xn), out, h, b, act, accumulate)
    return rt.asnumpy(out)


def _upload(rt, raw, qtype, shape) -> Weight:
    return Weight(rt.xp.asarray(raw), int(qtype), shape)


@pytest.mark.parametrize("oai", [False, True], ids=["swiglu", "gpt-oss"])  # gpt-oss: expert biases, clamped GLU
@pytest.mark.parametrize("gu,down", [(Q.Q4_0, Q.Q4_0), (Q.Q8_0, Q.Q4_1), (Q.Q4_0, Q.Q8_0)], ids=lambda t: t.name)
def test_one_token_equals_the_cpus_one_call(rt, cpu, gu, down, oai):
    """tests/test_moe.py's types: the device's experts against the CPU backend's moe_token (and the float64 product)."""
    rng = np.random.default_rng(int(gu) + int(down) + oai)
    n_expert, n_embd, n_ff = 6, 64, 96
    g, u, d = _stacked(gu, n_expert, n_ff, n_embd, rng), _stacked(gu, n_expert, n_ff, n_embd, rng), _stacked(down, n_expert, n_embd, n_ff, rng)
    xn, x = (rng.standard_normal((1, n_embd)).astype(np.float32) for _ in range(2))
    ids, wts = np.array([[4, 0, 2]], np.int32), np.array([[0.5, 0.3, 0.2]], np.float32)
    biases = tuple(rng.standard_normal((n_expert, n)).astype(np.float32) * 4 for n in (n_ff, n_ff, n_embd)) if oai else None
    act = "swiglu_oai" if oai else "silu"
    want = x.copy()
    cw = [cpu.upload(w, q, s) for w, q, s in ((g, gu, (n_expert * n_ff, n_embd)), (u, gu, (n_expert * n_ff, n_embd)), (d, down, (n_expert * n_embd, n_ff)))]
    assert cpu.moe_token(*cw, n_ff, ids[0], wts[0], xn, want, biases, act)
    gw = [_upload(rt, w.data, w.qtype, w.shape) for w in cw]
    got = _run_experts(rt, gw, xn, x, ids, wts, n_ff, biases, act)
    assert nmse(got - x, want - x) < 1e-3
    assert nmse(got, _reference(g, u, d, gu, gu, down, ids, wts, xn, x, n_ff, biases, act)) < 1e-9


@pytest.mark.parametrize("qtype", EVERY_QTYPE, ids=lambda q: Q(q).name)
def test_every_type_the_matvec_reads_runs_as_experts(rt, qtype):
    """Three tokens, two experts each, over the float64 product; the output written (Granite's, accumulate False)."""
    rng = np.random.default_rng(int(qtype))
    n_expert, n = 4, n_cols_for(qtype)  # (n_embd = n_ff: a width every type's blocks divide)
    g, u, d = (_stacked(qtype, n_expert, n, n, rng) for _ in range(3))
    xn = rng.standard_normal((3, n)).astype(np.float32)
    ids, wts = np.array([[1, 3], [0, 1], [3, 2]], np.int32), np.array([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]], np.float32)
    gw = [_upload(rt, w, qtype, (n_expert * n, n)) for w in (g, u, d)]
    got = _run_experts(rt, gw, xn, np.full_like(xn, np.nan), ids, wts, n, None, "silu", accumulate=False)
    assert nmse(got, _reference(g, u, d, qtype, qtype, qtype, ids, wts, xn, np.zeros_like(xn), n, None, "silu")) < 1e-9


@pytest.mark.parametrize("act", ["silu", "swiglu_oai", "relu"])
def test_gate_and_up_of_two_types_take_two_launches(rt, act):
    """(Each GLU the kernels know, with the experts' biases.)"""
    rng = np.random.default_rng(5)
    n_expert, n_embd, n_ff = 4, 64, 96
    g, u, d = _stacked(Q.Q4_0, n_expert, n_ff, n_embd, rng), _stacked(Q.Q8_0, n_expert, n_ff, n_embd, rng), _stacked(Q.Q5_0, n_expert, n_embd, n_ff, rng)
    xn, x = (rng.standard_normal((2, n_embd)).astype(np.float32) for _ in range(2))
    ids, wts = np.array([[2, 0], [1, 2]], np.int32), np.array([[0.6, 0.4], [0.2, 0.8]], np.float32)
    biases = tuple(rng.standard_normal((n_expert, m)).astype(np.float32) for m in (n_ff, n_ff, n_embd))
    gw = [_upload(rt, g, Q.Q4_0, (n_expert * n_ff, n_embd)), _upload(rt, u, Q.Q8_0, (n_expert * n_ff, n_embd)), _upload(rt, d, Q.Q5_0, (n_expert * n_embd, n_ff))]
    got = _run_experts(rt, gw, xn, x, ids, wts, n_ff, biases, act)
    assert nmse(got, _reference(g, u, d, Q.Q4_0, Q.Q8_0, Q.Q5_0, ids, wts, xn, x, n_ff, biases, act)) < 1e-9


def test_a_batch_past_the_grids_height_runs_in_runs_of_tokens(rt, monkeypatch):
    """CUDA's grid holds 65535 (token, slot) pairs a launch: a longer prefill chunk goes in runs of tokens, the same sums."""
    rng = np.random.default_rng(7)
    n_expert, n = 4, 64
    gw = [_upload(rt, _stacked(Q.Q8_0, n_expert, n, n, rng), Q.Q8_0, (n_expert * n, n)) for _ in range(3)]
    xn, x = (rng.standard_normal((5, n)).astype(np.float32) for _ in range(2))
    ids, wts = rng.integers(0, n_expert, (5, 2)).astype(np.int32), rng.random((5, 2)).astype(np.float32)
    monkeypatch.setattr(gpu_moe, "GROUPED_MIN_TOKENS", 6)  # (5 tokens: the matvec kernels, not the grouped prompt's)
    whole = _run_experts(rt, gw, xn, x, ids, wts, n, None, "silu")
    monkeypatch.setattr(gpu_moe, "MAX_GRID_Y", 5)  # two tokens a run
    np.testing.assert_array_equal(_run_experts(rt, gw, xn, x, ids, wts, n, None, "silu"), whole)


def test_the_gated_shared_expert_adds_as_the_cpu(rt, cpu):
    """Qwen2-MoE's shared expert: x += sigmoid(s) * y in one launch (a captured step must not bring s to the host)."""
    rng = np.random.default_rng(2)
    x, y = (rng.standard_normal((3, 40)).astype(np.float32) for _ in range(2))
    s = (rng.standard_normal((3, 1)) * 30).astype(np.float32)  # (large: the sigmoid saturates both ways without overflow)
    want = x.copy()
    cpu.sigmoid_gated_add(want, y.copy(), s)
    got = rt.xp.asarray(x.copy())
    gpu_moe.gated_add(got, rt.xp.asarray(y), rt.xp.asarray(s))
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-6, atol=1e-6)


def test_the_variants_the_kernels_do_not_run_are_named():
    w = Weight(np.zeros((8, 32), np.uint8), int(Q.Q8_0), (8, 32))
    moe = MoE(router=w, gate=w, up=w, down=w, n_expert=4, n_used=2, norm_weights=True)
    assert device_unsupported(moe) is None
    for change, named in [({"gate": None, "act": "silu"}, "silu"), ({"gate_b": np.zeros((4, 2), np.float32)}, "biases")]:
        assert named in device_unsupported(MoE(**{**moe.__dict__, **change}))


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: routing and experts are kernels a graph holds
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys)


@pytest.mark.parametrize("name", ["qwen2moe", "gpt-oss", "bailingmoe2"])  # a gated shared expert; expert biases; groups
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, name):
    """On the strict CuPy stand-in (devicexp.py): the router's choice never comes to the host, so the step is captured
    (the stand-in refuses any copy while capturing, as CUDA does) and a replay brings down the logits alone."""
    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))


def test_the_cli_runs_a_mixture_of_experts_on_the_gpu(gpu_env, tmp_path):
    check_cli_text_matches_cpu(write_tiny_model(tmp_path / "moe.gguf", "qwen3moe"))
