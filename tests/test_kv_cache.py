"""The compressed cache: spec parsing, fixed memory, sinks/residual protection, equivalence, and the full cross product.

Everything composes: every width x policy x merge (x mixed precision) runs
through tiny Llama and Gemma 3 models (the latter with sliding-window layers)
in both prefill and decode, and quality degrades in the order it should.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from reference import Reference
from tinymodel import write_tiny_model

from kvrun.cache.base import KVCache, LayerSpec
from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.factory import bits_per_value, make_cache
from kvrun.cache import quant
from kvrun.cache.quant import TABLE_BYTES
from kvrun.cache.kvconfig import DEFAULT_WARM_TARGET, KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.cache.policies import POLICIES
from kvrun.loaders.config import load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend

SPEC = LayerSpec(4, 2, 64, 64, 0, 0.125, 0.0)


def _qkv(n: int, seed: int = 0, spec: LayerSpec = SPEC):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, spec.n_head, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((n, spec.n_head_kv, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((n, spec.n_head_kv, spec.head_dim_v)).astype(np.float32)
    return q, k, v


def _feed(cache, q, k, v, chunk: int = 1, start: int = 0) -> np.ndarray:
    """Tokens at positions ``start, start + 1, ...`` fed ``chunk`` at a time; the attention outputs."""
    out = np.zeros(q.shape[:2] + (k.shape[2],), np.float32)
    for s in range(0, len(q), chunk):
        e = min(len(q), s + chunk)
        cache.update_and_attend(q[s:e], k[s:e], v[s:e], np.arange(start + s, start + e, dtype=np.int32), out[s:e])
    return out


# ------------------------------------------------------------------ KVConfig
def test_parse_first_number_is_bits_then_key_values():
    kv = KVConfig.parse("2,policy=h2o,ratio=0.25")
    assert (kv.bits, kv.policy, kv.ratio) == (2, "h2o", 0.25)
    kv = KVConfig.parse("4,k=8,v=2,group=64,residual=16,rotate=0,mixed=8/2,merge=keepkv,policy=tova,budget=100,sinks=2")
    assert (kv.bits_k, kv.bits_v, kv.group, kv.residual, kv.rotate, kv.mixed, kv.merge, kv.budget, kv.sinks) == (8, 2, 64, 16, False, "8/2", "keepkv", 100, 2)
    assert KVConfig.parse(str(kv)).resolved() == kv.resolved()
    assert str(KVConfig.parse("2").validate(2048)) == "2"  # resolved defaults are not spelled out
    assert str(KVConfig.parse("2,policy=h2o,ratio=0.25")) == "2,policy=h2o,ratio=0.25"


def test_presets():
    assert KVConfig.preset("lossless").bits in (8, 16)
    assert KVConfig.preset("balanced").bits == 4
    edge = KVConfig.preset("edge")
    assert edge.bits == 2 and edge.policy is not None and edge.budget_tokens(2048) < 2048
    assert KVConfig.parse("edge") == edge
    with pytest.raises(ValueError, match="known: lossless, balanced, edge"):
        KVConfig.preset("tiny")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("5", "bits=5 is not supported; use one of 16, 8, 4, 3, 2"),
        ("2,policy=lru", "unknown policy 'lru'; known: gkv, h2o, keydiff, snapkv, streaming, tova"),
        ("2,policy=h2o,merge=avg", "unknown merge 'avg'; known: mean, keepkv"),
        ("2,merge=mean", "add a policy"),
        ("2,ratio=0.5", "needs a policy"),
        ("2,policy=h2o,budget=40", "budget of 40 tokens is below sinks \\+ residual \\+ 1 = 85"),
        ("2,warm=64,policy=h2o", "warm tiers the pools by age"),
        ("2,mixed=2/8", "needs HI > LO"),
        ("2,group=24", "power of two"),
        ("2,warm_bits=7", "warm_bits=7 is not supported"),  # the default warm tier took it: a KeyError deep in the first spill
        ("2,warm=64,warm_bits=2", "must be a width above the keys' 2 bits"),
        ("2,colour=red", "unknown KV cache option 'colour'"),
        ("2,4", "only the first item may be a bare number"),
    ],
)
def test_validate_names_the_problem_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        KVConfig.parse(spec).validate(2048)
    assert "\n" not in str(e.value)


def test_two_bit_defaults_fit_3_2_bits_per_value_at_2048():
    """All metadata and the fp16 window counted, on SmolLM2's geometry (30 layers, 3 KV heads of 64)."""
    specs = [LayerSpec(9, 3, 64, 64, 0, 0.125, 0.0)] * 30
    layers = make_cache(specs, 2048, 256, KVConfig.parse("2"))
    bpv = bits_per_value(layers, 2048)
    assert 2.5 < bpv <= 3.2, bpv
    assert bits_per_value(make_cache(specs, 2048, 256, KVConfig.parse("4")), 2048) <= 5.0
    assert bits_per_value(make_cache(specs, 2048, 256, None), 2048) == pytest.approx(16 + 32 / 384)


