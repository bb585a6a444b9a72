"""Eviction policies on Llama 4's chunked-attention layers, on the CPU and on the device (kernel emulator).

A chunked layer (``LayerSpec.window`` -c, llama.cpp's n_attn_chunk) lets a query see only the tokens of its own chunk
of c positions.  A policy ranks a token by the attention it got, so without more an older chunk's tokens, which no
query sees again, would keep their slots over the current chunk's.  The compressed cache therefore puts them first
(``cache/insert.py`` chunk_floor): a full pool's oldest token goes before any ranking where it is of an older chunk,
never merged, never demoted but into an empty slot, and a window token of an older chunk is dropped, not spilled;
within the current chunk the policy ranks as it does elsewhere.  The same on the device (``kvquant.cu`` kq_pick, the
chunk start read from the token's position on the device, so a replayed CUDA graph is right).

Checked on the tiny llama4 with its chunk cut to 16 positions, three chunks: every policy deterministic within its
budget, an older chunk's slots all gone once the current chunk fills a short budget; with a budget of the sinks and
one chunk (every layer chunked) the logits of the cache that keeps every token, where a policy that kept the older
chunks is far off; a budget past the context the policy-free cache's logits; the device's path against the CPU's.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.policies import POLICIES
from kvrun.models import llama4
from kvrun.runtime.engine import Engine

CHUNK = 16  # the runs cross two chunk boundaries (16 and 32)
PROMPT = [int(t) for t in np.random.default_rng(5).integers(0, 200, 20)]
#: after the prompt, steps of these many tokens, to position 45 (the third chunk holds 14): one of 8 across the
#: second boundary (28 to 35), a prefill chunk into a calibrated cache (the device's kv_policy_push_tokens)
STEPS = (1,) * 8 + (8,) + (1,) * 10
N_GEN = sum(STEPS)
LAST = len(PROMPT) + N_GEN - 1
#: 2 sinks, a 4-token fp16 window, 6 quantized slots: a budget short of a chunk
SHORT = "4,budget=12,sinks=2,residual=4"


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("l4") / "l4.gguf", **FIXTURE_MODELS["llama4"], qtype=Q.F32)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(llama4, "CHUNK", CHUNK)


def _run(path, kv: str | None, device: str = "cpu", after=None) -> np.ndarray:
    """The prompt's rows, then N_GEN tokens fed in STEPS (the same for every cache, not sampled, so that one
    near-tie cannot part two runs): [20 + N_GEN, n_vocab].  after(cache, pos): called after each step, at its last."""
    eng = Engine(path, device=device, n_ctx=64, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
    cache = eng.new_cache()
    for layer in cache.layers:
        if isinstance(layer, CompressedLayerCache):
            layer.int_keys = False  # (float queries: the device's, and no VNNI-dependent rounding)
    rows = [eng.eval(cache, PROMPT, logits_all=True)]
    feed = [int(t) for t in np.random.default_rng(9).integers(0, 200, N_GEN)]
    p = len(PROMPT)
    for n in STEPS:
        rows.append(eng.eval(cache, feed[p - len(PROMPT) : p - len(PROMPT) + n], logits_all=True))
        p += n
        if after is not None:
            after(cache, p - 1)
    return np.concatenate(rows)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _older_chunks_held(cache, pos: int) -> int:
    """Slots of the chunked layers past the sinks that hold a token of an older chunk than ``pos``'s."""
    n = 0
    for layer in cache.layers:
        if isinstance(layer, CompressedLayerCache) and layer.spec.window < 0:
            held = layer.pos[:, layer.S :]
            n += int(((held >= 0) & (held < pos - pos % CHUNK)).sum())
    return n


# ----------------------------------------------------------------- (a) every policy: deterministic, within its budget
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_is_deterministic_keeps_its_budget_and_drops_the_older_chunks(path, policy):
    """Two runs give the same logits bit for bit; no layer holds more than its budget of 12 in any head; and once the
    third chunk has 10 tokens (the budget less the sinks) no chunked layer holds a token of an older one."""
    seen = []

    def check(cache, pos):
        for layer in cache.layers:
            assert layer.N == 12 and ((layer.pos >= 0).sum(axis=1) <= 12).all()
        if pos % CHUNK >= 12 - 2 - 1:
            assert _older_chunks_held(cache, pos) == 0, f"{policy} at {pos}"
            seen.append(pos)

    got = _run(path, f"{SHORT},policy={policy}", after=check)
    assert seen and np.array_equal(got, _run(path, f"{SHORT},policy={policy}"))


