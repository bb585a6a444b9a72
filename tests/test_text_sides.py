"""The language sides of five vision-language / OCR architectures (``cogvlm``, ``deepseek2-ocr``, ``glm-dsa``,
``hunyuan_vl``, ``paddleocr``): their fixtures against llama.cpp fail without what sets each apart, a file missing a
tensor they need is refused in one line naming it, and what kvrun does not run (another backend for the mixtures of
experts, glm-dsa's sparse attention past its indexer's top_k, images) is refused in one line.
(test_models.test_forward_matches_llamacpp holds the fixtures cogvlm, deepseek2-ocr, glm-dsa, hunyuan_vl,
hunyuan_vl-plain and paddleocr to llama.cpp, prefill and decode.)"""

from __future__ import annotations

import dataclasses

import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_text_sides import write_tiny_text_side
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.models.deepseek2_ocr import Deepseek2OCRModel
from kvrun.models.glm_dsa import GlmDsaModel
from kvrun.models.qwen2vl import mrope_tables


def _neox(flip: bool):
    def drop(m):
        m.cfg = dataclasses.replace(m.cfg, rope_neox=flip)

    return drop


def _plain_rope(m):
    """M-RoPE's tables back to plain neox ones (the fourth section turning as the others)."""
    m.rope_cos, m.rope_sin = make_rope(m.cfg, N_CTX, m.cfg.rope_theta)


def _sections(s):
    def drop(m):
        m.rope_cos, m.rope_sin = mrope_tables(m.rope_cos, m.rope_sin, s)

    return drop


def _gating(g: str):
    def drop(m):
        for L in m.layers:
            if L.moe is not None:
                L.moe.gating = g

    return drop


def _swap_kv(m):
    for L in m.layers:  # (K's and V's rows of the fused attn_qkv taken the other way round)
        L.wk, L.wv = L.wv, L.wk


def _no_alpha(m):
    cfg = dataclasses.replace(m.cfg, rope_theta=10000.0)
    m.rope_cos, m.rope_sin = mrope_tables(*make_rope(cfg, N_CTX, cfg.rope_theta), [1, 1, 1, 1])


@pytest.mark.parametrize(
    "name, drop",
    [
        ("cogvlm", _neox(False)),  # rope over halves, not consecutive pairs
        ("cogvlm", _swap_kv),  # attn_qkv's rows: Q, then K, then V
        ("deepseek2-ocr", _neox(False)),  # plain attention with neox rope over whole heads
        ("deepseek2-ocr", _gating("sigmoid")),  # the router's softmax (its default)
        ("glm-dsa", _gating("softmax")),  # GLM's sigmoid router where the file states none (deepseek2's default: softmax)
        ("glm-dsa", _neox(True)),  # MLA's rope over consecutive pairs
        ("hunyuan_vl", _plain_rope),  # M-RoPE: the fourth section's pairs do not turn for text
        ("hunyuan_vl", _no_alpha),  # Hunyuan's NTK alpha on the rope base
        ("hunyuan_vl-plain", _sections([1, 1, 1, 1])),  # no sections: plain neox rope
        ("paddleocr", _neox(False)),  # M-RoPE's neox halves, where ERNIE 4.5 turns consecutive pairs
    ],
)
def test_fixtures_see_what_sets_each_apart(tmp_path, name, drop):
    assert _fixture_error(tmp_path, name, lambda m: None) < 1e-3
    assert _fixture_error(tmp_path, name, drop) > 1e-2


@pytest.mark.parametrize(
    "arch, missing",
    [
        ("cogvlm", "blk.1.attn_qkv.weight"),
        ("deepseek2-ocr", "blk.0.attn_k.weight"),
        ("deepseek2-ocr", "blk.2.ffn_down_shexp.weight"),
        ("glm-dsa", "blk.1.attn_k_b.weight"),
        ("glm-dsa", "blk.0.attn_q_a_norm.weight"),
        ("hunyuan_vl", "blk.1.ffn_gate.weight"),
        ("paddleocr", "blk.0.attn_v.weight"),
    ],
)
def test_a_missing_tensor_is_named_in_one_line(tmp_path, arch, missing):
    path = write_tiny_text_side(tmp_path / f"{arch}.gguf", arch, drop=(missing,))
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(path)
    assert "\n" not in str(e.value)


def test_hunyuan_vl_without_qk_norms_and_paddleocr_without_sections_are_refused(tmp_path):
    path = write_tiny_text_side(tmp_path / "h.gguf", "hunyuan_vl", drop=("blk.0.attn_q_norm.weight",))
    with pytest.raises(GGUFError, match="attn_q_norm/attn_k_norm") as e:
        _build(path)
    assert "\n" not in str(e.value)
    g = GGUFFile(write_tiny_model(tmp_path / "p.gguf", **FIXTURE_MODELS["paddleocr"]))
    real = g.arch_get
    g.arch_get = lambda key, default=None: None if key == "rope.dimension_sections" else real(key, default)
    with pytest.raises(GGUFError, match="rope.dimension_sections is missing"):
        model_class("paddleocr")(g, load_config(g), _cpu(), N_CTX, N_BATCH)


def _cpu():
    from kvrun.ops import get_backend

    return get_backend("cpu")


def test_glm_dsa_runs_its_dense_path_only_up_to_the_indexers_top_k(tmp_path):
    """Up to top_k cached keys llama.cpp's indexer chooses them all (the dense MLA kvrun runs); past it kvrun refuses."""
    g = GGUFFile(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["glm-dsa"]))
    cfg = load_config(g)
    assert cfg.n_layer == 3  # (the NextN layer past the trunk is not run)
    GlmDsaModel(g, cfg, _cpu(), 2048, N_BATCH)
    with pytest.raises(UnsupportedModelError, match="at most 2048") as e:
        GlmDsaModel(g, cfg, _cpu(), 4096, N_BATCH)
    assert "\n" not in str(e.value)


def test_deepseek2_ocr_refuses_a_sliding_window_and_takes_pictures(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-ocr"]))
    real = g.arch_get
    g.arch_get = lambda key, default=None: 4096 if key == "attention.sliding_window" else real(key, default)
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        Deepseek2OCRModel(g, load_config(g), _cpu(), N_CTX, N_BATCH)
    # (its pictures, as hunyuan_vl's and paddleocr's: test_vision_deepseekocr.py, test_vision_hunyuanvl.py, test_vision_paddleocr.py)
    assert _build(write_tiny_model(tmp_path / "deepseek2-ocr.gguf", **FIXTURE_MODELS["deepseek2-ocr"]))[1].takes_images
    # (CogVLM's pictures run through its visual expert: test_vision_cogvlm.py)
    assert _build(write_tiny_model(tmp_path / "cogvlm.gguf", **FIXTURE_MODELS["cogvlm"]))[1].takes_images
