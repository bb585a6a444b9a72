"""Phi-3.5-MoE (``phimoe``), Ling v1 (``bailingmoe``), Hunyuan-A13B (``hunyuan-moe``), dots.llm1 (``dots1``), RND1
(``rnd1``) and GroveMoE (``grovemoe``): each fixture against llama.cpp fails without what sets its architecture apart;
RND1's non-causal forward pass is held to llama.cpp over one batch and its text generation refused in one line; a file
missing a tensor or key is refused in one line naming it; other backends are refused; ``kvrun info`` and ``kvrun run``
work.  (test_models.test_forward_matches_llamacpp holds the others' fixtures to llama.cpp, prefill and decode.)"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_moe2 import ARCHS, write_tiny_moe2
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import KVCache
from kvrun.cache.factory import make_cache
from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models import grovemoe as grove
from kvrun.models.common import make_rope
from kvrun.models.moe import experts_add
from kvrun.models.qwen3moe import Qwen3MoeModel
from kvrun.ops import get_backend

#: the drops' bar: a fixture that still matches within this has not lost anything llama.cpp computes
BAR = 3e-2


def _moe(field, value):
    return lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]


def _layers(field, value):
    return lambda m: [setattr(L, field, value) for L in m.layers]


def _normal_rope(m):
    m.cfg = dataclasses.replace(m.cfg, rope_neox=not m.cfg.rope_neox)


def test_phimoe_fixtures_see_what_sets_it_apart(tmp_path):
    """The tiny Phi-3.5-MoE fails without its norms' biases, its Q/K/V and output biases, with LayerNorms in place of
    llama.cpp's RMSNorms, with normal rope, without LongRoPE's factors or its attention factor, or with the long and
    short factor sets swapped; and with its experts' weights as the router gave them (llama.cpp renormalises)."""
    from kvrun.models.phimoe import PhiMoeModel

    cfg, m = _build(write_tiny_model(tmp_path / "p.gguf", **FIXTURE_MODELS["phimoe"]))
    assert isinstance(m, PhiMoeModel) and all(L.moe.norm_weights and L.moe.n_used == 2 for L in m.layers)

    def zero_norm_biases(m):
        for L in m.layers:
            L.attn_norm_b, L.ffn_norm_b = np.zeros_like(L.attn_norm_b), np.zeros_like(L.ffn_norm_b)
        m.output_norm_b = np.zeros_like(m.output_norm_b)

    def layer_norms(m):  # (the checkpoint's LayerNorms, the mean taken away)
        m.norm = lambda x, w, b, out: m.be.layer_norm(x, w, b, m.cfg.norm_eps, out)

    def rope(factors=None, attn_factor=None):
        def drop(m):
            c = m.cfg if attn_factor is None else dataclasses.replace(m.cfg, yarn_attn_factor=attn_factor)
            m.rope_cos, m.rope_sin = make_rope(c, m.n_ctx, c.rope_theta, factors)

        return drop

    short, long_ = np.geomspace(1.0, 4.0, 8).astype(np.float32), np.geomspace(1.0, 16.0, 8).astype(np.float32)  # (tiny_moe2's)
    drops = (zero_norm_biases, _layers("bq", None), _layers("bo", None), lambda m: setattr(m, "output_b", None), layer_norms,
             _normal_rope, rope(None), rope(short, 1.0), rope(long_), _moe("norm_weights", False))  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "phimoe", drop) > BAR, drop
    assert _fixture_error(tmp_path, "phimoe-long", rope(short)) > BAR  # (beyond the original context: the long factors)


def test_bailingmoe_fixtures_see_what_sets_it_apart(tmp_path):
    """The tiny Ling-lite fails with neox rope (Ling v1's is over consecutive pairs, unlike Ling 2.0's), without its 2
    shared experts, with a sigmoid router, or with its weights as the router gave them (its file says renormalise);
    the scaled variant fails renormalised or unscaled."""
    cfg, m = _build(write_tiny_model(tmp_path / "b.gguf", **FIXTURE_MODELS["bailingmoe"]))
    assert not cfg.rope_neox and [L.moe.shared.gate.shape[0] for L in m.layers] == [32] * 3
    for drop in (_normal_rope, _moe("shared", None), _moe("gating", "sigmoid"), _moe("norm_weights", False)):
        assert _fixture_error(tmp_path, "bailingmoe", drop) > BAR, drop
    cfg, m = _build(write_tiny_model(tmp_path / "s.gguf", **FIXTURE_MODELS["bailingmoe-scaled"]))
    assert not cfg.expert_weights_norm and all(L.moe.weights_scale == 2.5 for L in m.layers)
    for drop in (_moe("norm_weights", True), _moe("weights_scale", 1.0)):
        assert _fixture_error(tmp_path, "bailingmoe-scaled", drop) > BAR, drop


