"""Gemma 4 (``gemma4``): its fixtures against llama.cpp fail without what sets it apart, its layout (shared K/V, heads
of two widths, double-wide FFNs) is read as llama.cpp reads it, a file missing a tensor it needs is refused in one line
naming it, and its chat template (a GGUF carries its own) renders.
(test_models.test_forward_matches_llamacpp holds the fixtures gemma4 and gemma4_moe to llama.cpp; the GPU runs them:
tests/test_gpu_gemma_n4.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_models import _build, _fixture_error
from tiny_gemma4 import write_tiny_gemma4
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.errors import GGUFError
from kvrun.models.common import make_rope
from kvrun.ops.backend import Weight


def _layers(field, value):
    return lambda m: [setattr(L, field, value) for L in m.layers]


def _experts(field, value):
    return lambda m: [setattr(L.experts, field, value) for L in m.layers if L.experts]


def _no_rope_freqs(m):  # (the global layers' rope turning every pair, not a quarter)
    m.rope_global = make_rope(m.cfg, m.n_ctx, m.cfg.rope_theta)


def _no_v_norm(m):
    m.norm_v = lambda v3: None


def _scaled_attention(m):  # (1/sqrt(head_dim), as Gemma 3's, where Gemma 4's is unscaled)
    specs = m.layer_specs
    m.layer_specs = lambda: [dataclasses.replace(s, scale=s.head_dim**-0.5) for s in specs()]


def test_gemma4_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny E2B-like Gemma 4 fails without its proportional rope on global layers, the window layers' own rope
    base, V's norm, its unscaled attention, its soft cap, its per-layer inputs, its layer output scales, with its
    sharing layers reading another layer's K/V than llama.cpp's rule gives."""

    def global_base_on_window_layers(m):
        m.rope_local = make_rope(dataclasses.replace(m.cfg, rope_dim=m.head_dim_swa), m.n_ctx, m.cfg.rope_theta)

    def other_kv_source(m):
        m.kv_source = lambda il: il if m.layers[il].has_kv else (0 if m.layers[il].swa else 2)

    drops = (global_base_on_window_layers, _no_v_norm, _scaled_attention, _layers("out_scale", 1.0), other_kv_source,
             lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, final_logit_softcap=0.0)),
             lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, n_embd_altup=0)))  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "gemma4", drop) > 5e-2, drop
    assert _fixture_error(tmp_path, "gemma4", _no_rope_freqs) > 1e-2  # (two global layers of six, one reading the other's K)


def test_gemma4_moe_fixture_sees_what_sets_it_apart(tmp_path):
    """The tiny 26B-A4B-like Gemma 4 fails without the router's input scale, the experts' output scales, the two
    halves' own output norms; with the fused gate and up taken the other way round; with its global layer's V a
    projection of its own (it has none: V is K's projection); without V's norm, with scaled attention.  (The
    renormalised expert weights cannot show: the experts' output norm takes any common factor away.)"""

    def gate_up_swapped(m):
        for L in m.layers:
            L.experts.gate_up = [Weight(np.concatenate([w.data[w.shape[0] // 2 :], w.data[: w.shape[0] // 2]]), w.qtype, w.shape)
                                 for w in L.experts.gate_up]  # fmt: skip

    def v_of_its_own(m):
        for L in m.layers:
            if L.has_kv and L.wv is None:
                L.wv = L.wq

    def one_output_norm(m):
        for L in m.layers:
            L.experts.post_norm_mlp = L.experts.post_norm

    drops = (_experts("router_scale", np.ones(64, np.float32)), _experts("down_scale", None), gate_up_swapped, v_of_its_own,
             one_output_norm, _no_v_norm, _scaled_attention, _layers("out_scale", 1.0))  # fmt: skip
    for drop in drops:
        assert _fixture_error(tmp_path, "gemma4_moe", drop) > 5e-2, drop
    assert _fixture_error(tmp_path, "gemma4_moe", _no_rope_freqs) > 1e-2


def test_gemma4_layout_is_read_as_llamacpp_reads_it(tmp_path):
    """E2B's layout: the last shared_kv_layers layers store no K/V and read the last earlier layer of their kind (window
    layers layer 1's, the global one layer 2's); window layers' heads 16 wide with 1 KV head, global ones 32 with 2;
    the sharing layers' FFNs twice as wide.  The MoE layout: no sharing, no per-layer inputs, its global layer's V its
    K's projection."""
    cfg, model = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["gemma4"]))
    assert (cfg.n_layer_kv_from_start, cfg.n_embd_altup, cfg.swa_layers) == (3, 32, (True, True, False, True, True, False))
    specs = model.layer_specs()
    assert [s.kv_from for s in specs] == [-1, -1, -1, 1, 1, 2]
    assert [(s.head_dim, s.n_head_kv, s.window) for s in specs[:3]] == [(16, 1, 8), (16, 1, 8), (32, 2, 0)]
    assert [L.w_gate.shape[0] for L in model.layers] == [96, 96, 96, 192, 192, 192]
    assert [L.wk is None for L in model.layers] == [False] * 3 + [True] * 3
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["gemma4_moe"]))
    assert (cfg.n_layer_kv_from_start, cfg.n_embd_altup, cfg.n_expert, cfg.n_expert_used) == (4, 0, 4, 2)
    assert [s.kv_from for s in model.layer_specs()] == [-1] * 4
    assert [L.wv is None for L in model.layers] == [False, False, False, True]
    assert all(L.experts is not None and len(L.experts.gate_up) == 4 for L in model.layers)


