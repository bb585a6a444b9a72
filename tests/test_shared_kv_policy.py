"""Eviction policies on layers that share K/V (Gemma 3n, Gemma 4's E2B/E4B): cache/shared_compressed.py.

A sharing layer stores nothing and reads its source's slots, so the source's policy ranks those slots by the
attention of the source and of every layer that reads it: the sharers' decode kernel adds its probabilities into the
source policy's accumulator (``Policy.shared_acc``), their prompt chunks hand theirs to ``Policy.prefill_shared``.
Specified here: a run with a budget evicts to it and is deterministic; a token only the sharing layer attends to is
kept, and the scores are the policy's of both layers' float64 probabilities summed; a budget that holds the whole
context gives the policy-free cache's logits bit for bit; the GPU's cache (the kernel emulator without a GPU, its decode
steps captured and replayed on the strict CuPy stand-in) holds the CPU's tokens and scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.cache.base import LayerSpec
from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.factory import make_cache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.policies import make_policy
from kvrun.cache.shared_compressed import SharedCompressedLayerCache
from kvrun.runtime.engine import Engine
from tinymodel import FIXTURE_MODELS, write_tiny_model

N_CTX, N_BATCH, STEPS = 64, 16, 4
PROMPT = [int(t) for t in np.random.default_rng(3).integers(3, 60, 37)]  # chunks of 16, 16 and 5 tokens
#: the policies that rank by attention (KeyDiff and StreamingLLM read none: the sharers change nothing for them)
ATTENTION = ["h2o", "tova", "snapkv", "gkv"]
D = 32  # the unit tests' head size: a source (global) layer and one layer that reads it, 4 query heads over 2 KV heads
SPECS = [LayerSpec(4, 2, D, D, 0, 1.0, 0.0), LayerSpec(4, 2, D, D, 0, 1.0, 0.0, kv_from=0)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Engine]:
    """Tiny Gemma 4 E2B (layer 2 global, layer 5 reading its K/V; window layers 3, 4 reading layer 1's) and tiny
    Gemma 3n (global layers 4, 9, 14, 19, layer 24 reading 19's)."""
    d = tmp_path_factory.mktemp("shared_kv_policy")
    return {arch: Engine(write_tiny_model(d / f"{arch}.gguf", **FIXTURE_MODELS[arch]), device="cpu", n_ctx=N_CTX, n_batch=N_BATCH)
            for arch in ("gemma4", "gemma3n")}  # fmt: skip


@pytest.fixture
def gemma4(engines) -> Engine:
    return engines["gemma4"]


def _run(eng: Engine, kv: str) -> tuple[np.ndarray, object]:
    """The prompt's logits, then STEPS greedy decode steps: (logits [1 + STEPS, n_vocab], the cache)."""
    cache = eng.cache_for(KVConfig.parse(kv), N_CTX, N_BATCH)
    rows = [eng.eval(cache, PROMPT)[0]]
    for _ in range(STEPS):
        rows.append(eng.eval(cache, [int(np.argmax(rows[-1]))])[0])
    return np.array(rows), cache


def _sources(cache) -> list[CompressedLayerCache]:
    return [L for L in cache.layers if isinstance(L, CompressedLayerCache) and L.policy is not None]


# ---------------------------------------------------------------- a model's runs


@pytest.mark.parametrize("arch, policy", [("gemma4", p) for p in ATTENTION] + [("gemma3n", "snapkv")])
def test_a_budget_evicts_to_it_and_the_run_is_deterministic(engines, arch, policy):
    kv = f"4,residual=4,policy={policy},budget=24"
    a, cache = _run(engines[arch], kv)
    b, _ = _run(engines[arch], kv)
    np.testing.assert_array_equal(a, b)
    sources = _sources(cache)  # the global layers; window layers take no policy
    assert len(sources) == {"gemma4": 1, "gemma3n": 4}[arch]
    assert all(L.N == 24 and L.n_tokens() == 24 < len(PROMPT) + STEPS for L in sources)
    shared = [L for L in cache.layers if isinstance(L, SharedCompressedLayerCache) and L.source in sources]
    assert shared and all(L.n_tokens() == 24 for L in shared)


@pytest.mark.parametrize("policy", ATTENTION + ["keydiff"])
def test_a_budget_that_holds_the_context_gives_the_policy_free_caches_logits(gemma4, policy):
    """Nothing evicted: the sharers' probabilities change scores only, never what is attended (bit for bit)."""
    want, _ = _run(gemma4, "4,residual=4")
    got, cache = _run(gemma4, f"4,residual=4,policy={policy},budget={N_CTX}")
    np.testing.assert_array_equal(got, want)
    assert _sources(cache)[0].n_tokens() == len(PROMPT) + STEPS


# ---------------------------------------------------------------- the sharers' attention in the scores


def _feed(source, shared, chunks, q_src, q_shared, k, v) -> None:
    """Chunks of ``chunks`` tokens through the source, then the sharing layer (as a model's forward)."""
    p = 0
    for T in chunks:
        pos = np.arange(p, p + T, dtype=np.int32)
        out = np.zeros((T, 4, D), np.float32)
        source.update_and_attend(q_src[p : p + T], k[p : p + T], v[p : p + T], pos, out)
        shared.update_and_attend(q_shared[p : p + T], None, None, pos, out)
        p += T


@pytest.mark.parametrize("policy", ATTENTION)
def test_a_token_only_the_sharing_layer_attends_to_is_kept(policy):
    """Token 5's key: the source's queries point away from it (it gets ~e^-20 of their attention), the sharer's at it.
    Kept through 24 steps over a budget of 12; with the sharer's queries pointing away too, every policy but SnapKV
    (whose pooling over 7 neighbours keeps it among theirs) evicts it at the first full pool."""
    rng = np.random.default_rng(1)
    n, x = 8 + 24, 5
    k = (rng.standard_normal((n, 2, D)) * 3 / np.sqrt(D)).astype(np.float32)
    v = rng.standard_normal((n, 2, D)).astype(np.float32)
    toward = np.broadcast_to(np.repeat(k[x], 2, axis=0) * 8.0, (n, 4, D)).copy()  # each query head along its KV head's key
    kept = {}
    for sign in (1, -1):
        source, shared = make_cache(SPECS, N_CTX, N_BATCH, KVConfig.parse(f"16,policy={policy},budget=12,residual=4,sinks=2"))
        _feed(source, shared, [8] + [1] * 24, -toward, sign * toward, k, v)
        assert source.n_tokens() == 12
        kept[sign] = bool((source.pos == x).any(axis=1).all())  # (every head holds it)
    assert kept[1]
    assert not kept[-1] or policy == "snapkv"


@pytest.mark.parametrize("policy", ATTENTION)
def test_the_scores_are_the_policys_of_both_layers_probabilities_summed(policy):
    """Lossless pools (fp16 keys, no basis), nothing evicted: each held token's state is what the policy's own hooks
    make of the float64 probabilities of the source's queries plus the sharer's, position by position (two prompt
    chunks, decode steps of 1 and 3 tokens)."""
    rng = np.random.default_rng(2)
    chunks = [8, 8, 1, 1, 3, 1]
    n = sum(chunks)
    q_src, q_sh = (rng.standard_normal((n, 4, D)).astype(np.float32) for _ in range(2))
    k = rng.standard_normal((n, 2, D)).astype(np.float32)
    v = rng.standard_normal((n, 2, D)).astype(np.float32)
    source, shared = make_cache(SPECS, N_CTX, N_BATCH, KVConfig.parse(f"16,policy={policy},budget={N_CTX},residual=4,sinks=2"))
    _feed(source, shared, chunks, q_src, q_sh, k, v)

    kd = k.astype(np.float16).astype(np.float64)  # [n, 2, D] as the cache holds them

    def probs(q: np.ndarray, p0: int, T: int) -> np.ndarray:
        """[2, T, p0 + T]: queries p0 .. p0 + T over keys 0 .. p0 + T, causal, float64, each KV head's query heads summed."""
        s = np.einsum("thd,nhd->htn", q[p0 : p0 + T].astype(np.float64), np.repeat(kd[: p0 + T], 2, axis=1))  # [4, T, n]
        s = np.where(np.arange(p0 + T)[None, None, :] <= p0 + np.arange(T)[None, :, None], s, -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        pr = e / e.sum(axis=-1, keepdims=True)  # [4, T, n]
        return pr.reshape(2, 2, T, p0 + T).sum(axis=1)

    ref = make_policy(policy, 2, n)  # slots = positions
    p0 = 0
    for T in chunks:
        both = probs(q_src, p0, T) + probs(q_sh, p0, T)
        if T > 4:  # a prompt chunk: the prefill hook, then the tokens adopt their scores
            for h in range(2):
                ref.prefill(h, both[h].astype(np.float32), np.arange(p0, dtype=np.int64))
            for t in range(T):
                ref.on_insert(np.full(2, p0 + t, np.int64), p0 + t, k[p0 + t])
                ref.adopt(np.full(2, p0 + t, np.int64), t)
        else:  # a decode step: the tokens in, then one step's probabilities
            for t in range(T):
                ref.on_insert(np.full(2, p0 + t, np.int64), p0 + t, k[p0 + t])
            ref.before_step()
            ref.acc[:, : p0 + T] += both.sum(axis=1).astype(np.float32)
            ref.after_step()
        p0 += T
    pol = source.policy
    # (SnapKV's and G-KV's ``acc``, the source's own step, zeroed before its next: the ranks come from the rest)
    for mine, want in [(a, b) for a, b in zip(pol.per_slot(), ref.per_slot()) if a is not pol.acc or a is pol.score]:
        for h in range(2):
            held = source.pos[h] >= 0
            np.testing.assert_allclose(mine[h, held], want[h, source.pos[h, held]], rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- the GPU's cache


def test_the_gpu_cache_keeps_the_cpus_tokens_and_scores(monkeypatch, tmp_path):
    """Tiny Gemma 4 with G-KV (its own fold of the sharers' step) over a budget of 16: a 36-token prompt (chunks of 16,
    the first calibrating on the host, the second on the device, and 4) then 4 decode steps on the kernel emulator, on the strict CuPy stand-in (no copy while a graph is captured, array operations
    recorded): the steps after the first replayed from its graph, the logits within 2e-3 of the CPU's, the same tokens
    held and the scores within 1e-4 of the largest."""
    from gpu_checks import rel_err, strict_stand_in

    from kvrun.ops.gpu import kernels as K

    monkeypatch.setattr(CompressedLayerCache, "int_keys", False)  # (the device's kernels keep float queries)
    path = write_tiny_model(tmp_path / "g4.gguf", **FIXTURE_MODELS["gemma4"])
    kv = KVConfig.parse("8,residual=4,policy=gkv,budget=16")
    ids, steps = [int(t) for t in np.random.default_rng(3).integers(0, 200, 36)], (5, 9, 14, 3)
    cpu = Engine(path, device="cpu", n_ctx=N_CTX, n_batch=N_BATCH, kv=kv)
    ca = cpu.new_cache()
    want = [cpu.eval(ca, ids)] + [cpu.eval(ca, [t]) for t in steps]
    with strict_stand_in(monkeypatch):
        gpu = Engine(path, device="gpu", n_ctx=N_CTX, n_batch=N_BATCH, kv=kv)
        cb = gpu.new_cache()
        got = [gpu.eval(cb, ids)] + [gpu.eval(cb, [t]) for t in steps]
        assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (1, len(steps) - 1)
        (sa,), (sb,) = _sources(ca), _sources(cb)
        assert sb.n_tokens() == 16
        np.testing.assert_array_equal(sb.held_positions(), sa.pos)
        for a, b in zip(sa.policy.per_slot(), sb.policy.per_slot()):
            b = K.runtime().asnumpy(b)
            assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    for a, b in zip(want, got):
        assert rel_err(a, b) < 2e-3