def test_hunyuan_moe_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny Hunyuan-A13B fails with its QK norm before the rope (Qwen3's order, not Hunyuan's), with normal rope,
    without its shared expert (expert_shared_feed_forward_length wide), or with its weights as the router gave them."""
    cfg, m = _build(write_tiny_model(tmp_path / "h.gguf", **FIXTURE_MODELS["hunyuan-moe"]))
    assert [L.moe.shared.gate.shape[0] for L in m.layers] == [48] * 3 and all(L.moe.norm_weights for L in m.layers)

    def norm_before_rope(m):
        m.qk_norm_rope = lambda *a: Qwen3MoeModel.qk_norm_rope(m, *a)

    for drop in (norm_before_rope, _normal_rope, _moe("shared", None), _moe("norm_weights", False)):
        assert _fixture_error(tmp_path, "hunyuan-moe", drop) > BAR, drop


def test_dots1_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny dots.llm1 (layer 0 dense) fails with a softmax router, without the selection bias, the shared expert,
    the groups, the scale or the renormalised weights, or with normal rope."""
    cfg, m = _build(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots1"]))
    assert m.layers[0].moe is None and m.layers[0].w_gate is not None
    moes = [(L.moe.gating, L.moe.weights_scale, L.moe.n_group, L.moe.norm_weights) for L in m.layers[1:]]
    assert moes == [("sigmoid", 2.5, 4, True)] * 2
    drops = (_moe("gating", "softmax"), _moe("bias", None), _moe("shared", None), _moe("n_group", 0), _moe("weights_scale", 1.0),
             _moe("norm_weights", False), _normal_rope)  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "dots1", drop) > BAR, drop


def test_grovemoe_fixture_sees_what_sets_it_apart(tmp_path, monkeypatch):
    """The tiny GroveMoE fails without its chunk experts, with them run on the FFN's input (llama.cpp runs them on the
    routed experts' output), or without llama.cpp's floor on their weights' sum; and with the routed experts' weights
    as the router gave them."""
    cfg, m = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["grovemoe"]))
    assert [(L.chunk.n_expert, L.chunk.n_used, L.chunk.gate.shape[0]) for L in m.layers] == [(4, 2, 4 * 24)] * 3

    def scale(value):
        return lambda m: setattr(m, "group_scale", value)

    assert _fixture_error(tmp_path, "grovemoe", scale(0.0)) > BAR
    assert _fixture_error(tmp_path, "grovemoe", _moe("norm_weights", False)) > 1e-2

    real = experts_add
    for wrong in ("input", "floor"):
        def experts_add_wrong(be, moe, xn, x, buf, top, wts, wrong=wrong):
            if moe.n_expert == 8:  # (the routed experts: as they are; remember their input for the chunk experts')
                experts_add_wrong.xn = xn.copy()
                return real(be, moe, xn, x, buf, top, wts)
            if wrong == "input":
                xn = experts_add_wrong.xn
            return real(be, moe, xn, x, buf, top, wts)

        with monkeypatch.context() as mp:
            mp.setattr(grove, "experts_add", experts_add_wrong)
            if wrong == "floor":
                mp.setattr(grove, "WEIGHTS_SUM_MIN", np.float32(0.0))
            # (the floor acts at a few positions only: 1.1e-2 without it, 20 times the fixture's own error)
            assert _fixture_error(tmp_path, "grovemoe", lambda m: None) > (5e-3 if wrong == "floor" else BAR), wrong


def _rnd1_run(tmp_path, causal=False):
    fix = np.load(Path(__file__).parent / "fixtures" / "arch_rnd1.npz")
    path = write_tiny_model(tmp_path / "r.gguf", arch="rnd1", seed=1)  # (as tools/make_noncausal_fixtures.py writes it)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == str(fix["sha256"]), "tiny_moe2.py writes another model now: regenerate the fixture"
    g = GGUFFile(path)
    cfg = load_config(g)
    n = len(fix["ids"])
    m = model_class("rnd1")(g, cfg, get_backend("cpu"), N_CTX, n)
    cache = KVCache(make_cache(m.layer_specs(), N_CTX, n))
    out = np.zeros((n, cfg.n_vocab), np.float32)
    forward = (lambda *a: Qwen3MoeModel.forward(m, *a)) if causal else m.forward
    forward(fix["ids"], np.arange(n, dtype=np.int32), cache, np.arange(n), out)
    return np.abs(out - fix["logits"]).max() / np.abs(fix["logits"]).max(), m, cache


