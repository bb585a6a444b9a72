"""Llama 4's chunked-attention layers keep one chunk's K/V, as llama.cpp's iSWA cache sizes them.

A chunked layer (``LayerSpec.window`` -c) lets a query at p see the keys from its chunk's start p - p % c: at most
c - 1 positions back, never an older chunk.  So the plain fp16 cache keeps a ring of ``c + n_batch`` slots
(cache/plain.py ``ring_capacity``; llama.cpp's ``n_swa + n_ubatch``, there padded to 256), as for a sliding window: a
chunk of T <= n_batch tokens from p0 overwrites positions below p0 + T - capacity <= p0 - c, older than anything its
first query sees.  The compressed cache keeps the sinks, one chunk and a decode step's tokens (``S + c +
MAX_DECODE_T``): without a policy the pools' oldest leave first (a window layer's ring), with one the chunk rule
(an older chunk's tokens first) decides.

Checked on the tiny llama4 with its chunk cut to 8 positions, a batch of 12, 64 positions of context:

* (a) the chunked layers' slots: 8 + 12 in the plain cache, at most sinks + 8 + 4 in the compressed one;
* (b) prompts fed in pieces shorter and longer than the chunk and decode steps (one token, and three) across several
  chunks: the ring's logits are the whole-context ring's (the old layout, rebuilt by a patched ``ring_capacity``) to
  float32 rounding (the same fp16 K/V and masks; a wrapped ring orders the visible keys otherwise, so the sums
  differ in their last bits), and the policy-free 8-bit cache's likewise;
* (c) truncation back into the chunk before keeps the positions it needs and gives the same logits as feeding
  the same tokens afresh; back into a chunk the ring has left, ``can_truncate`` says no and the cache starts over;
  a server's prefix copy and a saved session resume with the same logits;
* (d) the device's ring (kernel emulator) against the CPU's across chunks, decode steps replayed from CUDA graphs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache import plain
from kvrun.cache.compressed import MAX_DECODE_T
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.models import llama4
from kvrun.runtime import sessionfile
from kvrun.runtime.engine import Engine

CHUNK = 8
N_CTX, N_BATCH = 64, 12
#: pieces fed in turn: shorter than a chunk, longer (the engine splits 30 into 12 + 12 + 6), then decode steps of
#: one token and of three (a draft's verification), to position 57: eight chunks.  Two whole batches start at a
#: chunk's last position (7 and 31), the worst case: their first query sees 7 positions back, and the batch writes 12
#: (a ring of 8 + 12 - 2 fails there; llama.cpp's 8 + 12 has one slot to spare)
PIECES = (7, 12, 30, 1, 1, 3, 1, 1, 1, 1)
TOKENS = [int(t) for t in np.random.default_rng(11).integers(0, 200, sum(PIECES))]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("l4ring") / "l4.gguf", **FIXTURE_MODELS["llama4"], qtype=Q.F32)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(llama4, "CHUNK", CHUNK)


def whole_context(monkeypatch) -> None:
    """The old layout: a chunked layer keeps a slot for every position (only sliding windows ring)."""
    from kvrun.cache import gpu_plain  # (first: its import binds plain's name)

    old = lambda spec, n_ctx, n_batch: n_ctx if spec.window <= 0 else min(n_ctx, spec.window + n_batch)  # noqa: E731
    monkeypatch.setattr(plain, "ring_capacity", old)
    monkeypatch.setattr(gpu_plain, "ring_capacity", old)


def _engine(path, kv: str | None = None, device: str = "cpu") -> Engine:
    return Engine(path, device=device, n_ctx=N_CTX, n_batch=N_BATCH, kv=KVConfig.parse(kv) if kv else None)


def _feed(eng: Engine, cache, pieces=PIECES, tokens=TOKENS) -> np.ndarray:
    """Every row's logits of ``tokens`` fed in ``pieces``: [sum(pieces), n_vocab]."""
    rows, p = [], cache.offset
    for n in pieces:
        rows.append(np.asarray(eng.eval(cache, tokens[p : p + n], logits_all=True)))
        p += n
    return np.concatenate(rows)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _chunked(cache) -> list:
    return [layer for layer in cache.layers if layer.spec.window < 0]


