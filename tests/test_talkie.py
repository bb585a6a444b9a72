"""Talkie's model (models/talkie.py): weightless RMSNorms, per-head Q gains after the rope, output gains, an embedding skip.

The logits are llama.cpp's (tests/fixtures/arch_talkie.npz, from ``tools/make_arch_fixtures.py talkie``; test_models.py's
FIXTURE_MODELS test runs it too, prefill and decode); here: the fixture held in both chunkings, and failed without each
of what sets Talkie apart; a missing tensor or key in one line, the optional gains 1 where absent; ``kvrun info`` and
``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import (_cfg, _layers, _model, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key,
                         check_missing_tensor)  # fmt: skip
from test_models import N_BATCH
from tiny_talkie import EPS, GEOMETRY, LOGIT_SCALE
from tinymodel import write_tiny_model

from kvrun.loaders.gguf_file import GGUFFile

NAME = "talkie"
#: the largest relative logit error measured against llama.cpp 0.3.36: 1.3e-4 (both runtimes' float16 K/V)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)


def _unnormed_input(m):
    m.embed = lambda tokens, e, skip: m.be.get_rows(m.tok_embd, tokens, skip)


def test_the_fixture_sees_what_sets_talkie_apart(tmp_path):
    """The input's norm, the QK norms, the heads' gains (and each head its own), the attention's and the FFN's gains, the
    embedding skip, the logit scale, rope over halves: each taken away costs whole logits."""
    drops = {
        "input norm": _unnormed_input,
        "QK norms": lambda m: setattr(m, "qk_norm", lambda L, q3, k3: None),
        "head gains": _layers(head_gain=lambda L: np.ones_like(L.head_gain)),
        "a gain a head": _layers(head_gain=lambda L: np.full_like(L.head_gain, L.head_gain.mean())),
        "attention gain": _layers(attn_gain=1.0),
        "FFN gain": _layers(ffn_gain=1.0),
        "embedding skip": _layers(skip_scale=0.0),
        "logit scale": lambda m: setattr(m, "logit_multiplier", lambda: 1.0),
        "rope halves": _cfg(rope_neox=False),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)


def test_the_layers(tmp_path):
    m = _model(tmp_path, NAME)
    n_head, hd, n_layer = GEOMETRY[1], GEOMETRY[3], GEOMETRY[5]
    assert len(m.layers) == n_layer and all(L.head_gain.shape == (n_head * hd,) for L in m.layers)
    gains = m.layers[0].head_gain.reshape(n_head, hd)  # (each head's one gain over its head_dim values: be.mul's layout)
    assert (gains == gains[:, :1]).all() and len(set(gains[:, 0])) == n_head
    assert all(0.5 < L.attn_gain < 0.8 and 1.3 < L.ffn_gain < 1.8 and 0.2 < L.skip_scale < 0.5 for L in m.layers)
    assert m.logit_multiplier() == LOGIT_SCALE and m.cfg.norm_eps == pytest.approx(EPS) and m.cfg.rope_neox


def test_the_output_gains_are_optional(tmp_path):
    """llama.cpp reads ``attn_output.scale`` and ``ffn_down.scale`` where the file has them (its generic scale tensors)."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    del g.tensors["blk.0.attn_output.scale"], g.tensors["blk.1.ffn_down.scale"]
    m = _model(tmp_path, NAME, g)
    assert (m.layers[0].attn_gain, m.layers[1].ffn_gain) == (1.0, 1.0) and m.layers[0].ffn_gain != 1.0


@pytest.mark.parametrize("tensor", ["output.weight", "blk.0.attn_q_norm.weight", "blk.1.layer_output_scale.weight", "blk.3.ffn_up.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["attention.layer_norm_rms_epsilon", "logit_scale"])
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the heads' gains ``mul``, the embedding skip's copies device kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
