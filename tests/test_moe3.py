"""MiniMax-M2, MiMo-V2-Flash, Step-3.5-Flash, Mistral Small 4 (models/minimax_m2.py, mimo2.py, step35.py, mistral4.py).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``minimax-m2``, ``mimo2``, ``step35``, ``mistral4``); here: each
fixture fails without each of what sets its architecture apart; the per-layer layouts; a missing tensor or key, the
GPU and what is not supported yet refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny files.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import _cfg, _layers, _model, _moe, _sees_apart, check_info_and_run, check_missing_tensor
from test_models import N_CTX
from tinymodel import write_tiny_model

from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.common import make_rope
from kvrun.models.deepseek2 import Deepseek2Model

ARCHS = ("minimax-m2", "mimo2", "step35", "mistral4")


def _rope(attr: str = "rope", **fields):
    """The model's rope tables (``attr`` "rope": the global ones, "rope_local": the window layers') made again with
    ``fields`` of its config changed, no rope factors."""

    def drop(m):
        t = make_rope(dataclasses.replace(m.cfg, **{k: v for k, v in fields.items() if k != "theta"}), N_CTX, fields.get("theta", m.cfg.rope_theta))
        if attr == "rope":
            m.rope_cos, m.rope_sin = t
        else:
            setattr(m, attr, t)

    return drop


def test_the_fixture_sees_what_sets_minimax_m2_apart(tmp_path):
    """The QK-norm over the whole projection (not head by head), the partial neox rope, exp_probs_b, the sigmoid router,
    the renormalised weights: each taken away costs whole logits against llama.cpp's."""
    _sees_apart(tmp_path, "minimax-m2", {
        "QK norm over all heads": _layers(qk_norm_full=False, q_norm=lambda L: L.q_norm[:16], k_norm=lambda L: L.k_norm[:16]),
        "partial rope": _rope(rope_dim=16),
        "neox rope": _cfg(rope_neox=False),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
    })  # fmt: skip


def test_the_fixture_sees_what_sets_mimo2_apart(tmp_path):
    """The sinks, the windows, the window layers' rope base, the partial rope, the value scale, exp_probs_b, the
    sigmoid router, the renormalised weights."""

    def no_local_base(m):
        m.rope_local = (m.rope_cos, m.rope_sin)

    _sees_apart(tmp_path, "mimo2", {
        "sinks": _layers(sinks=None),
        "windows": _cfg(sliding_window=0),
        "window rope base": no_local_base,
        "partial rope": _rope(rope_dim=24),
        "value scale": lambda m: setattr(m, "value_scale", 1.0),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
    })  # fmt: skip


def test_the_fixture_sees_what_sets_step35_apart(tmp_path):
    """The per-head attention gate, the per-head QK norm, the global layers' half rope and their rope factors, the window
    layers' own rope base, the windows, exp_probs_b, the sigmoid router, the renormalised weights, their scale, the shared
    expert, the clamped SwiGLUs (the routed experts', the shared expert's and dense FFN's)."""

    def full_rope(m):  # (the global layers rotating all 16 dimensions, with all 8 factors)
        f = np.geomspace(1.0, 8.0, 8).astype(np.float32)
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=16), N_CTX, m.cfg.rope_theta, f)

    _sees_apart(tmp_path, "step35", {
        "attention gate": _layers(attn_gate=None),
        "QK norm": _layers(q_norm=None, k_norm=None),
        "half rope": full_rope,
        "rope factors": _rope(),
        "window rope base": _rope("rope_local", rope_dim=16),
        "windows": _cfg(sliding_window=0),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
        "experts' SwiGLU clamp": _moe(swiglu_limit=0.0),
        "shared and dense SwiGLU clamp": lambda m: [
            setattr(L.moe.shared if L.moe is not None else L, "swiglu_limit", 0.0) for L in m.layers
        ],
    })  # fmt: skip


def test_the_fixture_sees_what_sets_mistral4_apart(tmp_path):
    """Mistral 4 is deepseek2's graph: YaRN's magnitude on the scores, the softmax router, the renormalised weights, the
    shared expert each matter."""
    _sees_apart(tmp_path, "mistral4", {
        "YaRN magnitude": lambda m: setattr(m, "mscale", 1.0),
        "softmax router": _moe(gating="sigmoid"),
        "renormalised weights": _moe(norm_weights=False),
        "shared expert": _moe(shared=None),
    })  # fmt: skip


