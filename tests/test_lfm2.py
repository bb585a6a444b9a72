"""LFM2 (models/lfm2.py): convolution layers beside attention ones, their state in the cache beside
K/V (cache/conv.py).  Its logits are llama.cpp's (the FIXTURE_MODELS tests); here the state: fed in
chunks or token by token alike, going back a few tokens (a refused draft) exactly, further back by
starting over, compressed K/V beside it, saved and resumed."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.conv import RING, ConvLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine, GenRequest
from kvrun.runtime.sampling import SamplerConfig

IDS = [int(x) for x in np.random.default_rng(3).integers(0, 261, 100)]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("lfm2") / "m.gguf", "lfm2")


def test_chunks_and_single_tokens_give_the_same_logits(path):
    full = Engine(path, n_ctx=128, n_batch=128)
    want = full.eval(full.new_cache(), IDS, logits_all=True)
    chunked = Engine(path, n_ctx=128, n_batch=9)
    np.testing.assert_allclose(chunked.eval(chunked.new_cache(), IDS, logits_all=True), want, atol=1e-4)
    cache = full.new_cache()
    full.eval(cache, IDS[:-1])
    np.testing.assert_allclose(full.eval(cache, IDS[-1:])[0], want[-1], atol=1e-4)


def test_going_back_a_few_tokens_is_exact_and_further_starts_over(path):
    e = Engine(path, n_ctx=128)
    want = e.eval(e.new_cache(), IDS, logits_all=True)
    cache = e.new_cache()
    e.eval(cache, IDS)
    cache.truncate(90)  # within the convolution's ring: kept
    assert cache.offset == 90 and isinstance(cache[0], ConvLayerCache)
    np.testing.assert_allclose(e.eval(cache, IDS[90:], logits_all=True), want[90:], atol=1e-4)
    cache.truncate(100 - RING)  # past the ring: the cache starts over
    assert cache.offset == 0
    np.testing.assert_allclose(e.eval(cache, IDS, logits_all=True), want, atol=1e-4)


def test_lookup_and_chat_reuse_keep_greedy_text(path):
    m = Model(Engine(path, n_ctx=256))
    req = dict(max_tokens=30, temperature=0)
    plain = m.complete(IDS[:40] + IDS[:40], **req)
    assert m.complete(IDS[:40] + IDS[:40], lookup=6, **req) == plain
    s = m.session()
    first = s.send("the cat sat on the mat", **req)
    again = m.session()
    assert again.send("the cat sat on the mat", **req) == first
    assert isinstance(s.send("and then?", **req), str)  # (the second turn reuses the first's cache)


def test_compressed_kv_leaves_the_convolutions_alone(path):
    e = Engine(path, n_ctx=128, kv=KVConfig.parse("4"))
    cache = e.new_cache()
    out = list(e.generate_tokens(cache, IDS[:50], GenRequest(max_tokens=8, sampler=SamplerConfig(temperature=0), ignore_eos=True)))
    assert len(out) == 8 and type(cache[0]) is ConvLayerCache and type(cache[1]) is not ConvLayerCache


def test_a_chat_saved_and_resumed_goes_on_alike(path, tmp_path):
    m = Model(Engine(path, n_ctx=256))
    s = m.session()
    s.send("the cat", max_tokens=8, temperature=0)
    s.save(tmp_path / "chat.kvs")
    r = m.load_session(tmp_path / "chat.kvs")
    assert r.send("sat", max_tokens=8, temperature=0) == s.send("sat", max_tokens=8, temperature=0)
