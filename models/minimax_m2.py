"""MiniMax-M2 (MiniMax-M2, M2.1: 230B-A10B), as llama.cpp's ``minimax-m2`` graph.

The Llama block (``llama.py``: RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual) with what sets it apart:

* QK-norm over the whole projection, not head by head (OLMoE's, OLMo 2's): ``attn_q_norm`` is ``n_head * head_dim``
  wide, ``attn_k_norm`` ``n_head_kv * head_dim``, each RMS-normalising all of Q's (K's) heads at once, before rope;
* partial neox rope: ``rope.dimension_count`` (64) of each head's 128 dimensions rotate, the rest pass through;
* every layer's FFN a mixture of experts (``moe.py``) routed by ``sigmoid`` (``expert_gating_func``), chosen with the
  ``exp_probs_b`` correction bias (which llama.cpp requires), each expert ``feed_forward_length`` wide, the chosen weights always renormalised (llama.cpp's graph
  fixes it, whatever ``expert_weights_norm`` says), not scaled (llama.cpp reads no ``expert_weights_scale`` for
  minimax-m2, so a stated one changes nothing); no shared expert;
* an output head of its own; attention scaled by ``1/sqrt(head_dim)``.

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import dataclasses

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, gating_func

#: llama.cpp's expert_gating_func values the graph runs (the converter states sigmoid; unstated is no gating llama.cpp runs)
GATING = {1: "softmax", 2: "sigmoid"}


class MiniMaxM2Model(LlamaModel):
    archs = ("minimax-m2",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if g.arch_get("expert_feed_forward_length") is None:  # (llama.cpp requires it, though it sizes the experts by n_ff)
            raise GGUFError(f"{g.path}: metadata minimax-m2.expert_feed_forward_length is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        # (llama.cpp sizes the experts by feed_forward_length, whatever expert_feed_forward_length says)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=cfg.n_ff), backend, n_ctx, n_batch)
        if self.output is self.tok_embd:  # (llama.cpp requires the output head)
            WeightLoader(g, backend).matrix("output")

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        for role in ("q_norm", "k_norm", "exp_probs_b"):  # (llama.cpp requires them: a one-line error naming the one missing)
            w.host_vector(role, i)
        w.matrix("ffn_gate_inp", i)  # (every layer routes)
        L = super().load_layer(w, i)
        if not L.qk_norm_full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm must span all heads ({c.n_head * c.head_dim}/"
                            f"{c.n_head_kv * c.head_dim}); the file is not a supported model")  # fmt: skip
        L.moe.gating = self.gating
        L.moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
        return L
