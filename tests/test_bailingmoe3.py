"""Ling 3 (models/bailingmoe3.py): Kimi Linear's layers with full-rank safe KDA gates, gated and roped MLA, clamps.

The logits are llama.cpp's (the FIXTURE_MODELS tests ``bailingmoe3``, normal rope and a query LoRA, and
``bailingmoe3-mrope``, the VL files' rope sections and ``attn_q``); here: the fixtures fail without what sets the
architecture apart, the KDA state in the cache (test_ssm.py's tests), a missing tensor and what is refused in one line,
the head tied to ``token_embd``, ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from kda_checks import each_kda, each_moe, kimi_decay, state_tolerance, weight
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.bailingmoe3 import _TurnedCache
from kvrun.models.kimi_linear import KimiLinearModel
from kvrun.ops import get_backend

NAME = "bailingmoe3"


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny Ling 3, for test_ssm's state tests below (its KDA layers 0 and 2 among MLA layers 1 and 3)."""
    return write_tiny_model(tmp_path_factory.mktemp("ling3") / "m.gguf", NAME)


# (test_ssm.py's state tests on ``path`` above, with the MLA layers' fp16 tolerance: kda_checks.py)
state_tolerance(NAME)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over


def _ungated_mla(m):
    """MLA without its head-wise output gate (Kimi's MLA, turned)."""
    m.mla_attend = lambda L, lc, xn, pos: KimiLinearModel.mla_attend(m, L, _TurnedCache(m, lc), xn, pos)


def _unturned(m):
    m.rope_cos, m.rope_sin = np.ones_like(m.rope_cos), np.zeros_like(m.rope_sin)


def _unclamped(m):
    for L in m.layers:
        if L.moe is not None:
            L.moe.swiglu_limit = L.moe.shared.swiglu_limit = 0.0
        else:
            L.swiglu_limit = 0.0


DROPS = {
    "safe gate": each_kda(kimi_decay),
    "KDA output gate": each_kda(lambda m, K: setattr(K, "g_a", weight(m, np.zeros(K.g_a.shape, np.float32)))),
    "MLA output gate": _ungated_mla,
    "rope": _unturned,
    "clamped SwiGLU": _unclamped,
    "renormalised": each_moe(norm_weights=lambda e: False),
    "scale": each_moe(weights_scale=lambda e: 1.0),
    "selection bias": each_moe(bias=lambda e: np.zeros_like(e.bias)),
}


@pytest.mark.parametrize("what", list(DROPS))
def test_the_fixture_sees_what_sets_ling3_apart(tmp_path, what):
    """The safe gate (Kimi's softplus decay fails), the full-rank KDA output gate, MLA's head-wise output gate, the
    rope on q_pe and k_pe (Kimi's unturned MLA fails), the clamped SwiGLUs, the experts' renormalised and scaled
    weights and their selection bias."""
    assert _fixture_error(tmp_path, NAME, DROPS[what]) > 3e-2, what


def test_the_vl_files_rope_sections_turn_halves(tmp_path):
    """With ``rope.dimension_sections`` llama.cpp's M-RoPE: for text the halves turned; consecutive pairs fail."""
    assert _fixture_error(tmp_path, "bailingmoe3-mrope", lambda m: None) < 1e-3
    assert _fixture_error(tmp_path, "bailingmoe3-mrope", lambda m: setattr(m, "sections", None)) > 3e-2
    assert _fixture_error(tmp_path, "bailingmoe3-mrope", _ungated_mla) > 3e-2


def test_the_trunk_runs_and_the_mtp_layer_is_left_out(tmp_path):
    """block_count 5 with nextn_predict_layers 1: four trunk layers (KDA at 0 and 2); the head tied where the file has no
    ``output.weight``."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    cfg = load_config(g)
    assert cfg.n_layer == 4 and cfg.ssm_layers == (True, False, True, False)
    g = GGUFFile(write_tiny_model(tmp_path / "t.gguf", NAME, variant="tied"))
    m = model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert m.output is m.tok_embd and m.takes_images


@pytest.mark.parametrize("tensor", [
    "blk.0.ssm_conv1d_k.weight", "blk.0.ssm_f_a.weight", "blk.2.ssm_g_a.weight", "blk.2.ssm_a", "blk.0.ssm_dt.bias",
    "blk.1.attn_gate.weight", "blk.3.attn_q_b.weight", "blk.1.attn_q_a_norm.weight", "blk.3.attn_kv_a_norm.weight",
    "blk.2.exp_probs_b.bias", "blk.1.ffn_up_shexp.weight", "blk.0.ffn_gate.weight",
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class(NAME)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def _refused(g, backend=None):
    return model_class(NAME)(g, load_config(g), backend or get_backend("cpu"), N_CTX, N_BATCH)


def test_what_is_not_supported_is_refused_in_one_line(tmp_path):
    """A non-safe gate, a bound not below 0 (llama.cpp asserts both), a shared expert of another width than the file
    states, a full-rank gate on a KDA layer (the GPU runs it: tests/test_gpu_bailingmoe3.py)."""
    cases = [
        (UnsupportedModelError, "safe_gate", lambda g: g.metadata.__setitem__("bailingmoe3.kda.safe_gate", False), None),
        (GGUFError, "gate_lower_bound", lambda g: g.metadata.__setitem__("bailingmoe3.kda.gate_lower_bound", 0.5), None),
        (GGUFError, "expert_shared_feed_forward_length 40", lambda g: g.metadata.__setitem__("bailingmoe3.expert_shared_feed_forward_length", 40), None),
        (UnsupportedModelError, "attn_gate", lambda g: g.tensors.__setitem__("blk.2.attn_gate.weight", g.tensors["blk.1.attn_gate.weight"]), None),
    ]  # fmt: skip
    for err, match, edit, backend in cases:
        g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
        edit(g)
        with pytest.raises(err, match=match) as e:
            _refused(g, backend)
        assert "\n" not in str(e.value), match


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", NAME))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and NAME in r.output, r.output
    assert "2 of 4 Kimi Delta Attention (4 heads, each 16 wide, a decay per key channel, convolution 4)" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
