"""Xiaomi MiMo-V2-Flash (309B-A15B), as llama.cpp's ``mimo2`` graph.

Pre-norm decoder (RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual), with what sets it apart:

* hybrid attention: the layers the file's ``sliding_window_pattern`` flags attend within a window (128 tokens) and
  rotate at their own base (``rope.freq_base_swa``), the others globally at ``rope.freq_base``;
* each layer its own number of KV heads (``head_count_kv`` a list: MiMo-V2-Flash's window layers have 8, its global
  ones 4), keys wider than values (192 and 128), neox rope over the first ``rope.dimension_count`` (64) of each key;
* learned attention sinks (gpt-oss's, ``LayerSpec.sink_logits``) where a layer has ``attn_sinks`` (the window layers);
* the attention's output times ``attention.value_scale`` where the file states one (0.707), as llama.cpp scales it
  after the output projection (the same arithmetic, the projection being linear);
* a dense SwiGLU FFN where a layer has no router (the first), elsewhere a mixture of experts (``moe.py``) routed by
  sigmoid (llama.cpp fixes it), chosen with ``exp_probs_b`` where the file has it, the chosen weights renormalised
  (fixed too), not scaled (llama.cpp reads no ``expert_weights_scale`` for mimo2), no shared expert; an output head of its own; scores scaled by ``1/sqrt(key_length)``.

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader, make_rope
from .llama import LlamaModel
from .moe import MoE, check_expert_counts, load_moe, moe_or_swiglu_add


def per_layer(g: GGUFFile, key: str, n_layer: int, default: Any, kind: type = int) -> list[Any]:
    """A hyperparameter llama.cpp reads with ``get_key_or_arr``: one value for every layer, or a list of one a layer."""
    v = g.arch_get(key, default)
    if not hasattr(v, "__len__"):
        return [kind(v)] * n_layer
    if len(v) < n_layer:
        raise GGUFError(f"{g.path}: {g.architecture}.{key} has {len(v)} values for {n_layer} layers; the file is not a supported model")
    return [kind(x) for x in v[:n_layer]]


@dataclass
class Mimo2Layer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_kv*head_dim, n_embd] (n_kv this layer's)
    wv: Weight  # [n_kv*head_dim_v, n_embd]
    wo: Weight  # [n_embd, n_head*head_dim_v]
    n_kv: int
    sinks: np.ndarray | None  # [n_head] sink logits, or None (a layer without)
    ffn_norm: Any  # [n_embd]
    w_gate: Weight | None = None  # a dense layer's SwiGLU FFN
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None  # the others' mixture of experts


class Mimo2Model(LlamaModel):
    archs = ("mimo2",)
    takes_images = True  # its forward reads Model.input_embd (MiMo-V2.5's image rows: runtime/vision_mimovl.py)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        for key in ("expert_feed_forward_length", "attention.sliding_window", "attention.sliding_window_pattern"):
            if g.arch_get(key) is None:  # (llama.cpp requires them)
                raise GGUFError(f"{g.path}: metadata mimo2.{key} is missing; the file is not a complete model")
        self.n_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer, cfg.n_head)
        self.value_scale = float(g.arch_get("attention.value_scale", 1.0) or 1.0)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if self.output is self.tok_embd:  # (llama.cpp requires the output head)
            WeightLoader(g, backend).matrix("output")
        self.rope_local = (self.rope_cos, self.rope_sin)  # the window layers' (their own base where the file states one)
        if cfg.rope_theta_swa:
            self.rope_local = make_rope(dataclasses.replace(cfg, rope_scaling_type="none"), n_ctx, cfg.rope_theta_swa)

    def load_layer(self, w: WeightLoader, i: int) -> Mimo2Layer:  # type: ignore[override]
        c, n_kv = self.cfg, self.n_kv[i]
        want = {"wq": (c.n_head * c.head_dim, c.n_embd), "wk": (n_kv * c.head_dim, c.n_embd),
                "wv": (n_kv * c.head_dim_v, c.n_embd), "wo": (c.n_embd, c.n_head * c.head_dim_v)}  # fmt: skip
        m = {role: w.matrix(role, i) for role in want}
        for role, shape in want.items():
            if tuple(m[role].shape) != shape:
                raise GGUFError(f"{w.g.path}: blk.{i} {role} has shape {tuple(m[role].shape)}, expected {shape}; the file is not a supported model")
        sinks = w.host_vector("attn_sinks", i, required=False)
        if sinks is not None and sinks.size != c.n_head:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_sinks has {sinks.size} values, expected one per head ({c.n_head})")
        L = Mimo2Layer(attn_norm=w.vector("attn_norm", i), n_kv=n_kv, sinks=sinks, ffn_norm=w.vector("ffn_norm", i), **m)
        if w.has("ffn_gate_inp", i):
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, gating="sigmoid")
        else:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [
            LayerSpec(c.n_head, L.n_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale,
                      sink_logits=() if L.sinks is None else tuple(float(s) for s in L.sinks))  # fmt: skip
            for il, L in enumerate(self.layers)
        ]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, H, D, Dv = len(tokens), c.n_head, c.head_dim, c.head_dim_v
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        q, att = buf.get("q", T, H * D), buf.get("att", T, H * Dv)
        q3, att3 = q.reshape(T, H, D), att.reshape(T, H, Dv)
        if self.input_embd is not None:  # a picture's rows (MiMo-V2.5's, Engine.eval_embd), attended causally as llama.cpp
            x[...] = be.vector(self.input_embd)
        else:
            be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            k, v = buf.get(f"k{L.n_kv}", T, L.n_kv * D), buf.get(f"v{L.n_kv}", T, L.n_kv * Dv)  # (a buffer per KV width)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
            be.rope_qk(q3, k.reshape(T, L.n_kv, D), pos, cos, sin, c.rope_neox)
            cache[il].update_and_attend(q3, k.reshape(T, L.n_kv, D), v.reshape(T, L.n_kv, Dv), pos, att3)
            if self.value_scale != 1.0:
                be.scale(att, self.value_scale)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            moe_or_swiglu_add(be, L, x, xn, c.norm_eps, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
