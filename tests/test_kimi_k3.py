"""Kimi K3 (models/kimi_k3.py): Kimi Linear's layers with cross-layer residual attention, latent experts, situ and an
MLA output gate.

The logits are llama.cpp's (the FIXTURE_MODELS test ``kimi-k3``); here: the fixture fails without each of what sets
K3 apart from Kimi Linear, the KDA state in the cache (test_ssm.py's tests), a missing tensor and what is refused in
one line, ``--device gpu`` against the CPU (its kernels against numpy: test_gpu_kimi_k3.py), ``kvrun info`` and
``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from kda_checks import each_kda, each_moe, kimi_decay, state_tolerance
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import kimi_k3, model_class
from kvrun.models.kimi_linear import KDALayer

NAME = "kimi-k3"


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny Kimi K3, for test_ssm's state tests below (its KDA layers 0 and 2 among MLA layers 1 and 3)."""
    return write_tiny_model(tmp_path_factory.mktemp("k3") / "m.gguf", NAME, seed=1)


# (test_ssm.py's state tests on ``path`` above, with the MLA layers' fp16 tolerance: kda_checks.py)
state_tolerance(NAME)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over


def _swiglu(g, u, beta, linear_beta):
    return (g / (1.0 + np.exp(-g)) * u).astype(np.float32)


def test_the_fixture_sees_what_sets_kimi_k3_apart(tmp_path, monkeypatch):
    """Against llama.cpp's logits; each of K3's own steps dropped fails: the residual attention (the plain stream), the
    latent experts' norm, situ (SwiGLU, or the up branch unbent), the MLA output gate, the bounded KDA decay (Kimi's
    softplus), the experts' weights renormalised as the file says (Kimi's always)."""
    drops = {
        "residual attention": lambda m: setattr(m, "res_block", 0),
        "latent experts' norm": each_moe(routed_norm=lambda e: None),
        "situ's up branch": lambda m: setattr(m, "situ_linear_beta", 0.0),
        "MLA output gate": lambda m: [setattr(L, "attn_gate", None) for L in m.layers if not isinstance(L, KDALayer)],
        "bounded decay": each_kda(kimi_decay),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < 1e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 3e-2, what
    monkeypatch.setattr(kimi_k3, "situ", _swiglu)
    assert _fixture_error(tmp_path, NAME, lambda m: None) > 3e-2, "situ"


def test_situ_is_llama_cpps():
    """beta*tanh(g/beta)*sigmoid(g) * lb*tanh(u/lb); the up branch as it is where lb <= 0."""
    g = np.array([-3.0, -0.5, 0.0, 0.7, 4.0], np.float32)
    u = np.array([2.0, -1.0, 3.0, 5.0, -6.0], np.float32)
    want = 2.0 * np.tanh(g / 2.0) / (1.0 + np.exp(-g)) * 3.0 * np.tanh(u / 3.0)
    np.testing.assert_allclose(kimi_k3.situ(g, u, 2.0, 3.0), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(kimi_k3.situ(g, u, 2.0, 0.0), 2.0 * np.tanh(g / 2.0) / (1.0 + np.exp(-g)) * u, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tensor", [
    "blk.0.ssm_g.weight", "blk.2.ssm_f_b.weight", "blk.0.attn_res_score.weight", "blk.3.ffn_res_score.weight",
    "output_res_score.weight", "blk.1.ffn_routed_down.weight", "blk.2.ffn_routed_up.weight", "blk.3.exp_probs_b.bias",
    "blk.0.ffn_gate.weight", "output.weight",
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME, seed=1))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class(NAME)(g, load_config(g), _cpu(), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["attn_res.block_size", "activation.situ_beta", "activation.situ_linear_beta"])
def test_a_missing_key_is_one_line(tmp_path, key):
    """(llama.cpp requires them: no default residual attention or activation is assumed.)"""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME, seed=1))
    del g.metadata[f"{NAME}.{key}"]
    with pytest.raises(GGUFError, match=f"{NAME}.{key} is missing") as e:
        model_class(NAME)(g, load_config(g), _cpu(), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def _cpu():
    from kvrun.ops import get_backend

    return get_backend("cpu")


def test_what_is_not_supported_is_refused_in_one_line(tmp_path):
    """A decay bound not below 0, and Kimi's refusals (an attn_gate on a KDA layer)."""
    path = write_tiny_model(tmp_path / "m.gguf", NAME, seed=1)
    cases = []
    g2 = GGUFFile(path)
    g2.metadata["kimi-k3.kda.gate_lower_bound"] = 0.5
    cases.append((_cpu(), g2, "gate_lower_bound"))
    g3 = GGUFFile(path)
    g3.tensors["blk.2.attn_gate.weight"] = g3.tensors["blk.2.ssm_g.weight"]
    cases.append((_cpu(), g3, "attn_gate"))
    for be, gg, what in cases:
        with pytest.raises(UnsupportedModelError, match=what) as e:
            model_class(NAME)(gg, load_config(gg), be, N_CTX, N_BATCH)
        assert "\n" not in str(e.value)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the checkpoints' bank and the residual mix in attn_res.cu; the latent
    experts routed on the device and run with situ by moe2.cu, the dense and shared situ its element-wise form; the KDA
    and the gated MLA Kimi Linear's kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME, seed=1), capsys=capsys, steps=(5, 9, 14))


def test_a_gpu_decode_step_copies_only_its_logits_down(monkeypatch, path):
    """On the strict CuPy stand-in (devicexp.py: no copy while a graph is captured, every copy down logged): a replayed
    step brings down its logits alone; the bank, the residual mixes, the experts' routing and situ are no host work."""
    from gpu_checks import check_decode_copies_only_logits

    from kvrun.ops.gpu import emulate

    if not emulate.available():
        pytest.skip("no host C++ compiler for the emulator")
    check_decode_copies_only_logits(monkeypatch, path, steps=(5,))


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", NAME, seed=1))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and NAME in r.output, r.output
    assert "2 of 4 Kimi Delta Attention (4 heads, each 16 wide, a decay per key channel, convolution 4)" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