def test_three_bit_codes_take_three_bits_a_value():
    """3-bit codes are packed as a 2-bit and a 1-bit plane, not in 4-bit containers:
    a 3-bit cache sits between the 2-bit and the 4-bit one (SmolLM2's geometry)."""
    specs = [LayerSpec(9, 3, 64, 64, 0, 0.125, 0.0)] * 30
    bpv = {b: bits_per_value(make_cache(specs, 2048, 256, KVConfig.parse(f"{b},group=32,residual=24,warm=0")), 2048) for b in (2, 3, 4)}
    assert bpv[3] - bpv[2] == pytest.approx(1.0, abs=0.05), bpv  # the same metadata and window: one bit a code more
    assert bpv[4] - bpv[3] == pytest.approx(1.0, abs=0.05), bpv
    assert bpv[3] < 3.8, bpv


def test_four_bit_defaults_fit_5_bits_per_value_with_sliding_window_layers():
    """Gemma 3 270M's geometry: 5 of every 6 layers slide over 512 tokens, 1 KV head of 256."""
    local, glob = LayerSpec(4, 1, 256, 256, 512, 0.0625, 0.0), LayerSpec(4, 1, 256, 256, 0, 0.0625, 0.0)
    specs = ([local] * 5 + [glob]) * 3
    assert bits_per_value(make_cache(specs, 2048, 256, KVConfig.parse("4")), 2048) <= 5.0
    assert bits_per_value(make_cache(specs, 2048, 256, KVConfig.parse("2")), 2048) <= 3.2


def test_default_warm_tiers_cover_sliding_windows_and_fill_global_layers_to_the_target():
    """Gemma 3's geometry at 2 bits: a sliding-window layer keeps 4-bit keys for its whole
    quantized window; global layers get the largest tier that keeps the cache at the
    target bits per value; an explicit --kv-warm is taken as given."""
    local, glob = LayerSpec(4, 1, 256, 256, 512, 0.0625, 0.0), LayerSpec(4, 1, 256, 256, 0, 0.0625, 0.0)
    specs = ([local] * 5 + [glob]) * 3
    for n_ctx in (2048, 4096):
        layers = make_cache(specs, n_ctx, 256, KVConfig.parse("2"))
        w = layers[0]
        assert w.pools[0].bits_k == 4 and w.pools[1].cap == 0 and w.pools[0].cap == w.N - w.F
        g = layers[5]
        assert g.pools[1].cap > 0 and g.pools[0].bits_k == 4 and g.pools[1].bits_k == 2
        bpv = bits_per_value(layers, n_ctx)
        assert DEFAULT_WARM_TARGET[2] - 0.01 < bpv <= DEFAULT_WARM_TARGET[2], bpv
    wider = make_cache(specs, 4096, 256, KVConfig.parse("2"))[5].pools[0].cap
    assert wider > make_cache(specs, 2048, 256, KVConfig.parse("2"))[5].pools[0].cap  # longer context: more room
    fixed = make_cache(specs, 2048, 256, KVConfig.parse("2,warm=100"))
    assert fixed[0].pools[0].cap == 100 and fixed[5].pools[0].cap == 100


def test_three_bit_default_has_a_warm_tier_sized_to_its_target():
    """At 3 bits too the newest quantized tokens keep 4-bit keys, as many as keep the cache
    at DEFAULT_WARM_TARGET[3] bits per value (SmolLM2's and Gemma 3's geometries)."""
    smol = [LayerSpec(9, 3, 64, 64, 0, 0.125, 0.0)] * 30
    local, glob = LayerSpec(4, 1, 256, 256, 512, 0.0625, 0.0), LayerSpec(4, 1, 256, 256, 0, 0.0625, 0.0)
    for specs in (smol, ([local] * 5 + [glob]) * 3):
        layers = make_cache(specs, 2048, 256, KVConfig.parse("3"))
        assert DEFAULT_WARM_TARGET[3] - 0.01 < bits_per_value(layers, 2048) <= DEFAULT_WARM_TARGET[3]
        assert all((c.pools[0].bits_k, c.pools[0].bits_v, c.pools[1].bits_k) == (4, 3, 3) for c in layers)
        assert sum(c.pools[0].cap for c in layers) > 10 * len(layers)  # more than a token or two a layer


