"""Multi-head latent attention on ``--device gpu``: DeepSeek-V2/V3 (Kimi K2, Moonlight, GigaChat3 are that file),
Mistral 4, PLM, GLM-5's dense path and MiniCPM3 give the CPU's logits there, over a prefill and decode steps replayed from
captured CUDA graphs (Kimi Linear's MLA layers beside its Kimi Delta Attention ones: tests/test_gpu_delta.py).

The GPU runs deepseek2.py's forward as the CPU does: the latent and the shared rope key cached as one KV head (the
absorbed form, models/mla.py; its kernels and models on the GPU: tests/test_mla_latent.py), or with ``KVRUN_MLA=expanded``
the latent decompressed into every head's K (``qk_nope + n_rot``) and V (``v_head_dim``), in the ordinary caches, whose
kernels take ``head_dim != head_dim_v``.  What were numpy slices
between the products are the two kernels of ``ops/gpu/mla.cu`` (``Backend.mla_latent_norm``, ``mla_qk``), so a decode
step is all kernels and a graph holds it; a third, device-only, normalises dots.note's rope key inside ``attn_kv_a_mqa``'s
rows (``ops/gpu/mla.py`` ``rope_key_norm``; the model: tests/test_dots3note.py).

Kernel-level checks run on the ``rt`` fixture (conftest.py: real CUDA where a GPU is, else the kernel emulator), the
models on ``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU), as tests/test_gpu_moe.py.  Tolerances: the layout
kernel copies, so it equals the CPU's slices exactly; the latent's RMSNorm within 1e-6 relative (float32 sums in
another order); the models' logits within 2e-3 of the CPU's (test_gpu_archs2.py's bound, float32 weights: the largest
error measured is 6.0e-5, deepseek2's prefill; through the 8-bit compressed cache 5.3e-4)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_cli_text_matches_cpu, check_decode_copies_only_logits, check_prefill_and_replayed_decode
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.ops import gpu_available
from kvrun.ops.cpu.backend import CPUBackend
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import mla as gpu_mla

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: every fixture (tests/tinymodel.py) of an architecture with latent attention that runs on the GPU: V2-Lite's layout (no
#: query LoRA, attn_kv_b), V3's (query LoRA, split attn_k_b/attn_v_b, grouped sigmoid routing), Mistral 4's, PLM's
#: (dense, squared ReLU), GLM-5's dense path, MiniCPM3's (neox rope, muP, LongRoPE short and long)
ON_GPU = ["deepseek2", "deepseek2-v3", "mistral4", "plm", "glm-dsa", "minicpm3", "minicpm3-long"]


# ----------------------------------------------------------------- kernels
def test_the_latent_is_cut_and_normed_as_on_the_cpu(rt):
    rng = np.random.default_rng(0)
    T, rank, R = 5, 48, 8
    kva = (rng.standard_normal((T, rank + R)) * 3).astype(np.float32)
    w = rng.standard_normal(rank).astype(np.float32)
    want = np.full((T, rank), np.nan, np.float32)
    CPUBackend().mla_latent_norm(kva, w, 1e-6, want)
    got = rt.xp.full((T, rank), np.nan, np.float32)
    gpu_mla.latent_norm(rt.xp.asarray(kva), rt.xp.asarray(w), 1e-6, got)
    np.testing.assert_allclose(rt.asnumpy(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 7])
def test_the_heads_are_laid_out_as_the_cpus_slices(rt, T):
    """Queries ``[nope, rope]`` -> ``[rope, nope]``; keys ``[k_rope (shared), k_nope]``: copies, bit for bit."""
    rng = np.random.default_rng(T)
    H, nope, R, rank = 3, 16, 8, 40
    q_raw = rng.standard_normal((T, H, nope + R)).astype(np.float32)
    k_nope = rng.standard_normal((T, H, nope)).astype(np.float32)
    kva = rng.standard_normal((T, rank + R)).astype(np.float32)
    want_q, want_k = (np.full((T, H, nope + R), np.nan, np.float32) for _ in range(2))
    CPUBackend().mla_qk(q_raw, k_nope, kva, want_q, want_k)
    assert (want_q[:, :, :R] == q_raw[:, :, nope:]).all() and (want_k[:, 1, :R] == kva[:, rank:]).all()
    q, k = (rt.xp.full((T, H, nope + R), np.nan, np.float32) for _ in range(2))
    dev = rt.xp.asarray
    gpu_mla.qk(dev(q_raw), dev(k_nope), dev(kva), q, k)
    np.testing.assert_array_equal(rt.asnumpy(q), want_q)
    np.testing.assert_array_equal(rt.asnumpy(k), want_k)


@pytest.mark.parametrize("T", [1, 6])
def test_the_rope_key_is_normed_in_place_as_on_the_cpu(rt, T):
    """dots.note's ``attn_k_norm`` (models/dots3note.py): ``kva[t, rank:]`` RMS-normed where it lies, as the CPU's
    slices through a scratch row; the latent beside it left bit for bit.  (T 6: two blocks of four warps.)"""
    rng = np.random.default_rng(T)
    rank, R = 40, 8
    kva = (rng.standard_normal((T, rank + R)) * 3).astype(np.float32)
    w = rng.standard_normal(R).astype(np.float32)
    want = kva.copy()
    k_rope = want[:, rank:].copy()
    CPUBackend().rms_norm(k_rope, w, 1e-6, k_rope)
    want[:, rank:] = k_rope
    got = rt.xp.asarray(kva)
    gpu_mla.rope_key_norm(got, rt.xp.asarray(w), 1e-6)
    got = rt.asnumpy(got)
    np.testing.assert_array_equal(got[:, :rank], kva[:, :rank])
    np.testing.assert_allclose(got[:, rank:], want[:, rank:], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- models
@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: the latent's cut and the heads' layout are kernels
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys)


def test_the_compressed_cache_holds_keys_and_values_of_two_widths(gpu_env, tmp_path):
    """K ``n_rot + kv_lora_rank`` wide, V ``kv_lora_rank`` (the latent cache, models/mla.py): the GPU's compressed cache
    against the CPU's, the same 8-bit codes.  (Unrotated, groups of 8: the tiny keys, 40 wide, are
    no multiple of 32; the block rotation has its own tests, tests/test_block_rotation.py.)"""
    path = write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"])
    check_prefill_and_replayed_decode(path, kv=KVConfig.parse("8,group=8,residual=8,rotate=0"), steps=(5, 9, 14, 3, 7, 8), graphs=False)


def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path):
    """On the strict CuPy stand-in (devicexp.py): the step is captured (the stand-in refuses any copy while capturing,
    as CUDA does) and a replay brings down the logits alone."""
    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"]))


def test_the_cli_runs_deepseek2_on_the_gpu(gpu_env, tmp_path):
    check_cli_text_matches_cpu(write_tiny_model(tmp_path / "d.gguf", "deepseek2"))


# (Kimi Linear runs on the GPU too, its Kimi Delta Attention layers and its unturned MLA: tests/test_gpu_delta.py)
