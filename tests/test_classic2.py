"""Jais, CodeShell, Refact, PLM, PLaMo (v1) and Chameleon (models/jais.py, codeshell.py, refact.py, plm.py, plamo.py,
chameleon.py): their llama.cpp fixtures (tests/test_models.py's test_forward_matches_llamacpp) fail without what sets
each apart, and their files' faults are one-line errors."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error, _run
from tiny_classic2 import PLM_HEAD_V, PLM_KV_RANK, PLM_ROPE
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.chameleon import IMAGE_TOKENS, SUPPRESSED_LOGIT
from kvrun.models.cohere2 import Cohere2Model
from kvrun.models.gpt2 import GPT2Model
from kvrun.models.jina_bert import alibi_slopes


def _with_cfg(**changes):
    """A drop that changes the model's config (rope layout...)."""
    return lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, **changes))


def test_jais_fixture_sees_what_sets_it_apart(tmp_path):
    """ALiBi (none, or another maximum bias), muP's 1/head_dim scores (1/sqrt(head_dim) fails), the SwiGLU gate and its bias."""

    def err(drop):
        return _fixture_error(tmp_path, "jais", drop)

    def no_alibi(m):
        m.alibi_q = np.zeros_like(m.alibi_q)

    def max_bias_4(m):
        m.alibi_q = alibi_slopes(m.cfg.n_head, 4.0) * np.float32(m.cfg.head_dim)

    def sqrt_scale(m):  # (BLOOM's scores, its ALiBi channel to match)
        c = m.cfg
        m.layer_specs = types.MethodType(lambda self: [dataclasses.replace(s, scale=1.0 / np.sqrt(c.head_dim)) for s in type(self).layer_specs(self)], m)
        m.alibi_q = alibi_slopes(c.n_head, 8.0) * np.float32(np.sqrt(c.head_dim))

    def ungated(m):  # (GPT-2's GELU FFN)
        m.ffn = types.MethodType(GPT2Model.ffn, m)

    def no_gate_bias(m):
        for L in m.layers:
            L.b_gate = np.zeros_like(L.b_gate)

    for drop in (no_alibi, max_bias_4, sqrt_scale, ungated):
        assert err(drop) > 3e-2, drop.__name__
    assert err(no_gate_bias) > 1e-2


def test_codeshell_fixture_sees_what_sets_it_apart(tmp_path):
    """Rope (none, or over consecutive pairs), the grouped K/V heads (K and V swapped), the output head (tied fails)."""

    def err(drop):
        return _fixture_error(tmp_path, "codeshell", drop)

    def no_rope(m):
        m.learned_positions = True  # (GPT2Model.rope: no rope; pos_embd stays None)

    def swap_kv(m):
        m.layers = [dataclasses.replace(L, wk=L.wv, wv=L.wk, bk=L.bv, bv=L.bk) for L in m.layers]

    for drop in (no_rope, _with_cfg(rope_neox=False), swap_kv, lambda m: setattr(m, "output", m.tok_embd)):
        assert err(drop) > 3e-2


def test_refact_fixture_sees_what_sets_it_apart(tmp_path):
    """ALiBi (none, or another maximum bias; rope in its place fails), the output head (tied fails)."""

    def err(drop):
        return _fixture_error(tmp_path, "refact", drop)

    def no_alibi(m):
        m.alibi_q = np.zeros_like(m.alibi_q)

    def max_bias_4(m):
        m.alibi_q = alibi_slopes(m.cfg.n_head, 4.0) * np.float32(np.sqrt(m.cfg.head_dim))

    def roped(m):
        no_alibi(m)
        for L in m.layers:
            L.rope = True

    for drop in (no_alibi, max_bias_4, roped, lambda m: setattr(m, "output", m.tok_embd)):
        assert err(drop) > 3e-2