def test_wider_values_keep_the_default_warm_tiers_of_the_keys():
    """`--kv-bits 2 --kv-bits-v 4` spends more on values; the keys keep the tiers they have at 2 bits."""
    local, glob = LayerSpec(4, 1, 256, 256, 512, 0.0625, 0.0), LayerSpec(4, 1, 256, 256, 0, 0.0625, 0.0)
    specs = ([local] * 5 + [glob]) * 3
    narrow, wide = (make_cache(specs, 2048, 256, KVConfig.parse(s)) for s in ("2", "2,bits_v=4"))
    for a, b in zip(narrow, wide):
        assert [p.cap for p in a.pools] == [p.cap for p in b.pools] and a.F == b.F
        assert [p.bits_k for p in a.pools] == [p.bits_k for p in b.pools] and all(p.bits_v == 4 for p in b.pools)
    assert bits_per_value(wide, 2048) > bits_per_value(narrow, 2048) + 0.9


def test_two_bit_default_keeps_a_warm_tier_of_wider_keys():
    """At 2 bits the newest quantized tokens (35% of a layer's quantized slots) keep 4-bit keys
    in pool 0; older ones are re-quantized into the 2-bit pool 1, oldest first."""
    kv = KVConfig.parse("2,residual=8").validate(256)
    cache = CompressedLayerCache(SPEC, kv, 256)
    (wk, wv), (ck, cv) = ((p.bits_k, p.bits_v) for p in cache.pools)
    assert (wk, wv, ck, cv) == (4, 2, 2, 2) and kv.group == 64
    n_q = 256 - 4 - 8
    assert cache.pools[0].cap == round(0.35 * n_q) and cache.pools[1].cap == n_q - cache.pools[0].cap
    q, k, v = _qkv(200, seed=3)
    _feed(cache, q, k, v)
    warm = cache.pos[0, cache.lo[0] : cache.lo[0] + cache.pools[0].cap]
    cold = cache.pos[0, cache.lo[1] : cache.lo[1] + cache.pools[1].cap]
    cold = cold[cold >= 0]
    assert warm.min() > cold.max()  # the warm tier holds the newest quantized tokens
    assert sorted(np.concatenate([warm, cold]).tolist()) == list(range(4, 200 - 8))  # nothing lost


# ------------------------------------------------------------------ factory
def test_factory_gives_the_plain_cache_when_nothing_is_compressed():
    for kv in (None, KVConfig(), KVConfig.parse("16")):
        assert all(isinstance(c, PlainLayerCache) for c in make_cache([SPEC], 64, 16, kv))
    assert all(isinstance(c, CompressedLayerCache) for c in make_cache([SPEC], 64, 16, KVConfig.parse("4")))


def test_fp16_storage_through_the_compressed_path_equals_the_plain_cache():
    q, k, v = _qkv(90)
    ref = _feed(PlainLayerCache(SPEC, 128), q, k, v)
    for chunk in (1, 3, 32):
        got = _feed(CompressedLayerCache(SPEC, KVConfig.parse("16,policy=h2o").validate(128), 128), q, k, v, chunk)
        np.testing.assert_allclose(got, ref, atol=2e-6 if chunk <= 4 else 1e-2)


