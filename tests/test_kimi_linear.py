"""Kimi Linear (models/kimi_linear.py): Kimi Delta Attention layers among rope-less MLA layers, experts.

The logits are llama.cpp's (the FIXTURE_MODELS test ``kimi-linear``); here: the fixture fails without what sets the
architecture apart, the per-channel delta rule against the per-head one, the KDA state in the cache (test_ssm.py's
tests), a missing tensor and the GPU refused in one line, ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from arch_checks import check_info_and_run, check_missing_tensor, check_refused
from kda_checks import each_kda, each_moe, state_tolerance, weight
from test_models import _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.errors import UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.ops.cpu.deltanet import gated_delta_rule
from kvrun.ops.cpu.kda import kda_delta_rule

NAME = "kimi-linear"


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny Kimi Linear, for test_ssm's state tests below (its KDA layers 0 and 2 among MLA layers 1 and 3)."""
    return write_tiny_model(tmp_path_factory.mktemp("kimi") / "m.gguf", NAME)


# (test_ssm.py's state tests on ``path`` above, with the MLA layers' fp16 tolerance: kda_checks.py)
state_tolerance(NAME)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over


def _per_head_decay(m, K):
    """One decay a head (Gated DeltaNet's): f_b's rows and dt_b averaged over each head's channels."""
    H, hd = m.cfg.n_head, m.head_dim_kda
    fb = m.be.to_host(K.f_b.data).view(np.float32).reshape(H, hd, -1)
    K.f_b = weight(m, np.repeat(fb.mean(1, keepdims=True), hd, 1).reshape(H * hd, -1))
    K.dt_b = np.repeat(K.dt_b.reshape(H, hd).mean(1, keepdims=True), hd, 1).reshape(-1)


def _no_conv(m, K):
    K.conv = np.zeros_like(K.conv)
    K.conv[-1] = 1.0  # (each channel its own input: SiLU alone)


def _roped_mla(m):
    """MLA as deepseek2's: q_pe and k_pe turned (consecutive pairs, base 10000) before attending."""
    R, nope = m.n_rot, m.qk_nope
    inv = 10000.0 ** (-np.arange(0, R, 2) / R)

    def turn(x, pos):  # x [T, heads, head_dim]: its last R dimensions
        ang = pos[:, None, None] * inv[None, None, :]
        a, b = x[..., nope::2].copy(), x[..., nope + 1 :: 2].copy()
        x[..., nope::2] = a * np.cos(ang) - b * np.sin(ang)
        x[..., nope + 1 :: 2] = a * np.sin(ang) + b * np.cos(ang)

    orig = m.mla_attend

    def mla_attend(L, lc, xn, pos):
        class Turned:
            def update_and_attend(self, q, k, v, p, out):
                turn(q, p)
                turn(k, p)
                lc.update_and_attend(q, k, v, p, out)

        return orig(L, Turned(), xn, pos)

    m.mla_attend = mla_attend


def test_the_fixture_sees_what_sets_kimi_linear_apart(tmp_path):
    """The decay per key channel (one a head, Gated DeltaNet's, fails), the short convolutions, the output gate and
    ssm_norm's weights; MLA without rope (deepseek2's turned q_pe/k_pe fail); the experts' selection bias, their
    weights renormalised and scaled, the shared expert, the sigmoid router (softmax fails)."""
    drops = {
        "per-channel decay": each_kda(_per_head_decay),
        "convolutions": each_kda(_no_conv),
        "output gate": each_kda(lambda m, K: setattr(K, "g_b", weight(m, np.zeros(K.g_b.shape, np.float32)))),
        "ssm_norm": each_kda(lambda m, K: setattr(K, "norm", np.ones_like(K.norm))),
        "MLA without rope": _roped_mla,
        "selection bias": each_moe(bias=lambda e: np.zeros_like(e.bias)),
        "renormalised": each_moe(norm_weights=lambda e: False),
        "scale": each_moe(weights_scale=lambda e: 1.0),
        "shared expert": each_moe(shared=lambda e: None),
        "sigmoid router": each_moe(gating=lambda e: "softmax"),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < 1e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 3e-2, what


def test_the_per_channel_rule_is_the_per_head_one_where_a_head_decays_alike():
    """ops/cpu/kda.py with every channel of a head at the head's decay gives ops/cpu/deltanet.py's numbers; channels
    that differ give others."""
    rng = np.random.default_rng(0)
    T, H, d = 7, 3, 8
    qkv = rng.standard_normal((T, 3 * H * d)).astype(np.float32)
    g = -rng.uniform(0.0, 2.0, (T, H)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, (T, H)).astype(np.float32)
    k_of_v, none = np.arange(H, dtype=np.int64), np.zeros(0, np.int64)
    ck = np.zeros((1, H, d, d), np.float32)
    runs = []
    for rule, gg in ((gated_delta_rule, g), (kda_delta_rule, np.repeat(g, d, 1)), (kda_delta_rule, np.repeat(g, d, 1) * rng.uniform(0.5, 1.5, (T, H * d)).astype(np.float32))):
        s, y = np.zeros((H, d, d), np.float32), np.zeros((T, H * d), np.float32)
        rule(s, qkv, np.ascontiguousarray(gg), beta, k_of_v, 1e-6, y, none, none, ck)
        runs.append((s, y))
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-6)
    assert np.abs(runs[2][1] - runs[0][1]).max() > 1e-2


def test_the_layers_and_their_caches(tmp_path):
    """The KDA layers keep Qwen3.5's DeltaNet state with a decay per channel (d_k logs a head kept for a replay), the MLA
    layers every head's decompressed K and V."""
    from kvrun.cache.deltanet import DeltaNetLayerCache
    from kvrun.runtime.engine import Engine

    e = Engine(write_tiny_model(tmp_path / "m.gguf", NAME), n_ctx=64)
    layers = e.new_cache().layers
    assert [i for i, c in enumerate(layers) if isinstance(c, DeltaNetLayerCache)] == [0, 2]
    assert layers[0].per_channel and layers[0].ring.shape[1] == 3 * 64 + 4 * 16 + 4
    assert e.cfg.kv_bytes_per_token(16) == 2 * 4 * (24 + 16) * 2


@pytest.mark.parametrize("tensor", [
    "blk.0.ssm_conv1d_k.weight", "blk.0.ssm_f_b.weight", "blk.2.ssm_g_a.weight", "blk.2.ssm_a", "blk.0.ssm_dt.bias",
    "blk.2.ssm_norm.weight", "blk.1.attn_k_b.weight", "blk.3.attn_kv_a_norm.weight", "blk.2.exp_probs_b.bias",
    "blk.1.ffn_up_shexp.weight", "blk.0.ffn_gate.weight", "output.weight",
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


def test_what_is_not_supported_is_refused_in_one_line(tmp_path):
    """(Kimi Linear runs on the GPU too: tests/test_gpu_delta.py.)"""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.tensors["blk.2.attn_gate.weight"] = g.tensors["blk.2.ssm_g_b.weight"]
    check_refused(g, NAME, UnsupportedModelError, "attn_gate")


def test_info_and_run(tmp_path):
    info = check_info_and_run(tmp_path, NAME)
    assert "2 of 4 Kimi Delta Attention (4 heads, each 16 wide, a decay per key channel, convolution 4); 6.25 KiB of state a layer" in info
    assert "none (Kimi's MLA" in info, info
