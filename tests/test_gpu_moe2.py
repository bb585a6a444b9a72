"""The mixture-of-experts variants moe.cu leaves out, on ``--device gpu`` (ops/gpu/moe2.cu): Grok's float16-table GELU
experts, Step-3.5's clamped SwiGLU experts and shared expert, Maple's experts clamped before the SiLU, Llama 4's expert
weighted before its FFN, GroveMoE's chunk experts, and what stood beside the experts on the host: SmallThinker's router
input, AFMoE's and Step-3.5's sigmoid attention gates, DBRX's Q/K/V clip, the element-wise clamped SwiGLU (Step-3.5's
and, gate first, GLM-5.3-Flash's) and gpt-oss's swiglu_oai (MiniMax-M3's shared expert).  Each against the CPU: the kernels on random inputs, ``models/moe.py``'s ``moe_add``
on the two backends, and every such architecture over a prefill and decode steps replayed from captured CUDA graphs
(float32 weights, test_gpu_archs2.py's bound 2e-3).

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU).

Tolerances: the float16-table GELU within one float16 step (2e-3 relative: a tanh a unit off in its last place may
round the other way), the other element-wise kernels within 1e-5 relative, 1e-6 absolute (tanh against numpy's); ``moe_add`` within NMSE 1e-3 of the CPU's (int8
activations there, as llama.cpp's) on Q8_0 experts; the models' logits within 2e-3 of the CPU's (the largest error
measured here is 2.8e-4, Grok-2's: its large gates meet float16 rounding boundaries)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gpu_checks import check_decode_copies_only_logits, check_prefill_and_replayed_decode
from test_gpu_kernels import EVERY_QTYPE, n_cols_for, nmse, random_weight
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.models.bert import gelu
from kvrun.models.common import Buffers
from kvrun.models.moe import MoE, SharedExpert, clamped_glu, device_unsupported, moe_add, swiglu_clamped
from kvrun.ops import gpu_available
from kvrun.ops.backend import Weight
from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu.backend import GPUBackend

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: the fixtures (tests/tinymodel.py) of the architectures these kernels bring to the GPU
ON_GPU = ["step35", "grok", "grok1", "grovemoe", "smallthinker", "afmoe", "dbrx"]


# ----------------------------------------------------------------- element-wise
def test_the_float16_table_gelu_is_ggmls_cpu_gelu(rt):
    """Grok's GELU (models/bert.py gelu): float16 in, float16 out, inputs past +-10 passed or zeroed."""
    rng = np.random.default_rng(0)
    g = np.concatenate([rng.standard_normal(4000) * 4, [-12.0, -10.0, 10.0, 11.5, 0.0]]).astype(np.float32)
    u = rng.standard_normal(g.size).astype(np.float32)
    got = rt.xp.asarray(g.copy())
    GPUBackend().gelu_f16_mul(got, rt.xp.asarray(u), got)  # (in place, as models/moe.py gelu_glu)
    np.testing.assert_allclose(rt.asnumpy(got), gelu(g) * u, rtol=2e-3, atol=1e-6)


def test_the_clamped_swiglu_is_step35s(rt):
    rng = np.random.default_rng(1)
    g, u = ((rng.standard_normal((5, 64)) * 3).astype(np.float32) for _ in range(2))
    want = g.copy()
    swiglu_clamped(want, u.copy(), 0.5)
    got = rt.xp.asarray(g.copy())
    GPUBackend().swiglu_clamp(got, rt.xp.asarray(u), got, 0.5)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-6)


def test_the_clamped_swiglu_gate_first_is_ggmls(rt):
    """GLM-5.3-Flash's shared expert and dense FFN (ggml's ``swiglu_clamp``): ``silu(min(g, l)) * clamp(u, -l, l)``, as
    models/moe.py ``clamped_glu`` with ``gate_first`` on the CPU; large gates tell it from Step-3.5's (the SiLU first)."""
    rng = np.random.default_rng(2)
    g, u = ((rng.standard_normal((5, 64)) * 3).astype(np.float32) for _ in range(2))
    limit = 0.5
    want = g.copy()
    clamped_glu(CPUBackend(), want, u.copy(), limit, gate_first=True)
    step35 = g.copy()
    swiglu_clamped(step35, u.copy(), limit)
    assert np.abs(want - step35).max() > 1e-2  # (silu(min(g, l)) < min(silu(g), l) where g > l)
    got = rt.xp.asarray(g.copy())
    GPUBackend().swiglu_clamp(got, rt.xp.asarray(u), got, limit, gate_first=True)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-6)


