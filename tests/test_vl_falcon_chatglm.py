"""Qwen2-VL, Qwen3-VL (dense and MoE) text, Falcon and ChatGLM: what sets each apart is what makes its fixture match
llama.cpp (tests/fixtures/arch_<name>.npz, test_models.test_forward_matches_llamacpp), their refusals, and ChatGLM's
tokenizers against llama.cpp's (tests/fixtures/tokens_chatglm.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_models import _build, _fixture_error
from tiny_vl_falcon_chatglm import write_tiny_vl_falcon_chatglm

from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.models.common import make_rope


def _plain_neox(model) -> None:
    """The rope tables of plain neox rope: the multimodal sections taken away."""
    model.rope_cos, model.rope_sin = make_rope(model.cfg, model.n_ctx, model.cfg.rope_theta)


def _cfg(model, **changes) -> None:
    model.cfg = dataclasses.replace(model.cfg, **changes)


def test_qwen2vl_text_is_neox_rope_unless_a_section_is_extra(tmp_path):
    """The published sections turn every pair for text: the tables are neox's.  An extra section's pairs stay
    unturned, and taking that away breaks the match; so does dropping Qwen2's QKV biases."""
    _, model = _build(write_tiny_vl_falcon_chatglm(tmp_path / "q.gguf", "qwen2vl"))
    cos, sin = make_rope(model.cfg, model.n_ctx, model.cfg.rope_theta)
    assert np.array_equal(model.rope_cos, cos) and np.array_equal(model.rope_sin, sin)
    _, model = _build(write_tiny_vl_falcon_chatglm(tmp_path / "qx.gguf", "qwen2vl", variant="extra-section"))
    assert np.flatnonzero((model.rope_sin == 0).all(axis=0)).tolist() == [3, 7]
    assert _fixture_error(tmp_path, "qwen2vl-extra-section", _plain_neox) > 1e-2

    def no_bias(m):
        for L in m.layers:
            L.bq = L.bk = L.bv = None

    assert _fixture_error(tmp_path, "qwen2vl", no_bias) > 1e-2


@pytest.mark.parametrize("name", ["qwen3vl", "qwen3vlmoe"])
def test_qwen3vl_interleaved_rope_leaves_the_unclaimed_pairs_unturned(tmp_path, name):
    """Sections [8, 4, 4, 0] over 16 pairs (the published [24, 20, 20, 0] over 64, scaled): pairs 13 and 14 are past 3 x 4
    in the height and width slots and turn with the extra position, 0 for text, as llama.cpp runs it; neox rope
    everywhere (Hugging Face's text rope) misses the fixture, and so does the QK norm left out."""
    _, model = _build(write_tiny_vl_falcon_chatglm(tmp_path / f"{name}.gguf", name))
    unturned = np.flatnonzero((model.rope_sin == 0).all(axis=0))
    assert unturned.tolist() == [13, 14]
    assert model.n_deepstack_layers == 2
    assert _fixture_error(tmp_path, name, _plain_neox) > 1e-2

    def no_qk_norm(m):
        for L in m.layers:
            L.q_norm = L.k_norm = None

    assert _fixture_error(tmp_path, name, no_qk_norm) > 1e-2


def test_falcon_fixtures_see_the_second_norm_and_neox_rope(tmp_path):
    """Falcon-40B's attention reads its own LayerNorm: sharing the MLP's (Falcon-7B's) misses the fixture; both rotate
    in neox layout."""

    def one_norm(m):
        for L in m.layers:
            L.attn_norm_2 = L.attn_norm_2_b = None

    assert _fixture_error(tmp_path, "falcon-40b", one_norm) > 1e-2
    assert _fixture_error(tmp_path, "falcon", lambda m: _cfg(m, rope_neox=False)) > 1e-2
    _, model = _build(write_tiny_vl_falcon_chatglm(tmp_path / "f.gguf", "falcon"))
    assert model.cfg.n_head_kv == 1 and model.layers[0].attn_norm_2 is None and model.output is not model.tok_embd


def test_chatglm_fixture_sees_half_head_pair_rope_and_qkv_bias(tmp_path):
    """ChatGLM turns half of each head in consecutive pairs: neox layout, or the whole head, misses the fixture, as
    the fused QKV bias left out does."""
    assert _fixture_error(tmp_path, "chatglm", lambda m: _cfg(m, rope_neox=True)) > 1e-2

    def whole_head(m):
        _cfg(m, rope_dim=m.cfg.head_dim)
        _plain_neox(m)

    assert _fixture_error(tmp_path, "chatglm", whole_head) > 1e-2

    def no_bias(m):
        for L in m.layers:
            L.bq = L.bk = L.bv = None

    assert _fixture_error(tmp_path, "chatglm", no_bias) > 1e-2


@pytest.mark.parametrize(
    "arch,drop",
    [("qwen2vl", "blk.1.attn_k.bias"), ("qwen3vl", "blk.0.attn_k_norm.weight"), ("qwen3vlmoe", "blk.1.attn_q_norm.weight"),
     ("falcon", "blk.1.attn_norm.bias"), ("falcon", "output_norm.bias"), ("chatglm", "blk.0.ffn_up.weight"),
     ("falcon", "blk.0.attn_qkv.weight"),
     ("chatglm", "blk.1.attn_q.weight")],  # (chatglm: without attn_qkv llama.cpp's loader, as kvrun's, asks for Q, K, V apart)
)  # fmt: skip
def test_missing_tensor_is_one_line_naming_it(tmp_path, arch, drop):
    path = write_tiny_vl_falcon_chatglm(tmp_path / f"{arch}.gguf", arch, drop=(drop.replace("attn_q.", "attn_qkv."),))
    with pytest.raises(GGUFError, match=f"tensor '{drop}' is missing"):
        _build(path)


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(GGUFError, match=r"qwen3vl\.rope\.dimension_sections is missing"):
        _build(write_tiny_vl_falcon_chatglm(tmp_path / "q.gguf", "qwen3vl", variant="no-sections"))
    with pytest.raises(UnsupportedModelError, match=r"'blk\.0\.attn_qkv\.bias': Falcon with biased projections"):
        _build(write_tiny_vl_falcon_chatglm(tmp_path / "f.gguf", "falcon", variant="biased"))


@pytest.mark.parametrize("name,variant", [("chatglm-spm", "spm"), ("chatglm-bpe", "")])
def test_chatglm_tokenizers_equal_llamacpp(tmp_path, name, variant):
    """ChatGLM3's SentencePiece vocabulary (pre chatglm-spm, which llama.cpp's SentencePiece path ignores) and
    GLM-4-9B-chat's byte-level one (chatglm-bpe: Llama 3's regex, and no BOS where the file states none)."""
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.loaders.tokenizer import Tokenizer

    fix = json.loads((Path(__file__).parent / "fixtures" / "tokens_chatglm.json").read_text())
    tk = Tokenizer.from_metadata(GGUFFile(write_tiny_vl_falcon_chatglm(tmp_path / f"{name}.gguf", "chatglm", variant=variant)).metadata)
    ref = fix[name]
    assert (tk.bos_id if tk.bos_id is not None else -1, tk.eos_id) == (ref["bos"], ref["eos"])
    for special in (True, False):
        got = [tk.encode(t, add_bos=True, parse_special=special) for t in fix["texts"]]
        assert got == ref["ids"][str(special)], f"parse_special={special}"
