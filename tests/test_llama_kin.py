"""Seed-OSS, Apertus and Command R (tiny_llama_kin.py): their fixtures (test_models.test_forward_matches_llamacpp
holds them to llama.cpp) fail without what sets each apart; a missing tensor or key is one line naming it; xIELU's
kernel against its formula; Apertus stays off the GPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend
from kvrun.ops.cpu import nn


def _neox_off(m):
    m.cfg = dataclasses.replace(m.cfg, rope_neox=not m.cfg.rope_neox)


def test_seed_oss_fixture_sees_what_sets_it_apart(tmp_path):
    """The QKV biases, rope over halves, and the post_attention_norm read as the pre-FFN norm."""
    cfg, model = _build(write_tiny_model(tmp_path / "s.gguf", **FIXTURE_MODELS["seed_oss"]))
    assert (cfg.head_dim, cfg.rope_neox) == (32, True) and model.output is not model.tok_embd

    def no_biases(m):
        for L in m.layers:
            L.bq = L.bk = L.bv = None

    def no_post_attention_norm(m):
        for L in m.layers:
            L.ffn_norm = m.be.vector(np.ones(m.cfg.n_embd, np.float32))

    for drop in (no_biases, _neox_off, no_post_attention_norm):
        assert _fixture_error(tmp_path, "seed_oss", drop) > 3e-2, drop.__name__


def test_apertus_fixture_sees_what_sets_it_apart(tmp_path, monkeypatch):
    """xIELU (not Arcee's squared ReLU), each layer's own parameters, their softplus constraints; the per-head
    QK-norm, rope over halves, Llama 3's rope factors."""
    from kvrun.models.arcee import ArceeModel
    from kvrun.models.common import make_rope

    _, model = _build(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS["apertus"]))
    assert model.xielu.shape == (2, 4) and model.layers[0].w_gate is None and model.output is not model.tok_embd

    def relu_sqr(m):
        m.ffn_activation = lambda il, up: ArceeModel.ffn_activation(m, il, up)

    def layer0_params(m):
        m.xielu[1] = m.xielu[0]

    def no_qk_norm(m):
        for L in m.layers:
            L.q_norm = L.k_norm = None

    def no_rope_factors(m):
        m.rope_cos, m.rope_sin = make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta)

    for drop in (relu_sqr, layer0_params, no_qk_norm, _neox_off, no_rope_factors):
        assert _fixture_error(tmp_path, "apertus", drop) > 3e-2, drop.__name__
    monkeypatch.setattr(nn, "softplus", float)  # the stored parameters used as they are
    assert _fixture_error(tmp_path, "apertus", lambda m: None) > 3e-2


def test_command_r_fixtures_see_what_sets_them_apart(tmp_path):
    """Command R7B's windows and rope-less global layers taken back, the logit scale; Command R+'s per-head QK
    LayerNorms (each head its own weights, a LayerNorm: not an RMSNorm)."""
    from kvrun.models.command_r import CommandRModel

    cfg, model = _build(write_tiny_model(tmp_path / "c.gguf", **FIXTURE_MODELS["command-r"]))
    assert cfg.swa_layers == () and all(s.window == 0 for s in model.layer_specs()) and model.output is model.tok_embd
    assert cfg.logit_scale == 0.0625 and model.layers[0].q_norm is None

    def windows(m):  # (cohere2's window of 8)
        specs = [dataclasses.replace(s, window=8) for s in CommandRModel.layer_specs(m)]
        m.layer_specs = lambda: specs

    def last_layer_without_rope(m):  # (as cohere2's global layers)
        m.qk_rope = lambda il, L, q3, k3, pos: il == m.cfg.n_layer - 1 or CommandRModel.qk_rope(m, il, L, q3, k3, pos)

    def no_logit_scale(m):
        m.cfg = dataclasses.replace(m.cfg, logit_scale=1.0)

    for drop in (windows, last_layer_without_rope, no_logit_scale, _neox_off):
        assert _fixture_error(tmp_path, "command-r", drop) > 3e-2, drop.__name__

    _, model = _build(write_tiny_model(tmp_path / "cq.gguf", **FIXTURE_MODELS["command-r-qk-norm"]))
    assert model.layers[0].q_norm.shape == (4, 16) and model.layers[0].k_norm.shape == (2, 16)

    def no_qk_norm(m):
        for L in m.layers:
            L.q_norm = L.k_norm = None

    def head0_weights(m):
        for L in m.layers:
            L.q_norm = np.repeat(L.q_norm[:1], L.q_norm.shape[0], 0)
            L.k_norm = np.repeat(L.k_norm[:1], L.k_norm.shape[0], 0)

    def rms_norm(m):
        def qk_rope(il, L, q3, k3, pos):
            for x, w in ((q3, L.q_norm), (k3, L.k_norm)):
                x[...] = x / np.sqrt((x * x).mean(-1, keepdims=True) + m.cfg.norm_eps) * w
            m.be.rope_qk(q3, k3, pos, m.rope_cos, m.rope_sin, m.cfg.rope_neox)

        m.qk_rope = qk_rope

    for drop in (no_qk_norm, head0_weights, rms_norm):
        assert _fixture_error(tmp_path, "command-r-qk-norm", drop) > 3e-2, drop.__name__


@pytest.mark.parametrize(("name", "tensor"), [("seed_oss", "blk.1.post_attention_norm.weight"),
                                              ("apertus", "blk.0.attn_k_norm.weight"), ("apertus", "output.weight"),
                                              ("command-r", "blk.1.attn_norm.weight"),
                                              ("command-r-qk-norm", "blk.3.attn_k_norm.weight")])  # fmt: skip
def test_a_missing_tensor_is_one_line_naming_it(tmp_path, name, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    del g.tensors[tensor]
    cfg = load_config(g)
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class(cfg.arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_apertus_needs_its_xielu_keys(tmp_path):
    """(xIELU runs on the GPU too: tests/test_gpu_alibi_sinks.py)"""
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS["apertus"]))
    cfg = load_config(g)
    from kvrun.models.apertus import ApertusModel

    g.metadata["xielu.beta"] = [0.5]  # one value for every layer: llama.cpp's get_key_or_arr takes it
    assert (ApertusModel(g, cfg, get_backend("cpu"), N_CTX, N_BATCH).xielu[:, 2] == 0.5).all()
    del g.metadata["xielu.eps"]
    with pytest.raises(GGUFError, match="metadata xielu.eps is missing"):
        ApertusModel(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)


@pytest.mark.parametrize("T", [3, 2 * nn.WIDE_ROWS + 5])
def test_xielu_is_hfs_formula(T):
    """nn.xielu against HF's XIELUActivation in float64 (softplus(alpha_p) x^2 + beta x above 0, (beta +
    softplus(alpha_n)) (expm1(min(x, eps)) - x) + beta x below), written over its input as the models call it."""
    alpha_n, alpha_p, beta, eps = 0.4, -0.7, 0.2, -1e-6
    x = (np.random.default_rng(0).standard_normal((T, 160)) * 4).astype(np.float32)
    x64 = x.astype(np.float64)
    sp = lambda a: np.log1p(np.exp(a))  # noqa: E731
    want = np.where(x64 > 0, sp(alpha_p) * x64 * x64 + beta * x64,
                    (beta + sp(alpha_n)) * (np.expm1(np.minimum(x64, eps)) - x64) + beta * x64)  # fmt: skip
    nn.xielu(x, x, alpha_n, alpha_p, beta, eps)
    np.testing.assert_allclose(x, want, rtol=2e-6, atol=1e-6)