def test_the_element_wise_swiglu_oai_is_the_cpus(rt):
    """MiniMax-M3's shared expert: gpt-oss's ``min(g, 7) sigmoid(1.702 min(g, 7)) (clamp(u, -7, 7) + 1)`` as
    ops/cpu/moe.py ``swiglu_oai`` computes it, in place; gates and ups past the limit (the clamps bite)."""
    from kvrun.ops.cpu.moe import swiglu_oai

    rng = np.random.default_rng(3)
    g, u = ((rng.standard_normal((5, 64)) * 6).astype(np.float32) for _ in range(2))
    assert (g > 7).any() and (np.abs(u) > 7).any()
    want = np.empty_like(g)
    swiglu_oai(g, u, want)
    assert np.abs(want - g / (1 + np.exp(-1.702 * g)) * (u + 1)).max() > 1.0  # (unclamped: other values)
    got = rt.xp.asarray(g.copy())
    GPUBackend().swiglu_oai(got, rt.xp.asarray(u), got)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-6)


def test_the_experts_clamp_the_gate_before_the_silu_as_maple(rt):
    """moe2.cu's act ``"swiglu_clamp_first"`` (ggml's ``swiglu_clamp``, Maple's): each chosen expert's
    ``silu(min(g, limit)) * clamp(u, -limit, limit)``, summed by the slots' weights, against numpy on float32 experts;
    gates past the limit (a SiLU clamped after, Step-3.5's, gives other sums)."""
    rng = np.random.default_rng(4)
    T, k, n_expert, n_embd, n_ff, limit = 3, 2, 4, 64, 32, 0.5
    wg, wu, wd = (rng.standard_normal((n_expert, r, c)).astype(np.float32) * 0.2 for r, c in ((n_ff, n_embd),) * 2 + ((n_embd, n_ff),))
    xn = rng.standard_normal((T, n_embd)).astype(np.float32)
    ids = np.array([[0, 3], [2, 1], [3, 2]], np.int32)
    wts = rng.uniform(0.2, 0.8, (T, k)).astype(np.float32)
    x = rng.standard_normal((T, n_embd)).astype(np.float32)
    want, after = x.astype(np.float64), x.astype(np.float64)
    for t in range(T):
        for j, e in enumerate(ids[t]):
            g, u = wg[e] @ xn[t].astype(np.float64), np.clip(wu[e] @ xn[t].astype(np.float64), -limit, limit)
            assert (g > limit).any()  # (the clamp bites)
            want[t] += wts[t, j] * (wd[e] @ (silu(np.minimum(g, limit)) * u))
            after[t] += wts[t, j] * (wd[e] @ (np.minimum(silu(g), limit) * u))
    be = GPUBackend()
    gate, up, down = (be.upload(w.reshape(-1, w.shape[2]).view(np.uint8), Q.F32, (n_expert * w.shape[1], w.shape[2])) for w in (wg, wu, wd))
    got = rt.xp.asarray(x.copy())
    h = rt.xp.zeros((T, k * n_ff), np.float32)
    be.moe_experts_x(gate, up, down, n_ff, rt.xp.asarray(ids), rt.xp.asarray(wts), rt.xp.asarray(xn), got, h, "swiglu_clamp_first", limit)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-4, atol=1e-5)
    assert np.abs(want - after).max() > 1e-2  # (the order shows)


def silu(g: np.ndarray) -> np.ndarray:
    return g / (1.0 + np.exp(-g))


@pytest.mark.parametrize("per_head", [False, True], ids=["afmoe", "step35"])
def test_the_attention_gate_multiplies_by_the_sigmoid(rt, per_head):
    """AFMoE's gate is as wide as the heads, Step-3.5's one value a head; large gates saturate without overflow."""
    rng = np.random.default_rng(2)
    att = rng.standard_normal((3, 4, 8)).astype(np.float32)
    s = (rng.standard_normal((3, 4) if per_head else (3, 4, 8)) * 30).astype(np.float32)
    want = att * (1.0 / (1.0 + np.exp(-s.astype(np.float64))))[..., None if per_head else slice(None)]
    got = rt.xp.asarray(att.copy())
    GPUBackend().sigmoid_mul(got, rt.xp.asarray(s))
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_a_device_copy_copies_into_a_view(rt, gpu, cpu, backend):
    """SmallThinker's router input: the layer's input into the first T rows of an n_batch buffer (``Backend.copy``: a
    kernel on the GPU, ``np.copyto`` on the CPU)."""
    be, xp = (gpu, rt.xp) if backend == "gpu" else (cpu, np)
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    buf = xp.full((5, 8), np.nan, np.float32)
    be.copy(xp.asarray(x), buf[:3])
    np.testing.assert_array_equal(be.to_host(buf)[:3], x)
    assert np.isnan(be.to_host(buf)[3:]).all()


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_a_copy_refuses_another_shape_in_one_line(rt, gpu, cpu, backend):
    """The same shapes or nothing: no broadcast (``np.copyto`` would spread a row over the buffer), no copy of the same
    count into another layout; the buffer is left as it was."""
    be, xp = (gpu, rt.xp) if backend == "gpu" else (cpu, np)
    buf = xp.zeros((3, 8), np.float32)
    for src in (xp.ones((1, 8), np.float32), xp.ones((8, 3), np.float32)):
        with pytest.raises(ValueError, match=r"^copy: \(\d+, \d+\) into \(3, 8\)$"):
            be.copy(src, buf)
    assert not be.to_host(buf).any()


