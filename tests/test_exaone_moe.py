"""EXAONE MoE, K-EXAONE (models/exaone_moe.py).

The logits are llama.cpp's (the FIXTURE_MODELS test ``exaone-moe``); here: the fixture fails without each of what sets
it apart; a missing tensor or key and the GPU refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.ops import get_backend


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]


def _moe(**fields):
    return lambda m: [setattr(L.moe, f, v) for L in m.layers if L.moe is not None for f, v in fields.items()]


def _no_rope_factors(m):
    m.rope_cos, m.rope_sin = make_rope(m.cfg, N_CTX, m.cfg.rope_theta)


def test_the_fixture_sees_what_sets_exaone_moe_apart(tmp_path):
    """The per-head QK norm, the global layer's NoPE, the windows, Llama 3's rope factors, exp_probs_b, the sigmoid router,
    the weights' renormalisation and scale, the shared expert: each taken away costs whole logits against llama.cpp's."""
    drops = {
        "QK norm": _layers(q_norm=lambda L: np.ones_like(L.q_norm) * 2.0),
        "NoPE layer": _layers(rope=True),
        "windows": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, sliding_window=0)),
        "rope factors": _no_rope_factors,
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
    }
    assert _fixture_error(tmp_path, "exaone-moe", lambda m: None) < 1e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "exaone-moe", drop) > 1e-2, what  # (10x the tolerance)


def test_the_layers(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "e.gguf", "exaone-moe"))
    m = model_class("exaone-moe")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert [L.rope for L in m.layers] == [True, True, True, False]
    assert [s.window for s in m.layer_specs()] == [8, 8, 8, 0]
    assert [L.moe is None for L in m.layers] == [True, False, False, False] and all(L.attn_norm is not None for L in m.layers)
    assert m.layers[1].moe.gating == "sigmoid" and m.layers[1].moe.norm_weights and m.layers[1].moe.weights_scale == 2.5


@pytest.mark.parametrize("tensor", ["blk.0.attn_q_norm.weight", "blk.1.exp_probs_b.bias", "blk.2.ffn_up_shexp.weight",
                                    "blk.3.ffn_gate_exps.weight", "blk.0.ffn_gate.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "e.gguf", "exaone-moe"))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class("exaone-moe")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_a_missing_gating_func_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "e.gguf", "exaone-moe"))
    del g.metadata["exaone-moe.expert_gating_func"]
    with pytest.raises(GGUFError, match="exaone-moe.expert_gating_func is missing") as e:
        model_class("exaone-moe")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "e.gguf", "exaone-moe"))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "exaone-moe" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
