"""Qwen (1), Baichuan, Orion, XVERSE, PLaMo 3, Maincoder and Jais-2 (tiny_llama_likes2.py): their fixtures
(test_models.test_forward_matches_llamacpp holds them to llama.cpp) fail without what sets each apart; a missing tensor
is one line naming it; Baichuan 13B's ALiBi stays off the GPU; PLaMo 3's post-norms are read under either name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error, _run
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend


def _neox_flipped(m):
    m.cfg = dataclasses.replace(m.cfg, rope_neox=not m.cfg.rope_neox)


def _tied_head(m):
    m.output = m.tok_embd


class _Backend:
    """The model's backend, a method or two of it overridden by a subclass: what a test takes away."""

    def __init__(self, be):
        self._be = be

    def __getattr__(self, name):
        return getattr(self._be, name)


class _RmsNormBackend(_Backend):
    """LayerNorms made RMSNorms (plus their biases): what a LayerNorm model is not."""

    def layer_norm(self, x, w, b, eps, out):
        self._be.rms_norm(x, w, eps, out)
        if b is not None:
            self._be.add_bias(out, b)


def _rms_norms(m):
    m.be = _RmsNormBackend(m.be)


def _no_qk_norm(m):
    for L in m.layers:
        L.q_norm = L.k_norm = None


def _assert_each_matters(tmp_path, name, drops):
    assert _fixture_error(tmp_path, name, lambda m: None) < 1e-3
    for drop in drops:
        assert _fixture_error(tmp_path, name, drop) > 3e-2, drop.__name__


def test_qwen_fixture_sees_what_sets_it_apart(tmp_path):
    """The fused QKV's bias, rope over halves, the FFN half the stated width, Qwen's own head."""
    cfg, model = _build(write_tiny_model(tmp_path / "q.gguf", **FIXTURE_MODELS["qwen"]))
    assert cfg.n_ff == 192 and model.cfg.n_ff == 96 and model.layers[0].w_up.shape == (96, 64)

    def no_qkv_bias(m):
        for L in m.layers:
            L.bq = L.bk = L.bv = None

    _assert_each_matters(tmp_path, "qwen", (no_qkv_bias, _neox_flipped, _tied_head))


def test_baichuan_fixtures_see_what_sets_them_apart(tmp_path):
    """7B (32 layers): rope over consecutive pairs.  13B (40 layers): no rope, ALiBi with llama.cpp's maximum bias 8 and
    ggml's slopes for 5 heads (not a power of two)."""
    from kvrun.models.jina_bert import alibi_slopes

    _, model = _build(write_tiny_model(tmp_path / "b7.gguf", **FIXTURE_MODELS["baichuan"]))
    assert model.alibi_q is None and all(L.rope for L in model.layers)

    def no_rope(m):
        for L in m.layers:
            L.rope = False

    _assert_each_matters(tmp_path, "baichuan", (no_rope, _neox_flipped))

    _, model = _build(write_tiny_model(tmp_path / "b13.gguf", **FIXTURE_MODELS["baichuan-13b"]))
    assert model.alibi_q.shape == (5,) and not any(L.rope for L in model.layers)
    assert all(s.position_channel and s.head_dim == 17 for s in model.layer_specs())

    def no_alibi(m):
        m.alibi_q = None

    def rope_too(m):
        for L in m.layers:
            L.rope = True

    def max_bias_16(m):
        m.alibi_q = (alibi_slopes(m.cfg.n_head, 16.0) * np.float32(4.0)).astype(np.float32)

    _assert_each_matters(tmp_path, "baichuan-13b", (no_alibi, rope_too, max_bias_16))


def test_baichuan_of_another_depth_has_neither_rope_nor_alibi(tmp_path):
    """llama.cpp knows Baichuan's sizes by depth alone: any other (here 7B's file cut to 2 layers) positions nothing."""
    g = GGUFFile(write_tiny_model(tmp_path / "b7.gguf", **FIXTURE_MODELS["baichuan"]))
    g.metadata["baichuan.block_count"] = 2
    cfg = load_config(g)
    model = model_class("baichuan")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert cfg.n_layer == 2 and model.alibi_q is None and not any(L.rope for L in model.layers)


def test_orion_and_xverse_fixtures_see_what_sets_them_apart(tmp_path):
    """Orion: LayerNorms (not RMSNorms) with their biases, rope over halves.  XVERSE: Llama's rope over pairs, its own head."""

    def no_norm_biases(m):
        m.output_norm_b = None
        for L in m.layers:
            L.attn_norm_b = L.ffn_norm_b = None

    _assert_each_matters(tmp_path, "orion", (_rms_norms, no_norm_biases, _neox_flipped))
    _assert_each_matters(tmp_path, "xverse", (_neox_flipped, _tied_head))


