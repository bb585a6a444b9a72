"""MiniMax-Text-01 / MiniMax-M1, ``minimax-01`` (models/minimax_01.py): lightning attention in Mamba-2's scan.

The logits are llama.cpp's (tests/fixtures/arch_minimax-01.npz and arch_minimax-01-array.npz, from ``tools/
make_arch_fixtures.py``; test_models.py's FIXTURE_MODELS test runs both, prefill and decode); here: the main fixture held
in both chunkings, and failed without each of what sets the architecture apart; the layers as the file says; the state
going back; a missing tensor or key in one line; ``kvrun info`` and ``kvrun run`` on the tiny file; the GPU (emulator
where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
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
from kvrun.ops.backend import Weight

NAME = "minimax-01"
#: the largest relative logit error measured against llama.cpp 0.3.36 is 5.0e-5 (both chunkings; the "array" variant
#: 3.3e-5): the softmax layers' float16 K, the lightning sums in another order (llama.cpp's block-wise form)
TOLERANCE = 5e-4


def _lightning(**fields):
    return lambda m: [setattr(L.la, f, v(L.la) if callable(v) else v) for L in m.layers if hasattr(L, "la") for f, v in fields.items()]


def _swap_q_k(la):  # in_proj's rows v, k, q (then zeros) as v, q, k
    d = la.norm.shape[0]
    a = la.in_proj.data
    return Weight(np.concatenate([a[:d], a[2 * d : 3 * d], a[d : 2 * d], a[3 * d :]]), la.in_proj.qtype, la.in_proj.shape)


def _model(tmp_path, name=NAME):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[name]))
    return model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)


def test_the_fixture_sees_what_sets_minimax_01_apart(tmp_path, monkeypatch):
    """The residual scale, the decay, its per-layer scale, q and k in their places, the output gate, the norm's weights,
    the partial rope and its halves, the softmax router and its renormalised weights, the output head of its own: each
    taken away costs whole logits against llama.cpp's."""
    import kvrun.models.minimax_01 as minimax_01
    from kvrun.models.minimax_01 import alibi_slopes

    def full_rope(m):
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=m.cfg.head_dim), N_CTX, m.cfg.rope_theta)

    drops = {
        "residual scale": _cfg(residual_scale=1.0),
        "decay": _lightning(A=lambda la: np.zeros_like(la.A)),
        "the layer's decay scale": _lightning(A=-alibi_slopes(4)),
        "q and k in their places": _lightning(in_proj=_swap_q_k),
        "the norm's weights": _lightning(norm=lambda la: np.ones_like(la.norm)),
        "partial rope": full_rope,
        "neox rope": _cfg(rope_neox=False),
        "softmax router": _moe(gating="sigmoid"),
        "renormalised weights": _moe(norm_weights=False),
        "output head": lambda m: setattr(m, "output", m.tok_embd),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what
    monkeypatch.setattr(minimax_01, "_sigmoid", lambda x: np.float32(0.5))
    assert _fixture_error(tmp_path, NAME, lambda m: None) > 10 * TOLERANCE, "output gate"


def test_the_layers(tmp_path):
    from kvrun.models.minimax_01 import LightningLayer, alibi_slopes

    m = _model(tmp_path)
    assert [isinstance(L, LightningLayer) for L in m.layers] == [True, False, True, False]  # (full_attention_interval 2)
    np.testing.assert_array_equal(alibi_slopes(4), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])  # (ALiBi's: 2^(-8/4) to powers 1..4)
    np.testing.assert_allclose(m.layers[0].la.A, -alibi_slopes(4) * (1 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(m.layers[2].la.A, -alibi_slopes(4) * (1 / 3 + 1e-5), rtol=1e-6)
    assert m.layers[0].la.in_proj.shape == (3 * 64 + 4, 64)  # (v, k, q, then the scan's dt columns)
    assert [s.ssm for s in m.layer_specs()] == [(1, 4, 16, 4, 16), (), (1, 4, 16, 4, 16), ()]
    assert m.cfg.rope_dim == 8 and m.cfg.residual_scale == pytest.approx(1.8) and m.output is not m.tok_embd
    moe = m.layers[1].moe
    assert moe.gating == "softmax" and moe.norm_weights and moe.bias is None and moe.shared is None and moe.weights_scale == 1.0
    r = _model(tmp_path, "minimax-01-array")
    assert [isinstance(L, LightningLayer) for L in r.layers] == [True, True, False, True] and r.output is r.tok_embd


def test_the_state_goes_back(tmp_path):
    """40 positions, then back to 36 (the state's copy at 32, the kept inputs fed again) and the last 4 again: the same
    logits as the first time."""
    from kvrun.runtime.engine import Engine

    eng = Engine(write_tiny_model(tmp_path / "m.gguf", NAME), device="cpu", n_ctx=N_CTX, n_batch=N_BATCH)
    ids = [int(t) for t in np.random.default_rng(2).integers(0, 200, 40)]
    cache = eng.new_cache()
    first = eng.eval(cache, ids, logits_all=True)
    assert cache.truncate(36) == 36
    again = eng.eval(cache, ids[36:], logits_all=True)
    np.testing.assert_allclose(again, first[36:], rtol=0, atol=1e-4 * np.abs(first).max())


@pytest.mark.parametrize("tensor", ["blk.0.attn_qkv.weight", "blk.0.attn_gate.weight", "blk.2.attn_norm_2.weight",
                                    "blk.1.attn_k.weight", "blk.3.ffn_gate_inp.weight", "blk.2.ffn_down_exps.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key,says", [("residual_scale", "minimax-01.residual_scale"), ("expert_count", "states 0 experts")])
def test_a_missing_key_is_one_line(tmp_path, key, says):
    check_missing_key(tmp_path, NAME, key, says)


def test_ungated_experts_are_refused_in_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    del g.tensors["blk.1.ffn_gate_exps.weight"]
    check_refused(g, NAME, UnsupportedModelError, "ffn_gate_exps")


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits, the lightning state in the GPU's Mamba-2 cache; then both back 5
    positions and fed on alike."""
    from gpu_checks import check_going_back, check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = write_tiny_model(tmp_path / "m.gguf", NAME)
    gpu, cb = check_prefill_and_replayed_decode(path, capsys=capsys, steps=(5, 9, 14))
    assert [type(layer).__name__ == "GPUSSMLayerCache" for layer in cb.layers] == [True, False, True, False]
    cpu = Engine(path, device="cpu", n_ctx=64, n_batch=16)
    ca = cpu.new_cache()
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    cpu.eval(ca, ids + [5, 9, 14])
    check_going_back(cpu, ca, gpu, cb, 5, np.random.default_rng(4), n_steps=2)