def test_the_chunk_experts_are_chosen_and_weighed_as_grovemoes_host_code(rt):
    """Chunk expert ``e // group`` of each of the first kc chosen, weighted by the softmax probability of expert *cid*
    renormalised (the sum floored at 6.1e-5), times expert_group_scale: models/grovemoe.py's grove_add."""
    rng = np.random.default_rng(3)
    T, n_expert, k, kc, group, scale = 4, 16, 4, 2, 4, 0.05
    logits = (rng.standard_normal((T, n_expert)) * 3).astype(np.float32)
    ids = np.stack([rng.permutation(n_expert)[:k] for _ in range(T)]).astype(np.int32)
    ids[0, :2] = [15, 14]  # (both of group 3: cid 3 twice; expert 3's probability weighs both)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cid = ids[:, :kc] // group
    cw = np.take_along_axis(p, cid, axis=1)
    want = cw / np.maximum(cw.sum(axis=1, keepdims=True), 6.103515625e-5) * scale
    cids, got = rt.xp.full((T, kc), -1, np.int32), rt.xp.full((T, kc), np.nan, np.float32)
    GPUBackend().moe_chunk_route(rt.xp.asarray(logits), rt.xp.asarray(ids), group, scale, cids, got)
    np.testing.assert_array_equal(rt.asnumpy(cids), cid)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-5)


# ----------------------------------------------------------------- moe_add on both backends
VARIANTS = {  # gating, k, act, swiglu_limit, weight_before_ffn, gate/up types, shared expert's limit
    "grok-gelu": ("softmax", 2, "gelu", 0.0, False, (Q.Q8_0, Q.Q8_0), None),
    "gelu-two-types": ("softmax", 2, "gelu", 0.0, False, (Q.F32, Q.Q8_0), None),  # (gate then up: two launches)
    "step35-clamped": ("sigmoid", 3, "silu", 0.5, False, (Q.Q8_0, Q.Q8_0), 0.5),  # (and its clamped shared expert)
    "maple-clamped-first": ("softmax", 2, "silu", 0.5, False, (Q.Q8_0, Q.Q8_0), None),  # (the gate clamped before the SiLU)
    "llama4-one": ("sigmoid", 1, "silu", 0.0, True, (Q.Q8_0, Q.Q8_0), None),  # Scout's one expert a token
    "weight-before-two": ("sigmoid", 2, "silu", 0.0, True, (Q.Q8_0, Q.F32), None),
}


