"""EXAONE MoE (LG AI Research's K-EXAONE: ``ExaoneMoEForCausalLM``), as llama.cpp's ``exaone-moe`` graph.

EXAONE 4.0's attention (``models/exaone4.py``: Q and K RMS-normalised head by head, neox rope only in the sliding-
window layers, the global ones without positional encoding, Llama 3's rope factors where the file has them) in the
pre-norm Llama block (``llama.py``: RMSNorm before attention and before the FFN, none after, unlike EXAONE 4.0), with
DeepSeek-V3's FFN (``models/moe.py``): the first ``leading_dense_block_count`` layers dense SwiGLU, the others a mixture
of experts (router probabilities by ``expert_gating_func``, sigmoid in K-EXAONE, chosen with ``exp_probs_b``, renormalised where ``expert_weights_norm``
says, times ``expert_weights_scale``) beside ``expert_shared_count`` shared experts as one plain SwiGLU FFN.

Which layers use the window: the file's ``sliding_window_pattern`` (one flag a layer, as the converter writes it),
else 3 of every 4.  The last ``nextn_predict_layers`` of ``block_count`` are multi-token-prediction layers, which
kvrun neither runs nor reads (``ModelConfig.n_layer`` counts the trunk alone).  The CPU and the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import gating_func, weights_scale

#: llama.cpp's expert_gating_func values the graph runs (the key required, as llama.cpp's loader requires it)
GATING = {1: "softmax", 2: "sigmoid"}


class WindowRopeModel(LlamaModel):
    """The Llama block with Q and K RMS-normalised head by head in every layer, where only the layers the pattern flags
    rotate and attend within the window, the global ones NoPE (EXAONE MoE's and Maple's graphs)."""

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        L.rope = self.cfg.is_swa(i)  # (the global layers: NoPE)
        return L

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        if L.rope:
            super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)
        else:  # (a global layer: the per-head norms alone)
            self.be.rms_norm_heads(q3, L.q_norm, self.cfg.norm_eps)
            self.be.rms_norm_heads(k3, L.k_norm, self.cfg.norm_eps)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale)
                for il in range(c.n_layer)]  # fmt: skip


class ExaoneMoeModel(WindowRopeModel):
    archs = ("exaone-moe",)
    shared_expert = "plain"  # (every MoE layer has one, neither gated nor scaled)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in ("leading_dense_block_count", "expert_feed_forward_length", "expert_shared_count", "expert_gating_func"):
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata exaone-moe.{key} is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count"))
        self.weights_scale = weights_scale(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        for role in ("q_norm", "k_norm") + (("exp_probs_b",) if i >= self.n_dense_lead else ()):
            w.host_vector(role, i)  # (llama.cpp requires them: a one-line error naming the one missing)
        L = super().load_layer(w, i)
        if L.q_norm is None or L.qk_norm_full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm must be one head ({c.head_dim}) wide; the file is not a supported model")
        if (L.moe is None) != (i < self.n_dense_lead):
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_inp.weight is {'missing' if L.moe is None else 'in a leading dense layer'}; "
                            "the file is not a supported model")  # fmt: skip
        if L.moe is not None:
            L.moe.gating, L.moe.weights_scale = self.gating, self.weights_scale
        return L