def test_plm_fixture_sees_what_sets_it_apart(tmp_path):
    """The squared ReLU (plain ReLU fails), rope over consecutive pairs (halves fail), the latent's RMSNorm."""

    def err(drop):
        return _fixture_error(tmp_path, "plm", drop)

    def relu(m):
        def dense_ffn(L, x, xn, o):
            up = m.buf.get("up", x.shape[0], L.w_up.shape[0])
            m.be.rms_norm(x, L.ffn_norm, m.cfg.norm_eps, xn)
            m.be.linear(L.w_up, xn, up)
            np.maximum(up, 0, out=up)
            m.be.linear_add(L.w_down, up, x)

        m.dense_ffn = dense_ffn

    def no_kv_norm(m):
        for L in m.layers:
            L.kv_a_norm = np.ones_like(L.kv_a_norm)

    for drop in (relu, _with_cfg(rope_neox=True), no_kv_norm):
        assert err(drop) > 3e-2, drop.__name__ if hasattr(drop, '__name__') else drop


def test_plm_config(tmp_path):
    """Key heads qk_nope + qk_rope wide, value heads value_length, the latent kv_lora_rank, every layer dense, the head tied."""
    cfg, m = _build(write_tiny_model(tmp_path / "p.gguf", **FIXTURE_MODELS["plm"]))
    assert (cfg.head_dim, cfg.head_dim_v, m.n_rot, m.kv_rank, m.q_rank) == (16 + PLM_ROPE, PLM_HEAD_V, PLM_ROPE, PLM_KV_RANK, 0)
    assert all(L.moe is None and L.w_gate is None and L.w_up is not None for L in m.layers)
    assert m.output is m.tok_embd and not cfg.rope_neox


def test_plamo_fixture_sees_what_sets_it_apart(tmp_path):
    """The parallel block's one RMSNorm (a LayerNorm fails), rope over halves (pairs fail), the output head (tied fails)."""

    def err(drop):
        return _fixture_error(tmp_path, "plamo", drop)

    for drop in (lambda m: setattr(m, "block_norm", types.MethodType(Cohere2Model.block_norm, m)), _with_cfg(rope_neox=False),
                 lambda m: setattr(m, "output", m.tok_embd)):  # fmt: skip
        assert err(drop) > 3e-2


