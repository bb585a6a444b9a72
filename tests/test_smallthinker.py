"""SmallThinker (``smallthinker``): its fixtures against llama.cpp fail without what sets it apart, its window layers and
NoPE layers fall where llama.cpp puts them, and a file missing a tensor or key it needs is refused in one line.
(test_models.test_forward_matches_llamacpp holds smallthinker, smallthinker-swa, smallthinker-swa-pattern to llama.cpp.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_smallthinker import write_tiny_smallthinker
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.smallthinker import SmallThinkerModel
from kvrun.ops import get_backend


def _moe(field, value):
    return lambda m: [setattr(L.moe, field, value) for L in m.layers]


def _layers(field, value):
    return lambda m: [setattr(L, field, value(il) if callable(value) else value) for il, L in enumerate(m.layers)]


def _neox(m):
    m.cfg = dataclasses.replace(m.cfg, rope_neox=False)


def test_smallthinker_fixtures_see_what_sets_it_apart(tmp_path):
    """Each fixture fails with the router reading the FFN's normed input (not the layer's input), with SwiGLU experts
    for ReGLU ones, with the other gating function, without renormalised weights, with normal rope for neox; the
    windowed ones with every layer rotating (not NoPE every 4th), the 21B's layout with layers 0 and 4 NoPE."""
    other = {"sigmoid": "softmax", "softmax": "sigmoid"}
    common = (_moe("router_in", None), _moe("act", "silu"), _moe("norm_weights", False), _neox,
              lambda m: [setattr(L.moe, "gating", other[L.moe.gating]) for L in m.layers])  # fmt: skip
    for name, rope_drop in (("smallthinker", _layers("rope", lambda il: il % 4 != 0)), ("smallthinker-swa", _layers("rope", True))):
        for drop in (*common, rope_drop):
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, drop)


def test_smallthinker_layouts(tmp_path):
    """The 21B's layout: no window, every layer rotating, a sigmoid router, an output head of its own.  The 4B's: a
    window of 4096 (the file's value whatever it is: llama.cpp's) on layers 1-3, layers 0 and 4 global and NoPE, a
    softmax router, the head tied.  sliding_window_pattern 2: windows on the odd layers, rotating with
    rope.freq_base_swa, layer 2 global and rotating with the global base."""
    cfg, m = _build(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS["smallthinker"]))
    assert cfg.sliding_window == 0 and all(L.rope and not L.swa for L in m.layers) and {s.window for s in m.layer_specs()} == {0}
    assert all(L.moe.gating == "sigmoid" and L.moe.act == "relu" and L.moe.norm_weights for L in m.layers) and m.output is not m.tok_embd
    cfg, m = _build(write_tiny_model(tmp_path / "b.gguf", **FIXTURE_MODELS["smallthinker-swa"]))
    assert [s.window for s in m.layer_specs()] == [0, 4096, 4096, 4096, 0] and [L.rope for L in m.layers] == [False, True, True, True, False]
    assert all(L.moe.gating == "softmax" for L in m.layers) and m.output is m.tok_embd and m.rope_swa is None
    cfg, m = _build(write_tiny_model(tmp_path / "c.gguf", **FIXTURE_MODELS["smallthinker-swa-pattern"]))
    assert [s.window for s in m.layer_specs()] == [0, 4096, 0, 4096, 0] and [L.rope for L in m.layers] == [False, True, True, True, False]
    assert (cfg.rope_theta, cfg.rope_theta_swa) == (10000.0, 1000.0) and m.rope_swa is not None


def test_smallthinker_window_layers_rotate_with_their_own_base(tmp_path):
    """sliding_window_pattern 2: without the window layers' rope base, or with the global layer last in each pair
    (Gemma's pattern, not SmallThinker's), the fixture fails."""

    def no_swa_base(m):
        m.rope_swa = None

    for drop in (no_swa_base, _layers("swa", lambda il: il % 2 == 0)):
        assert _fixture_error(tmp_path, "smallthinker-swa-pattern", drop) > 3e-2, drop


@pytest.mark.parametrize("missing", ["blk.1.ffn_gate_inp.weight", "blk.2.ffn_up_exps.weight", "blk.0.attn_k.weight", "blk.4.ffn_norm.weight"])
def test_a_missing_tensor_is_named_in_one_line(tmp_path, missing):
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(write_tiny_smallthinker(tmp_path / "m.gguf", drop=(missing,)))
    assert "\n" not in str(e.value)


def test_a_missing_gating_func_is_named(tmp_path):
    """llama.cpp has no gating to run where the file states none: refused, naming the key (the GPU runs the model:
    tests/test_gpu_moe2.py)."""
    g = GGUFFile(write_tiny_model(tmp_path / "s.gguf", **FIXTURE_MODELS["smallthinker"]))
    cfg = load_config(g)
    real = g.arch_get
    g.arch_get = lambda key, default=None: None if key == "expert_gating_func" else real(key, default)
    with pytest.raises(GGUFError, match="smallthinker.expert_gating_func is missing"):
        SmallThinkerModel(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)


def test_quantized_relu_experts_run_relu_in_decode(tmp_path):
    """Q8_0 experts: one token's ReGLU experts (decode, where the one-token expert kernel, which knows SiLU, would
    otherwise run) give what the same token gives among others (prefill's product-by-product path)."""
    from kvrun.models.common import Buffers
    from kvrun.models.moe import moe_add

    _, m = _build(write_tiny_model(tmp_path / "q.gguf", "smallthinker", qtype=Q.Q8_0))
    moe = dataclasses.replace(m.layers[0].moe, router_in=None)
    xn = np.random.default_rng(1).standard_normal((2, m.cfg.n_embd)).astype(np.float32)
    xn[1] = xn[0]
    one, two = np.zeros((1, m.cfg.n_embd), np.float32), np.zeros((2, m.cfg.n_embd), np.float32)
    moe_add(m.be, moe, xn[:1].copy(), one, Buffers(4))
    moe_add(m.be, moe, xn, two, Buffers(4))
    assert np.abs(one[0] - two[0]).max() < 1e-5 * np.abs(two[0]).max()
