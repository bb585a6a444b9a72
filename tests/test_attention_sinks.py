"""gpt-oss's learned attention sinks: a logit per query head joins every softmax's denominator and
adds no value, so a head may put part (or all) of its attention on nothing.

Every attention path takes them, held to one numpy reference: the plain fp16 cache in prefill
chunks and decode steps (sliding window too), and the compressed cache (whose key centering, a
shift the softmax cannot see without a sink, is off when there are sinks).
"""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.cache.base import LayerSpec
from kvrun.cache.factory import make_cache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.ops.cpu.attention import attend_group

SINKS = (2.0, -1.0, 0.5, 6.0)  # one per query head; 6.0 takes most of head 3's attention
SPEC = LayerSpec(4, 2, 64, 64, 0, 0.125, 0.0, sink_logits=SINKS)


def _qkv(n: int, spec: LayerSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, spec.n_head, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((n, spec.n_head_kv, spec.head_dim)).astype(np.float32)
    v = rng.standard_normal((n, spec.n_head_kv, spec.head_dim_v)).astype(np.float32)
    return q, k, v


def reference(q, k, v, spec: LayerSpec) -> np.ndarray:
    """Causal (windowed) attention with sink logits, float64: softmax over [scores..., sink], values [v..., 0]."""
    T, H, _ = q.shape
    gqa = H // spec.n_head_kv
    out = np.zeros((T, H, v.shape[2]))
    for t in range(T):
        lo = t - spec.window + 1 if spec.window > 0 else 0
        for h in range(H):
            kh = h // gqa
            s = (k[max(lo, 0) : t + 1, kh].astype(np.float64) @ q[t, h]) * spec.scale
            z = np.concatenate([s, [spec.sink_logits[h]]]) if spec.sink_logits else s
            p = np.exp(z - z.max())
            p /= p.sum()
            out[t, h] = p[: len(s)] @ v[max(lo, 0) : t + 1, kh]
    return out


def _feed(cache, q, k, v, chunk: int) -> np.ndarray:
    out = np.zeros(q.shape[:2] + (v.shape[2],), np.float32)
    for s in range(0, len(q), chunk):
        e = min(len(q), s + chunk)
        cache.update_and_attend(q[s:e], k[s:e], v[s:e], np.arange(s, e, dtype=np.int32), out[s:e])
    return out


@pytest.mark.parametrize("chunk", [1, 3, 16])  # decode steps (one and a few tokens) and prefill chunks
@pytest.mark.parametrize("window", [0, 5])
def test_plain_cache_attends_with_sink_logits_as_the_reference(chunk, window):
    spec = LayerSpec(4, 2, 64, 64, window, 0.125, 0.0, sink_logits=SINKS)
    q, k, v = _qkv(40, spec)
    cache = make_cache([spec], 64, 16)[0]
    assert isinstance(cache, PlainLayerCache)
    got = _feed(cache, q, k, v, chunk)
    want = reference(q, k, v, spec)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)  # (K/V are stored as fp16)


def test_sinks_change_the_output_and_a_large_sink_takes_the_attention():
    q, k, v = _qkv(12, SPEC)
    plain = LayerSpec(4, 2, 64, 64, 0, 0.125, 0.0)
    with_sinks = _feed(make_cache([SPEC], 32, 16)[0], q, k, v, 12)
    without = _feed(make_cache([plain], 32, 16)[0], q, k, v, 12)
    assert np.abs(with_sinks - without).max() > 0.05
    # head 3's sink of 6.0 outweighs its few keys (logits ~ N(0, 1)): its output shrinks towards 0
    assert np.linalg.norm(with_sinks[:, 3]) < 0.1 * np.linalg.norm(without[:, 3])


def test_a_query_that_sees_no_key_gets_zeros_with_a_sink():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 2, 32)).astype(np.float32)
    k = rng.standard_normal((3, 32)).astype(np.float32)
    out = np.ones((2, 2, 32), np.float32)
    attend_group(q, k, k, np.array([5, 6, 7]), np.array([1, 2]), 0, 0.2, 0.0, out, sink_logits=np.array([1.0, 2.0], np.float32))
    assert not out.any()


@pytest.mark.parametrize("chunk", [1, 16])
def test_compressed_cache_attends_with_sink_logits(chunk):
    q, k, v = _qkv(48, SPEC, seed=3)
    cache = make_cache([SPEC], 64, 16, KVConfig.parse("8,residual=8"))[0]
    assert not cache.basis.center  # a shift of every key's logit would move them against the sink's
    got = _feed(cache, q, k, v, chunk)
    want = reference(q, k, v, SPEC)
    np.testing.assert_allclose(got, want, atol=3e-2, rtol=0)


def test_kvrun_info_states_the_sinks(tmp_path):
    from click.testing import CliRunner
    from tinygptoss import write_tiny_gptoss
    from tinymodel import write_tiny_model

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_gptoss(tmp_path / "g.gguf"))])
    assert r.exit_code == 0 and "attention sinks" in r.output and "a learned logit per head" in r.output, r.output
    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "l.gguf"))])
    assert r.exit_code == 0 and "attention sinks" not in r.output
