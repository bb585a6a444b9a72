"""Maple (llama.cpp's ``maple``, models/maple.py) on the tiny model of tiny_maple.py.

The logits are llama.cpp's (fixture ``arch_maple.npz`` from tools/make_arch_fixtures.py, which
test_models.test_forward_matches_llamacpp also holds), in one batch and token by token.  Each step that sets the
architecture apart, taken away, costs whole logits.  Besides: a missing tensor or key in one line; ``kvrun info`` and
``kvrun run``; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
from arch_checks import (_cfg, _layers, _model, _moe, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key,
                         check_missing_tensor)  # fmt: skip
from test_models import N_BATCH, N_CTX
from tinymodel import write_tiny_model

from kvrun.models.common import make_rope
from kvrun.models.maple import REQUIRED_KEYS
from kvrun.models.moe import device_unsupported

ARCH = "maple"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, ARCH, chunk, TOLERANCE)  # (measured: 3.5e-4, 6.2e-3 of 17.8)


def test_the_fixture_sees_what_sets_maple_apart(tmp_path):
    """Rope on the pattern's window layers only (not on the global one), the file's pattern (not the fixed 3-then-1), the
    windows, the window layers' own base, the partial rope, the per-head QK norm, the renormalised weights, the clamp and
    its order (the gate clamped before the SiLU, not after as Step-3.5's): each taken away costs whole logits."""

    def rope(theta: str, rope_dim: int):  # (the tables at the config's ``theta`` over ``rope_dim`` of a head's 16)
        def drop(m):
            m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=rope_dim), N_CTX, getattr(m.cfg, theta))

        return drop

    _sees_apart(tmp_path, ARCH, {
        "NoPE global layer": _layers(rope=True),
        "the file's pattern": _cfg(swa_layers=(True, True, True, False)),
        "windows": _cfg(sliding_window=0),
        "window layers' base": rope("rope_theta", 8),
        "partial rope": rope("rope_theta_swa", 16),
        "QK norm": _layers(q_norm=lambda L: L.q_norm * 2.0),
        "renormalised weights": _moe(norm_weights=False),
        "clamp": _moe(swiglu_limit=0.0),
        "gate clamped first": _moe(clamp_gate_first=False),
    }, tol=TOLERANCE)  # fmt: skip


def test_the_layers(tmp_path):
    m = _model(tmp_path, ARCH)
    assert [L.rope for L in m.layers] == [True, False, True, True]  # (the file's pattern array)
    assert [s.window for s in m.layer_specs()] == [8, 0, 8, 8]
    assert [L.moe.swiglu_limit for L in m.layers] == [0.5, 0.75, 0.5, 7.0] and all(L.moe.clamp_gate_first for L in m.layers)
    assert all(L.moe.gating == "softmax" and L.moe.norm_weights and L.moe.shared is None and L.w_gate is None for L in m.layers)
    assert m.rope_cos.shape[1] == 4 and m.cfg.rope_neox and m.output is not m.tok_embd
    assert device_unsupported(m.layers[0].moe) is None  # (moe2.cu's "swiglu_clamp_first": the device routes and clamps)


@pytest.mark.parametrize("tensor", ["output.weight", "blk.0.attn_q_norm.weight", "blk.3.attn_k_norm.weight",
                                    "blk.1.ffn_gate_inp.weight", "blk.2.ffn_up_exps.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, ARCH, tensor)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, ARCH, key)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the experts' gate clamped before its SiLU in moe2.cu; the tiny model's
    limits of 0.5 and 0.75 clamp about a quarter of their layers' gates)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", ARCH), capsys=capsys, steps=(5, 9, 14))


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, ARCH)


def test_the_expert_width_may_come_a_layer_and_the_dense_width_unstated(tmp_path):
    """llama.cpp reads ``expert_feed_forward_length`` as a number or one a layer (get_key_or_arr) and needs no
    ``feed_forward_length`` for Maple (experts in every layer): the same model either way; layers whose experts differ
    in width are refused in one line (kvrun's experts are one width a model)."""
    from kvrun.loaders.config import load_config
    from kvrun.loaders.errors import UnsupportedModelError
    from kvrun.loaders.gguf_file import GGUFFile

    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", ARCH))
    width, n_layer = g.metadata[f"{ARCH}.expert_feed_forward_length"], g.metadata[f"{ARCH}.block_count"]
    del g.metadata[f"{ARCH}.feed_forward_length"]
    g.metadata[f"{ARCH}.expert_feed_forward_length"] = [width] * n_layer
    assert load_config(g).n_ff_exp == width and _model(tmp_path, ARCH, g).layers[0].moe is not None
    g.metadata[f"{ARCH}.expert_feed_forward_length"] = [width] * (n_layer - 1) + [2 * width]
    with pytest.raises(UnsupportedModelError, match="experts different widths") as e:
        load_config(g)
    assert "\n" not in str(e.value)
