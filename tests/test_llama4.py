"""Llama 4 (models/llama4.py): chunked attention in the CPU kernels, the long fixture past llama.cpp's first chunk of
8192 positions (tools/make_llama4_long_fixture.py), and the tiny fixtures failing without what sets Llama 4 apart."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_models import _build, _fixture_error
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import KVCache, LayerSpec
from kvrun.cache.factory import make_cache
from kvrun.cache.plain import make_plain_cache
from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend

FIX = Path(__file__).parent / "fixtures"


def _reference_attention(q, k, v, chunk, scale):
    """float64 causal attention where query t sees keys ``t - t % chunk .. t`` (one KV head per query head)."""
    T = q.shape[0]
    out = np.zeros_like(q, dtype=np.float64)
    for t in range(T):
        lo = t - t % chunk
        s = np.einsum("hd,jhd->hj", q[t], k[lo : t + 1]) * scale
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out[t] = np.einsum("hj,jhd->hd", p, v[lo : t + 1])
    return out


@pytest.mark.parametrize("step", [13, 1], ids=["prefill", "decode"])
def test_chunked_attention_kernels(step):
    """The plain fp16 cache's prefill and decode kernels with a chunk of 8 (``LayerSpec.window`` -8): each query sees
    the keys of its own chunk only, up to itself, against a float64 reference over the fp16-rounded K and V."""
    rng = np.random.default_rng(0)
    T, H, D, chunk = 40, 2, 16, 8
    q, k, v = (rng.standard_normal((T, H, D)).astype(np.float32) for _ in range(3))
    spec = LayerSpec(H, H, D, D, -chunk, D**-0.5)
    (layer,) = make_plain_cache([spec], 64, 16)
    out = np.zeros((T, H, D), np.float32)
    for s in range(0, T, step):
        e = min(T, s + step)
        layer.update_and_attend(q[s:e], k[s:e], v[s:e], np.arange(s, e, dtype=np.int32), out[s:e])
    r16 = [a.astype(np.float16).astype(np.float64) for a in (k, v)]
    ref = _reference_attention(q.astype(np.float64), *r16, chunk, D**-0.5)
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(out - _reference_attention(q.astype(np.float64), *r16, 10**6, D**-0.5)).max() > 0.1  # (the chunks matter)


@pytest.fixture(scope="module")
def long_prefix(tmp_path_factory):
    """The long fixture, the tiny Llama 4 and its cache after the prompt's first ``first`` tokens (prefilled once for
    the module's tests, 512 a step)."""
    fix = np.load(FIX / "llama4_long.npz")
    path = write_tiny_model(tmp_path_factory.mktemp("llama4long") / "llama4.gguf", **FIXTURE_MODELS["llama4"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fix["sha256"]), "tiny_llama4.py writes another model now: regenerate"
    g = GGUFFile(path)
    cfg = load_config(g)
    ids, first, n_ctx = fix["ids"], int(fix["first"]), len(fix["ids"]) + 16
    model = model_class(cfg.arch)(g, cfg, get_backend("cpu"), n_ctx, 512)
    cache = KVCache(make_cache(model.layer_specs(), n_ctx, 512))
    for s in range(0, first, 512):
        ch = ids[s : min(first, s + 512)]
        model.forward(ch, np.arange(s, s + len(ch), dtype=np.int32), cache, np.zeros(0, np.int64), np.zeros((0, cfg.n_vocab), np.float32))
        cache.offset += len(ch)
    return fix, cfg, model, n_ctx, cache


def _long_error(long_prefix, chunk, drop=None):
    """Max relative error of the long fixture's logits, the rest of the prompt fed ``chunk`` tokens a step after the
    shared prefix (copied), with ``drop(model, specs)`` (returning the layer specs to use) applied first."""
    fix, cfg, model, n_ctx, prefix = long_prefix
    ids, first, ref = fix["ids"], int(fix["first"]), fix["logits"]
    specs = model.layer_specs()
    saved = model.q_temp
    try:
        if drop is not None:
            specs = drop(model, specs)
        cache = KVCache(make_cache(model.layer_specs(), n_ctx, 512))
        assert cache.copy_prefix(prefix, first)
        for layer, spec in zip(cache.layers, specs):  # (the same rings: every position held, in every layer)
            layer.spec = spec
        got = np.zeros_like(ref)
        for s in range(first, len(ids), chunk):
            e = min(len(ids), s + chunk)
            model.forward(ids[s:e], np.arange(s, e, dtype=np.int32), cache, np.arange(e - s), got[s - first : e - first])
            cache.offset += e - s
    finally:
        model.q_temp = saved
    return np.abs(got - ref).max() / np.abs(ref).max(), got, ref


@pytest.mark.parametrize("chunk", [40, 1], ids=["prefill", "decode"])
def test_long_context_matches_llamacpp(long_prefix, chunk):
    """Past llama.cpp's first chunk of 8192 positions: the rope layers see their own chunk only (and the
    positions before 8192 all of theirs), the NoPE layer's queries step up to ``1 + 0.1 ln 2`` at position 8191."""
    err, got, ref = _long_error(long_prefix, chunk)
    # (9.2e-4 at one position of 80, the rest 1e-4 to 4e-4: llama.cpp rounds Q to fp16 in its attention, which over
    # the NoPE layer's 8k keys shows; rounded so in kvrun too the rest drop to 3e-5, the one position stays)
    assert err < 1.5e-3, f"llama4 at 8160-8239: max relative logit error {err:.2e} against llama.cpp"
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_long_context_needs_chunks_and_temperature(long_prefix):
    """The long fixture fails with global attention in the rope layers, without the NoPE layer's temperature, and
    with the temperature a position late (Mistral 3's ``floor(pos / n)``, not Llama 4's ``floor((pos + 1) / n)``)."""
    from kvrun.models.mistral3 import attn_temperature

    def no_chunks(m, specs):
        return [dataclasses.replace(s, window=0) for s in specs]

    def no_temperature(m, specs):
        m.q_temp = np.ones_like(m.q_temp)
        return specs

    def temperature_late(m, specs):
        m.q_temp = attn_temperature(len(m.q_temp), 0.1, 8192)
        return specs

    fix = long_prefix[0]
    row = 8191 - int(fix["first"])
    assert _long_error(long_prefix, 40, no_chunks)[0] > 0.3
    assert _long_error(long_prefix, 40, no_temperature)[0] > 1e-2
    err, got, ref = _long_error(long_prefix, 40, temperature_late)
    late = np.abs(got - ref).max(1) / np.abs(ref).max()
    assert late[row] > 3e-3 and np.delete(late, row).max() < 1.5e-3  # (position 8191's query alone moves)


def test_llama4_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny fixtures fail without each of Llama 4's changes to the Llama block: the expert's weight on its input
    (not its output), the shared expert, the sigmoid router (not softmax), Q and K L2-normed on the rope layers (Scout;
    Maverick's 128 experts have none), the NoPE layer (rope everywhere), the dense layers between the MoE ones."""
    _, model = _build(write_tiny_model(tmp_path / "l4.gguf", **FIXTURE_MODELS["llama4"]))
    assert [L.moe is not None for L in model.layers] == [False, True, False, True]
    assert [L.rope for L in model.layers] == [True, True, True, False]
    assert [s.window for s in model.layer_specs()] == [-8192, -8192, -8192, 0]
    assert model.qk_l2 and not _build(write_tiny_model(tmp_path / "mav.gguf", **FIXTURE_MODELS["llama4-128e"]))[1].qk_l2

    def moe(field, value):
        return lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]

    def rope_everywhere(m):
        m.layers = [dataclasses.replace(L, rope=True) for L in m.layers]

    for name in ("llama4", "llama4-128e"):
        assert _fixture_error(tmp_path, name, moe("weight_before_ffn", False)) > 3e-2, name
        assert _fixture_error(tmp_path, name, moe("shared", None)) > 3e-2, name
        assert _fixture_error(tmp_path, name, moe("gating", "softmax")) > 3e-2, name
        assert _fixture_error(tmp_path, name, rope_everywhere) > 3e-2, name
    assert _fixture_error(tmp_path, "llama4", lambda m: setattr(m, "qk_l2", False)) > 3e-2
    assert _fixture_error(tmp_path, "llama4-128e", lambda m: setattr(m, "qk_l2", True)) > 3e-2


def test_llama4_refusals(tmp_path):
    """One-line errors: a missing tensor (named), and a file llama.cpp cannot run either (attention.sliding_window 0).
    (An eviction policy on the chunked layers runs: tests/test_chunked_policy.py.)"""
    from tiny_llama4 import write_tiny_llama4

    for name in ("blk.1.ffn_gate_inp.weight", "blk.3.ffn_down_shexp.weight", "blk.2.ffn_up.weight", "blk.0.attn_k.weight"):
        with pytest.raises(GGUFError, match=name.replace(".", r"\.")):
            _build(write_tiny_llama4(tmp_path / "drop.gguf", drop=(name,)))
    with pytest.raises(UnsupportedModelError, match="sliding_window 0"):
        _build(write_tiny_llama4(tmp_path / "sw0.gguf", sliding_window=0))
