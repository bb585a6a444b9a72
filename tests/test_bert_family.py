"""The BERT family's other encoders (models/jina_bert.py, nomic_bert_moe.py, neo_bert.py): jina-bert-v2 (ALiBi,
GEGLU), jina-bert-v3 (XLM-R with rope), nomic-bert-moe (MoE every other layer), neo-bert (pre-norm RMSNorm,
SwiGLU) held to llama.cpp on tests/tiny_bert_family.py's tiny models (tests/fixtures/embed_<name>.npz from
tools/make_bert_family_fixtures.py): the same token ids (WordPiece, jina-v2-code's byte-level BPE, XLM-R's
Unigram), every token's state within STATE_TOL of the largest (measured: 1.2e-4 jina-bert-v2, 4.9e-4
jina-bert-v2-code, 2.3e-4 jina-bert-v3, 2.7e-4 nomic-bert-moe, 1.9e-6 neo-bert; ggml's float16 GELU table is
most of it), the file's pooling, L2-normalised, within POOLED_TOL; each feature that sets an architecture
apart, taken away, moves the states by more than ten times STATE_TOL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from embed_checks import (FIX, STATE_TOL, check_cli, check_ids_states_and_embeddings, check_missing_tensor, check_quantized_close,
                          check_unknown_device_text_and_overlong_refused, load, state_error)  # fmt: skip
from tiny_bert_family import TEXTS, VARIANTS, Q, write_tiny_bert_family

from kvrun.loaders.errors import GGUFError


def _load(tmp_path_factory, name: str):
    return load(tmp_path_factory, write_tiny_bert_family, name)


@pytest.fixture(scope="module", params=list(VARIANTS))
def encoder(request, tmp_path_factory):
    return request.param, *_load(tmp_path_factory, request.param)


def test_ids_states_and_embeddings_are_llama_cpps(encoder):
    name, m, fx = encoder
    check_ids_states_and_embeddings(m, fx, TEXTS, VARIANTS[name]["arch"], "cls" if name == "neo-bert" else "mean")


def test_jina_v2_layouts_are_one_model():
    """Same seed, same draws: the fused GEGLU ``ffn_up`` (gate's rows first) and the split ``ffn_gate``/``ffn_up`` of
    older converters are the same weights, and llama.cpp gives the same states for both files."""
    a, b = np.load(FIX / "embed_jina-bert-v2.npz"), np.load(FIX / "embed_jina-bert-v2-gate.npz")
    for k in range(len(TEXTS)):
        np.testing.assert_allclose(a[f"embd_{k}"], b[f"embd_{k}"], atol=1e-5)


def _rope_layout(neox: bool):
    def drop(model):
        model.cfg = dataclasses.replace(model.cfg, rope_neox=neox)

    return drop


def _no_rope(model):
    model.rope = False


def _layers(key, value):
    def drop(model):
        for L in model.layers:
            if key in L:
                L[key] = value

    return drop


def _one_slope_series(model):
    """ALiBi's first slope series carried on over every head (as if 6 were a power of two)."""
    from kvrun.models.jina_bert import alibi_slopes

    m0 = alibi_slopes(4)[0]
    slopes = (m0 ** np.arange(1, model.cfg.n_head + 1)).astype(np.float32)
    model._attn_bias = lambda T: slopes[:, None, None] * -np.abs(np.arange(T)[:, None] - np.arange(T)[None, :]).astype(np.float32)


def _geglu_halves_swapped(model):
    from kvrun.models.bert import gelu

    def ffn(x, L, il):
        gu = model._linear(L["w_up"], x, None)
        n = gu.shape[1] // 2
        return model._linear(L["w_down"], gelu(gu[:, n:]) * gu[:, :n], L["b_down"])

    model._ffn = ffn


def _swiglu_halves_swapped(model):
    for L in model.layers:
        w = L["w_up"]
        n = w.shape[0] // 2
        L["w_up"] = dataclasses.replace(w, data=np.concatenate([w.data[n:], w.data[:n]]))


def _moe(field, value):
    def drop(model):
        model.cfg = dataclasses.replace(model.cfg, **{field: value})

    return drop


FEATURES = {
    "jina-bert-v2": {"no ALiBi": lambda m: setattr(m, "_attn_bias", lambda T: None), "one ALiBi slope series": _one_slope_series,
                     "GEGLU halves swapped": _geglu_halves_swapped},
    "jina-bert-v2-code": {"no Q LayerNorm": _layers("q_norm", None), "no K LayerNorm": _layers("k_norm", None),
                          "no attn_norm_2": _layers("attn_norm_2", None)},
    "jina-bert-v3": {"no rope": _no_rope, "rope over consecutive pairs": _rope_layout(False)},
    "nomic-bert-moe": {"no rope": _no_rope, "experts' weights renormalised": _moe("expert_weights_norm", True),
                       "one expert per token": _moe("n_expert_used", 1), "every expert used": _moe("n_expert_used", 4)},
    "neo-bert": {"no rope": _no_rope, "NeoX rope": _rope_layout(True), "no final norm": "patched below",
                 "SwiGLU halves swapped": _swiglu_halves_swapped},
}  # fmt: skip


@pytest.mark.parametrize(("name", "feature"), [(n, f) for n, fs in FEATURES.items() for f in fs])
def test_features_matter(tmp_path_factory, monkeypatch, name, feature):
    """Each feature that sets the architecture apart, taken away, moves the states by far more than the tolerance:
    what shows the test above would catch its loss."""
    m, fx = _load(tmp_path_factory, name)
    if feature == "no final norm":
        from kvrun.models import neo_bert

        final, norm = m.engine.model.output_norm, neo_bert.rms_norm
        monkeypatch.setattr(neo_bert, "rms_norm", lambda x, w, eps: x if w is final else norm(x, w, eps))
    else:
        FEATURES[name][feature](m.engine.model)
    err = state_error(m, fx, TEXTS)
    assert err > 10 * STATE_TOL, f"{name} {feature}: {err:.2e} off llama.cpp's"


def test_jina_bert_v2_alibi_slopes_are_ggmls():
    """ggml's soft_max slopes for max bias 8: a power of two of heads one series, others a second interleaved."""
    from kvrun.models.jina_bert import alibi_bias, alibi_slopes

    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
    np.testing.assert_allclose(alibi_slopes(12)[:8], 2.0 ** -np.arange(1, 9), rtol=1e-6)
    np.testing.assert_allclose(alibi_slopes(12)[8:], 2.0 ** -(np.arange(4) + 0.5), rtol=1e-6)  # m1 = 2^-0.5, odd powers
    b = alibi_bias(2, 3)
    assert b.shape == (2, 3, 3) and np.allclose(b, b.transpose(0, 2, 1)) and np.all(np.diagonal(b, axis1=1, axis2=2) == 0)


@pytest.mark.parametrize(("name", "missing"), [("jina-bert-v2", "blk.1.ffn_down.bias"), ("jina-bert-v2", "token_types.weight"),
                                               ("jina-bert-v3", "blk.0.attn_output_norm.weight"), ("nomic-bert-moe", "blk.1.ffn_up_exps.weight"),
                                               ("nomic-bert-moe", "blk.3.ffn_gate_inp.weight"), ("neo-bert", "enc.output_norm.weight"),
                                               ("neo-bert", "blk.2.ffn_norm.weight")])  # fmt: skip
def test_a_missing_tensor_is_named_in_one_line(tmp_path, name, missing):
    check_missing_tensor(write_tiny_bert_family(tmp_path / f"{name}.gguf", name, drop=(missing,)), missing)


def test_a_jina_v2_ffn_up_of_the_wrong_width_is_refused(tmp_path):
    from kvrun.loaders.gguf_file import GGUFFile

    path = write_tiny_bert_family(tmp_path / "m.gguf", "jina-bert-v2")
    g = GGUFFile(path)
    g.tensors["blk.0.ffn_gate.weight"] = g.tensors["blk.0.ffn_up.weight"]  # (a gate beside a fused GEGLU up: 2 n_ff rows)
    from kvrun.loaders.config import load_config
    from kvrun.models.jina_bert import JinaBertV2Model
    from kvrun.ops.cpu.backend import CPUBackend

    with pytest.raises(GGUFError, match=r"blk\.0\.ffn_up has 128 rows, expected 64"):
        JinaBertV2Model(g, load_config(g), CPUBackend(), 128, 128)


@pytest.mark.parametrize("name", ["jina-bert-v2", "jina-bert-v3", "nomic-bert-moe", "neo-bert"])
def test_they_refuse_an_unknown_device_text_and_overlong_input(tmp_path, name):
    check_unknown_device_text_and_overlong_refused(write_tiny_bert_family(tmp_path / "m.gguf", name), name)


@pytest.mark.parametrize("name", ["jina-bert-v2", "jina-bert-v3", "nomic-bert-moe", "neo-bert"])
def test_quantized_weights_embed_close_to_float(tmp_path, name):
    # (jina-bert-v2's tiny GEGLU model measured 0.9955 at worst: its weights' rounding alone gives 0.998, and
    # llama.cpp cannot be asked, it stops on the Q8_0 file; the others 0.9998)
    check_quantized_close(write_tiny_bert_family(tmp_path / "f32.gguf", name), write_tiny_bert_family(tmp_path / "q8.gguf", name, qtype=Q.Q8_0), TEXTS)


def test_the_cli_embeds_tells_and_refuses_text(tmp_path):
    check_cli(write_tiny_bert_family(tmp_path / "m.gguf", "jina-bert-v2"), TEXTS, "jina-bert-v2", 96, "mean")