@pytest.mark.parametrize("spec_s", ["4,residual=8", "2,mixed=8/2,policy=h2o,budget=40,residual=8", "2,warm=24", "3,policy=tova,budget=48,residual=8"])
def test_prefill_reads_the_held_slots_in_slot_order_as_a_token_move_reads_them(spec_s):
    """What a prefill chunk attends to: every held slot (evictions leave holes), the fp16 area widened
    and the pools decoded as ``Pool.read_row`` decodes a token it moves, the chunk's rows after them."""
    c = CompressedLayerCache(SPEC, KVConfig.parse(spec_s).validate(128), 128)
    q, k, v = _qkv(100)
    _feed(c, q, k, v, chunk=7)
    for h in range(SPEC.n_head_kv):
        ids, kb, vb = c.stored_rows(h, spare=5)
        assert ids.tolist() == np.flatnonzero(c.pos[h if c.P > 1 else 0] >= 0).tolist()
        assert kb.shape == (ids.size + 5, SPEC.head_dim) and vb.shape == (ids.size + 5, SPEC.head_dim_v)
        assert ids.size < 100 or "budget" not in spec_s
        for i, j in enumerate(ids):
            if j < c.F:
                want = c.k16[h, j].view(np.float16).astype(np.float32), c.v16[h, j].view(np.float16).astype(np.float32)
            else:
                p = 0 if j < c.lo[1] else 1
                want = c.pools[p].read_row(h, j - c.lo[p])
            np.testing.assert_allclose(kb[i], want[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(vb[i], want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits, bound", [(8, 0.01), (4, 0.08), (3, 0.12), (2, 0.3)])
def test_quantized_attention_error_shrinks_with_width(bits, bound):
    q, k, v = _qkv(160, seed=1)
    ref = _feed(PlainLayerCache(SPEC, 256), q, k, v)
    kv = KVConfig.parse(f"{bits},residual=8").validate(256)
    got = _feed(CompressedLayerCache(SPEC, kv, 256), q, k, v)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < bound, err


@pytest.mark.parametrize("spec_s", ["2", "4,rotate=0", "8", "2,bits_k=4,group=16", "3,sinks=0", "2,warm=24", "2,warm=1000", "3,warm=8,warm_bits=8"])
@pytest.mark.parametrize("window", [0, 40])
@pytest.mark.parametrize("step", [1, 3], ids=["1-token", "3-token"])
def test_one_call_decode_step_equals_the_general_path(spec_s, window, step):
    """The steady-state decode step (:mod:`kvrun.cache.insert`, one Numba call a token; a step
    of up to 4 tokens makes one a token, then attends) stores the same slots and attends the
    same as the step-by-step numpy path."""
    spec = LayerSpec(4, 2, 64, 64, window, 0.125, 0.0)
    q, k, v = _offset_keys(150, seed=8)
    fast, slow, calls = _fast_and_slow(spec, spec_s, "_decode_fast")
    got, ref = _feed(fast, q, k, v, step), _feed(slow, q, k, v, step)
    assert len(calls) > 100 // step  # every step after the first spill took the one-call path
    # the queries are turned by butterflies there, a matrix product here: outputs a rounding apart
    np.testing.assert_allclose(got, ref, atol=1e-2)
    assert np.abs(got - ref).mean() < 1e-3  # the 2-bit error itself is ~0.1
    _assert_same_storage(fast, slow)


@pytest.mark.parametrize("spec_s", ["4", "2,sinks=0", "4,rotate=0,smooth=0"])
@pytest.mark.parametrize("step", [1, 3], ids=["1-token", "3-token"])
def test_decode_steps_that_fill_the_fp16_window_take_the_one_call_path(spec_s, step):
    """Before the first spill calibrates a layer, a decode step whose tokens all find empty fp16 window
    slots is one Numba call too: it stores the same fp16 rows, learns the same query energy for the
    key basis, and attends the same as the numpy path.  A step with a token that would spill goes the
    numpy way, which calibrates the layer from the same window and queries."""
    spec = LayerSpec(4, 2, 64, 64, 0, 0.125, 0.0)
    q, k, v = _offset_keys(24, seed=11)
    fast, slow, calls = _fast_and_slow(spec, spec_s, "_decode_fast")
    n = fast.S + fast.R - 1  # one empty window slot left after n tokens
    got, ref = _feed(fast, q[:n], k[:n], v[:n], step), _feed(slow, q[:n], k[:n], v[:n], step)
    sink_steps = -(-fast.S // step)  # steps holding a sink position go the numpy way
    assert len(calls) == -(-n // step) - sink_steps
    assert not fast.pools[0].calibrated and not fast.basis.calibrated  # nothing spilled yet
    np.testing.assert_allclose(got, ref, atol=2e-3)
    np.testing.assert_allclose(fast.basis.q2, slow.basis.q2, rtol=1e-6)
    _assert_same_storage(fast, slow)
    # the next step fills the last slot and, but for 1-token steps, spills too
    rest = slice(n, n + 6)
    got, ref = _feed(fast, q[rest], k[rest], v[rest], step, start=n), _feed(slow, q[rest], k[rest], v[rest], step, start=n)
    assert fast.pools[0].calibrated and fast.basis.calibrated
    np.testing.assert_allclose(got, ref, atol=1e-2)
    _assert_same_storage(fast, slow)
    for a, b in ((fast.basis.t, slow.basis.t), (fast.basis.mu, slow.basis.mu)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec_s", ["2", "4,rotate=0", "2,bits_k=4,group=16", "3,sinks=0", "2,warm=24", "3,warm=8,warm_bits=8"])
@pytest.mark.parametrize("window", [0, 40])
def test_one_call_prefill_chunk_equals_the_general_path(spec_s, window):
    """A steady-state prefill chunk stores its tokens in one Numba call (:func:`kvrun.cache.insert.push_tokens`):
    the same slots as the token-by-token path, and bitwise the same rows and codes."""
    spec = LayerSpec(4, 2, 64, 64, window, 0.125, 0.0)
    q, k, v = _offset_keys(150, seed=9)
    fast, slow, calls = _fast_and_slow(spec, spec_s, "_push_chunk_fast")
    got, ref = _feed(fast, q, k, v, 24), _feed(slow, q, k, v, 24)
    assert len(calls) == 8  # every chunk took the one call; the first twice: its tokens that fill the fp16 window, then the rest from the first spill on (which calibrates the layer)
    np.testing.assert_allclose(got, ref, atol=1e-2)
    assert np.abs(got - ref).mean() < 1e-3
    for a, b in zip(fast._free, slow._free):
        np.testing.assert_array_equal(a, b)
    _assert_same_storage(fast, slow)


def _fast_and_slow(spec: LayerSpec, spec_s: str, counted: str):
    """Two layer caches of ``spec_s`` (residual window 16), the second with the one-call paths off,
    and a list that grows by one at each call of the first's method ``counted``."""
    kv = KVConfig.parse(spec_s + ",residual=16").validate(256)
    fast, slow = CompressedLayerCache(spec, kv, 256), CompressedLayerCache(spec, kv, 256)
    slow.FAST_DECODE = False
    calls = []
    setattr(fast, counted, lambda *a, _f=getattr(fast, counted): (calls.append(1), _f(*a)))
    return fast, slow, calls


def _assert_same_storage(fast, slow) -> None:
    """Both paths hold the same tokens in the same slots, bitwise: the keys go through the same
    butterflies (``KeyBasis.keys``) and the same quantizer either way."""
    np.testing.assert_array_equal(fast.pos, slow.pos)
    np.testing.assert_array_equal(fast.k16, slow.k16)
    np.testing.assert_array_equal(fast.v16, slow.v16)
    for f, s in zip(fast.pools, slow.pools):
        for name in ("kc", "km", "vc", "vm"):
            np.testing.assert_array_equal(getattr(f, name), getattr(s, name), err_msg=name)


def _offset_keys(n: int, seed: int):
    """Keys with a large mean shared by every token (real models' keys have one)."""
    q, k, v = _qkv(n, seed=seed)
    k += 6.0 * np.random.default_rng(seed + 100).standard_normal((1, SPEC.n_head_kv, SPEC.head_dim)).astype(np.float32)
    return q * 0.3, k, v


@pytest.mark.parametrize("chunk", [1, 32])
def test_key_centering_leaves_attention_unchanged(chunk):
    """Subtracting the keys' mean shifts every logit of a query by q.mu: softmax
    cannot see it, so with lossless (fp16) pools the output is the same."""
    q, k, v = _offset_keys(120, seed=4)
    ref = _feed(PlainLayerCache(SPEC, 128), q, k, v, chunk)
    kv = KVConfig.parse("16,policy=streaming,center=1,smooth=1,residual=16").validate(128)
    cache = CompressedLayerCache(SPEC, kv, 128)
    got = _feed(cache, q, k, v, chunk)
    assert cache.basis.mu is not None and np.abs(cache.basis.mu).max() > 1.0  # the mean was found and taken out
    np.testing.assert_allclose(got, ref, atol=2e-2)


def test_key_centering_cuts_two_bit_error_when_keys_share_a_mean():
    q, k, v = _offset_keys(160, seed=5)
    ref = _feed(PlainLayerCache(SPEC, 256), q, k, v)
    err = {}
    for center in (0, 1):
        kv = KVConfig.parse(f"2,residual=16,warm=0,center={center}").validate(256)
        got = _feed(CompressedLayerCache(SPEC, kv, 256), q, k, v)
        err[center] = np.abs(got - ref).mean()
    assert err[1] < 0.7 * err[0], err


def test_query_aware_smoothing_cuts_two_bit_error_when_queries_and_keys_disagree():
    """Key channels the queries barely read (large key variance, small query
    energy) get a smaller scale, the others a larger one (keybasis.py)."""
    q, k, v = _qkv(160, seed=6)
    w = np.linspace(0.2, 3.0, SPEC.head_dim).astype(np.float32)
    k *= w  # key variance rises across the channels ...
    q *= 0.4 / w  # ... where the queries' energy falls
    ref = _feed(PlainLayerCache(SPEC, 256), q, k, v)
    err = {}
    for smooth in (0, 1):
        kv = KVConfig.parse(f"2,residual=16,warm=0,smooth={smooth}").validate(256)
        cache = CompressedLayerCache(SPEC, kv, 256)
        got = _feed(cache, q, k, v)
        err[smooth] = np.abs(got - ref).mean()
    t = cache.basis.t  # [n_kv, D]: small where the keys are wide
    assert t[:, :8].mean() > 2 * t[:, -8:].mean()
    assert err[1] < 0.9 * err[0], err


def test_memory_is_fixed_and_tokens_never_exceed_the_budget():
    q, k, v = _qkv(300, seed=2)
    kv = KVConfig.parse("2,policy=h2o,budget=80,residual=16").validate(512)
    c = CompressedLayerCache(SPEC, kv, 512)
    n0 = c.nbytes()
    _feed(c, q[:100], k[:100], v[:100])
    _feed(c, q[100:], k[100:], v[100:], chunk=50)
    assert c.nbytes() == n0
    assert c.n_tokens() == 80
    # every allocated array is counted; a pool's two scale tables are views of one
    # shared table, so each costs its starting exponent
    arrays = [c.k16, c.v16, c.pos] + [a for p in c.pools for a in (p.kc, p.km, p.vc, p.vm)] + c.policy.per_slot()
    assert n0 == sum(a.nbytes for a in arrays) + 2 * TABLE_BYTES * len(c.pools)
    assert all(np.shares_memory(t, quant._SCALES) for p in c.pools for t in (p.klut, p.vlut))


def test_sinks_and_residual_window_are_never_evicted():
    q, k, v = _qkv(200, seed=3)
    kv = KVConfig.parse("4,policy=tova,budget=40,residual=8,sinks=4").validate(256)
    c = CompressedLayerCache(SPEC, kv, 256)
    _feed(c, q, k, v)
    for h in range(SPEC.n_head_kv):
        held = set(c.pos[h][c.pos[h] >= 0].tolist())
        assert {0, 1, 2, 3} <= held
        assert set(range(192, 200)) <= held
        assert len(held) == 40


@pytest.mark.parametrize("n_kv", [2, 1])
def test_heavy_hitter_survives_h2o_but_not_streaming(n_kv):
    """A key every query attends to is kept by attention-scored policies and dropped by StreamingLLM."""
    spec = LayerSpec(4, n_kv, 64, 64, 0, 0.125, 0.0)
    q, k, v = _qkv(120, seed=4, spec=spec)
    target = np.ones(spec.head_dim, np.float32)
    q[:] = target + 0.1 * q
    k[10] = 2.0 * target
    kept = {}
    for name in ("streaming", "h2o", "gkv", "snapkv", "tova"):
        kv = KVConfig.parse(f"16,policy={name},budget=30,residual=8").validate(256)
        c = CompressedLayerCache(spec, kv, 256)
        _feed(c, q, k, v)
        kept[name] = all(10 in c.pos[h] for h in range(n_kv))
    assert kept == {"streaming": False, "h2o": True, "gkv": True, "snapkv": True, "tova": True}


@pytest.mark.parametrize("merge", ["mean", "keepkv"])
def test_merging_folds_evicted_tokens_into_kept_ones(merge):
    q, k, v = _qkv(100, seed=5)
    k[50:] = k[49]  # near-duplicate keys: merging targets exist
    kv = KVConfig.parse(f"4,policy=h2o,budget=40,residual=8,merge={merge}").validate(128)
    c = CompressedLayerCache(SPEC, kv, 128)
    _feed(c, q, k, v)
    assert c.n_tokens() == 40
    if merge == "keepkv":
        votes = np.exp(c.logw[:, c.pos[0] >= 0]).sum(axis=1)
        np.testing.assert_allclose(votes, 100, rtol=1e-4)  # every token still counted once
    else:
        assert c.logw.size == 0


def test_mixed_precision_demotes_instead_of_dropping():
    q, k, v = _qkv(200, seed=6)
    kv = KVConfig.parse("2,mixed=8/2,hi_frac=0.25,residual=8").validate(256)
    c = CompressedLayerCache(SPEC, kv, 256)
    assert (c.pools[0].bits_k, c.pools[1].bits_k) == (8, 2)
    ref = _feed(PlainLayerCache(SPEC, 256), q, k, v)
    got = _feed(c, q, k, v)
    assert c.n_tokens() == 200  # nothing evicted, only demoted
    lo_only = CompressedLayerCache(SPEC, KVConfig.parse("2,residual=8").validate(256), 256)
    e_mixed = np.abs(got - ref).mean()
    e_lo = np.abs(_feed(lo_only, q, k, v) - ref).mean()
    assert e_mixed < e_lo


def test_sliding_window_layer_keeps_a_ring_of_its_window():
    spec = LayerSpec(4, 2, 64, 64, 16, 0.125, 0.0)
    q, k, v = _qkv(100, seed=7, spec=spec)
    ref = _feed(PlainLayerCache(spec, 16 + 32), q, k, v, chunk=32)
    c = CompressedLayerCache(spec, KVConfig.parse("8,policy=h2o,budget=64,residual=4").validate(128), 128)
    got = _feed(c, q, k, v)
    assert c.N == 16 + 4 and c.policy is None  # the window ring, no budget/policy on local layers
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.02


def test_truncate_and_reset():
    q, k, v = _qkv(60, seed=8)
    c = CompressedLayerCache(SPEC, KVConfig.parse("4,residual=8").validate(64), 64)
    _feed(c, q, k, v)
    c.truncate(30)
    assert c.n_tokens() == 30 and c.pos.max() == 29
    c.reset()
    assert c.n_tokens() == 0


# ------------------------------------------------------------------ cross product on tiny models
N_CTX, N_BATCH, N_TOK = 96, 16, 80
WIDTHS = ["16", "8", "4", "3", "2", "4,k=8,v=2", "2,mixed=8/2"]
CHOICES = [None] + sorted(POLICIES)
MERGES = [None, "mean", "keepkv"]


def _model(tmp_path_factory, arch):
    path = write_tiny_model(tmp_path_factory.mktemp(arch) / f"{arch}.gguf", arch, sliding_window=8)
    g = GGUFFile(path)
    cfg = load_config(g)
    return path, cfg, model_class(cfg.arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tmp_path_factory):
    path, cfg, model = _model(tmp_path_factory, request.param)
    tokens = np.random.default_rng(1).integers(0, cfg.n_vocab, N_TOK).astype(np.int32)
    return cfg, model, tokens, Reference(path).logits(tokens)


def _run(model, cfg, tokens, kv, chunk):
    cache = KVCache(make_cache(model.layer_specs(), N_CTX, N_BATCH, kv))
    out = np.zeros((len(tokens), cfg.n_vocab), np.float32)
    for s in range(0, len(tokens), chunk):
        ch = tokens[s : s + chunk]
        pos = np.arange(cache.offset, cache.offset + len(ch), dtype=np.int32)
        model.forward(ch, pos, cache, np.arange(len(ch)), out[s : s + len(ch)])
        cache.offset += len(ch)
    return out, cache


def _combos():
    for w, p, m in itertools.product(WIDTHS, CHOICES, MERGES):
        if m is not None and p is None:
            continue
        spec = f"{w},group=16" if p is None else f"{w},group=16,policy={p},budget=48,residual=8"
        if m:
            spec += f",merge={m}"
        yield spec


@pytest.mark.parametrize("spec", list(_combos()))
def test_every_width_policy_merge_runs_on_tiny_models(tiny, spec):
    cfg, model, tokens, ref = tiny
    kv = KVConfig.parse(spec).validate(N_CTX)
    for chunk in (N_BATCH, 1):
        got, cache = _run(model, cfg, tokens, kv, chunk)
        assert np.isfinite(got).all()
        assert cache.nbytes() == sum(layer.nbytes() for layer in cache.layers)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        # no eviction: close to the float64 reference, tighter with more bits
        if kv.policy is None:
            bound = {"16": 3e-3, "8": 0.03}.get(spec.split(",")[0] if "," in spec[:3] else spec, 0.35)
            assert err < bound, f"{spec} chunk {chunk}: {err:.3g}"
        else:
            assert err < 1.0


def test_a_decode_step_stores_fp16_as_numpy_rounds_it():
    """The fp16 ring's one-call decode step (decode_step_f16) writes the bits numpy's astype(float16) gives:
    round to nearest even, subnormals, overflow to inf, signed zero; the prefill path stores with numpy."""
    rng = np.random.default_rng(5)
    special = np.array([0.0, -0.0, 6.1e-5, 6.0e-8, 3e-8, 1e-45, 65504, 65519, 65520, 1e6, -1e6, np.inf, -np.inf, 1.0009765625, 1.00048828125], np.float32)
    vals = np.concatenate([special, (rng.standard_normal(256 - len(special)) * 10.0 ** rng.integers(-8, 5, 256 - len(special))).astype(np.float32)])
    spec = LayerSpec(n_head=1, n_head_kv=1, head_dim=64, head_dim_v=64, scale=0.125)
    cache = PlainLayerCache(spec, 16)
    v = vals.reshape(4, 1, 64)
    k = np.clip(v[::-1], -6e4, 6e4)  # (finite keys: an infinite one would make the scores NaN)
    cache.update_and_attend(np.zeros((4, 1, 64), np.float32), k, v, np.arange(4, dtype=np.int32), np.zeros((4, 1, 64), np.float32))
    with np.errstate(over="ignore"):  # (numpy warns as it rounds 1e6 to inf)
        want_k, want_v = (a[:, 0].astype(np.float16).view(np.uint16) for a in (k, v))
    np.testing.assert_array_equal(cache.k[0, :4], want_k)
    np.testing.assert_array_equal(cache.v[0, :4], want_v)
    assert cache.used == 4 and list(cache.pos[:5]) == [0, 1, 2, 3, -1]


def test_a_pool_without_ranks_fills_its_first_empty_slot_then_replaces_its_oldest_token():
    """The slot a spilled token takes (``insert._first_empty_or_oldest``, the vectorised pick without ranks) against the
    rule written out: the first empty slot (any negative position) of the pool ``[lo, lo + cap)``, else the
    one holding the oldest position."""
    from kvrun.cache.insert import _first_empty_or_oldest

    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        row = rng.permutation(10 * n)[: n + 8].astype(np.int32)  # distinct positions
        lo, cap = 5, n
        if trial % 3:  # some empty slots, -1 and other negatives
            holes = rng.choice(cap, int(rng.integers(1, cap + 1)), replace=False)
            row[lo + holes] = rng.choice(np.int32([-1, -1, -7]), len(holes))
        seg = row[lo : lo + cap]
        empty = np.flatnonzero(seg < 0)
        want = (int(empty[0]), True) if len(empty) else (int(np.argmin(seg)), False)
        assert _first_empty_or_oldest(row[lo : lo + cap]) == want


@pytest.mark.parametrize("spec", ["8,group=16", "2,group=16", "4,group=16,policy=h2o,budget=48,residual=8,merge=keepkv"])
def test_soft_capped_attention_of_gemma2_on_compressed_caches(tmp_path_factory, spec):
    """Gemma 2's attention logits pass through ``cap tanh(s / cap)`` (the tiny model's cap, 1.5, bites)
    in every attention path: the quantized pools' decode and prefill kernels, and a policy's."""
    path, cfg, model = _model(tmp_path_factory, "gemma2")
    assert cfg.attn_logit_softcap > 0
    tokens = np.random.default_rng(1).integers(0, cfg.n_vocab, N_TOK).astype(np.int32)
    ref = Reference(path).logits(tokens)
    kv = KVConfig.parse(spec).validate(N_CTX)
    for chunk in (N_BATCH, 1):
        got, _ = _run(model, cfg, tokens, kv, chunk)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        # measured 0.0013 (8 bits) and 0.13 (2 bits); the same caches without the cap: 0.15 and 0.18-0.19
        assert err < {"8": 0.01, "2": 0.16}.get(spec[0], 1.0), f"{spec} chunk {chunk}: {err:.3g}"
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
