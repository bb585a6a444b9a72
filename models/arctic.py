"""Snowflake Arctic (snowflake-arctic-base/-instruct: 480B, 17B active), as llama.cpp's ``arctic`` graph: the Llama
block whose every layer has a dense FFN *and*, in parallel to the whole layer, a residual mixture of experts::

    h = x + attn(rms_norm(x) * attn_norm)
    x = h + W_down(silu(W_gate h') * W_up h') + MoE(rms_norm(x) * ffn_norm_exps),  h' = rms_norm(h) * ffn_norm

What sets it apart:

* the mixture of experts reads the layer's *input* (before its attention) through a norm of its own
  (``ffn_norm_exps``), not the stream the dense FFN reads: the checkpoint's "dense-MoE hybrid" residual;
* the dense SwiGLU FFN is as wide as the embedding (llama.cpp sizes it ``n_embd``; Arctic's 7168), the experts
  (128, 2 a token, softmax router, weights renormalised) as wide as ``feed_forward_length`` (4864);
* rope over consecutive pairs (the converter permutes Q and K as Llama's), RMSNorms.

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, load_moe, moe_add

TENSOR_NAMES.setdefault("ffn_norm_exps", "blk.{i}.ffn_norm_exps.weight")  # (llama.cpp's LLM_TENSOR_FFN_NORM_EXPS)


@dataclass
class ArcticLayer(LlamaLayer):
    ffn_norm_exps: Any = None  # [n_embd]: the experts' norm of the layer's input


class ArcticModel(LlamaModel):
    archs = ("arctic",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        # (llama.cpp sizes the experts by feed_forward_length, whatever expert_feed_forward_length says)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=cfg.n_ff), backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> ArcticLayer:
        c = self.cfg
        dense = {r: w.matrix(r, i) for r in ("w_gate", "w_up", "w_down")}
        want = {"w_gate": (c.n_embd, c.n_embd), "w_up": (c.n_embd, c.n_embd), "w_down": (c.n_embd, c.n_embd)}
        for role, m in dense.items():
            if tuple(m.shape) != want[role]:  # (llama.cpp's loader: the dense FFN as wide as the embedding)
                raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {want[role]}; "
                                "the file is not a supported model")  # fmt: skip
        return ArcticLayer(
            attn_norm=w.vector("attn_norm", i), wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i),
            wo=w.matrix("wo", i), bq=None, bk=None, bv=None, q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            **dense, moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True),  # (always renormalised)
            ffn_norm_exps=w.vector("ffn_norm_exps", i),
        )  # fmt: skip

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        gate, up, xe = buf.get("dense_gate", T, c.n_embd), buf.get("dense_up", T, c.n_embd), buf.get("xe", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.ffn_norm_exps, c.norm_eps, xe)  # (the experts' input: the layer's, before its attention)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            moe_add(be, L.moe, xe, x, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
