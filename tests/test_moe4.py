"""DBRX, Snowflake Arctic, Grok-1/Grok-2, Nemotron 3 Nano (models/dbrx.py, arctic.py, grok.py, nemotron_h_moe.py).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``dbrx``, ``arctic``, ``grok``, ``grok1``, ``nemotron_h_moe``,
``nemotron_h_moe-latent``); here: each fixture fails without each of what sets its architecture apart; the layers'
layouts; a missing tensor or key, the GPU refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny files.
"""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import _cfg, _layers, _model, _moe, _sees_apart, check_info_and_run, check_missing_tensor
from tinymodel import write_tiny_model

from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import arctic
from kvrun.ops.backend import Weight

ARCHS = ("dbrx", "arctic", "grok", "nemotron_h_moe")


def _rope(neox: bool):
    """The rope tables as they are; the layout (pairs or halves) flipped in the config the forward reads."""
    return _cfg(rope_neox=neox)


def _zero(w: Weight) -> Weight:
    return Weight(np.zeros_like(w.data), w.qtype, w.shape)


class _RmsForLayerNorm:
    """A backend whose LayerNorms are RMSNorms (the mean left in): what DBRX's fixture would see without its LayerNorms."""

    def __init__(self, be):
        self._be = be

    def __getattr__(self, name):
        return getattr(self._be, name)

    def layer_norm(self, x, w, b, eps, out):
        self._be.rms_norm(x, w, eps, out)


def test_the_fixture_sees_what_sets_dbrx_apart(tmp_path):
    """The LayerNorms (not RMSNorms), the clipped QKV, the neox rope, the renormalised weights, 4 experts a token."""
    _sees_apart(tmp_path, "dbrx", {
        "LayerNorm": lambda m: setattr(m, "be", _RmsForLayerNorm(m.be)),
        "clamp_kqv": lambda m: setattr(m, "clamp_kqv", 0.0),
        "neox rope": _rope(False),
        "renormalised weights": _moe(norm_weights=False),
        "4 experts a token": _moe(n_used=2),
    })  # fmt: skip


def test_the_fixture_sees_what_sets_arctic_apart(tmp_path, monkeypatch):
    """The experts reading the layer's input through their own norm, the dense FFN beside them, the experts themselves,
    the pair rope, the renormalised weights."""
    moe_add = arctic.moe_add

    def from_the_stream(m):  # (the experts reading what the dense FFN reads: the normed stream after the attention)
        monkeypatch.setattr(arctic, "moe_add", lambda be, moe, xe, x, buf: moe_add(be, moe, buf.get("xn", *xe.shape), x, buf))

    _sees_apart(tmp_path, "arctic", {
        "the layer's input": from_the_stream,
        "ffn_norm_exps": _layers(ffn_norm_exps=lambda L: L.ffn_norm),
        "dense FFN": _layers(w_down=lambda L: _zero(L.w_down)),
        "experts": _moe(weights_scale=0.0),
        "pair rope": _rope(True),
        "renormalised weights": _moe(norm_weights=False),
    })  # fmt: skip


def test_the_fixture_sees_what_sets_grok_apart(tmp_path):
    """Grok-2's stated multipliers (embeddings, scores, logits), the scores' and the logits' soft caps, the sandwich norms'
    weights, the dense FFN beside the experts, the GELU experts, the renormalised weights, the neox rope."""
    _sees_apart(tmp_path, "grok", {
        "embedding scale": lambda m: setattr(m, "embd_scale", 1.0),
        "attention output scale": lambda m: setattr(m, "attn_out_scale", 0.25),  # (1/sqrt(head_dim))
        "scores' soft cap": lambda m: setattr(m, "attn_softcap", 1e6),
        "logit scale": lambda m: setattr(m, "logit_scale", 1.0),
        "final soft cap": _cfg(final_logit_softcap=0.0),
        "attn_output_norm": _layers(attn_out_norm=lambda L: L.ffn_norm),
        "layer_output_norm": _layers(ffn_post_norm=lambda L: L.ffn_norm),
        "dense FFN": _layers(w_up=None),
        "GELU experts": _moe(act="silu"),
        "renormalised weights": _moe(norm_weights=False),
        "neox rope": _rope(False),
    }, tol=2e-3)  # fmt: skip


def test_the_fixture_sees_grok1s_defaults(tmp_path):
    """A file that states no multipliers gets llama.cpp's Grok-1 ones: embeddings times 78.4, scores times 0.088
    (capped at 30), logits times 0.577; its FFN's after-norm under the older name (post_ffw_norm)."""
    _sees_apart(tmp_path, "grok1", {
        "embedding scale": lambda m: setattr(m, "embd_scale", 1.0),
        "attention output scale": lambda m: setattr(m, "attn_out_scale", 0.25),
        "logit scale": lambda m: setattr(m, "logit_scale", 1.0),
        "post_ffw_norm": _layers(ffn_post_norm=lambda L: L.ffn_norm),
    }, tol=2e-3)  # fmt: skip


@pytest.mark.parametrize("name", ["nemotron_h_moe", "nemotron_h_moe-latent"])
def test_the_fixture_sees_what_sets_nemotron_h_moe_apart(tmp_path, name):
    """The sigmoid router, exp_probs_b, the renormalised weights, their scale (2.5), the shared expert."""
    _sees_apart(tmp_path, name, {
        "sigmoid router": _moe(gating="softmax"),
        "exp_probs_b": _moe(bias=None),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _layers(shexp_up=None),
    })  # fmt: skip