def test_the_layers(tmp_path):
    m = _model(tmp_path, "minimax-m2")
    assert all(L.qk_norm_full and L.moe.gating == "sigmoid" and L.moe.norm_weights and L.moe.bias is not None for L in m.layers)
    assert m.rope_cos.shape[1] == 4 and m.cfg.rope_neox  # (8 of 16 dimensions rotate)
    m = _model(tmp_path, "mimo2")
    specs = m.layer_specs()
    assert [s.n_head_kv for s in specs] == [2, 4, 4, 2] and [s.window for s in specs] == [0, 8, 8, 0]
    assert [len(s.sink_logits) for s in specs] == [0, 4, 4, 0] and {(s.head_dim, s.head_dim_v) for s in specs} == {(24, 16)}
    assert [L.moe is None for L in m.layers] == [True, False, False, False] and m.value_scale == pytest.approx(0.707)
    m = _model(tmp_path, "step35")
    specs = m.layer_specs()
    assert [s.n_head for s in specs] == [4, 6, 6, 6] and [s.window for s in specs] == [0, 8, 8, 8]
    assert m.rope_cos.shape[1] == 4 and m.rope_local[0].shape[1] == 8  # (the global layer rotates half of its head)
    assert [L.moe is None for L in m.layers] == [True, False, False, False] and m.layers[1].moe.weights_scale == 2.0
    assert [L.moe.swiglu_limit for L in m.layers[1:]] == [0.0, 0.5, 0.5] and m.layers[0].swiglu_limit == 0.5
    assert [L.moe.shared.swiglu_limit for L in m.layers[1:]] == [0.0, 0.0, 0.5]
    m = _model(tmp_path, "mistral4")
    assert isinstance(m, Deepseek2Model) and all(L.moe is not None and L.moe.shared is not None for L in m.layers)


@pytest.mark.parametrize("arch,tensor", [
    ("minimax-m2", "blk.0.attn_q_norm.weight"), ("minimax-m2", "blk.1.exp_probs_b.bias"), ("minimax-m2", "blk.0.ffn_gate_inp.weight"),
    ("minimax-m2", "output.weight"), ("mimo2", "blk.2.attn_k.weight"), ("mimo2", "blk.0.ffn_gate.weight"),
    ("mimo2", "blk.1.ffn_up_exps.weight"), ("mimo2", "output.weight"), ("step35", "blk.1.ffn_gate_shexp.weight"),
    ("step35", "blk.3.attn_output.weight"), ("step35", "output.weight"), ("mistral4", "blk.0.attn_k_b.weight"),
    ("mistral4", "blk.1.ffn_up_shexp.weight"),
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, arch, tensor):
    check_missing_tensor(tmp_path, arch, tensor)


@pytest.mark.parametrize("arch,key", [("minimax-m2", "expert_feed_forward_length"), ("mimo2", "attention.sliding_window_pattern"),
                                      ("step35", "attention.sliding_window")])  # fmt: skip
def test_a_missing_key_is_one_line(tmp_path, arch, key):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    del g.metadata[f"{arch}.{key}"]
    with pytest.raises(GGUFError, match=f"{arch}.{key} is missing") as e:
        _model(tmp_path, arch, g)
    assert "\n" not in str(e.value)


def test_what_is_not_supported_yet_is_one_line(tmp_path):
    """Mistral 4 files with fused gate-and-up experts."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", "mistral4"))
    g.tensors["blk.0.ffn_gate_up_exps.weight"] = g.tensors["blk.0.ffn_gate_exps.weight"]
    with pytest.raises(UnsupportedModelError, match="ffn_gate_up_exps") as e:
        _model(tmp_path, "mistral4", g)
    assert "\n" not in str(e.value)


# (all of these run on the GPU: MiniMax-M2's and MiMo-V2's tests/test_gpu_moe.py, Mistral 4's test_gpu_mla.py, Step-3.5's
# test_gpu_moe2.py)


@pytest.mark.parametrize("arch", ARCHS)
def test_info_and_run(tmp_path, arch):
    check_info_and_run(tmp_path, arch)
