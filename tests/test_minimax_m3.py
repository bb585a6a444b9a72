"""MiniMax-M3 (llama.cpp's ``minimax-m3``, models/minimax_m3.py) on the tiny model of tiny_minimax_m3.py.

The logits are llama.cpp's (fixture ``arch_minimax-m3.npz`` from tools/make_arch_fixtures.py, which
test_models.test_forward_matches_llamacpp also holds): within 4.1e-3 of logits 14.6 wide (2.8e-4 relative, llama.cpp's
float16 KV cache), in one batch and token by token.  Each step that sets the architecture apart, taken away, costs whole
logits.  MSA's dense path: the fixture is llama.cpp's run without flash attention (dense attention); its MSA graph
(flash attention on) gives the same logits within 1.1e-2 on this model and prompt, 40 positions of the 64 (top_k 8 x
block_size 8) it keeps every key of; past them it diverges (0.2-0.9 on a top_k 2 variant past 16), so a longer context
is refused in one line.  Besides: a missing tensor or key in one line; ``--device gpu`` against the CPU; ``kvrun info``
and ``kvrun run``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from arch_checks import _model, _sees_apart, check_missing_tensor
from test_models import N_BATCH, N_CTX, _build, _run
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.models.moe import route
from kvrun.ops import get_backend

ARCH = "minimax-m3"
FIXTURE = np.load(Path(__file__).parent / "fixtures" / f"arch_{ARCH}.npz")


def _routed(**fields):
    """A drop setting ``fields`` on the routed mixtures (not the dense layer's one expert)."""
    return lambda m: [setattr(L.moe, f, v) for L in m.layers if L.moe.n_expert > 1 for f, v in fields.items()]


def _acts(which: str):
    """A drop running ``which`` GLUs ("routed", "shared", "dense") as plain SwiGLU, not swiglu_oai."""

    def drop(m):
        for L in m.layers:
            if which == "dense" and L.moe.n_expert == 1 or which == "routed" and L.moe.n_expert > 1:
                L.moe.act = "silu"
            elif which == "shared" and L.moe.shared is not None:
                L.moe.shared.act = "silu"

    return drop


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[ARCH]))
    got = _run(model, cfg, FIXTURE["ids"], chunk)
    ref = FIXTURE["logits"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-4  # (measured: 2.8e-4, 4.1e-3 of 14.6)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_the_fixture_sees_what_sets_minimax_m3_apart(tmp_path):
    """The per-head QK norm, the partial neox rope, the sigmoid router with exp_probs_b, the renormalised and scaled
    weights, the shared expert, and swiglu_oai in the routed experts, the shared expert and the dense FFN each matter."""

    def no_qk_norm(m):
        for L in m.layers:
            L.q_norm = L.k_norm = None

    def full_rope(m):
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=16), N_CTX, m.cfg.rope_theta)

    _sees_apart(tmp_path, ARCH, {
        "per-head QK norm": no_qk_norm,
        "partial rope": full_rope,
        "neox rope": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, rope_neox=False)),
        "exp_probs_b": _routed(bias=None),
        "sigmoid router": _routed(gating="softmax"),
        "renormalised weights": _routed(norm_weights=False),
        "weights scale": _routed(weights_scale=1.0),
        "shared expert": _routed(shared=None),
        "routed swiglu_oai": _acts("routed"),
        "shared swiglu_oai": _acts("shared"),
        "dense swiglu_oai": _acts("dense"),
    }, tol=5e-4)  # fmt: skip


def test_the_layers(tmp_path):
    """Layer 0 dense (a mixture of one expert, weighed exactly 1), layers 1-2 sigmoid-routed experts with exp_probs_b,
    renormalised (the file says), times 2.5, beside a shared expert; every GLU swiglu_oai."""
    m = _model(tmp_path, ARCH)
    dense, *sparse = m.layers
    assert dense.moe.n_expert == 1 and dense.moe.shared is None and dense.moe.act == "swiglu_oai" and dense.w_gate is None
    assert all(L.moe.n_expert == 8 and L.moe.gating == "sigmoid" and L.moe.bias is not None and L.moe.norm_weights for L in sparse)
    assert all(L.moe.weights_scale == 2.5 and L.moe.act == L.moe.shared.act == "swiglu_oai" for L in sparse)
    assert all(L.q_norm.shape == (16,) and not L.qk_norm_full for L in m.layers) and m.rope_cos.shape[1] == 4 and m.cfg.rope_neox
    assert m.dense_ctx == 64
    _, wts = route(np.random.default_rng(0).standard_normal((5, 1)).astype(np.float32), 1, False)
    assert (wts == 1.0).all()  # (a one-expert softmax: exactly 1, whatever the logit)


def test_a_context_past_msas_dense_path_is_refused_in_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", ARCH))
    model_class(ARCH)(g, load_config(g), get_backend("cpu"), 64, N_BATCH)  # (top_k 8 x block_size 8: every key kept)
    with pytest.raises(UnsupportedModelError, match=r"sparse attention \(MSA\) past 64 tokens.*--ctx-size\) of at most 64, not 65") as e:
        model_class(ARCH)(g, load_config(g), get_backend("cpu"), 65, N_BATCH)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tensor", ["blk.1.indexer.q_proj.weight", "blk.2.indexer.k_norm.weight", "blk.1.exp_probs_b.bias",
                                    "blk.2.ffn_gate_inp.weight", "blk.1.ffn_down_shexp.weight", "blk.0.ffn_up.weight",
                                    "blk.0.attn_q_norm.weight", "output.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, ARCH, tensor)


@pytest.mark.parametrize("key", ["attention.indexer.top_k", "attention.indexer.block_size", "expert_shared_count", "expert_gating_func"])
def test_a_missing_key_is_one_line(tmp_path, key):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", ARCH))
    del g.metadata[f"{ARCH}.{key}"]
    with pytest.raises(GGUFError, match=f"{ARCH}.{key} is missing") as e:
        _model(tmp_path, ARCH, g)
    assert "\n" not in str(e.value)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the routed experts and the dense layer's one in moe.cu's kernels, the
    shared expert's swiglu_oai moe2.cu's element-wise kernel, the per-head QK-norm the trunk's)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", ARCH), capsys=capsys, steps=(5, 9, 14))


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", ARCH))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and ARCH in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-c", "64", "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])  # (the default context: the model's 1024)
    assert r.exit_code != 0 and "--ctx-size) of at most 64" in r.output and "Traceback" not in r.output, r.output


def test_decode_steps_after_the_first_allocate_no_activation_buffer(tmp_path):
    """Its leading dense layer runs the FFN as a one-expert mixture, the others route among 8 experts: one buffer name
    at two shapes a step.  Each keeps its own buffer (models/common.py ``Buffers``), so a decode step after the first
    allocates nothing (on the GPU a captured graph would point at a buffer the other shape's call had dropped)."""
    from kvrun.runtime.engine import Engine

    e = Engine(write_tiny_model(tmp_path / "m.gguf", ARCH), n_ctx=64, threads=1)
    cache, made = e.new_cache(), []
    e.eval(cache, [1, 2, 3])
    e.eval(cache, [4])
    zeros = e.model.buf.zeros
    e.model.buf.zeros = lambda *a, **k: made.append(a) or zeros(*a, **k)
    for tok in (5, 6, 7):
        e.eval(cache, [tok])
    assert made == []
