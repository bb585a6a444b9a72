"""Mixture-of-experts FFN (models/moe.py, ops/cpu/moe.py): the router's choice, and decode's one-call
kernel against the product-by-product path prefill takes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

from kvrun.models.moe import route
from kvrun.ops.cpu import qmatmul
from kvrun.ops.cpu.moe import moe_token, swiglu_oai


def test_the_router_takes_the_top_k_by_softmax_and_renormalises_their_weights():
    logits = np.array([[0.0, 3.0, 1.0, 3.0, -1.0]], np.float32)
    top, wts = route(logits, 3, norm_weights=True)
    assert top.tolist() == [[1, 3, 2]]  # ties to the lower index
    p = np.exp(logits[0] - 3.0) / np.exp(logits[0] - 3.0).sum()
    np.testing.assert_allclose(wts[0], p[[1, 3, 2]] / p[[1, 3, 2]].sum(), rtol=1e-6)
    _, raw = route(logits, 3, norm_weights=False)
    np.testing.assert_allclose(raw[0], p[[1, 3, 2]], rtol=1e-6)


def test_group_limited_routing_chooses_from_the_best_groups_only():
    """DeepSeek-V3's routing (llama.cpp's build_moe_ffn with expert_group_count): 8 experts in 4 groups of 2, a group
    scored by its two best selection scores (sigmoid plus bias) summed, the experts chosen from the best 2 groups; the
    weights are the unbiased sigmoids, renormalised.  Expert 0 alone is the best, but its group's sum is the worst."""
    p = np.array([[0.95, 0.05, 0.6, 0.6, 0.7, 0.55, 0.2, 0.3]], np.float32)
    logits = np.log(p / (1 - p))
    bias = np.array([0, 0, 0, 0, 0, 0, 0.5, 0.5], np.float32)  # group 3: 0.7 + 0.8 = 1.5 beats group 1's 1.2, not 2's 1.25
    top, w = route(logits, 3, True, "sigmoid", bias, n_group=4, n_group_used=2)
    assert top.tolist() == [[7, 4, 6]]
    np.testing.assert_allclose(w, [p[0, [7, 4, 6]] / p[0, [7, 4, 6]].sum()], rtol=1e-6)
    top, _ = route(logits, 3, True, "sigmoid", bias)  # (no groups: the best 3 of all)
    assert top.tolist() == [[0, 7, 4]]


def test_gpt_oss_weights_its_top_k_by_a_softmax_over_their_own_logits():
    logits = np.array([[0.5, 3.0, 1.0, 3.0, -1.0]], np.float32)
    top, wts = route(logits, 2, norm_weights=False, gating="softmax_weight")
    assert top.tolist() == [[1, 3]]
    np.testing.assert_allclose(wts[0], [0.5, 0.5], rtol=1e-6)  # (the softmax over all five would give less)
    top, wts = route(logits, 3, norm_weights=False, gating="softmax_weight")
    z = np.exp(logits[0, [1, 3, 2]] - 3.0)
    np.testing.assert_allclose(wts[0], z / z.sum(), rtol=1e-6)