def _chameleon_error(tmp_path: Path, name: str, drop) -> float:
    """As _fixture_error, the image tokens' columns left out (-FLT_MAX in llama.cpp's first row and every row of kvrun's)."""
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{name}.npz")
    _, model = _build(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    drop(model)
    got, ref = (np.delete(a, np.s_[IMAGE_TOKENS[0] : IMAGE_TOKENS[1]], axis=1) for a in (_run(model, model.cfg, fix["ids"], N_BATCH), fix["logits"]))
    return np.abs(got - ref).max() / np.abs(ref).max()


def test_chameleon_fixtures_see_what_sets_them_apart(tmp_path):
    """The per-head QK LayerNorms (none, one set of weights for all heads, or without their biases), rope over consecutive
    pairs, and the swin norm order (Chameleon-30B's: the pre-norms in its place fail, as do the swin norms on the 7B's)."""

    def no_qk_norm(m):
        m.qk_norm_rope = lambda L, q, k, q3, k3, pos, cos, sin: m.be.rope_qk(q3, k3, pos, cos, sin, False)

    def shared_qk_norm(m):
        for L in m.layers:
            L.q_norm, L.k_norm = (np.broadcast_to(n.mean(0), n.shape).copy() for n in (L.q_norm, L.k_norm))

    def no_qk_bias(m):
        for L in m.layers:
            L.q_norm_b = L.k_norm_b = None

    for name in ("chameleon", "chameleon-swin"):
        assert _chameleon_error(tmp_path, name, lambda m: None) < 1e-3
        for drop in (no_qk_norm, shared_qk_norm, no_qk_bias, _with_cfg(rope_neox=True)):
            assert _chameleon_error(tmp_path, name, drop) > 3e-2, (name, drop)
    assert _chameleon_error(tmp_path, "chameleon-swin", lambda m: setattr(m, "swin_norm", False)) > 3e-2
    assert _chameleon_error(tmp_path, "chameleon", lambda m: setattr(m, "swin_norm", True)) > 3e-2


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_chameleon_suppresses_image_tokens(tmp_path, chunk):
    """llama.cpp sets the image tokens' logits (ids 4 to 8195) to -FLT_MAX in the first output row of each batch (the
    fixture's first row); kvrun in every row it computes, so text alone is generated whatever the batching.  Unsuppressed,
    every logit matches llama.cpp's, the image columns of its other rows too."""
    fix = np.load(Path(__file__).parent / "fixtures" / "arch_chameleon.npz")
    lo, hi = IMAGE_TOKENS
    assert (fix["logits"][0, lo:hi] == SUPPRESSED_LOGIT).all() and (fix["logits"][1:] > SUPPRESSED_LOGIT).all()
    cfg, m = _build(write_tiny_model(tmp_path / "c.gguf", **FIXTURE_MODELS["chameleon"]))
    got = _run(m, cfg, fix["ids"], chunk)
    assert (got[:, lo:hi] == SUPPRESSED_LOGIT).all() and (got[:, :lo] > SUPPRESSED_LOGIT).all() and (got[:, hi:] > SUPPRESSED_LOGIT).all()
    best = got.argmax(1)
    assert ((best < lo) | (best >= hi)).all()
    m.suppress_image_tokens = False
    got, ref = _run(m, cfg, fix["ids"], chunk), fix["logits"]
    assert np.abs(got[1:] - ref[1:]).max() / np.abs(ref[1:]).max() < 1e-3
    assert not m.takes_images  # (images are refused: no projector feeds Chameleon's VQ codes)


def test_chameleon_refuses_images(tmp_path):
    """An image (--mmproj's rows) is refused in one line: Chameleon reads images as VQ codes no GGUF tokenizer has."""
    from kvrun.loaders.errors import KvrunError
    from kvrun.runtime.engine import Engine

    path = write_tiny_model(tmp_path / "c.gguf", **FIXTURE_MODELS["chameleon"])
    eng = Engine(str(path), n_ctx=N_CTX, n_batch=N_BATCH)
    with pytest.raises(KvrunError, match="chameleon models take no images") as e:
        eng.eval_embd(eng.new_cache(), np.zeros((2, eng.cfg.n_embd), np.float32))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch,tensor", [
    ("jais", "blk.0.ffn_gate.bias"), ("jais", "blk.1.attn_qkv.bias"), ("jais", "output.weight"), ("jais", "blk.0.ffn_gate.weight"),
    ("codeshell", "blk.0.attn_qkv.bias"), ("codeshell", "output.weight"), ("codeshell", "blk.1.ffn_norm.bias"),
    ("refact", "blk.0.attn_k.weight"), ("refact", "blk.1.ffn_gate.weight"),
    ("plm", "blk.0.attn_kv_a_mqa.weight"), ("plm", "blk.1.attn_kv_b.weight"), ("plm", "blk.0.ffn_up.weight"), ("plm", "blk.1.attn_kv_a_norm.weight"),
    ("plamo", "blk.0.ffn_gate.weight"), ("plamo", "output.weight"), ("plamo", "blk.1.attn_norm.weight"),
    ("chameleon", "blk.0.attn_q_norm.weight"), ("chameleon", "blk.1.attn_k_norm.weight"), ("chameleon", "blk.0.ffn_norm.weight"),
])  # fmt: skip
def test_classic2_missing_tensor_is_one_line(tmp_path, arch, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class(arch)(g, cfg, get_backend_cpu(), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def get_backend_cpu():
    from kvrun.ops import get_backend

    return get_backend("cpu")


def test_jais_needs_its_alibi_stated(tmp_path):
    """llama.cpp requires jais.attention.max_alibi_bias; so does kvrun, in one line."""
    g = GGUFFile(write_tiny_model(tmp_path / "j.gguf", "jais"))
    del g.metadata["jais.attention.max_alibi_bias"]
    with pytest.raises(GGUFError, match="max_alibi_bias is missing"):
        model_class("jais")(g, load_config(g), get_backend_cpu(), N_CTX, N_BATCH)


@pytest.mark.parametrize("name", ["jais", "codeshell", "refact", "plm", "plamo", "chameleon", "chameleon-swin"])
def test_classic2_info_and_run(tmp_path, name):
    """``kvrun info`` describes the tiny file and ``kvrun run`` generates from it (noise: random weights)."""
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and FIXTURE_MODELS[name]["arch"] in r.output, r.output
    if name in ("jais", "refact"):
        assert "none (ALiBi)" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4", "--temp", "0"])
    assert r.exit_code == 0, r.output