# ----------------------------------------------------------------- (a) the slots
def test_chunked_layers_keep_a_chunk_and_a_batch(path):
    """The plain cache: 8 + 12 slots a chunked layer (3 in 4), the NoPE layer the whole context; the compressed cache:
    sinks + one chunk + a decode step's tokens, whether a policy evicts or not."""
    cache = _engine(path).new_cache()
    assert [layer.capacity for layer in cache.layers] == [CHUNK + N_BATCH] * 3 + [N_CTX]
    for kv in ("4,sinks=2,residual=4", "8,sinks=2,residual=4,policy=h2o"):
        layers = _engine(path, kv).new_cache().layers
        assert [layer.N for layer in layers] == [2 + CHUNK + MAX_DECODE_T] * 3 + [N_CTX], kv


# ----------------------------------------------------------------- (b) the logits
def test_the_ring_gives_the_whole_context_caches_logits(path, monkeypatch):
    """Across eight chunks, prefill pieces shorter and longer than a chunk, steps of 1 and 3 tokens: the fp16 ring
    against the old whole-context layout, the same within float32 rounding; the ring never held more than its slots
    and every position each query saw was in it when it ran (the rows agree)."""
    eng = _engine(path)
    ring = eng.new_cache()
    store = PlainLayerCache.update_and_attend

    def seen_all_held(self, q, k, v, pos, out):  # (the stores precede the attention: what is here now, it read)
        store(self, q, k, v, pos, out)
        if self.spec.window < 0:
            held = set(self.pos.tolist())
            assert all(set(range(p - p % CHUNK, p + 1)) <= held for p in np.asarray(pos).tolist()), f"at {pos}"

    monkeypatch.setattr(PlainLayerCache, "update_and_attend", seen_all_held)
    got = _feed(eng, ring)
    assert all(layer.n_tokens() <= CHUNK + N_BATCH for layer in _chunked(ring))
    monkeypatch.setattr(PlainLayerCache, "update_and_attend", store)
    whole_context(monkeypatch)
    full = eng.new_cache()
    assert all(layer.capacity == N_CTX for layer in full.layers)
    want = _feed(eng, full)
    assert _rel(got, want) < 1e-5  # (float32 sums over other slot orders: 0 on a VNNI host's integer keys, 3.9e-6 on AVX2)


def test_the_compressed_ring_gives_the_whole_context_caches_logits(path, monkeypatch):
    """The policy-free 8-bit cache with its chunked layers cut to sinks + chunk + 4 against the same cache holding
    every position (the budget cut patched out): the quantized tokens a query sees are the same codes."""
    got = _feed(eng := _engine(path, "8,sinks=2,residual=4"), eng.new_cache())
    monkeypatch.setattr(llama4, "CHUNK", N_CTX)  # (a chunk of the whole context: nothing cut, ...)
    full = eng.new_cache()
    assert all(layer.N == N_CTX for layer in full.layers)
    for layer in full.layers:  # (... and the masks of the 8-position chunks)
        layer.spec = replace(layer.spec, window=-CHUNK if layer.spec.window else 0)
    assert _rel(got, _feed(eng, full)) < 1e-5


