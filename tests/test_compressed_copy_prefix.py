"""A compressed cache copies a prefix (``CompressedLayerCache.copy_prefix``): a server's new conversation takes the system
prompt another slot holds, with ``--kv-bits``, instead of evaluating it again.

The copy is what the other slot would hold had it gone back to that prefix itself (its own ``truncate``): the same
quantized pools, key basis, tables and policy scores.  It refuses where evaluating again keeps more (an eviction or a
window's ring took a position the next token sees) and where the other conversation may have left its tokens inside
the prefix's K/V (a merging cache).
"""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.slots import Slots

TEXT = list(np.arange(1, 48) % 90 + 1)
MORE = [7, 8, 9]


def _engine(tmp_path, arch: str, kv: str) -> Engine:
    return Engine(write_tiny_model(tmp_path / f"{arch}.gguf", arch), n_ctx=64, n_batch=8, kv=KVConfig.parse(kv), threads=1)


@pytest.mark.parametrize("arch, kv", [("llama", "4"), ("llama", "2,residual=8"), ("llama", "2,policy=snapkv,ratio=0.9,residual=8"),
                                      ("llama", "8,policy=h2o"), ("gemma3", "4")])  # fmt: skip
def test_a_copied_prefix_goes_on_as_the_source_gone_back_to_it(tmp_path, arch, kv):
    """The copy continues with the logits the source gets after truncating itself to the prefix (equal to the bit), and
    the source, untouched by the copy and by what the copy goes on to hold, continues as an identical cache does."""
    eng = _engine(tmp_path, arch, kv)
    src, twin = eng.new_cache(), eng.new_cache()
    eng.eval(src, TEXT)
    eng.eval(twin, TEXT)
    assert isinstance(src.layers[0], CompressedLayerCache)
    n = 44 if arch == "gemma3" else 24  # (gemma3's window of 8 in rings of 12 slots: after 47 tokens they hold 35-46)
    dst = eng.new_cache()
    eng.eval(dst, [5] * 30 + [6] * 4)  # (a cache that held another text: nothing of it may stay)
    assert dst.copy_prefix(src, n) and dst.offset == n
    got = eng.eval(dst, MORE, logits_all=True)
    gone_back = eng.new_cache()
    eng.eval(gone_back, TEXT)
    gone_back.truncate(n)
    np.testing.assert_array_equal(got, eng.eval(gone_back, MORE, logits_all=True))
    np.testing.assert_array_equal(eng.eval(src, MORE, logits_all=True), eng.eval(twin, MORE, logits_all=True))


def test_a_prefix_an_eviction_took_from_is_evaluated_again(tmp_path):
    """A source whose policy evicted a position of the prefix refuses (the prompt evaluated again keeps it whole), and
    the cache it was to fill is left empty; a prefix the evictions spared still copies."""
    eng = _engine(tmp_path, "llama", "4,policy=h2o,ratio=0.5,residual=8")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    layer = src.layers[0]
    held = [set(row[row >= 0].tolist()) for row in layer.pos]
    first_gone = min(min(set(range(len(TEXT))) - h) for h in held)
    dst = eng.new_cache()
    assert not dst.copy_prefix(src, first_gone + 1) and dst.offset == 0 and dst.layers[0].n_tokens() == 0
    assert first_gone > 0 and dst.copy_prefix(src, first_gone) and dst.offset == first_gone


def test_a_merging_cache_evaluates_again(tmp_path):
    """With merging, an evicted later token (another conversation's) may live on inside a prefix token's K/V: refused."""
    eng = _engine(tmp_path, "llama", "4,policy=h2o,ratio=0.5,merge=keepkv,residual=8")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    assert not eng.new_cache().copy_prefix(src, 8)


def test_only_the_same_setting_copies(tmp_path):
    eng = _engine(tmp_path, "llama", "4")
    src = eng.new_cache()
    eng.eval(src, TEXT)
    assert not eng.cache_for(KVConfig.parse("2"), eng.n_ctx, eng.n_batch).copy_prefix(src, 8)
    assert not eng.cache_for(None, eng.n_ctx, eng.n_batch).copy_prefix(src, 8)  # (an fp16 cache from a compressed one)
    assert not eng.new_cache().copy_prefix(src, len(TEXT) + 1)  # (more than src holds)


def test_a_server_slot_takes_another_slots_system_prompt_with_kv_bits(tmp_path):
    """runtime/slots.py: with ``--kv-bits 4`` a new conversation's system prompt is copied from the idle slot that
    holds it (``n_shared``), and the reply's logits are the other slot's, gone back to the system prompt."""
    eng = _engine(tmp_path, "llama", "4")
    slots = Slots(Model(eng), 2)
    system, other = TEXT[:32], [5, 6, 7, 8, 9, 10]
    for slot, text in zip(slots.slots, (system + [11, 12], other)):
        eng.eval(slot.session.cache, text)
        slot.session.tokens = text
    prompt = system + MORE
    with slots.take(prompt, id_slot=1) as slot:
        cache = slot.session.cache
        assert slots.n_shared == cache.offset == len(system) and slot.session.tokens == system
        got = eng.eval(cache, MORE, logits_all=True)
    ref = eng.new_cache()
    eng.eval(ref, system + [11, 12])
    ref.truncate(len(system))
    np.testing.assert_array_equal(got, eng.eval(ref, MORE, logits_all=True))
