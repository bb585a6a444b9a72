"""Mellum 2's text model (models/mellum.py): Qwen3-MoE's block with window layers that rotate plainly at the global base.

The logits are llama.cpp's (tests/fixtures/arch_mellum.npz, from ``tools/make_arch_fixtures.py mellum``; test_models.py's
FIXTURE_MODELS test runs it too, prefill and decode); here: the fixture held in both chunkings, and failed without each
of what sets Mellum apart (and with each key llama.cpp's graph overrides honoured); a missing tensor or key in one line;
``kvrun info`` and ``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from arch_checks import (_cfg, _layers, _model, _moe, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key,
                         check_missing_tensor)  # fmt: skip
from click.testing import CliRunner
from test_info_hooks import held_per_token, info_line
from test_models import N_BATCH, N_CTX
from tiny_mellum import PATTERN, WINDOW
from tinymodel import write_tiny_model

from kvrun.cli import main
from kvrun.models.common import make_rope

NAME = "mellum"
#: the largest relative logit error measured against llama.cpp 0.3.36: 2.9e-4 (both runtimes' float16 K/V)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)


def _plain_rope(m, theta: float):
    return make_rope(dataclasses.replace(m.cfg, rope_scaling_type="none", yarn_attn_factor=1.0), N_CTX, theta)


def _fixed_pattern(m):
    fixed = (True, True, True, False)  # (what a file without the array means)
    m.cfg = dataclasses.replace(m.cfg, swa_layers=fixed)
    for L, swa in zip(m.layers, fixed):
        L.swa = swa


def test_the_fixture_sees_what_sets_mellum_apart(tmp_path):
    """The QK norms, rope over halves, the windows and the file's pattern array, the window layers' plain rope at the
    global base (YaRN there, or the file's freq_base_swa, instead), the global layers' YaRN, the renormalised softmax
    router: each taken away costs whole logits; so does honouring expert_weights_scale, which llama.cpp's graph leaves."""
    drops = {
        "QK norm": _layers(q_norm=None, k_norm=None),
        "rope halves": _cfg(rope_neox=False),
        "windows": _cfg(sliding_window=0),
        "the file's pattern": _fixed_pattern,
        "window layers' plain rope": lambda m: setattr(m, "rope_swa", (m.rope_cos, m.rope_sin)),
        "window layers at the global base": lambda m: setattr(m, "rope_swa", _plain_rope(m, m.cfg.rope_theta_swa)),
        "global layers' YaRN": lambda m: (setattr(m, "rope_cos", m.rope_swa[0]), setattr(m, "rope_sin", m.rope_swa[1])),
        "renormalised weights": _moe(norm_weights=False),
        "softmax router": _moe(gating="sigmoid"),
        "expert_weights_scale unread": _moe(weights_scale=2.5),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)


def test_the_layers(tmp_path):
    m = _model(tmp_path, NAME)
    assert m.cfg.rope_theta_swa == 1000.0 and m.cfg.rope_scaling_type == "yarn" and m.cfg.rope_neox  # (as the file states)
    assert [L.swa for L in m.layers] == list(PATTERN)  # (the file's array)
    assert [s.window for s in m.layer_specs()] == [WINDOW if p else 0 for p in PATTERN]
    assert all(s.scale == pytest.approx(16**-0.5) for s in m.layer_specs())
    assert all(L.moe.norm_weights and L.moe.weights_scale == 1.0 and L.moe.shared is None for L in m.layers)
    assert m.cfg.n_ff_exp == 32 and m.output is not m.tok_embd


@pytest.mark.parametrize("tensor", ["output.weight", "blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight",
                                    "blk.2.ffn_gate_inp.weight", "blk.3.ffn_down_exps.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["attention.layer_norm_rms_epsilon", "expert_feed_forward_length"])
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key)


def test_info_and_run(tmp_path):
    """The rope line names no local base (the file's freq_base_swa 1000 is read, never rotated with: the window layers
    turn at the global base, without the global layers' YaRN); the KV cost is what the runtime's cache holds a token."""
    info = check_info_and_run(tmp_path, NAME)
    assert info_line(info, "rope") == "theta 10000, neox, scaling yarn (window layers unscaled)", info
    facts = json.loads(CliRunner().invoke(main, ["info", "--json", str(tmp_path / f"{NAME}.gguf")]).output)
    assert facts["rope_theta_swa"] == 0.0 and facts["rope_window"] == "window layers unscaled"
    assert facts["kv_bytes_per_token"]["16"] == held_per_token(tmp_path / f"{NAME}.gguf")


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (Qwen3-MoE's kernels; the window layers' own rope tables)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
