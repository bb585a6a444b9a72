"""Every architecture, on a tiny random GGUF, equals the float64 numpy reference forward.

Prefill in chunks (with the ring buffer wrapping on sliding-window layers) and
token-by-token decode must both agree with the reference's logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from reference import Reference
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import KVCache
from kvrun.cache.factory import make_cache
from kvrun.loaders.config import load_config
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.chameleon import IMAGE_TOKENS  # (the logits llama.cpp overwrites for Chameleon)
from kvrun.ops import get_backend

N_TOK = 40
N_CTX = 64
N_BATCH = 16


def _build(path):
    g = GGUFFile(path)
    cfg = load_config(g)
    return cfg, model_class(cfg.arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)


def _run(model, cfg, tokens, chunk):
    cache = KVCache(make_cache(model.layer_specs(), N_CTX, N_BATCH))  # (the factory: LFM2 keeps convolution states too)
    out = np.zeros((len(tokens), cfg.n_vocab), np.float32)
    for s in range(0, len(tokens), chunk):
        ch = tokens[s : s + chunk]
        pos = np.arange(cache.offset, cache.offset + len(ch), dtype=np.int32)
        model.forward(ch, pos, cache, np.arange(len(ch)), out[s : s + len(ch)])
        cache.offset += len(ch)
    return out


def _fixture_error(tmp_path, name, drop):
    """The max relative error against llama.cpp's fixture ``name`` of its tiny model with ``drop(model)`` applied
    first: what the tests that show a feature matters take away."""
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{name}.npz")
    _, model = _build(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    drop(model)
    got = _run(model, model.cfg, fix["ids"], N_BATCH)
    return np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()


@pytest.mark.parametrize("arch", ["llama", "smollm3", "granite", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma2", "gemma3"])
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0])
@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_forward_matches_reference(tmp_path, arch, qtype, chunk):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype=qtype, sliding_window=8)
    cfg, model = _build(path)
    tokens = np.random.default_rng(1).integers(0, cfg.n_vocab, N_TOK).astype(np.int32)
    ref = Reference(path).logits(tokens)
    got = _run(model, cfg, tokens, chunk)
    # Q8_0 weights are exact in both; the kernels may quantize activations to 8 bits
    tol = 2e-3 if qtype == Q.F32 else 3e-2
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < tol, f"max relative error {err:.2e}"
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("arch", ["llama", "qwen3moe"])
@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_mxfp4_weights_match_reference(tmp_path, arch, chunk):
    """MXFP4 (gpt-oss's expert weights): a tiny model with every matrix MXFP4, the experts' 3-D tensors
    included, against the reference forward on the same weights (gguf's decoding, float64).  The weights
    are exact in both; the kernels meet them with activations quantized to int8 per 32 (decode; prefill
    too on a VNNI host), and the reference does so where they do: against float activations the tiny
    MoE's router picks another expert for one token on a near-tie (10% of the largest logit there)."""
    from kvrun.ops.cpu import qmatmul

    int8_x = qmatmul.HAVE_AVX2 and (chunk == 1 or qmatmul.HAVE_VNNI)
    if arch == "qwen3moe" and qmatmul.HAVE_AVX2 and not int8_x:
        pytest.skip("without VNNI prefill's experts meet int8 and float activations by turns: no one reference")
    path = write_tiny_model(tmp_path / f"{arch}-mxfp4.gguf", arch, qtype=Q.MXFP4)
    cfg, model = _build(path)
    tokens = np.random.default_rng(1).integers(0, cfg.n_vocab, N_TOK).astype(np.int32)
    ref = Reference(path, quantize_x=int8_x).logits(tokens)
    got = _run(model, cfg, tokens, chunk)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 3e-2, f"max relative error {err:.2e}"
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_gemma3_layers_alternate_window(tmp_path):
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", sliding_window=8)
    cfg, model = _build(path)
    windows = [s.window for s in model.layer_specs()]
    assert windows == [8, 8, 8, 8, 8, 0]


def test_exaone4_windows_at_the_32bs_depth_only_and_cohere2_always(tmp_path):
    """llama.cpp gives EXAONE 4.0 window layers by its depth (64 layers, the 32B's): a shallower file's
    window is ignored and every layer rotates.  Command R7B's window is in 3 layers of 4, which alone rotate."""
    _, model = _build(write_tiny_model(tmp_path / "e.gguf", "exaone4", sliding_window=8))
    assert [s.window for s in model.layer_specs()] == [0] * 4 and all(L.rope for L in model.layers)
    _, model = _build(write_tiny_model(tmp_path / "e64.gguf", "exaone4", sliding_window=8, n_layer=64))
    assert [s.window for s in model.layer_specs()][:8] == [8, 8, 8, 0] * 2
    assert [L.rope for L in model.layers][:8] == [True, True, True, False] * 2
    cfg, model = _build(write_tiny_model(tmp_path / "c.gguf", "cohere2"))
    assert [s.window for s in model.layer_specs()] == [8, 8, 8, 0] and cfg.swa_layers == (True, True, True, False)


def test_unknown_architecture_lists_supported():
    from kvrun.loaders.errors import UnsupportedModelError

    from kvrun.models import MODEL_CLASSES

    assert {"llama", "gemma3", "qwen3", "mamba2"} <= set(MODEL_CLASSES) and "whisper" not in MODEL_CLASSES
    with pytest.raises(UnsupportedModelError, match="kvrun runs " + ", ".join(sorted(MODEL_CLASSES)) + "$"):
        model_class("whisper")  # (an audio encoder-decoder: not run; t5 is, models/t5.py)


def test_a_tensor_type_without_kernels_fails_at_load_naming_the_tensor(tmp_path, monkeypatch):
    """A type the backend has no kernels for (the GPU's list can be shorter than the CPU's) is refused
    while the model loads, in one line naming the tensor: not mid-answer, after the prompt is echoed."""
    from kvrun.loaders.errors import UnsupportedModelError
    from kvrun.ops.cpu import qmatmul
    from kvrun.runtime.engine import Engine

    path = write_tiny_model(tmp_path / "q.gguf", "llama", qtype=Q.Q8_0)
    monkeypatch.delitem(qmatmul._TYPES, int(Q.Q8_0))
    with pytest.raises(UnsupportedModelError, match=r"q\.gguf: tensor 'token_embd\.weight': no CPU kernel for tensor type Q8_0"):
        Engine(str(path), n_ctx=32)


#: where fp16 K/V storage shows more than float32 rounding: gpt-oss's sink logits make every softmax,
#: even a first token's over itself alone, depend on the scores, so the rounding of K and V in both
#: runtimes' caches reaches the logits (first token: kvrun 1.2e-4 from a float64 forward of the
#: file, llama.cpp 3.3e-4; with llama.cpp's cache in float32 the two differ by 5.9e-3)
#: MXFP4 experts: both runtimes meet them with activations quantized to 8 bits, each its own way
#: EXAONE 4.0 at the 32B's depth: llama.cpp's CPU attention rounds Q and the softmax weights to fp16 as well
#: (K and V are fp16 in both), and 64 layers without a pre-norm grow that rounding: kvrun is 2.2e-4 from a
#: float64 forward with fp16 K/V, llama.cpp 2.0e-3 (7.7e-4 with Q and the weights rounded too); a wrong
#: window or rope costs 0.5 and more
#: Gemma 3n: llama.cpp's CPU GELU goes through an fp16 table (input and output rounded), two GELUs a layer over
#: 25 layers, and its fp16 Q and attention weights meet unscaled QK-normed scores: 3.3e-3 (the first position,
#: where attention is one value: GELU alone), 2.6e-3 with kvrun's GELU rounded the same way; a wrong window rope
#: base costs 0.41, attending over a layer's own K/V instead of the shared layer's 0.56
TOLERANCE = {"gpt-oss": 2.5e-3, "gpt-oss-mxfp4": 3e-2, "exaone4-swa": 3e-3, "gemma3n": 5e-3}
#: BitNet's TQ2_0 projections: llama.cpp meets them with x quantized to Q8_K (int8, one scale a 256 weights), its logits
#: 6.2e-3 from its own F32 run of the very same weights (the bitnet fixture); kvrun's decode (int8, a scale a 32) is
#: 3.5e-3 from it, its prefill (decoded tiles, float x) 7e-5: the two runtimes' activation roundings, 8e-3 apart at decode
TOLERANCE["bitnet-tq2_0"] = 1.5e-2
#: Grok's RMSNorm after the attention carries llama.cpp's float16 roundings of the queries and the softmax's probabilities
#: (its attention without flash attention meets the float16 K/V so) into the stream whole: a float64 forward with them
#: is 2e-4 from its logits, without them 1.1e-3, where kvrun's float32 attention is
TOLERANCE.update({"grok": 2e-3, "grok1": 2e-3})
#: PLaMo 2's RMSNorm after each attention does the same (and its per-head QK-norm makes the scores large): 1.1e-3 from
#: llama.cpp's logits, 0 at the first position (one key); kvrun's queries rounded to float16 as llama.cpp's, 8.8e-4
TOLERANCE["plamo2"] = 2e-3
#: where kvrun's logits are a known multiple of llama.cpp's: a MiniCPM file that states no logit_scale (older converters)
#: gets llama.cpp's default 256 / n_embd, which its Granite graph divides the logits by (times n_embd / 256 = 0.25 here);
#: MiniCPM (and llama.cpp's own MiniCPM graph before it) divides them by n_embd / dim_model_base (256): times 4 here,
#: which kvrun follows.  Only the softmax's temperature differs (the argmax is the same); its other defaults
#: (embeddings times 12, blocks times 1.4 / sqrt(n_layer)) are llama.cpp's and the model's alike
LOGIT_RATIO = {"minicpm-defaults": (256 / 64) ** 2}


@pytest.mark.parametrize("name", list(FIXTURE_MODELS))
@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_forward_matches_llamacpp(tmp_path, name, chunk):
    """Each architecture's arithmetic against llama.cpp's own (tests/fixtures/arch_<arch>.npz, from
    tools/make_arch_fixtures.py): the same tiny random model, float32 weights, 40 positions (past
    the tiny Gemma 3's window of 8).  A wrong rope layout, norm, scale or window costs whole
    logits; float32 rounding in either runtime costs ~1e-5 of the largest."""
    import hashlib

    arch = FIXTURE_MODELS[name]["arch"]
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{name}.npz")
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fix["sha256"]), "tinymodel.py writes another model now: regenerate the fixtures"
    cfg, model = _build(path)
    got = _run(model, cfg, fix["ids"], chunk)
    ref = fix["logits"] * LOGIT_RATIO.get(name, 1.0)
    if arch == "chameleon":  # (the image tokens' logits, -FLT_MAX: llama.cpp's in its first row, kvrun's in all; test_classic2.py)
        got, ref = (np.delete(a, np.s_[IMAGE_TOKENS[0] : IMAGE_TOKENS[1]], axis=1) for a in (got, ref))
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < TOLERANCE.get(name, 1e-3), f"{arch}: max relative logit error {err:.2e} against llama.cpp"
    # the same greedy token wherever llama.cpp's top two logits are further apart than the two runtimes are (twice the
    # largest difference): a nearer pair is a tie at the stated tolerance (gpt-oss-mxfp4's 3e-2 on a host without VNNI,
    # whose prefill meets the experts with float activations, not int8: one position's top two are 0.06 apart)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * np.abs(got - ref).max()
    assert (got.argmax(1) == ref.argmax(1))[clear].all()


def test_gemma3n_shares_kv_on_the_plain_and_compressed_caches(tmp_path):
    """Gemma 3n's layers from the 20th on read the K/V of the last earlier layer of their kind (window layers
    layer 18's, global ones layer 19's) and store none, on the plain caches (the GPU's too: tests/test_gpu_gemma_n4.py)
    and the compressed ones (tests/test_shared_compressed.py)."""
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.cache.plain import PlainLayerCache, SharedLayerCache

    _, model = _build(write_tiny_model(tmp_path / "g3n.gguf", "gemma3n"))
    specs = model.layer_specs()
    assert [s.kv_from for s in specs][18:] == [-1, -1, 18, 18, 18, 18, 19]
    assert [s.window for s in specs][18:] == [8, 0, 8, 8, 8, 8, 0]
    layers = make_cache(specs, N_CTX, N_BATCH)
    assert isinstance(layers[19], PlainLayerCache) and isinstance(layers[24], SharedLayerCache)
    assert layers[24].source is layers[19] and layers[20].source is layers[18] and layers[20].nbytes() == 0
    from kvrun.cache.shared_compressed import SharedCompressedLayerCache

    layers = make_cache(specs, N_CTX, N_BATCH, KVConfig(bits=4))
    assert isinstance(layers[24], SharedCompressedLayerCache) and layers[24].source is layers[19] and layers[24].nbytes() == 0


def test_mistral3_and_ernie4_5_moe_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny Ministral 3's and ERNIE 4.5 MoE's fixtures fail without what sets each apart: the queries'
    temperature by position (1 below position 8, the tiny original context; 1 + 0.3 ln 5 from 32), YaRN's
    magnitude as llama.cpp sets it; the experts' selection bias, the shared expert, the renormalised weights
    (and layer 0 is dense, the others a mixture of experts)."""
    import dataclasses

    from kvrun.models.common import make_rope
    from kvrun.models.mistral3 import attn_temperature

    s = attn_temperature(40, 0.3, 8)
    assert (s[:8] == 1).all() and np.isclose(s[32], 1 + 0.3 * np.log(5))

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    def no_temperature(m):
        m.q_cos = None

    def yarn_magnitude_kept(m):  # (rope_tables' own 1 + 0.1 ln 4)
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, yarn_attn_factor=1.0), m.n_ctx, m.cfg.rope_theta)
        m.q_cos = None

    assert err("mistral3", no_temperature) > 3e-2
    assert err("mistral3", yarn_magnitude_kept) > 3e-2
    _, model = _build(write_tiny_model(tmp_path / "e.gguf", **FIXTURE_MODELS["ernie4_5-moe"]))
    assert model.layers[0].moe is None and all(L.moe.shared is not None and L.moe.bias is not None for L in model.layers[1:])
    for field, value in (("bias", None), ("shared", None), ("norm_weights", False)):
        assert err("ernie4_5-moe", lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]) > 3e-2, field


def test_hunyuan_dense_and_minicpm_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny Hunyuan dense's and MiniCPM's fixtures fail without what sets each apart: the QK-norm after the
    rope (not before, as Qwen3's), the rope base times alpha^(head_dim / (head_dim - 2)); each of MiniCPM's three
    multipliers; MiniCPM4's long rope factors past the original context (not the short ones, not none), which the
    short ones replace within it."""
    import dataclasses

    from tinymodel import MINICPM_LONG_FACTORS, MINICPM_SHORT_FACTORS

    from kvrun.models.common import make_rope
    from kvrun.models.llama import LlamaModel

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    cfg, _ = _build(write_tiny_model(tmp_path / "h.gguf", **FIXTURE_MODELS["hunyuan-dense"]))
    assert np.isclose(cfg.rope_theta, 10000.0 * 1000.0 ** (16 / 14), rtol=1e-6)

    def norm_before_rope(m):
        m.qk_norm_rope = lambda *a: LlamaModel.qk_norm_rope(m, *a)

    def no_alpha(m):
        m.rope_cos, m.rope_sin = make_rope(m.cfg, m.n_ctx, 10000.0)

    assert err("hunyuan-dense", norm_before_rope) > 3e-2
    assert err("hunyuan-dense", no_alpha) > 3e-2
    for field in ("embedding_scale", "residual_scale", "logit_scale"):
        assert err("minicpm", lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, **{field: 1.0}))) > 3e-2, field

    def factors(ff):
        return lambda m: setattr(m, "rope_cos", make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta, ff)[0]) or setattr(
            m, "rope_sin", make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta, ff)[1])

    assert err("minicpm4-longrope", factors(MINICPM_SHORT_FACTORS)) > 3e-2
    assert err("minicpm4-longrope", factors(None)) > 3e-2
    g = write_tiny_model(tmp_path / "m4.gguf", **FIXTURE_MODELS["minicpm4-longrope"])
    cfg = load_config(GGUFFile(g))
    for n_ctx, ff in ((64, MINICPM_LONG_FACTORS), (32, MINICPM_SHORT_FACTORS)):  # (beyond the original 32, within it)
        model = model_class(cfg.arch)(GGUFFile(g), cfg, get_backend("cpu"), n_ctx, N_BATCH)
        np.testing.assert_array_equal(model.rope_cos, make_rope(cfg, n_ctx, cfg.rope_theta, ff)[0])


