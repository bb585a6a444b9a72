"""Phi-2, Phi-1.5 (Microsoft): https://huggingface.co/microsoft/phi-2

As llama.cpp's PHI2 graph, a GPT-J-style *parallel* block: one LayerNorm (with a bias) per layer,
whose output both attention and the FFN read, both adding into the residual stream::

    h = LN(x);  x = x + attn(h) + ffn(h)

* Q, K and V with biases: one fused ``attn_qkv`` (and its bias) or three matrices (and theirs);
* partial rotary, NeoX layout: only the first ``rope.dimension_count`` dimensions of each head
  turn (32 of Phi-2's 80), the rest pass through (the rope tables are that narrow);
* the attention output projection, the FFN's ``ffn_up`` and ``ffn_down`` and the output head all
  have biases; the FFN is GELU (tanh form) without a gate;
* the output LayerNorm has a bias too.

llama.cpp scales Q by 1/sqrt(head_dim) before the product rather than the scores after (for
fp16 range, mlx's trick); the same product in float32 up to rounding, so the scale stays in the
attention here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader, make_rope


@dataclass
class Phi2Layer:
    attn_norm: Any  # [n_embd]
    attn_norm_b: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    bq: Any  # [n_head*head_dim]
    bk: Any  # [n_head_kv*head_dim]
    bv: Any  # [n_head_kv*head_dim]
    wo: Weight  # [n_embd, n_head*head_dim]
    bo: Any  # [n_embd]
    w_up: Weight  # [n_ff, n_embd]
    b_up: Any  # [n_ff]
    w_down: Weight  # [n_embd, n_ff]
    b_down: Any  # [n_embd]


class Phi2Model(Model):
    archs = ("phi2",)
    #: the output LayerNorm has a bias (False: optional, MPT's no_bias: models/mpt.py)
    norm_biases: bool = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output_norm, self.output_norm_b = w.vector("output_norm"), w.vector("output_norm_b", required=self.norm_biases)
        self.output, self.output_b = self.load_output(w)
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)  # rope_dim wide: partial rotary

    def load_layer(self, w: WeightLoader, i: int) -> Phi2Layer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))
        return Phi2Layer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wo=w.matrix("wo", i), bo=w.vector("bo", i),
            w_up=w.matrix("w_up", i), b_up=w.vector("b_up", i), w_down=w.matrix("w_down", i), b_down=w.vector("b_down", i),
        )  # fmt: skip

    def load_output(self, w: WeightLoader) -> tuple[Weight, Any]:
        """The output head and its bias (None: none).  Phi-2 has both, never tied (GPT-2's family: models/gpt2.py)."""
        return w.matrix("output"), w.vector("output_b")

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim, 0, 1.0 / np.sqrt(c.head_dim), 0.0)] * c.n_layer

    def final_norm(self, x: Any, out: Any) -> None:
        self.be.layer_norm(x, self.output_norm, self.output_norm_b, self.cfg.norm_eps, out)

    def output_head(self, x: Any, out_rows: np.ndarray, logits: Any) -> None:
        super().output_head(x, out_rows, logits)
        if not self.embedding and len(out_rows) and self.output_b is not None:
            self.be.add_bias(logits, self.output_b)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, _, up, q3, k3, v3, att3 = self.step_buffers(T)

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.layer_norm(x, L.attn_norm, L.attn_norm_b, c.norm_eps, xn)  # read by attention and the FFN both
            self.trace("attn_norm", il, xn)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            if L.bq is not None:  # (optional, as in llama.cpp's loader)
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)  # the residual stream takes attention's output...
            be.add_bias(x, L.bo)
            be.linear(L.w_up, xn, up)  # ... and the FFN's, of the same normed input
            be.add_bias(up, L.b_up)
            be.gelu(up, up)
            be.linear_add(L.w_down, up, x)
            be.add_bias(x, L.b_down)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
