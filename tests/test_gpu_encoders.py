"""The text encoders, T5 and the diffusion language models on `--device gpu` (the kernel emulator where there is no GPU,
as tests/test_gpu_archs2.py runs it), each held to the CPU on the tiny models of its own tests' llama.cpp fixtures:

* the embedding encoders (BERT, nomic-bert, jina-bert v2 / v3, nomic-bert-moe, NeoBERT, ModernBERT, EuroBERT, the
  Llama-based ones, T5's encoder, EmbeddingGemma): every token's state within 2e-3 of the CPU's largest, the attention
  both ways in ``ops/gpu/encoder.cu`` (with ALiBi, T5's relative-position buckets, window and causal masks as its
  bias); the pooled vectors through ``Model.embed``, ``kvrun embed --device gpu`` and a GPU engine's
  ``/v1/embeddings`` are the CPU's, and so are a cross-encoder's rerank scores;
* T5: the decoder's logits, the prompt fed in one batch and then a token at a time (self-attention over the GPU's
  plain fp16 ring with the bucket bias, cross-attention to the encoded prompt), within 2e-3 of the CPU's and within
  tests/test_t5.py's bound of llama.cpp's; greedy generation gives llama.cpp's tokens;
* the diffusion LMs: a denoising run gives llama.cpp's (the CPU's) tokens step by step (Dream, LLaDA); RND1's forward,
  a mixture of experts attending both ways, the CPU's logits;
* what stays refused does so in one line.

Weights are float32, so the backends' arithmetic is compared (measured: states 1e-6 .. 2.3e-4 apart, T5's gated
decoder 6.6e-4, where ggml's float16 GELU table, the same on both (t5.cu's), magnifies a last-bit difference).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gpu_checks import rel_err
import tiny_bert_family
import tiny_embed2
from tiny_diffusion import write_tiny_diffusion
from tiny_t5 import write_tiny_t5
from tinybert import write_tiny_bert
from tinygemmaembed import write_tiny_gemma_embedding
from tinymodel import write_tiny_model

from kvrun.loaders.errors import KvrunError
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

FIX = Path(__file__).parent / "fixtures"
BOUND = 2e-3  # of the CPU's largest state or logit (tests/test_gpu_archs2.py's)

#: one fixture per encoder architecture (its variants differ in weights the CPU path already reads: tests/test_bert_family.py,
#: tests/test_embed_models2.py); name -> writer(path)
ENCODERS = {
    "bert": lambda p: write_tiny_bert(p, "bert"),
    "nomic-bert": lambda p: write_tiny_bert(p, "nomic-bert"),
    **{n: (lambda p, n=n: tiny_bert_family.write_tiny_bert_family(p, n)) for n in ("jina-bert-v2", "jina-bert-v3", "nomic-bert-moe", "neo-bert")},
    **{n: (lambda p, n=n: tiny_embed2.write_tiny_embed2(p, n)) for n in ("modern-bert", "eurobert", "llama-embed", "t5encoder")},
    "gemma-embedding": lambda p: write_tiny_gemma_embedding(p),
}


def _engines(path: Path, **kw) -> tuple[Engine, Engine]:
    cpu, gpu = Engine(path, device="cpu", **kw), Engine(path, device="gpu", **kw)
    assert gpu.backend.name == "gpu"
    return cpu, gpu


def test_the_attention_kernel_is_softmax_of_scaled_scores_plus_bias(rt):
    """encoder.cu against numpy: grouped heads, more keys than queries, a bias per head, a mask shared by the heads
    (-inf where a key is hidden), a bias per head and key broadcast over the queries (ALiBi's shape)."""
    from kvrun.ops.gpu.encoder import attend_full

    rng = np.random.default_rng(0)
    Tq, Tk, H, Hkv, D = 5, 9, 4, 2, 16
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((Tq, H, D), (Tk, Hkv, D), (Tk, Hkv, D)))
    mask = np.where(rng.random((Tq, Tk)) < 0.3, -np.inf, 0.0).astype(np.float32)
    mask[:, 0] = 0.0  # (every row sees a key)
    for bias in (None, rng.standard_normal((H, Tq, Tk)).astype(np.float32), mask, rng.standard_normal((H, 1, Tk)).astype(np.float32)):
        s = np.einsum("thd,shd->hts", q, np.repeat(k, 2, axis=1)) * np.float32(0.25)
        if bias is not None:
            s = s + bias
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.einsum("hts,shd->thd", p / p.sum(-1, keepdims=True), np.repeat(v, 2, axis=1))
        out = np.empty((Tq, H, D), np.float32)
        attend_full(q, k, v, bias, 0.25, out)
        assert np.abs(out - want).max() < 1e-5


