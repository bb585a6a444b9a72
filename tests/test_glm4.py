"""GLM-4 (``glm4``) and GLM-4.5 (``glm4moe``): their fixtures against llama.cpp fail without what sets each apart, their
NextN layers are neither run nor read, and a file missing a tensor they need is refused in one line naming it.
(test_models.test_forward_matches_llamacpp holds the fixtures glm4, glm4moe and glm4moe-nextn to llama.cpp.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_glm4 import write_tiny_glm4
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.common import WeightLoader, make_rope
from kvrun.models.glm4 import Glm4MoeModel
from kvrun.models.llama import LlamaModel
from kvrun.ops import get_backend


def _neox(flip: bool):
    def drop(m):
        m.cfg = dataclasses.replace(m.cfg, rope_neox=flip)

    return drop


def _full_rope(m):  # (every dimension of the heads turned, not the first rope.dimension_count)
    m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=m.cfg.head_dim), m.n_ctx, m.cfg.rope_theta)


def _layers(field, value):
    return lambda m: [setattr(L, field, value) for L in m.layers]


def _zeroed(field):  # (a bias taken away: the forward adds Q's, K's and V's together, so each is zeroed, not dropped)
    return lambda m: [setattr(L, field, np.zeros_like(getattr(L, field))) for L in m.layers]


def test_glm4_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny GLM-4-0414 fails without its post-attention and post-FFN norms, with its fused gate and up taken the
    other way round, with neox rope (llama.cpp turns consecutive pairs), with the whole head turned, without its
    QKV biases."""
    cfg, model = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["glm4"]))
    assert (cfg.rope_dim, cfg.head_dim, cfg.rope_neox) == (8, 16, False)
    assert all(L.bq is not None and L.attn_post_norm is not None and L.ffn_post_norm is not None for L in model.layers)

    def no_post_norms(m):
        m.add_output = lambda x, o, product: LlamaModel.add_output(m, x, None, product)

    def gate_up_swapped(m):
        for L in m.layers:
            L.w_gate, L.w_up = L.w_up, L.w_gate

    for drop in (no_post_norms, gate_up_swapped, _neox(True), _full_rope, _zeroed("bq"), _zeroed("bk"), _zeroed("bv")):
        assert _fixture_error(tmp_path, "glm4", drop) > 3e-2, drop


def test_glm4moe_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny GLM-4.5 fails without its per-head QK norm, with llama.cpp's normal rope (its is neox), with the whole
    head turned, without its QKV biases; without the experts' sigmoid router, selection bias, shared expert,
    renormalised or scaled weights.  Layer 0 is dense (leading_dense_block_count 1), the others experts."""
    cfg, model = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["glm4moe"]))
    assert (cfg.rope_dim, cfg.head_dim, cfg.rope_neox, cfg.expert_weights_norm) == (16, 32, True, True)
    assert model.layers[0].moe is None and model.layers[0].w_gate is not None
    assert all(L.q_norm is not None and L.moe.shared is not None and L.moe.bias is not None for L in model.layers[1:])
    assert [(L.moe.gating, L.moe.weights_scale) for L in model.layers[1:]] == [("sigmoid", 2.5)] * 2

    def moe(field, value):
        return lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]

    drops = (_layers("q_norm", None), _neox(False), _full_rope, _zeroed("bq"), _zeroed("bk"), _zeroed("bv"),
             moe("gating", "softmax"), moe("bias", None), moe("shared", None), moe("norm_weights", False), moe("weights_scale", 1.0))  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "glm4moe", drop) > 3e-2, drop


def test_glm4moe_nextn_layer_is_neither_run_nor_read(tmp_path, monkeypatch):
    """GLM-4.5-Air's layout: block_count 4 of which the last is a NextN (multi-token prediction) layer, which llama.cpp
    loads and never runs: the trunk is 3 layers, without QK norm, and no tensor of blk.3 is read; the gating func
    left unstated is the sigmoid (llama.cpp's glm4moe default)."""
    path = write_tiny_model(tmp_path / "n.gguf", **FIXTURE_MODELS["glm4moe-nextn"])
    g = GGUFFile(path)
    assert g.arch_get("block_count") == 4 and "blk.3.nextn.eh_proj.weight" in g.tensors
    read = []
    info = WeightLoader._info
    monkeypatch.setattr(WeightLoader, "_info", lambda self, role, i, required: read.append((role, i)) or info(self, role, i, required))
    cfg, model = _build(path)
    assert cfg.n_layer == 3 and len(model.layers) == 3 and len(model.layer_specs()) == 3
    assert {i for _, i in read if i is not None} == {0, 1, 2}
    assert all(L.q_norm is None for L in model.layers) and all(L.moe.gating == "sigmoid" for L in model.layers[1:])


@pytest.mark.parametrize(("arch", "missing"), [("glm4", "blk.1.post_ffw_norm.weight"), ("glm4", "blk.0.post_attention_norm.weight"),
                                               ("glm4", "blk.1.ffn_up.weight"), ("glm4moe", "blk.2.exp_probs_b.bias"),
                                               ("glm4moe", "blk.1.post_attention_norm.weight"), ("glm4moe", "blk.0.ffn_gate.weight")])  # fmt: skip
def test_a_missing_tensor_is_named_in_one_line(tmp_path, arch, missing):
    path = write_tiny_glm4(tmp_path / f"{arch}.gguf", arch, drop=(missing,))
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(path)
    assert "\n" not in str(e.value)


def test_glm4moe_with_multimodal_rope_turns_by_it(tmp_path):
    """A file with multimodal rope sections on glm4moe (GLM-4.5V's language model) turns by them and takes images, as
    GLM-4.1V's glm4 (held to llama.cpp: tests/test_vision_glm45v.py).  (glm4moe runs on the GPU: tests/test_gpu_moe.py.)"""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["glm4moe"]))
    real = g.arch_get
    g.arch_get = lambda key, default=None: [8, 12, 12, 0] if key == "rope.dimension_sections" else real(key, default)
    m = Glm4MoeModel(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert m.sections == [8, 12, 12, 0] and m.takes_images


def test_glm4_on_the_gpu_gives_the_cpus_logits(tmp_path, monkeypatch):
    """The dense GLM-4 needs nothing the GPU backend lacks (partial rope, post-norms, the fused gate and up cut in two):
    on the kernel emulator where no GPU is at hand.  Float32 weights: its post-norms would show the two backends'
    rounding of activations in quantized products (see test_gpu_engine.GPU_QTYPE)."""
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine

    if not gpu_available():
        if not emulate.available():
            pytest.skip("no GPU and no host C++ compiler for the emulator")
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    path = write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["glm4"])
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    cpu = Engine(path, device="cpu", n_ctx=64, n_batch=16)
    gpu = Engine(path, device="gpu", n_ctx=64, n_batch=16)
    a = cpu.eval(cpu.new_cache(), ids, logits_all=True)
    b = gpu.eval(gpu.new_cache(), ids, logits_all=True)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-3  # (3.7e-5 on the emulator)
