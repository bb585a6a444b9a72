"""OpenAI gpt-oss (gpt-oss-20b, gpt-oss-120b), as llama.cpp's ``openai-moe-iswa`` graph.

Pre-norm decoder: RMSNorm -> attention -> residual -> RMSNorm -> mixture of experts -> residual.
What sets it apart:

* attention: Q, K, V and the output projection carry biases; every head has a learned *sink*
  logit that joins its softmax's denominator and adds no value (``LayerSpec.sink_logits``), so a
  head may attend to nothing; even layers see a sliding window (128 tokens), odd ones the whole
  context; NeoX rope with YaRN scaling; queries scaled by 1/sqrt(head_dim);
* the FFN: a mixture of experts (``moe.py``) whose router and experts carry biases, whose top
  ``k`` experts by router logit are weighted by a softmax over those ``k`` logits, and whose GLU is
  clamped (``swiglu_oai``: ``min(g, 7) sigmoid(1.702 min(g, 7)) (clamp(u, -7, 7) + 1)``);
* the FFN's norm is the file's ``post_attention_norm``; the output head is untied.

Real files hold the experts as MXFP4 and the rest as 8-bit or float.  The mixture of experts runs on
the CPU (its routing is numpy work), so the model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader
from .llama import LlamaModel
from .moe import MoE, load_moe, moe_add


@dataclass
class GptOssLayer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    wo: Weight  # [n_embd, n_head*head_dim]
    bq: Any  # [n_head*head_dim]
    bk: Any  # [n_head_kv*head_dim]
    bv: Any  # [n_head_kv*head_dim]
    bo: Any  # [n_embd]
    sinks: np.ndarray  # [n_head] sink logits (host: they go into the layer's cache spec)
    ffn_norm: Any  # [n_embd] (the file's post_attention_norm)
    moe: MoE


class GptOssModel(LlamaModel):
    archs = ("gpt-oss",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if cfg.n_expert <= 0:
            raise GGUFError(f"{g.path}: gpt-oss.expert_count is missing; the file is not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> GptOssLayer:  # type: ignore[override]
        c = self.cfg
        sinks = w.host_vector("attn_sinks", i)
        if sinks.size != c.n_head:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_sinks has {sinks.size} values, expected one per head ({c.n_head})")
        return GptOssLayer(
            attn_norm=w.vector("attn_norm", i),
            wq=w.matrix("wq", i),
            wk=w.matrix("wk", i),
            wv=w.matrix("wv", i),
            wo=w.matrix("wo", i),
            bq=w.vector("bq", i),
            bk=w.vector("bk", i),
            bv=w.vector("bv", i),
            bo=w.vector("bo", i),
            sinks=sinks,
            ffn_norm=w.vector("attn_post_norm", i),
            moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm,
                         gating="softmax_weight", act="swiglu_oai"),  # fmt: skip
        )

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [
            LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale,
                      sink_logits=tuple(float(s) for s in L.sinks))  # fmt: skip
            for il, L in enumerate(self.layers)
        ]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(len(tokens))
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            be.add_bias(q, L.bq)
            be.add_bias(k, L.bk)
            be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.add_bias(x, L.bo)
            be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
            moe_add(be, L.moe, xn, x, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
