"""Spark-X2.5 (llama.cpp's ``spark2_5``, models/spark2_5.py) on the tiny model of tiny_spark2_5.py.

The logits are llama.cpp's (fixture ``arch_spark2_5.npz`` from tools/make_arch_fixtures.py, which
test_models.test_forward_matches_llamacpp also holds), in one batch and token by token.  Each step that sets the
architecture apart, taken away, costs whole logits.  Besides: a missing tensor or key in one line; ``kvrun info`` and
``kvrun run``; the GPU (the emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import _cfg, _model, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor
from test_models import N_BATCH, N_CTX
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.common import make_rope
from kvrun.models.spark2_5 import REQUIRED_KEYS
from kvrun.ops.backend import Weight

ARCH = "spark2_5"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K/V; llama.cpp's GELU
#: through its float16 table)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, ARCH, chunk, TOLERANCE)  # (measured: 4.7e-4, 1.1e-2 of 24.0)


def test_the_fixture_sees_what_sets_spark2_5_apart(tmp_path):
    """The head-wise gate, the window layers' own rope (base, width), the file's pattern (not the fixed 3-then-1), the
    windows, neox rope, the GELU FFN (not SwiGLU): each taken away costs whole logits."""

    def local_rope(theta: str, rope_dim: int):  # (the window layers' tables at the config's ``theta`` over ``rope_dim``)
        def drop(m):
            m.rope_local = make_rope(dataclasses.replace(m.cfg, rope_dim=rope_dim), N_CTX, getattr(m.cfg, theta))

        return drop

    def no_gate(m):  # (sigmoid(0): every head times one half)
        for L in m.layers:
            L.attn_gate = Weight(np.zeros_like(L.attn_gate.data), L.attn_gate.qtype, L.attn_gate.shape)

    _sees_apart(tmp_path, ARCH, {
        "head gate": no_gate,
        "window layers' base": local_rope("rope_theta", 8),
        "window layers' partial rope": local_rope("rope_theta_swa", 16),
        "the file's pattern": _cfg(swa_layers=(True, True, True, False)),
        "windows": _cfg(sliding_window=0),
        "neox rope": _cfg(rope_neox=False),
        "GELU FFN": lambda m: setattr(m, "ffn_act", "silu"),
    }, tol=TOLERANCE)  # fmt: skip


def test_the_layers(tmp_path):
    m = _model(tmp_path, ARCH)
    assert [(L.n_head, L.n_kv) for L in m.layers] == [(4, 2), (4, 2), (2, 1), (4, 2)]  # (the file's lists)
    assert [(s.n_head, s.n_head_kv, s.window) for s in m.layer_specs()] == [(4, 2, 8), (4, 2, 8), (2, 1, 0), (4, 2, 8)]
    assert all(L.attn_gate.shape == (L.n_head, 64) for L in m.layers) and m.output is m.tok_embd
    assert m.rope_cos.shape[1] == 8 and m.rope_local[0].shape[1] == 4  # (16 and 8 dimensions rotated)
    g = GGUFFile(tmp_path / f"{ARCH}.gguf")
    assert type(m).cache_widths(load_config(g), g) == (64, 64, 32, 64)  # (`kvrun info`: each layer's own KV heads)


@pytest.mark.parametrize("tensor,named", [("blk.0.attn_qkv.weight", "blk.0.attn_q.weight"), ("blk.1.attn_gate.weight",) * 2,
                                          ("blk.2.ffn_down.weight",) * 2, ("blk.3.ffn_norm.weight",) * 2,
                                          ("output_norm.weight",) * 2])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor, named):
    """A missing fused ``attn_qkv`` is asked for apart, as llama.cpp's create_tensor_qkv does: its error names attn_q."""
    check_missing_tensor(tmp_path, ARCH, tensor, named)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, ARCH, key)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, ARCH)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the head gate ``sigmoid_mul``, the Llama block's kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", ARCH), capsys=capsys, steps=(5, 9, 14))
