"""AFMoE, Arcee's Trinity (models/afmoe.py).

The logits are llama.cpp's (the FIXTURE_MODELS test ``afmoe``); here: the fixture fails without each of what sets
AFMoE apart; a missing tensor and the GPU refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny file.
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
from kvrun.ops import get_backend
from kvrun.ops.backend import Weight


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]


def _moe(**fields):
    return lambda m: [setattr(L.moe, f, v) for L in m.layers if L.moe is not None for f, v in fields.items()]


def test_the_fixture_sees_what_sets_afmoe_apart(tmp_path, monkeypatch):
    """The embeddings' sqrt(n_embd), the post-norms, the attention gate, the per-head QK norm, the NoPE fourth layer,
    the windows, exp_probs_b, the sigmoid router, the weights' renormalisation and scale, the shared expert: each taken
    away costs whole logits against llama.cpp's."""
    import kvrun.models.afmoe as afmoe

    ones = np.ones(64, np.float32)
    drops = {
        "embedding scale": lambda m: setattr(m, "emb_scale", 1.0),
        "post norms": _layers(attn_post_norm=lambda L: ones, ffn_post_norm=lambda L: ones),
        "QK norm": _layers(q_norm=lambda L: np.ones_like(L.q_norm) * 2.0),
        "NoPE layer": _layers(rope=True),
        "windows": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, sliding_window=0)),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
    }
    assert _fixture_error(tmp_path, "afmoe", lambda m: None) < 1e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "afmoe", drop) > 1e-2, what  # (10x the tolerance)
    monkeypatch.setattr(afmoe, "_sigmoid", lambda x: np.float32(0.5))
    assert _fixture_error(tmp_path, "afmoe", lambda m: None) > 1e-2, "attention gate"


def test_the_layers(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "afmoe"))
    cfg = load_config(g)
    m = model_class("afmoe")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert [L.rope for L in m.layers] == [True, True, True, False]
    assert [s.window for s in m.layer_specs()] == [8, 8, 8, 0]
    assert [L.moe is None for L in m.layers] == [True, False, False, False]
    assert m.layers[1].moe.gating == "sigmoid" and m.layers[1].moe.norm_weights and m.layers[1].moe.weights_scale == 2.5
    assert m.emb_scale == 8.0 and isinstance(m.layers[0].attn_gate, Weight)


@pytest.mark.parametrize("tensor", ["blk.0.attn_gate.weight", "blk.1.post_attention_norm.weight", "blk.2.post_ffw_norm.weight",
                                    "blk.3.attn_q_norm.weight", "blk.1.exp_probs_b.bias", "blk.2.ffn_up_shexp.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "afmoe"))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class("afmoe")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


# (the GPU runs AFMoE: tests/test_gpu_moe2.py)


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "a.gguf", "afmoe"))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "afmoe" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
