"""Multi-head latent attention's plain cache as llama.cpp keeps it: V a view of K.

In the absorbed form (models/mla.py) a token's key is ``[rope key, latent]`` and its value the latent again, K's last
``kv_lora_rank`` channels, so the plain fp16 caches (cache/plain.py, cache/gpu_plain.py) store K alone and attention
reads V through K's rows (``LayerSpec.v_in_k``; llama.cpp's ``is_mla`` cache, whose V is a view of K): DeepSeek-V2-Lite's
576 values a token a layer, not 1088.  Read so, V holds the very fp16 bits it held apart, so:

* the CPU's logits are the separate-V form's to the bit (prefill and decode steps);
* the GPU's (the kernel emulator without one) are its own separate-V form's to the bit, the CPU's within
  tests/gpu_checks.py's 2e-3, over a prefill and decode steps replayed from a captured CUDA graph, at the tiny models'
  widths (decode kernel) and at DeepSeek's 576/512 (whose decode steps take the tiled kernel);
* a session file holds K alone and resumes on either device (CPU -> GPU -> CPU).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gpu_checks import rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.factory import bits_per_value, make_cache
from kvrun.models.mla import latent_layer_spec
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine
from kvrun.runtime.sessionfile import load, save

needs_gpu = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

N_CTX, N_BATCH, BOUND = 64, 16, 2e-3
PROMPT = [int(t) for t in np.random.default_rng(7).integers(3, 200, 20)]
STEPS = (5, 9, 14)
#: the tiny fixtures' latent (tests/tinymodel.py DEEPSEEK2_GEOMETRY): rope key 8, latent 32; DeepSeek-V2-Lite's: 64, 512
ROT, RANK = 8, 32


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("mla-view") / "d.gguf", **FIXTURE_MODELS["deepseek2-v3"])


def _engine(path, device: str, apart: bool = False) -> Engine:
    """An engine on ``device``; ``apart``: its caches keep V apart from K (the form before ``v_in_k``)."""
    eng = Engine(path, device=device, n_ctx=N_CTX, n_batch=N_BATCH)
    assert eng.backend.name == device and all(s.v_in_k for s in eng.model.layer_specs())
    if apart:
        specs = [dataclasses.replace(s, v_in_k=False) for s in eng.model.layer_specs()]
        eng.model.layer_specs = lambda: specs  # (this engine's model only)
    return eng


def _run(eng: Engine) -> tuple[np.ndarray, object]:
    """Every row's logits of the prompt, then each of STEPS decoded: the rows stacked, and the cache."""
    cache = eng.new_cache()
    rows = [np.asarray(eng.eval(cache, PROMPT, logits_all=True)).reshape(len(PROMPT), -1)]
    rows += [np.asarray(eng.eval(cache, [t])).reshape(1, -1) for t in STEPS]
    return np.concatenate(rows), cache


def _greedy(eng: Engine, cache, tok: int, n: int) -> tuple[list[int], np.ndarray]:
    toks, logits = [], []
    for _ in range(n):
        lg = np.asarray(eng.eval(cache, [tok])).reshape(-1)
        tok = int(np.argmax(lg))
        toks.append(tok)
        logits.append(lg.copy())
    return toks, np.array(logits)


def _state(cache, tok: int) -> dict:
    return {"kind": "chat", "cache": cache, "tokens": [*PROMPT, tok]}


# ----------------------------------------------------------------- sizes
def test_the_plain_cache_holds_576_values_a_token_not_1088():
    """DeepSeek-V2-Lite's latent layer: fp16 K (64 + 512) and an int32 position a slot, V a view of K's last 512
    channels, on the CPU (bits per K/V value at a full context: 8 * (2 * 576 + 4) / 1088, 8.5); the separate form 1088."""
    spec = latent_layer_spec(16, 64, 512, 0.1)
    assert (spec.n_head_kv, spec.head_dim, spec.head_dim_v, spec.v_in_k) == (1, 576, 512, True)
    layer = make_cache([spec], N_CTX, N_BATCH)[0]
    assert np.shares_memory(layer.v, layer.k) and layer.v.shape == (1, N_CTX, 512)
    assert layer.nbytes() == N_CTX * (2 * 576 + 4)
    assert bits_per_value([layer], N_CTX) == pytest.approx(8 * (2 * 576 + 4) / 1088)
    apart = make_cache([dataclasses.replace(spec, v_in_k=False)], N_CTX, N_BATCH)[0]
    assert apart.nbytes() == N_CTX * (2 * 1088 + 4) and bits_per_value([apart], N_CTX) == pytest.approx(8 * (2 * 1088 + 4) / 1088)