def test_the_latent_experts_router_reads_the_full_width(tmp_path):
    """Nemotron 3 Super's router reads the layer's normed input, not the latent the experts work in (and so the latent
    variant needs its own widths: a router over the latent would not even fit)."""
    m = _model(tmp_path, "nemotron_h_moe", variant="latent")
    moes = [L.moe for L in m.layers if L.moe is not None]
    assert len(moes) == 2 and all(moe.up.shape == (8 * 32, 32) and moe.router.shape == (8, 64) for moe in moes)
    assert all(L.latent_down.shape == (32, 64) and L.latent_up.shape == (64, 32) for L in m.layers if L.moe is not None)


def test_the_layers(tmp_path):
    m = _model(tmp_path, "dbrx")
    assert m.clamp_kqv == pytest.approx(0.6) and m.cfg.rope_neox
    assert all(L.moe.n_expert == 16 and L.moe.n_used == 4 and L.moe.norm_weights and L.attn_norm_b is None for L in m.layers)
    m = _model(tmp_path, "arctic")
    assert not m.cfg.rope_neox and all(L.w_gate.shape == (64, 64) and L.moe.up.shape == (8 * 32, 64) for L in m.layers)
    m = _model(tmp_path, "grok")
    assert (m.embd_scale, m.logit_scale, m.attn_out_scale, m.attn_softcap, m.cfg.final_logit_softcap) == (2.0, 0.5, pytest.approx(0.3), 4.0, 3.0)
    assert all(L.w_up is not None and L.moe.act == "gelu" and L.moe.up.shape == (8 * 32, 64) for L in m.layers)
    assert all(s.scale == pytest.approx(0.3) and s.softcap == 4.0 for s in m.layer_specs())
    m = _model(tmp_path, "grok", variant="grok1")
    assert (m.embd_scale, m.logit_scale, m.attn_softcap, m.cfg.final_logit_softcap) == (pytest.approx(78.38367), pytest.approx(0.57735), 30.0, 0.0)
    assert m.attn_out_scale == pytest.approx(0.0883883) and m.cfg.yarn_beta_fast == 8.0 and all(L.w_up is None for L in m.layers)
    m = _model(tmp_path, "nemotron_h_moe")
    assert [L.ssm is not None for L in m.layers] == [True, False, False, False, True]
    assert [L.moe is not None for L in m.layers] == [False, True, False, True, False] and m.layers[2].wq is not None
    moe = m.layers[1].moe
    assert moe.gate is None and moe.act == "relu_sqr" and moe.gating == "sigmoid" and moe.norm_weights and moe.weights_scale == 2.5
    assert len(m.layer_specs()) == 3  # (the Mamba-2 layers' states and the attention layer's K/V; the MoE layers keep none)


@pytest.mark.parametrize("arch,tensor,kw", [
    ("dbrx", "blk.0.attn_qkv.weight", {}), ("dbrx", "blk.1.attn_output_norm.weight", {}), ("dbrx", "blk.0.ffn_up_exps.weight", {}),
    ("dbrx", "output.weight", {}), ("arctic", "blk.0.ffn_norm_exps.weight", {}), ("arctic", "blk.1.ffn_gate.weight", {}),
    ("arctic", "blk.0.ffn_gate_inp.weight", {}), ("grok", "blk.0.attn_output_norm.weight", {}),
    ("grok", "blk.1.layer_output_norm.weight", {}), ("grok", "blk.0.ffn_down_exps.weight", {}),
    ("nemotron_h_moe", "blk.1.exp_probs_b.bias", {}),
    ("nemotron_h_moe", "blk.3.ffn_up_shexp.weight", {}), ("nemotron_h_moe", "blk.1.ffn_down_exps.weight", {}),
    ("nemotron_h_moe", "blk.3.ffn_latent_up.weight", {"variant": "latent"}),
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, arch, tensor, kw):
    check_missing_tensor(tmp_path, arch, tensor, **kw)


def test_a_missing_post_ffw_norm_names_both_names(tmp_path):
    """An older Grok file without its FFN's after-norm: the error names the current name and the older one."""
    g = GGUFFile(write_tiny_model(tmp_path / "grok.gguf", "grok", variant="grok1"))
    del g.tensors["blk.1.post_ffw_norm.weight"]
    with pytest.raises(GGUFError, match="'blk.1.layer_output_norm.weight' is missing .*'blk.1.post_ffw_norm.weight'") as e:
        _model(tmp_path, "grok", g)
    assert "\n" not in str(e.value)


def test_a_missing_clamp_kqv_is_one_line(tmp_path):
    """llama.cpp requires DBRX's clip_qkv."""
    g = GGUFFile(write_tiny_model(tmp_path / "dbrx.gguf", "dbrx"))
    del g.metadata["dbrx.attention.clamp_kqv"]
    with pytest.raises(GGUFError, match="dbrx.attention.clamp_kqv is missing") as e:
        _model(tmp_path, "dbrx", g)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch,key,value", [("grok", "rope.scaling.yarn_ext_factor", 0.5), ("grok", "rope.scaling.yarn_attn_factor", 2.0),
                                             ("nemotron_h_moe", "nextn_predict_layers", 1)])  # fmt: skip
def test_what_is_not_supported_yet_is_one_line(tmp_path, arch, key, value):
    """YaRN's extrapolation and attention factors away from their defaults (Grok-2 states 1.0); Nemotron-H MoE's MTP blocks."""
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    g.metadata[f"{arch}.{key}"] = value
    with pytest.raises(UnsupportedModelError, match=key.split(".")[-1]) as e:
        _model(tmp_path, arch, g)
    assert "\n" not in str(e.value)


# (all four run on the GPU: Arctic's tests/test_gpu_moe.py, DBRX's and Grok's test_gpu_moe2.py, Nemotron 3 Nano's
# test_gpu_refusals2.py)


@pytest.mark.parametrize("arch", ARCHS)
def test_info_and_run(tmp_path, arch):
    check_info_and_run(tmp_path, arch)
