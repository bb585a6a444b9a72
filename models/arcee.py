"""Arcee AFM-4.5B: https://huggingface.co/arcee-ai/AFM-4.5B

As llama.cpp's ARCEE graph, the Llama block (RMSNorm -> attention (GQA, rope over consecutive
pairs, Llama 3's rope factors where the file has them) -> residual -> RMSNorm -> FFN -> residual;
a tied or separate output head) with an *ungated* FFN: squared ReLU between ``ffn_up`` and
``ffn_down`` (no ``ffn_gate``)::

    x = x + W_down relu(W_up h)^2
"""

from __future__ import annotations

from typing import Any

from ..cache.base import KVCache
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class ArceeModel(LlamaModel):
    archs = ("arcee",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i), wo=w.matrix("wo", i),
            bq=w.vector("bq", i, required=False), bk=w.vector("bk", i, required=False), bv=w.vector("bv", i, required=False),
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=None, w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, _, up, q3, k3, v3, att3 = self.step_buffers(T)

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)  # (Arcee: rope alone)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_up,), (up,))
            self.ffn_activation(il, up)
            be.linear_add(L.w_down, up, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def ffn_activation(self, il: int, up: Any) -> None:
        """Layer il's FFN activation, in place on ``up`` (Arcee's squared ReLU; Apertus: xIELU)."""
        self.be.relu_sqr(up, up)
