"""Tencent's Hy3 (models/hy_v3.py): Qwen3's attention with DeepSeek-V3's sigmoid-routed experts and a shared one.

The logits are llama.cpp's (tests/fixtures/arch_hy_v3.npz, from ``tools/make_arch_fixtures.py hy_v3``; test_models.py's
FIXTURE_MODELS test runs it too); here: the fixture held in both chunkings, and failed without each of what sets Hy3
apart; the trunk's layers (the MTP block unread); a missing tensor or key and what is refused in one line; ``kvrun
info`` and ``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from arch_checks import _moe, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor, check_refused
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.hunyuan_dense import HunyuanDenseModel
from kvrun.ops import get_backend

NAME = "hy_v3"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K)
TOLERANCE = 1e-3


def _load(g: GGUFFile):
    return model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, NAME, chunk, TOLERANCE)  # (measured: 3.0e-4, both chunkings)


def test_the_fixture_sees_what_sets_hy_v3_apart(tmp_path):
    """The QK norm, and before the rope (not after it, as Hunyuan's); exp_probs_b, the sigmoid router, the weights'
    renormalisation and scale, the shared expert: each taken away costs whole logits against llama.cpp's."""
    drops = {
        "QK norm": lambda m: [setattr(L, "q_norm", np.ones_like(L.q_norm) * 2.0) for L in m.layers],
        "QK norm before the rope": lambda m: setattr(m, "qk_norm_rope", types.MethodType(HunyuanDenseModel.qk_norm_rope, m)),
        "exp_probs_b": _moe(bias=None),
        "sigmoid router": _moe(gating="softmax"),
        "renormalised weights": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
        "shared expert": _moe(shared=None),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what


def test_the_layers(tmp_path):
    """The trunk's 3 layers of block_count 4 (the last the MTP block, which kvrun reads none of: a file without it loads
    alike); layer 0 dense for want of a router; the selection bias from the suffixless ``exp_probs_b``."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    m = _load(g)
    assert m.cfg.n_layer == 3 and [L.moe is None for L in m.layers] == [True, False, False]
    moe = m.layers[1].moe
    assert moe.gating == "sigmoid" and moe.norm_weights and moe.weights_scale == 2.5 and moe.shared.gate.shape[0] == 64
    np.testing.assert_array_equal(moe.bias, g.tensors["blk.1.exp_probs_b"].data.view(np.float32))
    for name in [n for n in g.tensors if n.startswith("blk.3.")]:
        del g.tensors[name]
    assert len(_load(g).layers) == 3


@pytest.mark.parametrize("tensor", ["blk.0.ffn_up.weight", "blk.1.ffn_up_shexp.weight", "blk.2.attn_q_norm.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["expert_feed_forward_length", "attention.layer_norm_rms_epsilon"])
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, NAME, key)


def test_what_is_not_supported_is_refused_in_one_line(tmp_path):
    """A selection bias named ``.bias`` (llama.cpp refuses the file), fused gate-and-up experts, a partial rope (llama.cpp
    asserts rope.dimension_count is key_length)."""
    path = write_tiny_model(tmp_path / "m.gguf", NAME)
    g1 = GGUFFile(path)
    g1.tensors["blk.1.exp_probs_b.bias"] = g1.tensors.pop("blk.1.exp_probs_b")
    g2 = GGUFFile(path)
    g2.tensors["blk.2.ffn_gate_up_exps.weight"] = g2.tensors["blk.2.ffn_up_exps.weight"]
    g3 = GGUFFile(path)
    g3.metadata["hy_v3.rope.dimension_count"] = 8
    for g, error, what in ((g1, GGUFError, "exp_probs_b.bias"), (g2, UnsupportedModelError, "ffn_gate_up_exps"),
                           (g3, GGUFError, "rope.dimension_count 8")):  # fmt: skip
        check_refused(g, NAME, error, what)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (dots.llm1's kernels: the per-head QK norm, the routing with its bias)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
