"""A compressed cache copies a prefix on ``--device gpu`` (GPUCompressedLayerCache.copy_prefix): a server's new
conversation takes the system prompt another slot holds, with ``--kv-bits``, instead of evaluating it again.

As on the CPU (tests/test_compressed_copy_prefix.py) the copy is what the other slot would hold had it gone back to
that prefix itself: its state comes down, is copied and truncated, and goes up into the destination's own device
arrays, so the copy goes on with the logits of the source truncated (to the bit), and the source is untouched.  The
destination held another text before, calibrated and decoded one token a step, so that stale state (its key basis,
tables, a captured CUDA graph) would show.  The graph key carries a generation the copy bumps: a graph captured over
the destination before the copy holds its old key basis's arrays, and replayed after the copy it is far off.

On the kernel emulator (``KVRUN_GPU_EMULATE=1``) without a GPU, as tests/test_gpu_copy_prefix.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

TEXT = list(np.arange(1, 48) % 90 + 1)
MORE = [7, 8, 9]
OTHER = [5, 6, 60, 61] + TEXT[:40]  # (another text, past every setting's fp16 window here: calibrated)


def _engine(tmp_path, arch: str, kv: str) -> Engine:
    return Engine(write_tiny_model(tmp_path / f"{arch}.gguf", arch), n_ctx=64, n_batch=8, kv=KVConfig.parse(kv), threads=1, device="gpu")


def _used_before(eng: Engine):
    """A cache that held another text, calibrated on it, then decoded a token a step (a graph captured where it can)."""
    cache = eng.new_cache()
    eng.eval(cache, OTHER)
    for t in (62, 63):
        eng.eval(cache, [t])
    return cache


def _gone_back(eng: Engine, n: int):
    cache = eng.new_cache()
    eng.eval(cache, TEXT)
    cache.truncate(n)
    return cache


@pytest.mark.parametrize("arch, kv", [("llama", "4"), ("llama", "2,residual=8"), ("llama", "2,policy=snapkv,ratio=0.9,residual=8"),
                                      ("llama", "8,policy=h2o"), ("gemma3", "4")])  # fmt: skip
def test_a_copied_prefix_goes_on_as_the_source_gone_back_to_it(gpu_env, tmp_path, arch, kv):
    """The copy continues, a chunk and then a one-token step, with the logits the source gets after truncating itself
    to the prefix (equal to the bit), and the source, untouched by the copy and by what the copy goes on to hold,
    continues as an identical cache does."""
    eng = _engine(tmp_path, arch, kv)
    src, twin = eng.new_cache(), eng.new_cache()
    eng.eval(src, TEXT)
    eng.eval(twin, TEXT)
    assert isinstance(src.layers[0], GPUCompressedLayerCache)
    n = 44 if arch == "gemma3" else 24  # (gemma3's window of 8 in rings of 12 slots: after 47 tokens they hold 35-46)
    dst = _used_before(eng)
    assert eng.copy_prefix(dst, src, n) and dst.offset == n
    ref = _gone_back(eng, n)
    np.testing.assert_array_equal(eng.eval(dst, MORE, logits_all=True), eng.eval(ref, MORE, logits_all=True))
    np.testing.assert_array_equal(eng.eval(dst, [10]), eng.eval(ref, [10]))
    assert all(layer.mirror_mismatches() == [] for layer in dst.layers)
    np.testing.assert_array_equal(eng.eval(src, MORE, logits_all=True), eng.eval(twin, MORE, logits_all=True))


def test_a_prefix_an_eviction_took_from_is_evaluated_again(gpu_env, tmp_path):
    """A source whose policy evicted a position of the prefix (on the device: the positions are brought down to see)
    refuses, and the used cache it was to fill is left empty; a prefix the evictions spared still copies."""
    eng = _engine(tmp_path, "llama", "4,policy=h2o,ratio=0.5,residual=8")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    held = [set(row[row >= 0].tolist()) for row in src.layers[0].held_positions()]
    first_gone = min(min(set(range(len(TEXT))) - h) for h in held)
    dst = _used_before(eng)
    assert not dst.copy_prefix(src, first_gone + 1) and dst.offset == 0 and all(L.n_tokens() == 0 for L in dst.layers)
    assert first_gone > 0 and eng.copy_prefix(dst, src, first_gone) and dst.offset == first_gone
    ref = _gone_back(eng, first_gone)
    np.testing.assert_array_equal(eng.eval(dst, MORE, logits_all=True), eng.eval(ref, MORE, logits_all=True))


def test_a_merging_cache_evaluates_again(gpu_env, tmp_path):
    """With merging, an evicted later token (another conversation's) may live on inside a prefix token's K/V: refused."""
    eng = _engine(tmp_path, "llama", "4,policy=h2o,ratio=0.5,merge=keepkv,residual=8")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    assert not eng.new_cache().copy_prefix(src, 8)


def test_only_the_same_setting_copies(gpu_env, tmp_path):
    eng = _engine(tmp_path, "llama", "4")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    assert not eng.cache_for(KVConfig.parse("2"), eng.n_ctx, eng.n_batch).copy_prefix(src, 8)
    assert not eng.cache_for(None, eng.n_ctx, eng.n_batch).copy_prefix(src, 8)  # (an fp16 ring from a compressed cache)
    assert not eng.new_cache().copy_prefix(eng.cache_for(None, eng.n_ctx, eng.n_batch), 0)  # (and the other way)
    assert not eng.new_cache().copy_prefix(src, len(TEXT) + 1)  # (more than src holds)


def _copied_after_a_graph(tmp_path):
    """An engine, a used cache with a captured decode graph, copied over from a source: (engine, cache, key before, n)."""
    eng = _engine(tmp_path, "llama", "2,residual=8")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    dst = _used_before(eng)
    before = dst.layers[0].graph_key(dst.offset)
    assert before is not None and eng.graphs.n_captures == 1 and eng.graphs.n_replays == 1  # (the second step replayed)
    assert eng.copy_prefix(dst, src, 24)
    return eng, dst, before, 24


def test_a_copy_gives_the_cache_a_new_graph_key_so_its_next_step_is_captured_anew(gpu_env, tmp_path):
    """The layers' graph keys differ across the copy (a new generation), so the step after it is captured over the
    copied state, not replayed from the graph captured before, and gives the source's logits gone back to the prefix."""
    eng, dst, before, n = _copied_after_a_graph(tmp_path)
    after = dst.layers[0].graph_key(n)
    assert after is not None and after != before
    got = eng.eval(dst, [10])
    assert eng.graphs.n_captures == 2 and eng.graphs.n_replays == 1
    np.testing.assert_array_equal(got, eng.eval(_gone_back(eng, n), [10]))


def test_the_generation_has_teeth_without_it_the_old_graph_replays_over_the_copy(gpu_env, tmp_path, monkeypatch):
    """Left out of the key, the graph captured before the copy is replayed after it (the key basis's version is the
    copied basis's, which matches): on the emulator, whose recorded launches keep the old basis's arrays, far off."""
    key = GPUCompressedLayerCache.graph_key
    monkeypatch.setattr(GPUCompressedLayerCache, "graph_key", lambda self, p: None if (k := key(self, p)) is None else (k[0], *k[2:]))
    eng, dst, before, n = _copied_after_a_graph(tmp_path)
    assert dst.layers[0].graph_key(n) == before
    got = eng.eval(dst, [10])
    assert eng.graphs.n_captures == 1 and eng.graphs.n_replays == 2
    if not gpu_available():  # (on a GPU the old arrays are freed, and their memory may hold anything, the new ones too)
        assert np.abs(np.asarray(got) - np.asarray(eng.eval(_gone_back(eng, n), [10]))).max() > 0.1
