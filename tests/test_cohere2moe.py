"""Cohere's MoE Command, ``cohere2moe`` (models/cohere2moe.py): Command R7B's parallel block with experts.

The logits are llama.cpp's (tests/fixtures/arch_cohere2moe.npz and arch_cohere2moe-rms.npz, from ``tools/
make_arch_fixtures.py``; test_models.py's FIXTURE_MODELS test runs both, prefill and decode); here: the main fixture held
in both chunkings, and failed without each of what sets the architecture apart; a missing tensor or key in one line;
``kvrun info`` and ``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import pytest
from arch_checks import _cfg, _moe, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor, check_refused
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.ops import get_backend

NAME = "cohere2moe"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K)
TOLERANCE = 1e-3


def _layer(il, **fields):
    return lambda m: [setattr(m.layers[il], f, v) for f, v in fields.items()]


def _model(tmp_path, name=NAME):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[name]))
    return g, model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)  # (measured: 2.3e-4, both chunkings; the "rms" variant 1.7e-4)


def test_the_fixture_sees_what_sets_cohere2moe_apart(tmp_path, monkeypatch):
    """The LayerNorms (RMSNorms instead), the file's pattern (the unstated one's first of 4 alone global instead), the
    leading dense layer's rope though global, the NoPE global layer, rope over pairs, the one base (the window layers'
    unused one instead), the windows, the sigmoid router, the weights' renormalisation and scale, the shared expert's
    average, the logit scale, the output head of its own: each taken away costs whole logits against llama.cpp's."""
    import kvrun.models.cohere2moe as cohere2moe

    def swa_base(m):  # (the window layers at rope.freq_base_swa, which llama.cpp's graph does not read)
        cos, sin = make_rope(m.cfg, N_CTX, m.cfg.rope_theta_swa)
        plain = m.qk_rope
        m.qk_rope = lambda il, L, q3, k3, pos: (m.be.rope_qk(q3, k3, pos, cos, sin, False) if m.cfg.is_swa(il)
                                                else plain(il, L, q3, k3, pos))  # fmt: skip

    drops = {
        "LayerNorms": lambda m: setattr(m, "rms", True),
        "the file's pattern": _cfg(swa_layers=(False, True, True, True)),
        "the leading dense layer's rope": _layer(0, rope=False),
        "NoPE global layer": _layer(3, rope=True),
        "rope pairs": _cfg(rope_neox=True),
        "one rope base": swa_base,
        "windows": _cfg(sliding_window=0),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
        "logit scale": lambda m: setattr(m, "logit_multiplier", lambda: 1.0),
        "output head": lambda m: setattr(m, "output", m.tok_embd),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what
    monkeypatch.setattr(cohere2moe, "SHARED_AVERAGE", 1.0)
    assert _fixture_error(tmp_path, NAME, lambda m: None) > 10 * TOLERANCE, "the shared expert's average"


def test_the_layers(tmp_path):
    _, m = _model(tmp_path)
    assert m.cfg.n_layer == 4  # (block_count 5: the MTP block after the trunk is not run)
    assert [L.rope for L in m.layers] == [True, True, True, False]
    assert [s.window for s in m.layer_specs()] == [0, 8, 8, 0]
    assert [L.moe is None for L in m.layers] == [True, False, False, False]
    moe = m.layers[1].moe
    assert moe.gating == "sigmoid" and moe.norm_weights and moe.weights_scale == 2.5 and moe.shared is not None
    assert not m.rms and m.output is not m.tok_embd and m.logit_multiplier() == 0.25
    _, r = _model(tmp_path, "cohere2moe-rms")
    assert [s.window for s in r.layer_specs()] == [0, 8, 8, 8] and [L.rope for L in r.layers] == [True] * 4
    moe = r.layers[1].moe
    assert moe.gating == "softmax" and not moe.norm_weights and moe.shared is None and r.rms and r.output is r.tok_embd


@pytest.mark.parametrize("tensor", ["output_norm.weight", "blk.0.ffn_up.weight", "blk.1.ffn_gate_inp.weight",
                                    "blk.2.ffn_down_shexp.weight", "blk.3.attn_k.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["attention.sliding_window", "logit_scale", "leading_dense_block_count",
                                 "expert_feed_forward_length", "attention.layer_norm_epsilon", "expert_count"])  # fmt: skip
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key, "states 0 experts" if key == "expert_count" else f"{NAME}.{key}")


def test_fused_experts_are_refused_in_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.tensors["blk.2.ffn_gate_up_exps.weight"] = g.tensors["blk.2.ffn_up_exps.weight"]
    check_refused(g, NAME, UnsupportedModelError, "ffn_gate_up_exps")


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (Command R7B's kernels, moe.py's routing; the LayerNorms)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