def test_gpt_oss_glu_clamps_the_gate_above_and_the_up_projection_both_ways():
    g = np.array([[-9.0, -1.0, 0.0, 2.0, 7.0, 12.0]], np.float32)
    u = np.array([[-12.0, 0.5, 3.0, -2.0, 9.0, 1.0]], np.float32)
    out = np.empty_like(g)
    swiglu_oai(g, u, out)
    x, y = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)
    want = x / (1.0 + np.exp(-1.702 * x)) * (y + 1.0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert out[0, 5] == out[0, 4] * 2.0 / 8.0  # gate 12 counts as 7; up 9 as 7 and 1 as 1


@pytest.mark.parametrize("oai", [False, True], ids=["swiglu", "gpt-oss"])  # gpt-oss: expert biases, clamped GLU
@pytest.mark.parametrize("gu,down", [(T.Q4_0, T.Q4_0), (T.Q8_0, T.Q4_1), (T.Q4_0, T.Q8_0)], ids=lambda t: t.name)
def test_one_token_in_one_call_equals_expert_by_expert(gu, down, oai):
    rng = np.random.default_rng(0)
    n_expert, n_embd, n_ff = 6, 64, 96
    def stacked(qt, rows, cols):
        return np.ascontiguousarray(quantize((rng.standard_normal((n_expert * rows, cols)) * 0.1).astype(np.float32), qt)).view(np.uint8)
    g, u, d = stacked(gu, n_ff, n_embd), stacked(gu, n_ff, n_embd), stacked(down, n_embd, n_ff)
    xn = rng.standard_normal(n_embd).astype(np.float32)
    experts, wts = np.array([4, 0, 2]), np.array([0.5, 0.3, 0.2], np.float32)
    x = rng.standard_normal(n_embd).astype(np.float32)
    gb, ub, db = (rng.standard_normal((n_expert, n)).astype(np.float32) * 4 for n in (n_ff, n_ff, n_embd))  # (big: clamps bite)
    want = x.astype(np.float64).copy()
    for e, wt in zip(experts, wts):
        gg, uu, dd = np.zeros(n_ff, np.float32), np.zeros(n_ff, np.float32), np.zeros(n_embd, np.float32)
        qmatmul.matvec(g[e * n_ff : (e + 1) * n_ff], gu, xn, gg)
        qmatmul.matvec(u[e * n_ff : (e + 1) * n_ff], gu, xn, uu)
        if oai:
            h = np.empty((1, n_ff), np.float32)
            swiglu_oai((gg + gb[e])[None], (uu + ub[e])[None], h)
            h = h[0]
        else:
            h = (gg / (1 + np.exp(-gg)) * uu).astype(np.float32)
        qmatmul.matvec(d[e * n_embd : (e + 1) * n_embd], down, h, dd)
        want += wt * (dd + db[e] if oai else dd)
    got = x.copy()
    assert moe_token(g, gu, u, gu, d, down, n_ff, experts, wts, xn, got, (gb, ub, db) if oai else None, "swiglu_oai" if oai else "silu")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_float_experts_are_left_to_the_product_path():
    w = np.zeros((2 * 32, 32 * 4), np.uint8)
    assert not moe_token(w, T.F32, w, T.F32, w, T.F32, 32, np.array([0]), np.ones(1, np.float32), np.zeros(32, np.float32), np.zeros(32, np.float32))


def test_kvrun_info_states_the_experts(tmp_path):
    from click.testing import CliRunner
    from tinymodel import write_tiny_model

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "moe.gguf", "qwen3moe"))])
    assert r.exit_code == 0 and "2 of 4 experts a token, each 64 wide" in r.output, r.output


@pytest.mark.parametrize("name", ["qwen2moe", "granitemoe-shared", "deepseek"])
def test_decode_runs_the_shared_expert_after_the_one_call_kernel(tmp_path, monkeypatch, name):
    """A shared expert (Qwen2-MoE's sigmoid-gated one, GraniteMoeShared's and DeepSeek-MoE's plain ones) joins
    decode's one-call routed experts (quantized experts: the kernel takes them; DeepSeek's weights scaled) as
    it joins the expert-by-expert products: the same logits with the kernel as without it, and different
    ones without the shared expert."""
    from tinymodel import FIXTURE_MODELS, write_tiny_model

    from kvrun.cache.base import KVCache
    from kvrun.cache.factory import make_cache
    from kvrun.loaders.config import load_config
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.models import model_class
    from kvrun.ops import get_backend

    g = GGUFFile(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name], qtype=T.Q8_0))
    cfg = load_config(g)
    model = model_class(cfg.arch)(g, cfg, get_backend("cpu"), 16, 4)
    moes = [L.moe for L in model.layers if L.moe is not None]
    assert len(moes) == cfg.n_layer - (name == "deepseek")  # (its leading dense layer)
    assert all(m.shared is not None and (m.shared.gate_inp is not None) == (name == "qwen2moe") for m in moes)
    tokens = np.random.default_rng(1).integers(0, cfg.n_vocab, 6).astype(np.int32)

    def decode() -> np.ndarray:
        cache, out = KVCache(make_cache(model.layer_specs(), 16, 4)), np.zeros((len(tokens), cfg.n_vocab), np.float32)
        for t in range(len(tokens)):
            model.forward(tokens[t : t + 1], np.array([t], np.int32), cache, np.arange(1), out[t : t + 1])
            cache.offset += 1
        return out

    calls = []
    one_call = model.be.moe_token
    monkeypatch.setattr(model.be, "moe_token", lambda *a: calls.append(1) or one_call(*a))
    fast = decode()
    assert len(calls) == len(tokens) * len(moes)  # (the kernel took every layer's routed experts)
    monkeypatch.setattr(model.be, "moe_token", lambda *a: False)
    slow = decode()
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-4 * np.abs(slow).max())
    for m in moes:
        m.shared = None
    assert np.abs(decode() - slow).max() > 1e-2 * np.abs(slow).max()


@pytest.mark.parametrize("name,says", [("qwen2moe", "64 wide, on every token, its output scaled by a sigmoid gate"),
                                       ("granitemoe-shared", "64 wide, on every token\n"),
                                       ("deepseek", "64 wide (2 experts as one), on every token\n")])  # fmt: skip
def test_kvrun_info_states_the_shared_expert(tmp_path, name, says):
    from click.testing import CliRunner
    from tinymodel import FIXTURE_MODELS, write_tiny_model

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))])
    assert r.exit_code == 0 and f"shared expert     {says}" in r.output, r.output
    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "moe.gguf", "qwen3moe"))])
    assert "shared expert" not in r.output
