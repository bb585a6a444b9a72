"""Multi-head latent attention's absorbed form (models/mla.py): the cache holds per token only the normed latent and the
rope key every head shares, one KV head (K ``n_rot + kv_lora_rank`` wide, V ``kv_lora_rank``), as llama.cpp's absorbed
MLA, not every head's decompressed K and V.

On the CPU: the tiny DeepSeek-V2-Lite's (``attn_kv_b``, split at load) and V3's (split ``attn_k_b``/``attn_v_b``) logits
within the fixtures' bound of llama.cpp's (tests/fixtures/arch_deepseek2*.npz, 1e-3 of the largest logit) and of the
expanded form's (``KVRUN_MLA=expanded``: the same products in another order and other fp16 roundings in the cache; the
largest difference measured 6.2e-4, V2-Lite's); the cache's bytes and ``kvrun info``'s line; the compressed cache at 4 bits
and with eviction, as for any one-KV-head model.  On the GPU (the kernel emulator without one): the three kernels of
``ops/gpu/mla_latent.cu`` against the CPU's ops (float32 sums in another order: 1e-5 relative), the expanded form still
on the device (the latent form's model checks: tests/test_gpu_mla.py, every MLA fixture), the device's cache as small as
the CPU's, and DeepSeek's 576-wide latent in the device's compressed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gpu_checks import check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import KVCache
from kvrun.cache.factory import make_cache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.loaders.config import load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend, gpu_available
from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import mla_latent as gpu_mla_latent
from kvrun.runtime.engine import Engine

N_CTX, N_BATCH = 64, 16
#: the tiny models' geometry (tests/tinymodel.py DEEPSEEK2_GEOMETRY): 4 heads of 16 + 8 (rope) wide, V 12, latent 32
H, NOPE, ROT, DV, RANK, N_LAYER = 4, 16, 8, 12, 32, 3
needs_gpu = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")


def _build(path: Path):
    g = GGUFFile(path)
    cfg = load_config(g)
    return cfg, model_class(cfg.arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)


def _logits(model, tokens: np.ndarray, chunk: int, kv: KVConfig | None = None) -> tuple[np.ndarray, KVCache]:
    cache = KVCache(make_cache(model.layer_specs(), N_CTX, N_BATCH, kv))
    out = np.zeros((len(tokens), model.cfg.n_vocab), np.float32)
    for s in range(0, len(tokens), chunk):
        ch = tokens[s : s + chunk]
        pos = np.arange(cache.offset, cache.offset + len(ch), dtype=np.int32)
        model.forward(ch, pos, cache, np.arange(len(ch)), out[s : s + len(ch)])
        cache.offset += len(ch)
    return out, cache


# ----------------------------------------------------------------- CPU
@pytest.mark.parametrize(("name", "chunk"), [("deepseek2", N_BATCH), ("deepseek2-v3", N_BATCH), ("deepseek2-v3", 1)],
                         ids=["lite-prefill", "v3-prefill", "v3-decode"])  # fmt: skip
def test_latent_logits_match_llamacpp_and_the_expanded_form(tmp_path, monkeypatch, name, chunk):
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{name}.npz")
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    _, latent = _build(path)
    assert latent.latent and all(L.wk_nope is None and L.wk_lat.shape == (H, NOPE, RANK) and L.wv_lat.shape == (H, RANK, DV) for L in latent.layers)
    got, _ = _logits(latent, fix["ids"], chunk)
    monkeypatch.setenv("KVRUN_MLA", "expanded")
    _, expanded = _build(path)
    assert not expanded.latent and expanded.layer_specs()[0].n_head_kv == H
    want, _ = _logits(expanded, fix["ids"], chunk)
    assert rel_err(fix["logits"], got) < 1e-3  # (test_models.py's bound for these fixtures)
    assert rel_err(want, got) < 1e-3
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def test_the_cache_holds_the_latent_and_the_shared_rope_key(tmp_path, monkeypatch):
    """One KV head: K [rope key, latent] 40 wide, V the latent 32, the original heads' scale; the plain cache's bytes and
    ``kvrun info``'s line count 2 * 40 a token a layer (V read through K's rows: tests/test_mla_view.py), not the expanded
    2 * 4 * (24 + 12).  (DeepSeek-V2-Lite: 576 values against 16 * (192 + 128), 8.9x fewer; V3's 128 heads, 71x.)"""
    path = write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"])
    cfg, model = _build(path)
    spec = model.layer_specs()[0]
    assert (spec.n_head, spec.n_head_kv, spec.head_dim, spec.head_dim_v) == (H, 1, ROT + RANK, RANK)
    assert np.isclose(spec.scale, model.mscale**2 / np.sqrt(NOPE + ROT))
    held = KVCache(make_cache(model.layer_specs(), N_CTX, N_BATCH)).nbytes()
    assert held == N_LAYER * N_CTX * (2 * (ROT + RANK) + 4)  # (fp16 K, V read through it: tests/test_mla_view.py; an int32 position a slot)
    assert sum(type(model).cache_widths(cfg, GGUFFile(path))) * 2 == N_LAYER * (ROT + RANK) * 2  # (the class's count: models/mla.py)
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0 and "16-bit 240 B" in info.output, info.output
    assert "8-bit 216 B" in info.output  # (the compressed cache keeps V apart: 3 layers x (40 + 32) values at 8 bits)
    monkeypatch.setenv("KVRUN_MLA", "expanded")
    cfg, model = _build(path)
    assert KVCache(make_cache(model.layer_specs(), N_CTX, N_BATCH)).nbytes() == N_LAYER * N_CTX * (2 * H * (NOPE + ROT + DV) + 4)
    assert sum(type(model).cache_widths(cfg, GGUFFile(path))) * 2 == N_LAYER * H * (NOPE + ROT + DV) * 2


def test_the_compressed_cache_holds_the_latent_as_any_mqa_models(tmp_path):
    """The latent through the compressed cache (groups of 8: the tiny keys, 40 wide, are no multiple of 32, nor a power
    of two for the Hadamard rotation; DeepSeek's 576 and 512 are multiples of 32, 576 no power of two either): 8 bits
    within 5e-3 of the fp16 cache (1.3e-3 measured), 4 bits its greedy tokens and within 0.15 (9.4e-2 measured: the tiny
    random model's latent through 16 levels); evicting to a budget of 24 tokens (h2o) the layers hold no more, and
    until the budget is reached the logits are the unevicted ones."""
    fix = np.load(Path(__file__).parent / "fixtures" / "arch_deepseek2-v3.npz")
    _, model = _build(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"]))
    want, _ = _logits(model, fix["ids"], N_BATCH)
    got8, cache = _logits(model, fix["ids"], N_BATCH, KVConfig.parse("8,group=8,residual=8,rotate=0"))
    assert cache.layers[0].spec.n_head_kv == 1 and rel_err(want, got8) < 5e-3
    got4, _ = _logits(model, fix["ids"], N_BATCH, KVConfig.parse("4,group=8,residual=8,rotate=0"))
    assert rel_err(want, got4) < 0.15 and (got4.argmax(1) == want.argmax(1)).all()
    evicted, cache = _logits(model, fix["ids"], N_BATCH, KVConfig.parse("8,group=8,residual=8,rotate=0,policy=h2o,budget=24"))
    assert max(layer.n_tokens() for layer in cache.layers) <= 24 and np.isfinite(evicted).all()
    np.testing.assert_array_equal(evicted[:N_BATCH], got8[:N_BATCH])


def test_the_cli_runs_the_latent_through_4_bit_keys_and_values(tmp_path):
    path = write_tiny_model(tmp_path / "d.gguf", "deepseek2")
    args = ["run", str(path), "-p", "the", "-n", "6", "--temp", "0", "-c", "64"]
    r = CliRunner().invoke(main, args + ["--kv-bits", "4", "--kv-group", "8", "--kv-residual", "4", "--kv-no-rotate"])
    assert r.exit_code == 0, r.output
    assert "| kv " in r.output  # (the stats line: the cache's bytes)


# ----------------------------------------------------------------- GPU
@needs_gpu
def test_the_latent_kernels_match_the_cpus_ops(rt):
    """The cache's rows (the latent's RMSNorm: 1e-6), the queries' absorption and the heads' outputs (float32 products
    summed in another order: 1e-5), against ops/cpu/backend.py's on random inputs, prefill-sized and one token."""
    rng = np.random.default_rng(0)
    cpu, dev = CPUBackend(), rt.xp.asarray
    h, nope, rot, rank, dv = 3, 16, 8, 40, 12
    wk = rng.standard_normal((h, nope, rank)).astype(np.float32)
    wv = rng.standard_normal((h, rank, dv)).astype(np.float32)
    norm_w = rng.standard_normal(rank).astype(np.float32)
    for T in (7, 1):
        kva = (rng.standard_normal((T, rank + rot)) * 3).astype(np.float32)
        q_raw = rng.standard_normal((T, h, nope + rot)).astype(np.float32)
        att = rng.standard_normal((T, h, rank)).astype(np.float32)
        k, v = np.full((T, 1, rot + rank), np.nan, np.float32), np.full((T, 1, rank), np.nan, np.float32)
        q, out = np.full((T, h, rot + rank), np.nan, np.float32), np.full((T, h, dv), np.nan, np.float32)
        cpu.mla_latent_kv(kva, norm_w, 1e-6, k, v)
        cpu.mla_absorb_q(q_raw, wk, q)
        cpu.mla_heads_out(att, wv, out)
        assert (k[:, 0, :rot] == kva[:, rank:]).all() and (k[:, 0, rot:] == v[:, 0]).all()
        np.testing.assert_allclose(q[:, :, rot:], np.einsum("thn,hnr->thr", q_raw[:, :, :nope], wk), rtol=1e-5, atol=1e-5)
        gk, gv = rt.xp.full(k.shape, np.nan, np.float32), rt.xp.full(v.shape, np.nan, np.float32)
        gq, gout = rt.xp.full(q.shape, np.nan, np.float32), rt.xp.full(out.shape, np.nan, np.float32)
        gpu_mla_latent.latent_kv(dev(kva), dev(norm_w), 1e-6, gk, gv)
        gpu_mla_latent.absorb_q(dev(q_raw), dev(wk), gq)
        gpu_mla_latent.heads_out(dev(att), dev(wv), gout)
        np.testing.assert_allclose(rt.asnumpy(gk), k, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(rt.asnumpy(gv), v, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(rt.asnumpy(gq)[:, :, :rot], q[:, :, :rot])  # (the rope part: a copy)
        np.testing.assert_allclose(rt.asnumpy(gq), q, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rt.asnumpy(gout), out, rtol=1e-5, atol=1e-5)


@needs_gpu
def test_the_gpus_cache_holds_the_latent_and_the_expanded_form_still_runs(gpu_env, tmp_path, monkeypatch):
    """The device's cache of the latent as small as the CPU's (its logits against the CPU's: tests/test_gpu_mla.py);
    ``KVRUN_MLA=expanded`` on the device: the CPU's logits (2e-3) over a prefill and replayed decode steps."""
    path = write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"])
    gpu = Engine(path, device="gpu", n_ctx=N_CTX, n_batch=N_BATCH)
    cache = gpu.new_cache()
    assert gpu.model.latent and cache.layers[0].spec.n_head_kv == 1
    assert cache.nbytes() <= KVCache(make_cache(gpu.model.layer_specs(), N_CTX, N_BATCH)).nbytes()
    monkeypatch.setenv("KVRUN_MLA", "expanded")
    gpu, cb = check_prefill_and_replayed_decode(path, steps=(5, 9))
    assert not gpu.model.latent and cb.layers[0].spec.n_head_kv == H


def test_a_latent_as_wide_as_deepseeks_runs_in_the_gpus_compressed_cache(gpu_env):
    """DeepSeek's latent keys (64 + 512), wider than the 256 the GPU's compressed decode kernel keeps in registers at
    once, are scored in passes: V2-Lite's 16 heads on the one KV head, a prefill chunk past the fp16 window and a decode
    step at 4 bits (unrotated: 576 is no power of two), the CPU's compressed cache's outputs within 1e-4 (the same
    codes; float32 sums in another order).  (More: tests/test_wide_heads_chunks.py.)"""
    from kvrun.cache.base import LayerSpec
    from kvrun.ops.gpu import kernels as K

    spec = LayerSpec(16, 1, 576, 512, 0, 0.1)
    kv = KVConfig.parse("4,residual=4,rotate=0")
    cpu, gpu = make_cache([spec], 64, 16, kv)[0], make_cache([spec], 64, 16, kv, device="gpu")[0]
    cpu.int_keys = False  # float queries, as the device's
    rng, xp = np.random.default_rng(0), K.runtime().xp
    for p, T in ((0, 8), (8, 1)):
        q, k, v = (rng.standard_normal((T, h, d)).astype(np.float32) for h, d in ((16, 576), (1, 576), (1, 512)))
        pos = np.arange(p, p + T, dtype=np.int32)
        want, got = np.zeros((T, 16, 512), np.float32), xp.zeros((T, 16, 512), np.float32)
        cpu.update_and_attend(q, k, v, pos, want)
        gpu.update_and_attend(xp.asarray(q), xp.asarray(k), xp.asarray(v), pos, got)
        assert rel_err(want, K.runtime().asnumpy(got)) < 1e-4


def test_the_default_compressed_cache_fits_the_latents_odd_widths():
    """The latent's keys (n_rot + rank) need not be a power of two nor a multiple of the default group: the default
    cache shrinks the group to one that divides both widths, and below 8 bits rotates the keys by the block-diagonal
    Hadamard (40 = 5 x 8; tests/test_block_rotation.py), the values by H_32; a rotation asked for outright is the
    default's, and only an odd head (blocks of one channel) is refused, in one line."""
    from kvrun.cache.base import LayerSpec
    from kvrun.cache.quant import hadamard

    spec = LayerSpec(4, 1, 40, 32, 0, 0.1)  # (the tiny fixtures' latent: 8 + 32, and 32)
    for bits in (8, 4, 2):
        layer = make_cache([spec], 64, 16, KVConfig(bits=bits))[0]
        assert layer.kv.group == 8 and (layer.rot_v is None) == (bits == 8), (bits, layer.kv)
        assert (layer.basis.rot is None) == (bits == 8)
    np.testing.assert_array_equal(make_cache([spec], 64, 16, KVConfig(bits=4, rotate=True))[0].basis.rot, hadamard(40))
    with pytest.raises(ValueError, match="even head size .*, got 41"):
        make_cache([LayerSpec(4, 1, 41, 32, 0, 0.1)], 64, 16, KVConfig(bits=4, rotate=True))
