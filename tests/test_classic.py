"""StarCoder v1 / GPT-BigCode, BLOOM and MPT (models/starcoder.py, bloom.py, mpt.py): their llama.cpp fixtures
(tests/test_models.py's test_forward_matches_llamacpp) fail without what sets each apart, and their files' faults
are one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_classic import STARCODER_CONTEXT
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.jina_bert import alibi_slopes
from kvrun.ops import get_backend


def test_starcoder_fixtures_see_what_sets_them_apart(tmp_path):
    """The learned positions, the fused QKV split as one query block and a single K then V head (swapping K and V
    breaks it), and the output head (tied, or its own)."""

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    def no_positions(m):
        m.pos_embd = None

    def swap_kv(m):
        m.layers = [dataclasses.replace(L, wk=L.wv, wv=L.wk, bk=L.bv, bv=L.bk) for L in m.layers]

    def tied(m):
        m.output = m.tok_embd

    for name in ("starcoder", "starcoder-output-head"):
        assert err(name, no_positions) > 3e-2, name
        assert err(name, swap_kv) > 3e-2, name
    assert err("starcoder-output-head", tied) > 3e-2


def test_starcoder_config(tmp_path):
    """Multi-query (one K/V head for the four query heads), positions STARCODER_CONTEXT rows, no rope, tied head."""
    cfg, m = _build(write_tiny_model(tmp_path / "s.gguf", **FIXTURE_MODELS["starcoder"]))
    assert (cfg.n_head, cfg.n_head_kv, cfg.n_ctx_train) == (4, 1, STARCODER_CONTEXT)
    assert m.pos_embd.shape[0] == STARCODER_CONTEXT and not m.parallel_residual
    assert m.layers[0].wk.shape[0] == cfg.head_dim and m.layers[0].wv.shape[0] == cfg.head_dim
    assert m.output is m.tok_embd and m.output_b is None
    assert all(s.n_head_kv == 1 for s in m.layer_specs())


def test_bloom_and_mpt_fixtures_see_what_sets_them_apart(tmp_path):
    """ALiBi (none, or the wrong maximum bias, fails), BLOOM's LayerNorm on the embeddings and no rope on Q and K,
    its head tied or its own; MPT's clip_qkv."""

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    def no_alibi(m):
        m.alibi_q = np.zeros_like(m.alibi_q)

    def max_bias(b):
        return lambda m: setattr(m, "alibi_q", alibi_slopes(m.cfg.n_head, b) * np.float32(np.sqrt(m.cfg.head_dim)))

    def no_tok_norm(m):
        m.tok_norm = None

    def roped(m):  # (GPT-NeoX's hook: learned_positions False turns Q and K)
        m.rope = lambda q3, k3, pos: m.be.rope_qk(q3, k3, pos, m.rope_cos, m.rope_sin, False)

    def no_clip(m):
        m.clamp_kqv = 0.0

    for name in ("bloom", "bloom-output-head", "mpt", "mpt-clip-qkv"):
        assert err(name, no_alibi) > 3e-2, name
        assert err(name, max_bias(4.0)) > 3e-2, name
        assert err(name, roped) > (1e-2 if name == "mpt-clip-qkv" else 3e-2), name  # (clipped Q and K turn less)
    assert err("bloom", no_tok_norm) > 3e-2
    assert err("bloom-output-head", lambda m: setattr(m, "output", m.tok_embd)) > 3e-2
    assert err("mpt-clip-qkv", no_clip) > 3e-2


def test_bloom_and_mpt_configs(tmp_path):
    """ALiBi's slopes (BLOOM's fixed maximum bias 8, MPT's read from the file) ride one more key channel; MPT has no
    biases (zero where the file has none) and clips where the file says so."""
    cfg, m = _build(write_tiny_model(tmp_path / "b.gguf", **FIXTURE_MODELS["bloom"]))
    np.testing.assert_allclose(m.alibi_q, [1 / 4 * 4, 1 / 16 * 4, 1 / 64 * 4, 1 / 256 * 4], rtol=1e-6)  # (slope * sqrt(16))
    assert all(s.head_dim == cfg.head_dim + 1 and s.head_dim_v == cfg.head_dim for s in m.layer_specs())
    assert m.tok_norm is not None and m.pos_embd is None and m.output is m.tok_embd
    cfg, m = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["mpt-clip-qkv"]))
    assert m.clamp_kqv == 0.5 and m.tok_norm is None and m.output_norm_b is None and not np.any(m.layers[0].bq)
    _, m = _build(write_tiny_model(tmp_path / "m2.gguf", **FIXTURE_MODELS["mpt"]))
    assert m.clamp_kqv == 0.0


@pytest.mark.parametrize("arch,tensor", [
    ("starcoder", "position_embd.weight"), ("starcoder", "blk.1.attn_qkv.bias"), ("starcoder", "blk.0.ffn_norm.bias"),
    ("starcoder", "output_norm.bias"), ("bloom", "token_embd_norm.weight"), ("bloom", "blk.0.attn_qkv.bias"),
    ("bloom", "blk.1.ffn_up.bias"), ("mpt", "blk.0.attn_output.weight"), ("mpt", "blk.1.ffn_norm.weight"), ("mpt", "output_norm.weight"),
])  # fmt: skip
def test_classic_missing_tensor_is_one_line(tmp_path, arch, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class(arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_mpt_needs_its_alibi_stated(tmp_path):
    """llama.cpp requires mpt.attention.max_alibi_bias; so does kvrun, in one line."""
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", "mpt"))
    del g.metadata["mpt.attention.max_alibi_bias"]
    with pytest.raises(GGUFError, match="max_alibi_bias is missing"):
        model_class("mpt")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


def test_alibi_takes_a_compressed_cache(tmp_path):
    """The keys' position channel holds exact positions in fp16 only, so a compressed cache stores the keys without it and
    adds ALiBi's bias from its slots' positions (tests/test_alibi_compressed.py); the plain cache keeps the channel."""
    from kvrun.cache.compressed import CompressedLayerCache
    from kvrun.cache.factory import make_cache
    from kvrun.cache.kvconfig import KVConfig

    _, model = _build(write_tiny_model(tmp_path / "b.gguf", "bloom"))
    assert all(s.position_channel for s in model.layer_specs())
    make_cache(model.layer_specs(), N_CTX, N_BATCH)  # (the plain cache takes it)
    layers = make_cache(model.layer_specs(), N_CTX, N_BATCH, KVConfig(bits=4))
    assert all(isinstance(layer, CompressedLayerCache) and layer.key_dim == model.cfg.head_dim for layer in layers)


@pytest.mark.parametrize("name", ["starcoder", "starcoder-output-head", "bloom", "mpt-clip-qkv"])
def test_classic_info_and_run(tmp_path, name):
    """``kvrun info`` describes the tiny file and ``kvrun run`` generates from it (noise: random weights)."""
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and FIXTURE_MODELS[name]["arch"] in r.output, r.output
    if name.startswith("starcoder"):
        assert "none (learned positions" in r.output, r.output
    else:
        assert "none (ALiBi)" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4", "--temp", "0"])
    assert r.exit_code == 0, r.output
