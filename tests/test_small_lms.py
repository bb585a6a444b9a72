"""InternLM2 (``internlm2``), OLMo v1 (``olmo``), Nemotron (``nemotron``) and OpenELM (``openelm``): their fixtures against
llama.cpp fail without what sets each apart, OpenELM's per-layer widths reach its config and cache, and a file missing a
tensor they need is refused in one line naming it.  (test_models.test_forward_matches_llamacpp holds the fixtures
internlm2, internlm2-fused-qkv, olmo, olmo-clamp, nemotron, nemotron-biases and openelm to llama.cpp.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error, _run
from tiny_small_lms import write_tiny_small_lm
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.factory import make_cache
from kvrun.loaders.errors import GGUFError
from kvrun.models.common import make_rope


def _neox(flip: bool):
    def drop(m):
        m.cfg = dataclasses.replace(m.cfg, rope_neox=flip)

    return drop


def _layers(field, value):
    return lambda m: [setattr(L, field, value) for L in m.layers]


def _tied(m):
    m.output = m.tok_embd


def _rms_for_layer_norm(m):  # (RMSNorm where the model LayerNorms: the mean left in)
    m.be.layer_norm = lambda x, w, b, eps, out: m.be.rms_norm(x, w, eps, out)


def test_internlm2_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny InternLM2 fails with neox rope (llama.cpp turns consecutive pairs: the converter permuted the rows for
    it) and with its output head tied; the fused-QKV file holds the same weights (drawn in the same order), so its model
    gives the split file's logits exactly."""
    for name in ("internlm2", "internlm2-fused-qkv"):
        for drop in (_neox(True), _tied):
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, drop)
    ids = np.arange(0, 200, 7, dtype=np.int32)
    logits = []
    for n in ("internlm2", "internlm2-fused-qkv"):
        cfg, model = _build(write_tiny_model(tmp_path / f"{n}.gguf", **FIXTURE_MODELS[n]))
        logits.append(_run(model, cfg, ids, N_BATCH))
    np.testing.assert_array_equal(logits[0], logits[1])


def test_olmo_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny OLMo fails with RMSNorms for its LayerNorms and with neox rope; OLMo 1.7's layout fails without its
    Q/K/V clip and with its output head tied.  OLMo-1B's has no output.weight: the head is the token embeddings."""
    cfg, model = _build(write_tiny_model(tmp_path / "o.gguf", **FIXTURE_MODELS["olmo"]))
    assert (cfg.rope_neox, model.clamp_kqv, model.output is model.tok_embd) == (False, 0.0, True) and cfg.norm_eps == pytest.approx(1e-5)
    for drop in (_rms_for_layer_norm, _neox(True)):
        assert _fixture_error(tmp_path, "olmo", drop) > 3e-2, drop
    _, model = _build(write_tiny_model(tmp_path / "c.gguf", **FIXTURE_MODELS["olmo-clamp"]))
    assert model.clamp_kqv == 1.0 and model.output is not model.tok_embd

    def no_clamp(m):
        m.clamp_kqv = 0.0

    for drop in (no_clamp, _tied, _rms_for_layer_norm):
        assert _fixture_error(tmp_path, "olmo-clamp", drop) > 3e-2, drop


def test_nemotron_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny Nemotron fails without its LayerNorms' biases, with layernorm1p's +1 added again (the converter has),
    with RMSNorms, with the whole head turned or llama.cpp's normal rope, with a plain ReLU for the squared one; its
    biased variant fails without any one of the attention output's, ffn_up's and ffn_down's biases."""
    cfg, model = _build(write_tiny_model(tmp_path / "n.gguf", **FIXTURE_MODELS["nemotron"]))
    assert (cfg.rope_dim, cfg.head_dim, cfg.rope_neox, model.clamp_kqv) == (8, 16, True, 0.0)
    assert all(L.bo is None and L.b_up is None and L.w_gate is None for L in model.layers)

    def plus_one(m):
        for L in m.layers:
            L.attn_norm, L.ffn_norm = L.attn_norm + 1, L.ffn_norm + 1

    def full_rope(m):
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=m.cfg.head_dim), m.n_ctx, m.cfg.rope_theta)

    def relu(m):
        m.be.relu_sqr = lambda x, out: np.maximum(x, 0, out=out)

    drops = (_layers("attn_norm_b", None), _layers("ffn_norm_b", None), plus_one, _rms_for_layer_norm, full_rope, _neox(False), relu)
    for drop in drops:
        assert _fixture_error(tmp_path, "nemotron", drop) > 3e-2, drop
    for field in ("bo", "b_up", "b_down"):
        assert _fixture_error(tmp_path, "nemotron-biases", _layers(field, None)) > 3e-2, field


def test_openelm_per_layer_widths_and_what_sets_it_apart(tmp_path):
    """OpenELM's per-layer head counts and FFN widths: the config holds the widest layer's, each layer's cache its own
    heads; the fixture fails without the per-head QK-norm, with llama.cpp's normal rope, with a separate output head."""
    cfg, model = _build(write_tiny_model(tmp_path / "e.gguf", **FIXTURE_MODELS["openelm"]))
    assert (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff, cfg.rope_neox) == (6, 2, 16, 128, True)
    specs = model.layer_specs()
    assert [(s.n_head, s.n_head_kv, s.head_dim) for s in specs] == [(2, 1, 16), (4, 2, 16), (6, 2, 16)]
    assert [L.w_up.n_rows for L in model.layers] == [64, 96, 128] and model.output is model.tok_embd
    layers = make_cache(specs, N_CTX, N_BATCH)
    assert [layer.spec.n_head_kv for layer in layers] == [1, 2, 2] and layers[0].nbytes() < layers[1].nbytes() == layers[2].nbytes()
    assert cfg.kv_bytes_per_token(16) == (1 + 2 + 2) * (16 + 16) * 2  # each layer's own KV heads, not the widest's
    from click.testing import CliRunner

    from kvrun.cli import main

    out = CliRunner().invoke(main, ["info", str(tmp_path / "e.gguf")]).output
    assert "2-6 / 1-2 by layer  (head_dim 16)" in out and "16-bit 320 B" in out

    def untied(m):
        rng = np.random.default_rng(3)
        a = (rng.standard_normal((m.cfg.n_vocab, m.cfg.n_embd)) * 0.5).astype(np.float32)
        m.output = m.be.upload(a.view(np.uint8), 0, a.shape)  # (F32 rows, as the file's bytes)

    for drop in (_layers("q_norm", None), _neox(False), untied):
        assert _fixture_error(tmp_path, "openelm", drop) > 3e-2, drop


@pytest.mark.parametrize(("name", "missing"), [("internlm2", "output.weight"), ("internlm2", "blk.1.attn_k.weight"),
                                               ("internlm2-fused-qkv", "blk.0.ffn_gate.weight"), ("olmo", "blk.1.ffn_down.weight"),
                                               ("nemotron", "output_norm.bias"), ("nemotron", "blk.1.ffn_norm.bias"),
                                               ("nemotron", "output.weight"), ("openelm", "blk.2.attn_qkv.weight"),
                                               ("openelm", "blk.1.attn_k_norm.weight")])  # fmt: skip
def test_a_missing_tensor_is_named_in_one_line(tmp_path, name, missing):
    kw = {k: v for k, v in FIXTURE_MODELS[name].items() if k != "arch"}
    path = write_tiny_small_lm(tmp_path / f"{name}.gguf", FIXTURE_MODELS[name]["arch"], drop=(missing,), **kw)
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(path)
    assert "\n" not in str(e.value)
