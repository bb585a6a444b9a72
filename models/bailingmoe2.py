"""Ling 2.0 and Ring 2.0 (inclusionAI's BailingMoeV2: Ling-mini-2.0 16B-A1.4B, Ling-flash-2.0 100B-A6B, Ring-mini-2.0,
Ring-flash-2.0), as llama.cpp's BAILINGMOE2 graph.

The Llama block (``llama.py``) with what sets it apart:

* Q, K and V one fused ``attn_qkv`` (cut in three at load; llama.cpp reads no other), no biases; Q and K
  RMS-normalised per head (``attn_q_norm``/``attn_k_norm``, one head wide) before the rope, which is neox and turns
  only the first ``rope.dimension_count`` dimensions of each head (the checkpoints' partial_rotary_factor 0.5).
* The first ``leading_dense_block_count`` layers a dense SwiGLU FFN; the others a mixture of experts (``moe.py``):
  router probabilities by ``expert_gating_func`` (sigmoid in the published checkpoints' score_function), the top
  ``expert_used_count`` chosen by probability plus ``exp_probs_b`` (the load-balancing bias, which moves the choice
  but not the weights) from the best ``expert_group_used_count`` of ``expert_group_count`` groups, their weights
  renormalised where ``expert_weights_norm`` says and times ``expert_weights_scale`` (routed_scaling_factor); beside
  them ``expert_shared_count`` shared experts as one plain SwiGLU FFN every token runs.
* The output head is its own ``output.weight`` (llama.cpp requires it).
* The last ``nextn_predict_layers`` of ``block_count`` are multi-token-prediction (NextN) layers for speculative
  decoding, which llama.cpp skips at load and never runs; kvrun neither runs nor reads them, as for GLM-4.5
  (``models/glm4.py``: ``ModelConfig.n_layer`` counts the trunk alone).

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, expert_groups, gating_func, load_moe, weights_scale

#: llama.cpp's expert_gating_func values (LLAMA_EXPERT_GATING_FUNC_TYPE_*) the graph runs for bailingmoe2
GATING = {1: "softmax", 2: "sigmoid"}


class BailingMoe2Model(LlamaModel):
    archs = ("bailingmoe2",)
    shared_expert = "plain"  # (every MoE layer has one, neither gated nor scaled)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        for key in ("expert_gating_func", "expert_shared_count"):  # (what llama.cpp's loader requires beyond the common keys)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata bailingmoe2.{key} is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, cfg.n_expert)
        if "output.weight" not in g.tensors:  # (llama.cpp requires the head: never tied to the embeddings)
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        wq, wk, wv = w.matrix_rows("wqkv", i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; bailingmoe2's are one head ({c.head_dim}) wide")
        L = LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=None, bk=None, bv=None,
            q_norm=q_norm, k_norm=k_norm, ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
        )  # fmt: skip
        if i < self.n_dense_lead:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            return L
        L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating,
                         shared=self.shared_expert)  # fmt: skip
        L.moe.weights_scale = self.weights_scale
        L.moe.n_group, L.moe.n_group_used = self.groups
        return L