def test_deepseek2_fixtures_see_what_sets_them_apart(tmp_path):
    """The tiny DeepSeek-V2-Lite's and V3's fixtures (multi-head latent attention, YaRN) fail without what sets them
    apart: the scores' mscale^2 (1 + 0.1 * 0.707 ln 4, squared), YaRN's own magnitude cancelled on the rope parts,
    YaRN itself, rope over consecutive pairs, the rope key every head shares; the shared experts; V3's sigmoid router,
    its selection bias, its group limit, its renormalised and scaled weights.  Both files' heads decompress to K 24
    and V 12 wide (V3's states the latent's widths as key_length/value_length, one K/V head, and the MLA ones apart)."""
    import dataclasses

    from kvrun.models.common import make_rope
    from kvrun.ops.backend import Weight

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    for name in ("deepseek2", "deepseek2-v3"):
        cfg, model = _build(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
        assert (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v, cfg.rope_dim) == (4, 4, 24, 12, 8)
        assert sum(type(model).cache_widths(cfg, GGUFFile(tmp_path / f"{name}.gguf"))) == 3 * (8 + 32)  # (the latent cache, V read through K: models/mla.py)
        assert model.layers[0].moe is None and all(L.moe.shared is not None for L in model.layers[1:])
        assert (model.layers[0].wq is None) == (name == "deepseek2-v3")
        assert np.isclose(model.layer_specs()[0].scale, model.mscale**2 / np.sqrt(24))
    assert np.isclose(_build(write_tiny_model(tmp_path / "l.gguf", "deepseek2"))[1].mscale, 1 + 0.0707 * np.log(4), rtol=1e-6)

    def no_mscale(m):
        m.mscale = 1.0

    def yarn_magnitude_kept(m):  # (rope_tables' own 1 + 0.1 ln 4 on the rope parts)
        m.rope_cos, m.rope_sin = make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta)

    def no_yarn(m):
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_scaling_type="none", yarn_attn_factor=1.0), m.n_ctx, m.cfg.rope_theta)

    def neox(m):
        m.cfg = dataclasses.replace(m.cfg, rope_neox=True)

    def no_rope_key(m):  # (the latent's shared rope key zeroed)
        for L in m.layers:
            d = L.wkv_a.data.copy()
            d.view(np.float32)[m.kv_rank :] = 0
            L.wkv_a = Weight(d, L.wkv_a.qtype, L.wkv_a.shape)

    def moe(field, value):
        return lambda m: [setattr(L.moe, field, value) for L in m.layers if L.moe]

    for name in ("deepseek2", "deepseek2-v3"):
        for drop in (no_mscale, yarn_magnitude_kept, no_yarn, neox, no_rope_key, moe("shared", None)):
            assert err(name, drop) > 3e-2, (name, drop)
    for field, value in (("gating", "softmax"), ("bias", None), ("n_group", 0), ("norm_weights", False), ("weights_scale", 1.0)):
        assert err("deepseek2-v3", moe(field, value)) > 3e-2, field