# ----------------------------------------------------------------- (c) going back, copies, sessions
def test_going_back_into_the_chunk_before_and_into_a_lost_one(path):
    """Back to 45, into the chunk before the last (the ring holds 38..57, so 40..44 are there): truncate keeps 45 and
    the next tokens' logits, across the boundary at 48, are a fresh run's (to float32 rounding: a batch of other
    length computes K and V in other GEMM blocks, and the rings wrap otherwise; a lost key costs 1.2 here).  Back to
    30 (positions 24..29, long written over): every chunked layer says it cannot, and the cache starts over, which the
    caller feeds again, as after a convolution's state."""
    eng = _engine(path)
    cache = eng.new_cache()
    _feed(eng, cache)
    fresh = eng.new_cache()
    _feed(eng, fresh, (7, 12, 26))  # (the same batches, but the last: 12 + 12 + 2)
    assert cache.truncate(45) == 45
    more = TOKENS[:45] + [7, 8, 9, 10, 11, 12, 13, 14]
    assert _rel(_feed(eng, cache, (6, 1, 1), more), _feed(eng, fresh, (6, 1, 1), more)) < 1e-5
    assert not any(layer.can_truncate(30) for layer in _chunked(cache))
    assert cache.layers[-1].can_truncate(30)
    assert cache.truncate(30) == 0 and cache.offset == 0


def test_a_prefix_copy_and_a_saved_session_resume_the_ring(path, tmp_path):
    """A server's prefix copy at 45 holds what the next tokens see (its chunk from 40); at 30 it is refused (the ring
    lost 24..29).  A session saved at the end resumes with the same logits as the cache it was saved from; one
    saved by another cache code is refused in one line."""
    eng = _engine(path)
    src = eng.new_cache()
    _feed(eng, src)
    dst = eng.new_cache()
    assert dst.copy_prefix(src, 45) and dst.offset == 45
    assert not eng.new_cache().copy_prefix(src, 30)
    more = TOKENS[:45] + [3, 1, 4, 1, 5]
    a = _feed(eng, dst, (5,), more)
    ref = eng.new_cache()
    _feed(eng, ref, (7, 12, 26))
    assert _rel(a, _feed(eng, ref, (5,), more)) < 1e-5

    f = tmp_path / "s.kvs"
    sessionfile.save(f, eng, {"cache": src, "tokens": TOKENS})
    back = sessionfile.load(f, eng)["cache"]
    assert [type(layer) for layer in back.layers] == [PlainLayerCache] * 4
    assert [layer.capacity for layer in back.layers] == [CHUNK + N_BATCH] * 3 + [N_CTX]
    tail = TOKENS + [2, 7, 1]
    assert np.array_equal(_feed(eng, back, (3,), tail), _feed(eng, src, (3,), tail))


def test_a_session_of_the_whole_context_layout_is_refused_in_one_line(path, tmp_path):
    """A file saved before (chunked layers of n_ctx slots) was saved by other cache code: one line, no traceback."""
    eng = _engine(path)
    cache = eng.new_cache()
    _feed(eng, cache, (5,))
    f = tmp_path / "old.kvs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sessionfile, "_cache_code", lambda: "0123456789abcdef")
        sessionfile.save(f, eng, {"cache": cache, "tokens": TOKENS[:5]})
    with pytest.raises(sessionfile.KvrunError, match="another version of kvrun's cache code"):
        sessionfile.load(f, eng)


# ----------------------------------------------------------------- (d) the device
@pytest.mark.parametrize("kv", [None, "8,sinks=2,residual=4"], ids=["fp16", "8bit"])
def test_the_devices_ring_gives_the_cpus_logits(gpu_env, path, kv):
    """The emulator's fp16 ring (8 + 12 slots; the compressed cache's 2 + 8 + 4, its pools' oldest out) against the
    CPU's over the same pieces, every row within 2e-3; the decode steps past the prompt replayed from captured CUDA
    graphs over the wrapped ring; going back as the CPU's ring can."""
    cpu, gpu = _engine(path, kv), _engine(path, kv, "gpu")
    ca, cb = cpu.new_cache(), gpu.new_cache()
    for layer in ca.layers:
        layer.int_keys = False  # (float queries, as the device's)
    assert [getattr(layer, "capacity", None) or layer.N for layer in cb.layers] == [
        getattr(layer, "capacity", None) or layer.N for layer in ca.layers]  # fmt: skip
    assert _rel(_feed(gpu, cb), _feed(cpu, ca)) < 2e-3
    assert gpu.graphs.n_replays > 0
    if kv is None:
        assert cb.truncate(45) == 45 and not cb.layers[0].can_truncate(30)
