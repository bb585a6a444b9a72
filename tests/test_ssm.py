"""Mamba-2 layers (models/mamba2.py, models/granitehybrid.py, models/falcon_h1.py, models/nemotron_h.py) and Gated
DeltaNet ones (models/qwen35.py: qwen35, qwen3next): their state in the cache beside K/V (cache/ssm.py; Falcon-H1's
layers keep both; cache/deltanet.py, Mamba-2's machinery around the delta rule).  Their logits are llama.cpp's (the FIXTURE_MODELS tests); here the state: fed in chunks
or token by token alike, going back a few tokens (a refused draft) and further (from a kept copy, the
kept inputs fed again) exactly, further still by starting over, compressed K/V beside it, saved and
resumed."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.ssm import EVERY, SSMLayerCache
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine, GenRequest
from kvrun.runtime.sampling import SamplerConfig

IDS = [int(x) for x in np.random.default_rng(3).integers(0, 261, 100)]


#: where fed in other chunks the logits may move more than float32 rounding: Qwen3.5's and Qwen3-Next's attention keys are
#: QK-normed, O(1), and kept fp16, so a float32 rounding difference upstream (a chunk's matrix products against a token's
#: matrix-vector ones: 3e-6 after the first DeltaNet layer) flips a key's fp16 rounding (half an ulp: 5e-4): 4e-4 of
#: logits up to 15 (2.6e-5 of the largest) on the tiny qwen35; Mamba-2's hybrids stay under 1e-5
ATOL = {"qwen35": 1e-3, "qwen3next": 1e-3}


def _atol(path) -> float:
    from kvrun.loaders.gguf_file import GGUFFile

    return ATOL.get(GGUFFile(path).architecture, 1e-4)


@pytest.fixture(scope="module", params=["mamba2", "granitehybrid", "falcon-h1", "nemotron_h", "qwen35", "qwen3next"])
def path(request, tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param)


def test_chunks_and_single_tokens_give_the_same_logits(path):
    full = Engine(path, n_ctx=128, n_batch=128)
    want = full.eval(full.new_cache(), IDS, logits_all=True)
    chunked = Engine(path, n_ctx=128, n_batch=9)
    np.testing.assert_allclose(chunked.eval(chunked.new_cache(), IDS, logits_all=True), want, atol=_atol(path))
    cache = full.new_cache()
    full.eval(cache, IDS[:-1])
    np.testing.assert_allclose(full.eval(cache, IDS[-1:])[0], want[-1], atol=_atol(path))


def test_going_back_is_exact_from_a_kept_copy_and_further_starts_over(path):
    e = Engine(path, n_ctx=128)
    want = e.eval(e.new_cache(), IDS, logits_all=True)
    cache = e.new_cache()
    e.eval(cache, IDS)  # copies of the state at 32, 64 and 96: the last two kept
    assert isinstance(cache[0], SSMLayerCache)
    # from the copy at 96, at 96 itself, from the one at 64, then again without a forward between
    for n_past, copy, fed in ((98, 96, 2), (96, 96, 1), (90, 64, 10), (80, 64, 1), (100 - EVERY, 64, 0)):
        assert cache.truncate(n_past) == n_past and cache[0].replay_from == copy
        if fed:
            np.testing.assert_allclose(e.eval(cache, IDS[n_past : n_past + fed], logits_all=True), want[n_past : n_past + fed], atol=_atol(path))
            assert cache.truncate(cache.offset - fed) == n_past
    np.testing.assert_allclose(e.eval(cache, IDS[100 - EVERY :], logits_all=True), want[100 - EVERY :], atol=_atol(path))
    assert cache.truncate(60) == 0  # before every copy kept: the cache starts over
    np.testing.assert_allclose(e.eval(cache, IDS, logits_all=True), want, atol=_atol(path))


def test_refused_drafts_always_go_back_exactly(path):
    """Checks of drafts as decoding runs them: a forward of a token and up to 16 drafted ones, then the refused
    ones leave the cache; however long it goes on, each going back is exact (never a start over)."""
    e = Engine(path, n_ctx=256, n_batch=32)
    ids = IDS + IDS[:60]
    want = e.eval(e.new_cache(), ids, logits_all=True)
    cache, rng = e.new_cache(), np.random.default_rng(5)
    e.eval(cache, ids[:10])
    while cache.offset < len(ids) - 1:
        p = cache.offset
        n = int(min(rng.integers(1, 18), len(ids) - p))
        got = e.eval(cache, ids[p : p + n], logits_all=True)
        np.testing.assert_allclose(got, want[p : p + n], atol=_atol(path))
        keep = p + int(rng.integers(1, n + 1))
        assert cache.truncate(keep) == keep


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


def test_a_chat_saved_and_resumed_goes_on_alike(path, tmp_path):
    m = Model(Engine(path, n_ctx=256))
    s = m.session()
    s.send("the cat", max_tokens=8, temperature=0)
    s.save(tmp_path / "chat.kvs")
    r = m.load_session(tmp_path / "chat.kvs")
    assert r.send("sat", max_tokens=8, temperature=0) == s.send("sat", max_tokens=8, temperature=0)


def test_compressed_kv_leaves_the_mamba2_layers_alone(tmp_path):
    e = Engine(write_tiny_model(tmp_path / "g.gguf", "granitehybrid"), n_ctx=128, kv=KVConfig.parse("4"))
    cache = e.new_cache()
    out = list(e.generate_tokens(cache, IDS[:50], GenRequest(max_tokens=8, sampler=SamplerConfig(temperature=0), ignore_eos=True)))
    assert len(out) == 8 and type(cache[0]) is SSMLayerCache and type(cache[1]) is not SSMLayerCache
    assert e.cfg.ssm_layers == (True, False, True, True) and e.cfg.kv_bytes_per_token(16) == 2 * 2 * 16 * 2


def test_falcon_h1_keeps_kv_and_state_in_each_layer_compressed_kv_too(tmp_path):
    """Falcon-H1's layers attend and run the mixer side by side: each layer's cache holds its K/V (plain, or
    compressed as the KVConfig says) beside the state, and they go back, and start over, together."""
    from kvrun.cache.compressed import CompressedLayerCache
    from kvrun.cache.ssm import ParallelSSMLayerCache

    path = write_tiny_model(tmp_path / "f.gguf", "falcon-h1")
    plain = Engine(path, n_ctx=128)
    cache = plain.new_cache()
    want = plain.eval(cache, IDS, logits_all=True)
    assert all(type(layer) is ParallelSSMLayerCache for layer in cache.layers) and cache[0].kv.n_tokens() == len(IDS)
    assert cache.truncate(60) == 0 and cache[0].kv.n_tokens() == 0  # (before every copy of the state: both start over)
    assert plain.cfg.kv_bytes_per_token(16) == 3 * 2 * 2 * 24 * 2  # (every layer attends)
    e = Engine(path, n_ctx=128, kv=KVConfig.parse("8"))
    cache = e.new_cache()
    got = e.eval(cache, IDS, logits_all=True)
    assert type(cache[0].kv) is CompressedLayerCache
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.9


@pytest.mark.parametrize("arch", ["qwen35", "qwen3next"])
def test_gated_deltanet_layers_keep_their_state_and_compressed_kv_serves_the_attention(tmp_path, arch):
    """Qwen3.5's and Qwen3-Next's DeltaNet layers keep the delta rule's state (a [d_v, d_k] matrix per value head) and
    the convolution's inputs, never K/V; their attention layers' K/V is plain or compressed as the KVConfig says,
    and a batch of sequences cannot share one forward through the state."""
    from kvrun.cache.batch import batchable
    from kvrun.cache.compressed import CompressedLayerCache
    from kvrun.cache.deltanet import DeltaNetLayerCache

    path = write_tiny_model(tmp_path / "q.gguf", arch)
    plain = Engine(path, n_ctx=128)
    cache = plain.new_cache()
    want = plain.eval(cache, IDS, logits_all=True)
    assert plain.cfg.ssm_layers == (True, False, True, False) and plain.cfg.kv_bytes_per_token(16) == 2 * 2 * 2 * 32 * 2
    assert [type(layer).__name__ for layer in cache.layers] == ["DeltaNetLayerCache", "PlainLayerCache"] * 2
    assert cache[0].state.shape == (4, 16, 16) and cache[0].channels == 2 * 2 * 16 + 4 * 16
    assert not batchable(plain.model.layer_specs())
    e = Engine(path, n_ctx=128, kv=KVConfig.parse("8"))
    cache = e.new_cache()
    got = e.eval(cache, IDS, logits_all=True)
    assert type(cache[0]) is DeltaNetLayerCache and type(cache[1]) is CompressedLayerCache
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.9


def test_nemotron_h_keeps_nothing_for_its_mlp_layers(tmp_path):
    e = Engine(write_tiny_model(tmp_path / "n.gguf", "nemotron_h"), n_ctx=64)
    assert e.cfg.ssm_layers == (True, False, False, False, True) and e.cfg.ffn_layers == (False, True, False, True, False)
    assert [type(layer).__name__ for layer in e.new_cache().layers] == ["SSMLayerCache", "PlainLayerCache", "SSMLayerCache"]
    assert e.model.slots == [0, None, 1, None, 2] and e.cfg.kv_bytes_per_token(16) == 2 * 2 * 24 * 2


# (all of them run on the GPU: the Mamba-2 ones tests/test_gpu_ssm.py, the Gated DeltaNet ones tests/test_gpu_delta.py)


def test_info_names_the_state_space_layers(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "g.gguf", "granitehybrid"))])
    assert r.exit_code == 0, r.output
    assert "state-space layers  3 of 4 Mamba-2 (d_inner 128: 8 heads, state 16, 2 groups, convolution 4)" in r.output
    assert "rope.scaling.finetuned false" in r.output and "KV cache / token    16-bit 128 B" in r.output
    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "m.gguf", "mamba2"))])
    assert r.exit_code == 0 and "2 of 2 Mamba-2" in r.output and "heads (q / kv)" not in r.output and "KV cache" not in r.output
    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "f.gguf", "falcon-h1"))])  # (beside, not instead of, attention)
    assert r.exit_code == 0 and "every layer's Mamba-2 mixer beside its attention" in r.output, r.output
    assert "heads (q / kv)" in r.output and "KV cache / token" in r.output
    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "q.gguf", "qwen35"))])
    assert r.exit_code == 0, r.output
    assert "state-space layers  2 of 4 Gated DeltaNet (4 value heads over 2 key heads, each 16 wide, convolution 4); 5.50 KiB" in r.output
