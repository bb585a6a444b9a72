"""Gemma 3 (text): https://arxiv.org/abs/2503.19786

Differences from Llama, top to bottom: embeddings scaled by sqrt(n_embd);
per-head RMSNorm on Q and K; RMSNorm after attention and after the FFN
("sandwich" norms); GELU-gated FFN; five sliding-window layers (local rope
base 10k) then one global layer (rope base 1M); queries scaled by
1/sqrt(head_dim).  Norm weights in GGUF already include Gemma's ``1 + w``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader, make_rope


def update_and_attend_block(cache: KVCache, il: int, q: Any, k: Any, v: Any, pos: Any, out: Any) -> None:
    """cache/picture_block.py's, imported on first use (that module imports the cache kernels; `kvrun info` asks this
    module's class its hooks without them)."""
    from ..cache.picture_block import update_and_attend_block as attend

    attend(cache, il, q, k, v, pos, out)


@dataclass
class Gemma3Layer:
    """(Gemma 3n's and Gemma 4's layers add their own to these.)"""

    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight | None  # [n_head_kv*head_dim, n_embd] (None: a Gemma 3n or 4 layer that shares K/V computes none)
    wv: Weight | None  # [n_head_kv*head_dim_v, n_embd] (None also: Gemma 4's V is K's projection)
    wo: Weight  # [n_embd, n_head*head_dim_v]
    q_norm: Any  # [head_dim] (None in Gemma 2)
    k_norm: Any  # [head_dim]
    attn_post_norm: Any  # [n_embd]
    ffn_norm: Any  # [n_embd]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    ffn_post_norm: Any  # [n_embd]


class Gemma3Model(Model):
    archs = ("gemma3",)
    qk_norm = True  # per-head RMSNorm of Q and K (Gemma 2 has none)
    takes_images = True  # its forward reads Model.input_embd (an image's rows: Engine.eval_embd)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [
            Gemma3Layer(
                attn_norm=w.vector("attn_norm", i),
                wq=w.matrix("wq", i),
                wk=w.matrix("wk", i),
                wv=w.matrix("wv", i),
                wo=w.matrix("wo", i),
                q_norm=w.vector("q_norm", i, required=self.qk_norm),
                k_norm=w.vector("k_norm", i, required=self.qk_norm),
                attn_post_norm=w.vector("attn_post_norm", i),
                ffn_norm=w.vector("ffn_norm", i),
                w_gate=w.matrix("w_gate", i),
                w_up=w.matrix("w_up", i),
                w_down=w.matrix("w_down", i),
                ffn_post_norm=w.vector("ffn_post_norm", i),
            )
            for i in range(cfg.n_layer)
        ]
        self.rope_global = make_rope(cfg, n_ctx, cfg.rope_theta)
        self.rope_local = make_rope(cfg, n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.head_dim)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = self.attention_scale()
        return [
            LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale, c.attn_logit_softcap)
            for il in range(c.n_layer)
        ]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)

        if self.input_embd is not None:  # an image's rows: not scaled (llama.cpp scales token embeddings only)
            x[...] = be.vector(self.input_embd)  # (host rows: uploaded on the GPU, as is on the CPU)
        else:
            be.get_rows(self.tok_embd, tokens, x)
            be.scale(x, math.sqrt(c.n_embd))
        for il, L in enumerate(self.layers):
            cos, sin = self.rope_local if c.is_swa(il) else self.rope_global
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.q_norm is not None:
                be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            else:
                be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)
            if self.input_embd is not None:  # (an image's rows see each other, as llama.cpp's non-causal image batch)
                update_and_attend_block(cache, il, q3, k3, v3, pos, att3)  # (plain or compressed: cache/picture_block.py)
            else:
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_post_norm, c.norm_eps, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, o, "gelu")
            be.rms_norm_add(o, L.ffn_post_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