def test_the_same_kernel_on_t5s_ring_is_causal_with_the_bias_by_distance(rt):
    """encoder.cu on the fp16 ring (T5's decoder self-attention) against numpy: slots in ring order, not position order;
    empty ones (garbage, NaN here) never read; keys after a query hidden; distances past the table the last entry's."""
    from kvrun.ops.gpu.encoder import attend_relative_ring

    rng = np.random.default_rng(1)
    T, cap, n_slots, H, Hkv, D, n_dist = 3, 24, 20, 4, 2, 16, 6
    xp = rt.xp
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((Hkv, cap, D)).astype(np.float16) for _ in range(2))
    kpos = rng.permutation(cap).astype(np.int32)
    kpos[[2, 7]] = -1
    k[:, [2, 7]] = v[:, [2, 7]] = np.nan
    qpos, bias_d = np.array([9, 15, 22], np.int32), rng.standard_normal((H, n_dist)).astype(np.float32)
    out = xp.zeros((T, H, D), np.float32)
    attend_relative_ring(*(xp.asarray(a) for a in (q, k.view(np.uint16), v.view(np.uint16), kpos, qpos)), n_slots, xp.asarray(bias_d), out)
    kk, vv, kp = np.repeat(k[:, :n_slots], 2, axis=0).astype(np.float32), np.repeat(v[:, :n_slots], 2, axis=0).astype(np.float32), kpos[:n_slots]
    for t in range(T):
        seen = (kp >= 0) & (kp <= qpos[t])
        s = np.einsum("hd,hsd->hs", q[t], kk[:, seen]) + bias_d[:, np.minimum(qpos[t] - kp[seen], n_dist - 1)]
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.einsum("hs,hsd->hd", p / p.sum(-1, keepdims=True), vv[:, seen])
        assert np.abs(rt.asnumpy(out)[t] - want).max() < 1e-5


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_states_on_the_gpu_are_the_cpus(emulated, tmp_path, monkeypatch, name):
    from kvrun.ops.gpu import encoder as E

    path = ENCODERS[name](tmp_path / f"{name}.gguf")
    fx = np.load(FIX / f"embed_{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "not the fixture's model file"
    cpu, gpu = _engines(path)
    launched = []
    real = E.attend_full
    monkeypatch.setattr(E, "attend_full", lambda *a: launched.append(1) or real(*a))
    for k in (0, 1):  # (texts long enough for ModernBERT's and EmbeddingGemma's windows to hide keys)
        ids = fx[f"ids_{k}"].tolist()
        assert rel_err(cpu.embed(ids), gpu.embed(ids)) < BOUND
    assert launched  # the attention ran in the kernel, not on the host
    assert gpu.graphs is None  # (an encoder decodes nothing: no CUDA graphs kept for it)


def test_pooled_embeddings_through_the_api_the_cli_and_the_server(emulated, tmp_path):
    from click.testing import CliRunner
    from test_server import call

    from kvrun.cli import main
    from kvrun.runtime.api import Model
    from kvrun.runtime.server import make_server

    path = write_tiny_bert(tmp_path / "bert.gguf", "bert")
    cpu, gpu = (Model(e) for e in _engines(path))
    texts = ["the cat sat on the mat", "hello world"]
    want = cpu.embed(texts)
    assert np.abs(gpu.embed(texts) - want).max() < 1e-4
    assert np.abs(gpu.embed(texts, pooling="cls") - cpu.embed(texts, pooling="cls")).max() < 1e-4
    r = CliRunner().invoke(main, ["embed", str(path), "--device", "gpu", "-p", texts[0], "-p", texts[1], "--json"])
    assert r.exit_code == 0, r.output
    assert np.abs(np.array(json.loads(r.output.splitlines()[-1])["embeddings"]) - want).max() < 1e-4
    httpd = make_server(gpu, "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        status, text = call(httpd.server_address[1], "POST", "/v1/embeddings", {"model": "x", "input": texts})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 200, text
    assert np.abs(np.array([d["embedding"] for d in json.loads(text)["data"]]) - want).max() < 1e-4


def test_a_cross_encoders_scores_on_the_gpu_are_the_cpus(emulated, tmp_path):
    """BERT's rank head (models/rank.py) over the GPU's states: /v1/rerank's scores within 2e-3 of the largest."""
    from tiny_rerank import DOCS, QUERY, write_tiny_bert_reranker

    from kvrun.runtime.api import Model

    cpu, gpu = (np.array(Model(e).rerank(QUERY, DOCS)) for e in _engines(write_tiny_bert_reranker(tmp_path / "rr.gguf")))
    assert rel_err(cpu, gpu) < BOUND


@pytest.fixture(scope="module")
def t5(emulated, tmp_path_factory):
    path = write_tiny_t5(tmp_path_factory.mktemp("t5") / "t5.gguf", "t5")
    fx = np.load(FIX / "t5_t5.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "not the fixture's model file"
    return path, fx, _engines(path)


def test_t5_decoder_logits_on_the_gpu_are_the_cpus_and_llama_cpps(t5):
    from test_t5 import LOGIT_TOL

    _, fx, (cpu, gpu) = t5
    ids, forced = fx["ids_0"].tolist(), fx["forced_0"].tolist()
    rows = {}
    for e in (cpu, gpu):
        batch = e.new_cache()
        first = e.eval(batch, ids)  # (the encoder, then the start token's logits)
        rest = e.eval(batch, forced[:8], logits_all=True)
        steps = e.new_cache()
        one = [e.eval(steps, ids)] + [e.eval(steps, [t]) for t in forced[:4]]
        rows[e.backend.name] = np.concatenate([first, rest]), np.concatenate(one)
    for a, b in zip(rows["cpu"], rows["gpu"]):
        assert rel_err(a, b) < BOUND
    want = fx["prefill_0"][:9]
    assert (np.abs(rows["gpu"][0] - want).max(axis=1) / np.abs(want).max(axis=1)).max() < LOGIT_TOL
    assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (2, 4)  # (each cache's start token captured, its steps replayed)


def test_t5_greedy_generation_on_the_gpu_is_llama_cpps(t5):
    from kvrun.runtime.sampling import SamplerConfig
    from kvrun.runtime.engine import GenRequest

    _, fx, (_, gpu) = t5
    req = GenRequest(max_tokens=6, sampler=SamplerConfig(temperature=0.0))
    assert list(gpu.generate_tokens(gpu.new_cache(), fx["ids_1"].tolist(), req)) == fx["greedy_1"].tolist()[:6]


def test_t5_with_a_compressed_cache_is_refused_in_one_line(t5):
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.runtime.api import Model

    path, _, _ = t5
    with pytest.raises(KvrunError) as e:
        list(Model(Engine(path, device="gpu", n_ctx=64, kv=KVConfig(bits=4))).generate("the cat", max_tokens=2))
    assert "--kv" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["dream", "llada"])  # (the mixtures' trunk, LLaDA-MoE's and RND1's: the test below)
def test_a_denoising_run_on_the_gpu_gives_llama_cpps_tokens(emulated, tmp_path, arch):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from make_diffusion_fixtures import MAX_LENGTH, SETTINGS

    from kvrun.runtime.diffusion import ALGORITHMS, DiffusionParams, diffuse

    fx = np.load(FIX / f"diffusion_{arch}.npz")
    path = write_tiny_diffusion(tmp_path / f"{arch}.gguf", arch)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "not the fixture's model file"
    name = next(iter(SETTINGS[arch]))
    steps, eps, block, alg = SETTINGS[arch][name]
    prm = DiffusionParams(steps=steps, eps=eps, block_length=block, algorithm=ALGORITHMS[alg], max_length=MAX_LENGTH)
    seen: list[np.ndarray] = []
    gpu = Engine(path, device="gpu", n_ctx=64, n_batch=64)
    assert gpu.backend.name == "gpu"
    diffuse(gpu, list(fx["prompt"]), prm, lambda s, t, x: seen.append(x.copy()))
    want = fx[f"{name}_trace"]
    assert len(seen) == len(want) and all((a == b).all() for a, b in zip(seen, want))


def test_kvrun_diffusion_takes_device_gpu(emulated, tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = write_tiny_diffusion(tmp_path / "llada.gguf", "llada")
    args = ["diffusion", str(path), "-p", "the cat", "--no-chat-template", "-ub", "20", "--diffusion-steps", "4", "--diffusion-eps", "0.001"]
    cpu, gpu = (CliRunner().invoke(main, args + ["--device", d]) for d in ("cpu", "gpu"))
    assert gpu.exit_code == 0, gpu.output
    assert gpu.stdout == cpu.stdout and gpu.stdout.strip()


def test_rnd1s_forward_both_ways_on_the_gpu_is_the_cpus(emulated, tmp_path):
    """DiffusionMoeModel's forward (RND1's; LLaDA-MoE's is the same class but for its experts' weights) on the GPU: the
    experts in moe.cu's kernels, the rows attending both ways."""
    path = write_tiny_model(tmp_path / "rnd1.gguf", arch="rnd1", seed=1)
    n, outs = 20, []
    ids = np.random.default_rng(0).integers(0, 200, n).astype(np.int32)
    for e in _engines(path, n_ctx=64, n_batch=64):
        out = np.zeros((n, e.cfg.n_vocab), np.float32)
        e.model.forward(ids, np.arange(n, dtype=np.int32), e.cache_for(None, n, n), np.arange(n), out)
        outs.append(out)
    assert rel_err(*outs) < BOUND