def test_plamo3_fixtures_see_what_sets_them_apart(tmp_path):
    """The post-norms, the per-head QK-norm, rope over halves, the fused gate+up's order; the windows on 7 layers of 8 and
    their own rope base; without a window, every layer global and the head tied."""
    cfg, model = _build(write_tiny_model(tmp_path / "p.gguf", **FIXTURE_MODELS["plamo3"]))
    assert cfg.swa_layers == (True,) * 7 + (False,) and [s.window for s in model.layer_specs()] == [8] * 7 + [0]
    assert cfg.rope_theta_swa == 1000.0 and model.output is not model.tok_embd

    class NoPostNorms(_Backend):
        def rms_norm_add(self, o, w, eps, x):
            self._be.add(x, o)

    def no_post_norms(m):
        m.be = NoPostNorms(m.be)

    def gate_up_swapped(m):
        for L in m.layers:
            L.w_gate, L.w_up = L.w_up, L.w_gate

    def no_windows(m):
        specs = [dataclasses.replace(s, window=0) for s in type(m).layer_specs(m)]
        m.layer_specs = lambda: specs

    def global_rope_base(m):
        m.rope_local = (m.rope_cos, m.rope_sin)

    _assert_each_matters(tmp_path, "plamo3", (no_post_norms, _no_qk_norm, _neox_flipped, gate_up_swapped, no_windows, global_rope_base))

    cfg, model = _build(write_tiny_model(tmp_path / "pf.gguf", **FIXTURE_MODELS["plamo3-full"]))
    assert cfg.swa_layers == () and model.output is model.tok_embd
    _assert_each_matters(tmp_path, "plamo3-full", (no_post_norms, _no_qk_norm))


def test_plamo3_reads_the_converters_post_norm_names(tmp_path):
    """The converter's ``post_attention_norm.weight``/``post_ffw_norm.weight`` (llama.cpp 0.3.36 takes the names without
    ``.weight``, as the fixture's file has them): the same model either way."""
    path = write_tiny_model(tmp_path / "pf.gguf", **FIXTURE_MODELS["plamo3-full"])
    cfg, model = _build(path)
    g = GGUFFile(path)
    for name in [n for n in g.tensors if n.endswith(("post_attention_norm", "post_ffw_norm"))]:
        g.tensors[name + ".weight"] = g.tensors.pop(name)
    renamed = model_class("plamo3")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    ids = np.arange(1, 21, dtype=np.int32)
    np.testing.assert_array_equal(_run(renamed, cfg, ids, N_BATCH), _run(model, cfg, ids, N_BATCH))


def test_maincoder_and_jais2_fixtures_see_what_sets_them_apart(tmp_path):
    """Maincoder: the per-head QK-norm, after the rope (not before it, as Qwen3's), rope over pairs.  Jais-2: LayerNorms,
    the attention's and the FFN's biases, an ungated squared ReLU (not a plain ReLU), rope over halves."""
    from kvrun.models.llama import LlamaModel

    def qk_norm_before_rope(m):
        m.qk_norm_rope = lambda *a: LlamaModel.qk_norm_rope(m, *a)

    def rope_alone(m):
        m.qk_norm_rope = lambda L, q, k, q3, k3, pos, cos, sin: m.be.rope_qk(q3, k3, pos, cos, sin, m.cfg.rope_neox)

    _assert_each_matters(tmp_path, "maincoder", (qk_norm_before_rope, rope_alone, _neox_flipped))

    _, model = _build(write_tiny_model(tmp_path / "j.gguf", **FIXTURE_MODELS["jais2"]))
    assert model.output is model.tok_embd and model.layers[0].w_gate is None

    def no_attention_biases(m):
        for L in m.layers:
            L.bq = L.bk = L.bv = L.bo = None

    def no_ffn_biases(m):
        for L in m.layers:
            L.b_up = L.b_down = None

    class ReluBackend(_Backend):
        def relu_sqr(self, x, out):
            np.maximum(x, 0.0, out=out)

    def plain_relu(m):
        m.be = ReluBackend(m.be)

    _assert_each_matters(tmp_path, "jais2", (_rms_norms, no_attention_biases, no_ffn_biases, plain_relu, _neox_flipped))


@pytest.mark.parametrize(("name", "tensor"), [("qwen", "blk.1.attn_qkv.bias"), ("qwen", "blk.0.attn_qkv.weight"),
                                              ("qwen", "output.weight"), ("baichuan-13b", "blk.39.attn_k.weight"),
                                              ("baichuan", "output.weight"), ("orion", "blk.1.ffn_norm.bias"),
                                              ("orion", "output.weight"), ("xverse", "output.weight"),
                                              ("plamo3", "blk.2.ffn_up.weight"), ("plamo3", "blk.0.attn_k_norm.weight"),
                                              ("maincoder", "blk.1.attn_k_norm.weight"), ("jais2", "blk.0.ffn_down.bias"),
                                              ("jais2", "blk.1.attn_v.bias")])  # fmt: skip
def test_a_missing_tensor_is_one_line_naming_it(tmp_path, name, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    del g.tensors[tensor]
    cfg = load_config(g)
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class(cfg.arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_a_missing_plamo3_post_norm_names_the_converters_tensor(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "p.gguf", **FIXTURE_MODELS["plamo3-full"]))
    del g.tensors["blk.1.post_ffw_norm"]
    with pytest.raises(GGUFError, match="tensor 'blk.1.post_ffw_norm.weight' is missing"):
        model_class("plamo3")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


@pytest.mark.parametrize("name", ["qwen", "orion", "xverse", "plamo3", "maincoder", "jais2"])
def test_gpu_logits_match_cpu(monkeypatch, tmp_path, name):
    """All but Baichuan 13B run on the GPU too (the kernel emulator where there is none, as test_gpu_engine.py's):
    float32 weights, so the two backends' arithmetic is compared, not their quantized products."""
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine

    if not gpu_available():
        if not emulate.available():
            pytest.skip("no GPU and no host C++ compiler for the emulator")
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    a, b = (e.eval(e.new_cache(), ids, logits_all=True) for e in (Engine(path, device=d, n_ctx=64, n_batch=16) for d in ("cpu", "gpu")))
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-3