@pytest.mark.parametrize("T", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("name", VARIANTS)
def test_moe_add_on_the_device_equals_the_cpus(rt, name, T):
    gating, k, act, limit, wbf, (gq, uq), sh_limit = VARIANTS[name]
    rng = np.random.default_rng(len(name) + T)
    n_expert, n_embd, n_ff = 6, 64, 96
    raw = {"router": (Q.F32, n_expert, n_embd), "gate": (gq, n_expert * n_ff, n_embd), "up": (uq, n_expert * n_ff, n_embd),
           "down": (Q.Q8_0, n_expert * n_embd, n_ff)}  # fmt: skip
    if sh_limit is not None:
        raw |= {"sh_gate": (Q.Q8_0, n_ff, n_embd), "sh_up": (Q.Q8_0, n_ff, n_embd), "sh_down": (Q.Q8_0, n_embd, n_ff)}
    raw = {r: (random_weight(q, rows, cols, rng), q, (rows, cols)) for r, (q, rows, cols) in raw.items()}
    xn = (rng.standard_normal((T, n_embd)) * 2).astype(np.float32)
    x = rng.standard_normal((T, n_embd)).astype(np.float32)
    outs = []
    for be in (CPUBackend(), GPUBackend()):
        w = {r: be.upload(d, q, s) for r, (d, q, s) in raw.items()}
        shared = None if sh_limit is None else SharedExpert(w["sh_gate"], w["sh_up"], w["sh_down"], swiglu_limit=sh_limit)
        moe = MoE(router=w["router"], gate=w["gate"], up=w["up"], down=w["down"], n_expert=n_expert, n_used=k, norm_weights=False,
                  gating=gating, act=act, shared=shared, swiglu_limit=limit, weight_before_ffn=wbf,
                  clamp_gate_first=name.startswith("maple"))  # fmt: skip
        assert device_unsupported(moe) is None
        out = be.vector(x.copy()) if be.name != "cpu" else x.copy()
        moe_add(be, moe, be.vector(xn) if be.name != "cpu" else xn, out, Buffers(8, be.zeros))
        outs.append(be.to_host(out))
    assert nmse(outs[1] - x, outs[0] - x) < 1e-3


@pytest.mark.parametrize("act", ["gelu", "relu_sqr"], ids=["gated", "ungated-relu-sqr"])
@pytest.mark.parametrize("qtype", EVERY_QTYPE, ids=lambda q: Q(q).name)
def test_every_type_runs_as_the_variants_experts(rt, qtype, act):
    """moe2.cu's experts (Grok's GELU: moe_gate_up_x_, moe_down_x_) and the ungated squared-ReLU ones (Nemotron-H
    MoE's: moe3.cu's moe_up_sq_, then moe_down_x_), all of one type, through ``moe_add`` on both backends: one token,
    two of four experts, the narrowest width the type's blocks allow.  The device within NMSE 1e-9 of the float64
    experts of the dequantized weights (1e-6 with the GELU: a gate on a float16 rounding boundary of its table may round
    the other way) and 2e-2 of the CPU's: its int8 activations lose more on the random K-quant blocks, whose 6-bit
    mins offset every weight (the products cancel), and a gate's error and an up's multiply (Q4_K's gated experts:
    5e-3 from the CPU, 6e-13 from float64)."""
    rng = np.random.default_rng(int(qtype) * 2 + (act == "gelu"))
    n_expert, k, n = 4, 2, n_cols_for(qtype)  # (n_embd = n_ff)
    raw = {"router": (Q.F32, n_expert, n), "up": (qtype, n_expert * n, n), "down": (qtype, n_expert * n, n)}
    if act == "gelu":
        raw["gate"] = (qtype, n_expert * n, n)
    raw = {r: (random_weight(q, rows, cols, rng), q, (rows, cols)) for r, (q, rows, cols) in raw.items()}
    xn = rng.standard_normal((1, n)).astype(np.float32)
    x = rng.standard_normal((1, n)).astype(np.float32)
    outs = []
    for be in (CPUBackend(), GPUBackend()):
        w = {r: be.upload(d, q, s) for r, (d, q, s) in raw.items()}
        moe = MoE(router=w["router"], gate=w.get("gate"), up=w["up"], down=w["down"], n_expert=n_expert, n_used=k, norm_weights=True, act=act)
        assert device_unsupported(moe) is None
        out = be.vector(x.copy()) if be.name != "cpu" else x.copy()
        moe_add(be, moe, be.vector(xn) if be.name != "cpu" else xn, out, Buffers(8, be.zeros))
        outs.append(be.to_host(out)[0] - x[0])
    W = {r: dequantize(d, q).reshape(s).astype(np.float64) for r, (d, q, s) in raw.items()}
    p = np.exp(W["router"] @ xn[0])  # (softmax over the experts, the best two renormalised)
    ids = np.argsort(-p)[:k]
    want = np.zeros(n)
    for e, wt in zip(ids, p[ids] / p[ids].sum()):
        rows = slice(e * n, (e + 1) * n)
        u = W["up"][rows] @ xn[0]
        h = gelu((W["gate"][rows] @ xn[0]).astype(np.float32)) * u if act == "gelu" else np.maximum(u, 0.0) ** 2
        want += wt * (W["down"][rows] @ h)
    assert nmse(outs[1], want) < (1e-6 if act == "gelu" else 1e-9)
    assert nmse(outs[1], outs[0]) < 2e-2


def test_the_variants_with_biases_are_still_named():
    """moe2.cu's experts take no biases (none of these architectures has them): such a mixture would route on the host."""
    w = Weight(np.zeros((8, 32), np.uint8), int(Q.Q8_0), (8, 32))
    b = np.zeros((4, 2), np.float32)
    for change in ({"weight_before_ffn": True}, {"swiglu_limit": 7.0}, {"swiglu_limit": 7.0, "clamp_gate_first": True}, {"act": "gelu"}):
        moe = MoE(router=w, gate=w, up=w, down=w, n_expert=4, n_used=2, norm_weights=True, **change)
        assert device_unsupported(moe) is None
        assert "biases" in device_unsupported(MoE(**{**moe.__dict__, "gate_b": b, "up_b": b, "down_b": b}))


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: nothing of these variants is host work
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys, steps=(5, 9, 14))


@pytest.mark.parametrize("name", ["grovemoe", "smallthinker", "step35", "dbrx"])  # chunk experts; router input; gates, clamps; clip
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, name):
    """On the strict CuPy stand-in (devicexp.py): the step is captured (the stand-in refuses any copy while capturing, as
    CUDA does) and a replay brings down the logits alone."""
    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), steps=(5,))