def test_the_gpus_cache_holds_as_much_and_attends_as_the_separate_v_form(rt):
    """The device's layer as small as the CPU's; at DeepSeek's widths (K 576, wider than the decode kernel's 256: a decode
    step takes the tiled kernel, over V's strided rows) a prefill chunk and a decode step give the separate-V form's
    outputs to the bit, and the CPU's within 1e-4 (float32 sums in another order)."""
    spec = latent_layer_spec(16, 64, 512, 0.05)
    xp = rt.xp
    view, apart = make_cache([spec], N_CTX, N_BATCH, device="gpu")[0], make_cache([dataclasses.replace(spec, v_in_k=False)], N_CTX, N_BATCH, device="gpu")[0]
    cpu = make_cache([spec], N_CTX, N_BATCH)[0]
    assert view.nbytes() == cpu.nbytes() == N_CTX * (2 * 576 + 4) < apart.nbytes()
    rng = np.random.default_rng(0)
    for p, T in ((0, 8), (8, 1)):
        q = rng.standard_normal((T, 16, 576)).astype(np.float32)
        k = rng.standard_normal((T, 1, 576)).astype(np.float32)
        v = np.ascontiguousarray(k[:, :, 64:])  # (the model's contract: V is K's last channels)
        pos = np.arange(p, p + T, dtype=np.int32)
        want, got, sep = np.zeros((T, 16, 512), np.float32), xp.zeros((T, 16, 512), np.float32), xp.zeros((T, 16, 512), np.float32)
        cpu.update_and_attend(q, k, v, pos, want)
        view.update_and_attend(xp.asarray(q), xp.asarray(k), xp.asarray(v), pos, got)
        apart.update_and_attend(xp.asarray(q), xp.asarray(k), xp.asarray(v), pos, sep)
        assert np.array_equal(rt.asnumpy(got), rt.asnumpy(sep))
        assert rel_err(want, rt.asnumpy(got)) < 1e-4


# ----------------------------------------------------------------- logits
def test_the_cpus_logits_are_the_separate_v_forms_to_the_bit(path):
    got, cache = _run(_engine(path, "cpu"))
    want, cache_apart = _run(_engine(path, "cpu", apart=True))
    assert np.array_equal(got, want)
    assert cache.layers[0].nbytes() == N_CTX * (2 * (ROT + RANK) + 4) and cache_apart.layers[0].nbytes() == N_CTX * (2 * (ROT + 2 * RANK) + 4)


@needs_gpu
def test_the_gpus_logits_are_its_separate_v_forms_and_the_cpus(gpu_env, path):
    gpu = _engine(path, "gpu")
    got, _ = _run(gpu)
    assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (1, len(STEPS) - 1)
    want, _ = _run(_engine(path, "gpu", apart=True))
    assert np.array_equal(got, want)
    assert rel_err(_run(_engine(path, "cpu", apart=True))[0], got) < BOUND


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=needs_gpu)])
def test_a_batch_of_decode_steps_gives_each_sequence_its_own_logits(request, path, device):
    """A server's parallel slots: the batched decode kernels take dense V rows, so the latent's sequences attend one by
    one within the batch's forward (the weight products take both rows: 2e-3)."""
    if device == "gpu":
        request.getfixturevalue("gpu_env")
    eng = _engine(path, device)
    prompts, steps = [PROMPT[:5], PROMPT], [[4, 50], [6, 7]]
    want = []
    for p, s in zip(prompts, steps):
        c = eng.new_cache()
        eng.eval(c, p)
        want.append([np.asarray(eng.eval(c, [t])).reshape(-1) for t in s])
    caches = [eng.new_cache() for _ in prompts]
    for c, p in zip(caches, prompts):
        eng.eval(c, p)
    for j in range(2):
        outs = [np.empty((1, eng.cfg.n_vocab), np.float32) for _ in prompts]
        eng.forward_batch(caches, [np.array([s[j]]) for s in steps], [0, 0], outs)
        for w, o in zip(want, outs):
            assert rel_err(w[j], o[0]) < BOUND


# ----------------------------------------------------------------- session files
@needs_gpu
def test_a_session_file_holds_k_alone_and_goes_cpu_to_gpu_and_back(gpu_env, path, tmp_path):
    """Saved on the CPU, the file's layers view V in K again on loading (no copy of V saved, none loaded apart) and resume
    there to the bit; resumed on the GPU and saved again, then on the CPU, the chat goes on as the CPU run that never
    stopped: the same greedy tokens, the logits within 2e-3."""
    cpu, gpu = _engine(path, "cpu"), _engine(path, "gpu")
    cache = cpu.new_cache()
    tok = int(np.argmax(np.asarray(cpu.eval(cache, PROMPT)).reshape(-1)))
    save(tmp_path / "a.kvs", cpu, _state(cache, tok))
    want_toks, want = _greedy(cpu, cache, tok, 4)  # the run that never stopped
    again = load(tmp_path / "a.kvs", cpu)["cache"]
    assert all(np.shares_memory(layer.v, layer.k) for layer in again.layers)
    assert np.array_equal(_greedy(cpu, again, tok, 4)[1], want)
    on_gpu = load(tmp_path / "a.kvs", gpu)["cache"]
    toks, lg = _greedy(gpu, on_gpu, tok, 2)
    assert toks == want_toks[:2] and rel_err(want[:2], lg) < BOUND
    save(tmp_path / "b.kvs", gpu, _state(on_gpu, toks[-1]))
    back = load(tmp_path / "b.kvs", cpu)["cache"]
    assert all(np.shares_memory(layer.v, layer.k) for layer in back.layers)
    toks, lg = _greedy(cpu, back, toks[-1], 2)
    assert toks == want_toks[2:] and rel_err(want[2:], lg) < BOUND
