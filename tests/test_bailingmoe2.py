"""Ling 2.0 (``bailingmoe2``): its fixtures against llama.cpp fail without what sets it apart, its NextN layers are
neither run nor read, and a file missing a tensor or key it needs is refused in one line naming it.
(test_models.test_forward_matches_llamacpp holds bailingmoe2 and bailingmoe2-nextn to llama.cpp.)"""

from __future__ import annotations

import dataclasses

import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_bailingmoe2 import write_tiny_bailingmoe2
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.bailingmoe2 import BailingMoe2Model
from kvrun.models.common import WeightLoader, make_rope
from kvrun.ops import get_backend


def _moe(field, value):
    return lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]


def _no_qk_norm(m):
    for L in m.layers:
        L.q_norm = L.k_norm = None


def _normal_rope(m):
    m.cfg = dataclasses.replace(m.cfg, rope_neox=False)


def _full_rope(m):  # (every dimension of the heads turned, not the first rope.dimension_count)
    m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=m.cfg.head_dim), m.n_ctx, m.cfg.rope_theta)


def test_bailingmoe2_fixtures_see_what_sets_it_apart(tmp_path):
    """The tiny Ling-mini-2.0 fails without its per-head QK norm, with normal rope (its is neox), with the whole head
    turned; without the sigmoid router, the selection bias, the shared expert, the renormalised or the scaled weights,
    or the expert groups.  The NextN variant (weights not renormalised: expert_weights_norm unstated) fails with them
    renormalised, and without its 2 shared experts."""
    cfg, m = _build(write_tiny_model(tmp_path / "b.gguf", **FIXTURE_MODELS["bailingmoe2"]))
    assert (cfg.rope_dim, cfg.head_dim, cfg.rope_neox, cfg.expert_weights_norm) == (8, 16, True, True)
    assert m.layers[0].moe is None and m.layers[0].w_gate is not None and all(L.q_norm is not None for L in m.layers)
    assert [(L.moe.gating, L.moe.weights_scale, L.moe.n_group, L.moe.n_group_used) for L in m.layers[1:]] == [("sigmoid", 2.5, 4, 2)] * 2
    drops = (_no_qk_norm, _normal_rope, _full_rope, _moe("gating", "softmax"), _moe("bias", None), _moe("shared", None),
             _moe("norm_weights", False), _moe("weights_scale", 1.0), _moe("n_group", 0))  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "bailingmoe2", drop) > 3e-2, drop
    for drop in (_moe("norm_weights", True), _moe("shared", None)):
        assert _fixture_error(tmp_path, "bailingmoe2-nextn", drop) > 3e-2, drop


def test_bailingmoe2_nextn_layer_is_neither_run_nor_read(tmp_path, monkeypatch):
    """block_count 4 of which the last is a NextN (multi-token prediction) layer, which llama.cpp skips: the trunk is 3
    layers and no tensor of blk.3 is read; 2 shared experts as one FFN twice expert_feed_forward_length wide."""
    path = write_tiny_model(tmp_path / "n.gguf", **FIXTURE_MODELS["bailingmoe2-nextn"])
    g = GGUFFile(path)
    assert g.arch_get("block_count") == 4 and "blk.3.nextn.eh_proj.weight" in g.tensors
    read = []
    info = WeightLoader._info
    monkeypatch.setattr(WeightLoader, "_info", lambda self, role, i, required: read.append((role, i)) or info(self, role, i, required))
    cfg, m = _build(path)
    assert cfg.n_layer == 3 and len(m.layers) == 3 and len(m.layer_specs()) == 3
    assert {i for _, i in read if i is not None} == {0, 1, 2}
    assert [L.moe.shared.gate.shape[0] for L in m.layers[1:]] == [32, 32] and not cfg.expert_weights_norm


@pytest.mark.parametrize("missing", ["blk.1.attn_qkv.weight", "blk.2.attn_k_norm.weight", "blk.1.ffn_down_shexp.weight",
                                     "blk.0.ffn_gate.weight", "blk.2.ffn_gate_inp.weight", "output.weight"])  # fmt: skip
def test_a_missing_tensor_is_named_in_one_line(tmp_path, missing):
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(write_tiny_bailingmoe2(tmp_path / "m.gguf", drop=(missing,)))
    assert "\n" not in str(e.value)


def test_a_missing_key_is_named(tmp_path):
    """expert_gating_func and expert_shared_count, which llama.cpp's loader requires, are named where missing.
    exp_probs_b is optional (llama.cpp's).  (The GPU runs bailingmoe2: tests/test_gpu_moe.py.)"""
    path = write_tiny_bailingmoe2(tmp_path / "b.gguf", drop=("blk.1.exp_probs_b.bias",))
    g = GGUFFile(path)
    cfg = load_config(g)
    m = BailingMoe2Model(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert m.layers[1].moe.bias is None and m.layers[2].moe.bias is not None
    real = g.arch_get
    for key in ("expert_gating_func", "expert_shared_count"):
        g.arch_get = lambda k, default=None, key=key: None if k == key else real(k, default)
        with pytest.raises(GGUFError, match=f"bailingmoe2.{key} is missing"):
            BailingMoe2Model(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)

