"""DeepSeek-V3.2's text model (``deepseek32``, models/deepseek32.py) against llama.cpp 0.3.36.

The logits are llama.cpp's (tests/fixtures/arch_deepseek32.npz, from ``tools/make_arch_fixtures.py deepseek32``;
test_models.py's FIXTURE_MODELS test runs it too); here: the fixture held in both chunkings, and failed without each
step of DeepSeek-V3's trunk the tiny model exercises (rope over pairs, YaRN's interpolation and magnitude, the sigmoid
router, its selection bias, groups, renormalisation and scale); what deepseek32 requires (keys, the indexer's tensors)
named in one line, and a context past the indexer's top_k refused in one line; ``kvrun info`` and ``kvrun run``; the GPU
(emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from arch_checks import _cfg, _moe, check_info_and_run
from test_models import N_BATCH, N_CTX, _build, _fixture_error, _run
from tiny_deepseek32 import write_tiny_deepseek32
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.common import make_rope
from kvrun.models.deepseek32 import Deepseek32Model
from kvrun.ops import get_backend

NAME = "deepseek32"
#: the largest relative logit error measured against llama.cpp 0.3.36: 4.2e-4 (both runtimes' float16 K/V)
TOLERANCE = 1e-3


def _load(g: GGUFFile, n_ctx: int = N_CTX) -> Deepseek32Model:
    return Deepseek32Model(g, load_config(g), get_backend("cpu"), n_ctx, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{NAME}.npz")
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[NAME]))
    assert cfg.n_layer == 3 and model.latent  # (the MTP layer past the trunk is not run; the latent cached)
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < TOLERANCE, f"max relative logit error {err:.2e}"
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def _no_yarn(m):
    m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_scaling_type="none", rope_scaling_factor=1.0), N_CTX, m.cfg.rope_theta)


def test_the_fixture_sees_deepseek_v3s_steps(tmp_path):
    """Rope over consecutive pairs (not halves), YaRN's interpolation past the original 8 positions and DeepSeek's
    magnitude on the scores, the sigmoid router (deepseek2's default is the softmax), its selection bias, the grouped
    choice, the renormalised weights and their scale: each taken away costs > 10x the tolerance."""
    drops = {
        "rope pairs": _cfg(rope_neox=True),
        "YaRN": _no_yarn,
        "mscale": lambda m: setattr(m, "mscale", 1.0),
        "sigmoid router": _moe(gating="softmax"),
        "selection bias": _moe(bias=None),
        "groups": _moe(n_group=0, n_group_used=0),
        "renormalised": _moe(norm_weights=False),
        "weights scale": _moe(weights_scale=1.0),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what


@pytest.mark.parametrize("tensor", ["blk.0.indexer.attn_q_b.weight", "blk.1.indexer.k_norm.bias", "blk.2.indexer.proj.weight",
                                    "blk.2.attn_k_b.weight", "blk.1.ffn_gate_shexp.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    """The indexer's tensors too: llama.cpp's deepseek32 requires them (glm-dsa's are optional), though the dense path
    reads none of them."""
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        _load(GGUFFile(write_tiny_deepseek32(tmp_path / "m.gguf", drop=(tensor,))))
    assert "\n" not in str(e.value)


def test_the_mtp_layer_is_never_read(tmp_path):
    _load(GGUFFile(write_tiny_deepseek32(tmp_path / "m.gguf", drop=("blk.3.nextn.eh_proj.weight", "blk.3.attn_q_b.weight"))))


@pytest.mark.parametrize("key", ["expert_gating_func", "attention.q_lora_rank", "attention.indexer.head_count", "attention.indexer.key_length",
                                 "attention.indexer.top_k", "attention.key_length_mla"])  # fmt: skip
def test_a_missing_key_is_one_line(tmp_path, key):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    del g.metadata[f"{NAME}.{key}"]
    with pytest.raises(GGUFError, match=f"metadata {NAME}.{key} is missing") as e:
        _load(g)
    assert "\n" not in str(e.value)


def test_an_indexer_of_another_shape_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.metadata[f"{NAME}.attention.indexer.head_count"] = 3
    with pytest.raises(GGUFError, match=r"blk.0.indexer.attn_q_b.weight has shape \(128, 24\), expected \(192, 24\)") as e:
        _load(g)
    assert "\n" not in str(e.value)


def test_a_context_past_the_indexers_top_k_is_refused_in_one_line(tmp_path):
    """Up to top_k cached keys llama.cpp's indexer chooses them all (the dense MLA kvrun runs); past it kvrun refuses."""
    g = GGUFFile(write_tiny_deepseek32(tmp_path / "m.gguf", top_k=32))
    _load(g, 32)
    with pytest.raises(UnsupportedModelError, match="deepseek32's sparse attention past 32 tokens.*at most 32") as e:
        _load(g, 64)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (deepseek2's latent-attention kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys)


def test_only_deepseek32_reads_yarns_log_multiplier(tmp_path):
    """llama.cpp's deepseek32 reads ``rope.scaling.yarn_log_multiplier`` into its attention scale as deepseek2's does;
    its glm-dsa (whose dense path deepseek32 shares) reads none, its scale's multiplier 0: the same file so loaded."""
    from kvrun.models.deepseek2 import mla_mscale
    from kvrun.models.glm_dsa import GlmDsaModel

    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    cfg = load_config(g)
    glm = GlmDsaModel(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    log_mul = float(g.arch_get("rope.scaling.yarn_log_multiplier"))  # (0.1: V3.2's mscale_all_dim 1.0)
    assert _load(g).mscale == mla_mscale(cfg, log_mul)[1] != glm.mscale == mla_mscale(cfg, 0.0)[1]