@pytest.mark.parametrize(("variant", "missing"), [("", "per_layer_model_proj.weight"), ("", "blk.1.attn_k_norm.weight"),
                                                  ("", "blk.4.post_norm.weight"), ("", "rope_freqs.weight"),
                                                  ("moe", "blk.0.pre_ffw_norm_2.weight"), ("moe", "blk.3.ffn_gate_inp.scale"),
                                                  ("moe", "blk.2.ffn_down_exps.weight")])  # fmt: skip
def test_a_missing_tensor_is_named_in_one_line(tmp_path, variant, missing):
    path = write_tiny_gemma4(tmp_path / "g.gguf", variant=variant, drop=(missing,))
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fixture", ["gemma4", "gemma4_moe"])
def test_kv_bytes_per_token_count_what_the_cache_holds(tmp_path, fixture):
    """``kvrun info``'s KV cache / token: only the layers that store K/V (not those that share an earlier one's),
    each with its own KV heads at its own width (window layers' 16, global ones' 32)."""
    cfg, model = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS[fixture]))
    held = sum(s.n_head_kv * (s.head_dim + s.head_dim_v) for s in model.layer_specs() if s.kv_from < 0)
    assert cfg.kv_bytes_per_token(16) == held * 2 and cfg.kv_bytes_per_token(8) == held
    assert held == {"gemma4": 2 * 1 * 32 + 2 * 64, "gemma4_moe": 3 * 1 * 32 + 2 * 64}[fixture]


#: Gemma 4's chat template as its GGUFs carry it (llama.cpp's models/templates/gemma4.jinja, the converter copying the
#: checkpoint's): turns as <|turn>role ... <turn|>, the reply's thinking stripped from history, an empty thought
#: channel after the generation prompt unless enable_thinking, tools declared in its own notation
GEMMA4_TEMPLATE = (Path(__file__).parent / "fixtures" / "chat_template_gemma4.jinja").read_text()


def test_gemma4_chat_template_renders():
    """The template's macros (recursive, with keyword arguments), namespaces, ``dictsort``, ``map('upper')``, the
    ``mapping``/``sequence``/``boolean`` tests and ``str.split`` all render in kvrun's sandbox as in transformers'."""
    from kvrun.loaders.chat_template import render_chat

    msgs = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": " Hi"},
            {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>Hello!"}, {"role": "user", "content": "Weather in Paris?"}]  # fmt: skip
    assert render_chat(GEMMA4_TEMPLATE, msgs, bos_token="<bos>") == (
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n"
        "<|turn>user\nWeather in Paris?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )
    assert render_chat(GEMMA4_TEMPLATE, msgs[1:2], bos_token="<bos>", enable_thinking=True) == (
        "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string", "description": "The city"},
                                                               "units": {"type": "string", "enum": ["c", "f"]}}}}}]  # fmt: skip
    calls = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                                              "arguments": {"city": "Paris", "metric": True}}}]}]  # fmt: skip
    q = '<|"|>'
    assert render_chat(GEMMA4_TEMPLATE, calls, add_generation_prompt=False, tools=tools) == (
        f"<|turn>system\n<|tool>declaration:get_weather{{description:{q}Weather of a city{q},parameters:{{properties:{{"
        f"city:{{description:{q}The city{q},type:{q}STRING{q}}},units:{{enum:[{q}c{q},{q}f{q}],type:{q}STRING{q}}}}},"
        f"required:[{q}city{q}],type:{q}OBJECT{q}}}}}<tool|><turn|>\n<|turn>user\nWeather?<turn|>\n"
        f"<|turn>model\n<|tool_call>call:get_weather{{city:{q}Paris{q},metric:true}}<tool_call|><turn|>\n"
    )


def test_a_gemma4_file_without_a_template_gets_gemma4_turns():
    """The built-in fallback (llama.cpp has none for Gemma 4) renders what Gemma 4's own template renders for text
    conversations, BOS aside (the tokenizer adds it): system turn, thinking stripped from history, the empty thought
    channel unless enable_thinking; Gemma 3's <start_of_turn> stays Gemma 3's."""
    from kvrun.loaders.chat_template import GEMMA4_TEMPLATE as BUILTIN
    from kvrun.loaders.chat_template import GEMMA_TEMPLATE, builtin_template, render_chat

    assert builtin_template("gemma4") is BUILTIN and builtin_template("llama", ["<|turn>", "<turn|>"]) is BUILTIN
    assert builtin_template("gemma3") is GEMMA_TEMPLATE
    convs = [
        [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": " Hi"},
         {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>Hello!"}, {"role": "user", "content": "Weather?"}],
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
         {"role": "assistant", "content": [{"type": "text", "text": " <|channel>t<channel|>x "}]}],
        [{"role": "developer", "content": "sys"}, {"role": "user", "content": "q"}],
    ]  # fmt: skip
    for msgs in convs:
        for kw in ({}, {"enable_thinking": True}, {"add_generation_prompt": False}):
            assert render_chat(BUILTIN, msgs, **kw) == render_chat(GEMMA4_TEMPLATE, msgs, bos_token="", **kw), (msgs, kw)
