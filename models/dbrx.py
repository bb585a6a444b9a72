"""Databricks DBRX (dbrx-base, dbrx-instruct: 132B, 36B active), as llama.cpp's ``dbrx`` graph.

OLMo's block (models/olmo.py: pre-LayerNorm, sequential, Q/K/V clipped) with a mixture of experts for its FFN::

    x = x + W_o attn(rope(clip(W_qkv LN(x) * attn_norm)));  x = x + MoE(LN(x) * attn_output_norm)

What sets it apart:

* LayerNorms (the mean taken away) with a weight and *no bias* (``attn_norm``, ``attn_output_norm`` before the FFN,
  ``output_norm``);
* Q, K and V fused (``attn_qkv``) and clipped to ``[-clamp_kqv, clamp_kqv]`` (the checkpoint's ``clip_qkv``, 8)
  right after the projection, before the rope; llama.cpp requires ``attention.clamp_kqv``;
* grouped-query attention (48 heads, 8 K/V heads), NeoX rope over whole heads (base 500000);
* every FFN a mixture of 16 SwiGLU experts, 4 a token: a softmax router, the chosen experts' weights renormalised to
  sum 1 (the checkpoint's ``moe_normalize_expert_weights`` 1), the experts as wide as ``feed_forward_length``
  (llama.cpp sizes them so);
* a separate output head (llama.cpp requires ``output.weight``).

On ``--device gpu`` its experts route in moe.cu's kernels and the clip is the backend's ``clamp`` kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .moe import check_expert_counts, load_moe, moe_add
from .olmo import OlmoLayer, OlmoModel

TENSOR_NAMES.setdefault("attn_out_norm", "blk.{i}.attn_output_norm.weight")  # (llama.cpp's LLM_TENSOR_ATTN_OUT_NORM)


class DbrxModel(OlmoModel):
    archs = ("dbrx",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if g.arch_get("attention.clamp_kqv") is None:  # (llama.cpp's loader requires it of DBRX)
            raise GGUFError(f"{g.path}: metadata dbrx.attention.clamp_kqv is missing; the file is not a complete model")
        # (llama.cpp sizes the experts by feed_forward_length, whatever expert_feed_forward_length says)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=cfg.n_ff), backend, n_ctx, n_batch)

    def load_output(self, w: WeightLoader) -> Weight:
        return w.matrix("output")  # (never tied)

    def load_output_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return w.vector("output_norm"), None

    def load_layer(self, w: WeightLoader, i: int) -> OlmoLayer:
        c = self.cfg
        if not w.has("wqkv", i):  # (llama.cpp loads DBRX's fused projection only)
            raise GGUFError(f"{w.g.path}: tensor {TENSOR_NAMES['wqkv'].format(i=i)!r} is missing; the file is incomplete or not a supported model")
        wq, wk, wv, _, _, _ = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return OlmoLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=None, bk=None, bv=None,
            q_norm=None, k_norm=None, ffn_norm=w.vector("attn_out_norm", i), w_gate=None, w_up=None, w_down=None,
            moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True),  # (always renormalised)
        )  # fmt: skip

    def ffn_add(self, L: OlmoLayer, xn: Any, x: Any, gate: Any, up: Any) -> None:
        moe_add(self.be, L.moe, xn, x, self.buf)
