"""Poolside's Laguna (models/laguna.py): a softplus attention gate, per-layer heads and rope, sigmoid-routed experts.

The logits are llama.cpp's (tests/fixtures/arch_laguna.npz, from ``tools/make_arch_fixtures.py laguna``; test_models.py's
FIXTURE_MODELS test runs it too); here: the fixture held in both chunkings, and failed without each of what sets Laguna
apart; the layers as the file lays them out; a missing tensor or key and a gate of neither width refused in one line;
``kvrun info`` and ``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import (_cfg, _layers, _moe, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor,
                         check_refused)  # fmt: skip
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.ops import get_backend
from kvrun.ops.cpu.backend import CPUBackend

NAME = "laguna"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K)
TOLERANCE = 1e-3


def _rope(local: bool, theta: float, **fields):
    """The global layers' rope tables (``local``: the window layers') remade with the config's ``fields`` changed."""

    def drop(m):
        tables = make_rope(dataclasses.replace(m.cfg, **fields), N_CTX, theta)
        if local:
            m.rope_local = tables
        else:
            m.rope_cos, m.rope_sin = tables

    return drop


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)  # (measured: 3.8e-4, both chunkings)


def test_the_fixture_sees_what_sets_laguna_apart(tmp_path, monkeypatch):
    """The QK norm; the global layer's YaRN and its partial rope; the window layers' own base, own width and plain
    rope; the windows and the pattern's global layer first; exp_probs_b, the sigmoid router, the weights'
    renormalisation and scale, the shared expert; the softplus gate (a sigmoid instead): each taken away costs whole
    logits against llama.cpp's."""
    drops = {
        "QK norm": _layers(q_norm=lambda L: np.ones_like(L.q_norm) * 2.0),
        "global YaRN": _rope(False, 10000.0, rope_scaling_type="none"),
        "global partial rope": _rope(False, 10000.0, rope_dim=16),
        "window base": _rope(True, 10000.0, rope_dim=16, rope_scaling_type="none"),
        "window width": _rope(True, 1000.0, rope_dim=8, rope_scaling_type="none"),
        "window plain rope": _rope(True, 1000.0, rope_dim=16),
        "windows": _cfg(sliding_window=0),
        "global layer first": _cfg(swa_layers=(True, True, True, False)),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what
    monkeypatch.setattr(CPUBackend, "softplus_mul", CPUBackend.sigmoid_mul)  # (the same layout, the sigmoid)
    assert _fixture_error(tmp_path, NAME, lambda m: None) > 10 * TOLERANCE, "softplus gate"


def test_the_layers(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    m = model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert [(L.n_head, L.n_kv) for L in m.layers] == [(4, 2), (6, 2), (6, 2), (6, 2)]
    assert [L.gate_per_head for L in m.layers] == [True, True, False, False]
    assert [s.window for s in m.layer_specs()] == [0, 8, 8, 8]  # (no pattern in the file: the global layer first)
    assert [L.moe is None for L in m.layers] == [True, False, False, False]
    moe = m.layers[1].moe
    assert moe.gating == "sigmoid" and moe.norm_weights and moe.weights_scale == 2.5 and moe.shared.gate.shape[0] == 48
    assert m.rope_cos.shape[1] == 4 and m.rope_local[0].shape[1] == 8  # (8 of 16 dims on the global layer, all 16 elsewhere)


@pytest.mark.parametrize("tensor", ["blk.0.attn_gate.weight", "blk.3.attn_k_norm.weight", "blk.0.ffn_up.weight",
                                    "blk.1.exp_probs_b.bias", "blk.2.ffn_up_shexp.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["leading_dense_block_count", "expert_feed_forward_length"])
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key)


def test_what_is_not_supported_is_refused_in_one_line(tmp_path):
    """A gate neither one a head nor one a value wide (llama.cpp aborts)."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.tensors["blk.1.attn_gate.weight"] = g.tensors["blk.1.attn_k.weight"]  # (32 rows: neither 6 nor 96)
    check_refused(g, NAME, GGUFError, "blk.1 attn_gate has shape")


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the softplus gate ``softplus_mul``, one a head and one a value; the experts
    routed in moe.cu's kernels with exp_probs_b and a shared expert; per-layer heads, the two ropes)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