# ----------------------------------------------------------------- (b) the chunk rule
def test_a_short_budget_holds_no_token_of_an_older_chunk(path, monkeypatch):
    """The rule has teeth: H2O's scores (the attention a token got: an older chunk's got the most) kept older
    chunks' tokens through the third chunk where the rule is dropped."""
    held = {}
    _run(path, f"{SHORT},policy=h2o", after=lambda c, p: held.__setitem__(p, _older_chunks_held(c, p)))
    assert held[LAST] == 0
    monkeypatch.setattr(CompressedLayerCache, "__init__", _without_rule(CompressedLayerCache.__init__))
    held.clear()
    _run(path, f"{SHORT},policy=h2o", after=lambda c, p: held.__setitem__(p, _older_chunks_held(c, p)))
    assert held[LAST] > 0


@pytest.mark.parametrize("kv", ["policy=h2o,mixed=8/2", "policy=snapkv,merge=keepkv"])
def test_the_host_path_holds_the_one_call_steps_tokens(path, monkeypatch, kv):
    """The Python steps (``FAST_DECODE`` off: the device cache's host path, its ``_place`` picking the victims) hold the
    tokens the one-call steps hold after every step, with demotion to a second pool and merging: an older chunk's
    victim is neither demoted into a full pool nor merged on either path.  Logits within 1e-6."""
    held = {}

    def keep(path_):
        return lambda cache, pos: held.__setitem__((path_, pos), [layer.pos.copy() for layer in cache.layers])

    want = _run(path, f"{SHORT},{kv}", after=keep("fast"))
    monkeypatch.setattr(CompressedLayerCache, "FAST_DECODE", False)
    assert _rel(_run(path, f"{SHORT},{kv}", after=keep("host")), want) < 1e-6
    for pos in (p for w, p in held if w == "fast"):
        assert all(np.array_equal(a, b) for a, b in zip(held["fast", pos], held["host", pos])), f"at {pos}"


def _without_rule(init):
    def wrapped(self, *a, **kw):
        init(self, *a, **kw)
        self._chunk = 0

    return wrapped


def test_a_budget_of_one_chunk_gives_the_logits_of_the_cache_that_keeps_every_token(path, monkeypatch):
    """Every layer chunked (the NoPE layer too, so that no global layer evicts), a budget of the 2 sinks and one chunk:
    the cache holds the current chunk whole, so its logits are the policy-free 8-bit cache's (the same codes: float32
    sums in another slot order) and within 1e-2 of the plain cache's; with the rule dropped H2O keeps older chunks'
    tokens and evicts the current chunk's, and the logits are far off."""
    monkeypatch.setattr(llama4, "SWA_PERIOD", 0)
    budget = f"8,sinks=2,residual=4,policy=h2o,budget={2 + CHUNK}"
    plain, kept = _run(path, None), _run(path, "8,sinks=2,residual=4")
    got = _run(path, budget)
    assert _rel(got, kept) < 1e-5
    assert _rel(got, plain) < 1e-2
    monkeypatch.setattr(CompressedLayerCache, "__init__", _without_rule(CompressedLayerCache.__init__))
    assert _rel(_run(path, budget), plain) > 0.1


# ----------------------------------------------------------------- (c) a budget past the context
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_budget_past_the_context_gives_the_policy_free_caches_logits(path, policy):
    """Nothing evicted (budget 64 = n_ctx): the policy cache's logits are the policy-free cache's (the older chunks'
    window tokens it drops are masked in both; float32 sums in another slot order: equal bit for bit on a VNNI host,
    whose keys meet the queries as integers, 1.5e-5 apart on an AVX2 one)."""
    assert _rel(_run(path, f"4,sinks=2,residual=4,policy={policy},budget=64"), _run(path, "4,sinks=2,residual=4")) < 1e-4


# ----------------------------------------------------------------- (d) the device
@pytest.mark.parametrize("policy", ["h2o", "snapkv"])
def test_the_devices_policy_steps_hold_the_cpus_tokens_and_logits(gpu_env, path, policy):
    """The kernel emulator's path (prefill chunks over a policy layer's slots, then ``kv_policy_push_tokens``; decode
    steps in ``kv_policy_push``, their chunk start read from the token's position on the device) against the CPU's:
    every step's logits within 2e-3, and the same tokens held in every head of every layer after each step (the same
    victims: an older chunk's first), the device's storage its host copy's."""
    held = {}

    def keep(device):
        def after(cache, pos):
            held[device, pos] = [layer.held_positions().copy() if device == "gpu" else layer.pos.copy() for layer in cache.layers]
            if device == "gpu" and pos == LAST:
                assert all(layer.mirror_mismatches() == [] for layer in cache.layers)

        return after

    kv = f"8,budget=12,sinks=2,residual=4,policy={policy}"
    want = _run(path, kv, "cpu", after=keep("cpu"))
    got = _run(path, kv, "gpu", after=keep("gpu"))
    assert _rel(got, want) < 2e-3
    for pos in (p for d, p in held if d == "cpu"):
        assert all(np.array_equal(a, b) for a, b in zip(held["cpu", pos], held["gpu", pos])), f"at {pos}"
