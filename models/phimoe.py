"""Phi-3.5-MoE (Microsoft's Phi-3.5-MoE-instruct, 16 experts of 3.8B, 6.6B active), as llama.cpp runs it: its PHI3
graph with a mixture of experts (``moe.py``) for every FFN.

What sets it apart from Phi-3 (``phi3.py``, whose LongRoPE it shares: ``rope_factors_short`` within the original
context, ``rope_factors_long`` beyond it, the attention factor from the file's rope metadata):

* every norm has a bias (``attn_norm.bias``, ``ffn_norm.bias``, ``output_norm.bias``), added after the weight; the
  checkpoint's are LayerNorms, which llama.cpp's graph runs as RMSNorms (no mean taken away), and so does kvrun;
* Q, K and V apart, each with a bias, and ``attn_output`` with one; the output head with one too;
* every FFN a mixture: a softmax router, the top ``expert_used_count`` (2) experts weighted by their probabilities
  renormalised (llama.cpp's plain softmax top-k: the checkpoint's sparsemixer, which picks the second expert with the
  first masked out and weights each by its own masked softmax, is a training-time router llama.cpp does not run),
  the experts as wide as ``feed_forward_length`` (llama.cpp sizes them so).

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer
from .moe import check_expert_counts, load_moe, moe_add
from .phi3 import Phi3Model


@dataclass
class PhiMoeLayer(LlamaLayer):
    attn_norm_b: Any = None  # [n_embd]
    ffn_norm_b: Any = None  # [n_embd]


class PhiMoeModel(Phi3Model):
    archs = ("phimoe",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        # (llama.cpp sizes the experts by feed_forward_length, whatever expert_feed_forward_length says)
        cfg = dataclasses.replace(cfg, n_ff_exp=cfg.n_ff)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.output_norm_b = w.vector("output_norm_b")
        self.output_b = w.vector("output_b", required=False)

    def load_layer(self, w: WeightLoader, i: int) -> PhiMoeLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return PhiMoeLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
            bo=w.vector("bo", i), attn_norm_b=w.vector("attn_norm_b", i), ffn_norm_b=w.vector("ffn_norm_b", i),
            moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True),  # (always renormalised)
        )  # fmt: skip

    def norm(self, x: Any, w: Any, b: Any, out: Any) -> None:
        """llama.cpp's norm of Phi-3's graph: RMSNorm times the weight, plus the bias."""
        self.be.rms_norm(x, w, self.cfg.norm_eps, out)
        self.be.add_bias(out, b)

    def final_norm(self, x: Any, out: Any) -> None:
        self.norm(x, self.output_norm, self.output_norm_b, out)

    def output_head(self, x: Any, out_rows: np.ndarray, logits: Any) -> None:
        super().output_head(x, out_rows, logits)
        if not self.embedding and len(out_rows) and self.output_b is not None:
            self.be.add_bias(logits, self.output_b)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            self.norm(x, L.attn_norm, L.attn_norm_b, xn)
            self.trace("attn_norm", il, xn)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            for t, b in ((q, L.bq), (k, L.bk), (v, L.bv)):
                if b is not None:  # (optional, as in llama.cpp's loader)
                    be.add_bias(t, b)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            if L.bo is not None:
                be.add_bias(x, L.bo)
            self.norm(x, L.ffn_norm, L.ffn_norm_b, xn)
            moe_add(be, L.moe, xn, x, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
