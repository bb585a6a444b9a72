"""A prefix copied on ``--device gpu`` (GPUPlainLayerCache.copy_prefix, cache/gpu_plain.py): a server's new conversation
takes another slot's system prompt without evaluating it again, as on the CPU (tests/test_batching.py).  The copied
cache goes on with the evaluated one's logits, to the bit (each position's K/V computed in the same chunks, the copy's
slots attended as the evaluated ring's); a ring that has written over a position the next token sees refuses, as does
a prefix longer than the source holds; layers that share another's K/V (Gemma 4) copy nothing and read their source's
copy, on either device; and EAGLE-3's draft, through ``Engine.copy_prefix``, takes the prefix's rows and pairs with it.

Before the copy the destination decodes a text of its own one token a step, so that on a GPU the steps after the copy
replay the graph captured over its rings (runtime/graphs.py): the copy writes into the same device arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_eagle3 import write_tiny_eagle3, write_tiny_eagle3_target
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import SharedKVLayerCache
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

TEXT = list(np.arange(1, 40) % 90 + 1)
NEXT = [7, 8, 9]


def _used_before(eng: Engine):
    """A cache that held another text, decoded a token a step (on a GPU: a graph captured over its rings)."""
    cache = eng.new_cache()
    eng.eval(cache, [5, 6, 60, 61])
    for t in (62, 63):
        eng.eval(cache, [t])
    return cache


def _goes_on_alike(eng: Engine, dst, ref) -> None:
    """``dst`` and ``ref`` give the same logits for a chunk and then a one-token step."""
    np.testing.assert_array_equal(eng.eval(dst, NEXT, logits_all=True), eng.eval(ref, NEXT, logits_all=True))
    np.testing.assert_array_equal(eng.eval(dst, [10]), eng.eval(ref, [10]))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_prefix_copied_on_the_gpu_goes_on_as_the_evaluated_one(gpu_env, tmp_path, arch):
    """tests/test_batching.py's test on the device (gemma3: sliding-window rings of 8 + 4 slots, holding positions
    27-38 after 39 tokens).  A token at 34 sees 27-33, all held, so 34 copies; one at 32 sees 25, written over, so 32
    refuses."""
    eng = Engine(write_tiny_model(tmp_path / "m.gguf", arch), n_ctx=64, n_batch=4, device="gpu")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    for n in (4, 12, 20, 36) if arch == "llama" else (34, 36):
        dst, ref = _used_before(eng), eng.new_cache()
        assert eng.copy_prefix(dst, src, n) and dst.offset == n
        eng.eval(ref, TEXT[:n])
        _goes_on_alike(eng, dst, ref)
    if arch == "gemma3":
        refused = _used_before(eng)
        assert not refused.copy_prefix(src, 32) and refused.offset == 0 and all(L.n_tokens() == 0 for L in refused.layers)
    assert not eng.new_cache().copy_prefix(src, 50)  # (more than src holds)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_layers_sharing_kv_take_the_prefix_their_source_copies(gpu_env, tmp_path, device):
    """Gemma 4's last 3 layers read layers 1's and 2's K/V (SharedKVLayerCache.copy_prefix: nothing of their own to
    copy): a prefix copied goes on as the evaluated one, its window rings (8 + 4 slots, positions 8-19 after 20
    tokens) holding what a token at 16 sees."""
    eng = Engine(write_tiny_model(tmp_path / "g4.gguf", **FIXTURE_MODELS["gemma4"]), n_ctx=64, n_batch=4, device=device)
    src = eng.new_cache()
    eng.eval(src, TEXT[:20])
    dst, ref = _used_before(eng), eng.new_cache()
    assert any(isinstance(L, SharedKVLayerCache) for L in dst.layers)
    assert eng.copy_prefix(dst, src, 16) and dst.offset == 16
    eng.eval(ref, TEXT[:16])
    _goes_on_alike(eng, dst, ref)


@pytest.fixture(scope="module")
def eagle3_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eagle3")
    return write_tiny_eagle3_target(d / "target.gguf"), write_tiny_eagle3(d / "draft.gguf")


def test_eagle3_takes_the_prefixs_rows_when_the_device_copies_it(gpu_env, eagle3_files):
    """tests/test_eagle3.py's slot test on the device: Engine.copy_prefix copies the target's K/V, then the draft's g
    rows (a copy kernel) and its own cache's pairs of the prefix, into a cache that held another text; the rows it
    pairs and what it drafts are a fresh forward's of the prompt."""
    target, draft = eagle3_files
    e = Engine(target, n_ctx=64, threads=1, device="gpu", draft=draft, draft_p_min=0.0)
    rng = np.random.default_rng(5)
    system, other = rng.integers(3, 250, 24).tolist(), rng.integers(3, 250, 36).tolist()
    a, b, fresh = e.new_cache(), e.new_cache(), e.new_cache()
    for cache, text in ((a, system + [7, 8]), (b, other)):
        e.eval(cache, text)
        assert len(e.draft.draft(text + [0], 3, cache)) == 3  # (each draft cache holds its text's pairs)
    n = len(system)
    assert e.copy_prefix(b, a, n) and b.offset == n
    assert e.draft.seqs[b].n_real == n - 1  # (the draft cache's pairs of the prefix copied on the device, not fed again)
    prompt = system + [9, 10, 11]
    e.eval(b, prompt[n:])
    e.eval(fresh, prompt)
    got, want = e.draft.g_rows(b, len(prompt)), e.draft.g_rows(fresh, len(prompt))
    np.testing.assert_array_equal(got[:n], want[:n])  # (copied from a's forward, which gave fresh's rows to the bit)
    # (the rows after: a chunk of 3 takes the decode kernel, the fresh prompt the tiled one; measured 4.3e-6 of |g| <= 6.7)
    np.testing.assert_allclose(got[n:], want[n:], atol=1e-5)
    text = prompt + [0]
    assert e.draft.draft(text, 3, b) == e.draft.draft(text, 3, fresh)
