"""Muse Glimmer's text model (models/muse_glimmer.py): AFMoE's attention block with a dense FFN.

The logits are llama.cpp's (tests/fixtures/arch_muse-glimmer.npz, from ``tools/make_arch_fixtures.py muse-glimmer``;
test_models.py's FIXTURE_MODELS test runs it too, prefill and decode); here: the fixture held in both chunkings, and
failed without each of what sets Muse Glimmer apart; a missing tensor or key in one line; ``kvrun info`` and ``kvrun
run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import _cfg, _layers, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.afmoe import AfmoeModel
from kvrun.ops import get_backend

NAME = "muse-glimmer"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K; afmoe's is the same)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)  # (measured: 6.1e-4)


def test_the_fixture_sees_what_sets_muse_glimmer_apart(tmp_path, monkeypatch):
    """The weightless input norm (AFMoE's sqrt(n_embd) instead), the post-norms and their 1e-8, the attention gate, the
    QK norm, rope on the pattern's window layers only (the fixed 3-then-1 instead, or every layer), pairs not neox,
    the window layers' own base, the windows, the logit scale, the softcap: each taken away costs whole logits."""
    import kvrun.models.afmoe as afmoe

    ones = np.ones(64, np.float32)
    drops = {
        "input norm": lambda m: setattr(m, "embed", lambda t, x, xn: AfmoeModel.embed(m, t, x, xn)),
        "post norms": _layers(attn_post_norm=lambda L: ones, ffn_post_norm=lambda L: ones),
        "post norms' epsilon": lambda m: setattr(m, "post_norm_eps", 0.0),
        "QK norm": _layers(q_norm=lambda L: np.ones_like(L.q_norm) * 2.0),
        "NoPE global layer": _layers(rope=True),
        "the file's pattern": _cfg(swa_layers=(True, True, True, False)),
        "rope pairs": _cfg(rope_neox=True),
        "window layers' base": lambda m: setattr(m, "rope_local", (m.rope_cos, m.rope_sin)),
        "windows": _cfg(sliding_window=0),
        "logit scale": lambda m: setattr(m, "logit_multiplier", lambda: 1.0),
        "softcap": _cfg(final_logit_softcap=0.0),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what
    monkeypatch.setattr(afmoe, "_sigmoid", lambda x: np.float32(0.5))
    assert _fixture_error(tmp_path, NAME, lambda m: None) > 10 * TOLERANCE, "attention gate"


def test_the_layers(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    m = model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert [L.rope for L in m.layers] == [True, False, True, True]  # (the file's pattern array)
    assert [s.window for s in m.layer_specs()] == [8, 0, 8, 8]
    assert all(L.moe is None and L.w_up is not None for L in m.layers)
    assert m.logit_multiplier() == 0.5 and m.cfg.final_logit_softcap == 8.0 and not m.cfg.rope_neox


@pytest.mark.parametrize("tensor", ["output.weight", "blk.0.attn_gate.weight", "blk.1.post_attention_norm.weight",
                                    "blk.2.post_ffw_norm.weight", "blk.3.attn_q_norm.weight", "blk.3.ffn_up.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["attention.sliding_window", "logit_scale"])
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (AFMoE's kernels; the input norm one more rms_norm)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