def test_rnd1_forward_matches_llamacpp_over_one_batch_and_refuses_generation(tmp_path):
    """RND1's 40 positions in one batch, every one seeing every other (llama.cpp's graph has no causal mask), against
    llama.cpp's logits (tools/make_noncausal_fixtures.py); causal attention fails them; a batch continuing the sequence
    (a decode step) is refused in one line."""
    err, m, cache = _rnd1_run(tmp_path)
    assert err < 1e-3, err
    assert _rnd1_run(tmp_path, causal=True)[0] > BAR
    with pytest.raises(UnsupportedModelError, match="diffusion language model") as e:
        m.forward(np.array([1], np.int32), np.array([40], np.int32), cache, np.arange(1), np.zeros((1, m.cfg.n_vocab), np.float32))  # fmt: skip
    assert "\n" not in str(e.value)


MISSING = [("phimoe", "blk.1.attn_norm.bias"), ("phimoe", "blk.0.attn_k.weight"), ("phimoe", "output_norm.bias"),
           ("phimoe", "blk.2.ffn_up_exps.weight"), ("bailingmoe", "blk.1.ffn_gate_inp.weight"),
           ("bailingmoe", "blk.2.ffn_down_shexp.weight"), ("bailingmoe", "output.weight"), ("hunyuan-moe", "blk.0.attn_q_norm.weight"),
           ("hunyuan-moe", "blk.1.ffn_up_shexp.weight"), ("dots1", "blk.0.ffn_down.weight"), ("dots1", "blk.2.ffn_gate_inp.weight"),
           ("dots1", "blk.1.attn_k_norm.weight"), ("rnd1", "blk.2.ffn_gate_exps.weight"), ("rnd1", "blk.0.attn_q_norm.weight"),
           ("grovemoe", "blk.1.ffn_down_chexps.weight"), ("grovemoe", "blk.0.ffn_gate_inp.weight")]  # fmt: skip


@pytest.mark.parametrize("arch,missing", MISSING)
def test_a_missing_tensor_is_named_in_one_line(tmp_path, arch, missing):
    with pytest.raises(GGUFError, match=missing.removesuffix(".weight").replace(".", r"\.")) as e:  # (Hunyuan names its QK norms together)
        _build(write_tiny_moe2(tmp_path / "m.gguf", arch, drop=(missing,)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch,key", [("bailingmoe", "expert_shared_count"), ("bailingmoe", "expert_feed_forward_length"),
                                      ("hunyuan-moe", "expert_feed_forward_length"), ("dots1", "expert_gating_func"),
                                      ("grovemoe", "experts_per_group"), ("grovemoe", "expert_group_scale")])  # fmt: skip
def test_a_missing_key_is_named_in_one_line(tmp_path, arch, key):
    g = GGUFFile(write_tiny_moe2(tmp_path / "m.gguf", arch))
    cfg = load_config(g)
    real = g.arch_get
    g.arch_get = lambda k, default=None: None if k == key else real(k, default)
    with pytest.raises(GGUFError, match=f"{arch}.{key} is missing") as e:
        model_class(arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


# (these all run on the GPU too: tests/test_gpu_moe.py, GroveMoE's chunk experts tests/test_gpu_moe2.py; RND1's
# diffusion tests/test_gpu_encoders.py)


@pytest.mark.parametrize("arch", ARCHS)
def test_info_and_run(tmp_path, arch):
    """``kvrun info`` names the architecture; ``kvrun run`` writes (noise: random weights), but RND1's, a diffusion
    model's, is refused in one line."""
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_moe2(tmp_path / "m.gguf", arch))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and arch in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    if arch == "rnd1":
        assert r.exit_code != 0 and "diffusion language model" in r.output, r.output
        assert r.output.count("kvrun: error") == 1 and r.output.endswith("text generation\n")  # (one line)
    else:
        assert r.exit_code == 0, r.output
