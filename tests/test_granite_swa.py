"""Granite SWA and Granite MoE SWA (models/granite_swa.py): Granite's block with windows, sinks and rope by per-layer
arrays, and the MoE SWA's fused experts.

The logits are llama.cpp's (tests/fixtures/arch_granite_swa.npz and arch_granite_swa-moe.npz, from
``tools/make_arch_fixtures.py granite_swa granite_swa-moe``; test_models.py's FIXTURE_MODELS test runs both, prefill
and decode); here: the dense fixture held in both chunkings, and both failed without each of what sets the model apart;
a missing tensor or key in one line; ``kvrun info`` and ``kvrun run`` on the tiny file; the GPU (emulator where there is
none) against the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import _cfg, _layers, _model, _sees_apart, check_info_and_run, check_missing_tensor
from test_models import N_BATCH, _build, _run
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile

NAME = "granite_swa"
#: 3x the largest relative logit error measured against llama.cpp 0.3.36 (3.1e-5, the MoE SWA's: both runtimes'
#: float16 K)
TOLERANCE = 1e-4


def _load(tmp_path, variant: str = "", edit=lambda g: None):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME, variant=variant))
    edit(g)
    return _model(tmp_path, NAME, g)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    fix = np.load(f"{__file__.rsplit('/', 1)[0]}/fixtures/arch_{NAME}.npz")
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[NAME]))
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < TOLERANCE, f"max relative logit error {err:.2e}"  # (measured: 3.1e-5)
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def test_the_fixtures_see_what_sets_granite_swa_apart(tmp_path):
    """The sinks, the windows, the file's window pattern (a fixed 3-then-1 instead), its rope pattern (every layer
    rotating instead), rope over pairs not halves, Granite's four multipliers; in the MoE SWA: the weights renormalised,
    the shared expert, the fused experts' gate first, the fused Q/K/V's bias, the output bias before the residual
    multiplier: each taken away costs whole logits."""
    drops = {
        "sinks": lambda m: setattr(m, "sinks", [s[:0] for s in m.sinks]),
        "windows": _cfg(sliding_window=0),
        "the file's pattern": _cfg(swa_layers=(True, True, True, False)),
        "rope pattern": _layers(rope=True),
        "rope pairs": _cfg(rope_neox=True),
        "embedding scale": lambda m: setattr(m, "embedding_scale", lambda: 1.0),
        "residual scale": _cfg(residual_scale=1.0),
        "attention scale": _cfg(attention_scale=0.0),
        "logit scale": _cfg(logit_scale=1.0),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)
    moe = {
        "renormalised": _layers(moe=lambda L: dataclasses.replace(L.moe, norm_weights=False)),
        "shared expert": _layers(moe=lambda L: dataclasses.replace(L.moe, shared=None)),
        "gate first": _layers(moe=lambda L: dataclasses.replace(L.moe, gate=L.moe.up, up=L.moe.gate)),
        "QKV bias": _layers(bq=None, bk=None, bv=None),
        "output bias scaled": _layers(bo=lambda L: L.bo * 2.0),  # (residual_scale 0.5: the bias as the file has it)
    }
    _sees_apart(tmp_path, f"{NAME}-moe", moe, TOLERANCE)


def test_the_layers(tmp_path):
    m = _load(tmp_path)
    assert [L.rope for L in m.layers] == [True, True, False, True]  # (the file's rope_pattern)
    assert [s.window for s in m.layer_specs()] == [8, 0, 8, 8]  # (its sliding_window_pattern)
    assert all(len(s.sink_logits) == 4 and s.scale == pytest.approx(0.2) for s in m.layer_specs())
    assert all(L.moe is None and L.w_up is not None for L in m.layers) and not m.cfg.rope_neox
    moe = _load(tmp_path, "moe")
    assert all(L.moe is not None and L.moe.shared is not None and L.moe.norm_weights for L in moe.layers)
    assert moe.layers[0].moe.gate.shape == (4 * 96, 64) and moe.layers[0].moe.shared.gate.shape == (32, 64)


def test_past_the_pattern_arrays_ends_layers_are_global_and_rotate(tmp_path):
    """llama.cpp's per-layer tables where an array stops short: no window (its fill), rope (its fill)."""

    def short(g):
        g.metadata[f"{NAME}.attention.sliding_window_pattern"] = [True, True]
        g.metadata[f"{NAME}.attention.rope_pattern"] = [False]

    m = _load(tmp_path, edit=short)
    assert [s.window for s in m.layer_specs()] == [8, 8, 0, 0]
    assert [L.rope for L in m.layers] == [False, True, True, True]


@pytest.mark.parametrize("variant, tensor", [("", "blk.0.attn_sinks.weight"), ("", "blk.1.attn_q.weight"), ("", "blk.3.ffn_down.weight"),
                                             ("moe", "blk.2.ffn_gate_inp.weight"), ("moe", "blk.1.ffn_up_shexp.weight"),
                                             ("moe", "blk.0.ffn_down_exps.weight")])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, variant, tensor):
    check_missing_tensor(tmp_path, NAME, tensor, variant=variant)


@pytest.mark.parametrize("key", ["attention.sliding_window", "attention.sliding_window_pattern", "logit_scale"])
def test_a_missing_key_is_one_line(tmp_path, key):
    with pytest.raises(GGUFError, match=f"metadata {NAME}.{key} is missing") as e:
        _load(tmp_path, edit=lambda g: g.metadata.pop(f"{NAME}.{key}"))
    assert "\n" not in str(e.value)


def test_a_window_period_is_not_a_pattern_and_ffn_biases_are_refused(tmp_path):
    """llama.cpp's granite_swa reads the pattern as an array only (a number fails its get_arr); the FFN biases it adds
    have no place in the Llama forward: both refused in one line."""
    with pytest.raises(GGUFError, match="not an array"):
        _load(tmp_path, edit=lambda g: g.metadata.__setitem__(f"{NAME}.attention.sliding_window_pattern", 4))
    up = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME)).tensors["blk.0.ffn_up.weight"]

    def bias(g):
        g.tensors["blk.0.ffn_up.bias"] = dataclasses.replace(up, name="blk.0.ffn_up.bias")

    with pytest.raises(UnsupportedModelError, match="FFN biases") as e:
        _load(tmp_path, edit=bias)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU) on the MoE SWA file, which has every part the dense one has
    besides its own: a prefill and decode steps, the first captured, the others replayed, within 2e-3 of the CPU's
    logits (Granite's kernels, the GPU attention's sinks and windows, the MoE kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME, variant="moe"), capsys=capsys, steps=(5, 9, 14))
