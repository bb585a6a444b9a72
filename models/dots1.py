"""dots.llm1 (rednote-hilab's dots.llm1.base and .inst, 142B with 14B active), as llama.cpp's DOTS1 graph.

Qwen3's attention (``llama.py``: Q and K RMS-normalised per head *before* the neox rope) with DeepSeek-V3's FFNs:

* the first ``leading_dense_block_count`` layers a dense SwiGLU FFN, the others a mixture of experts (``moe.py``);
* router probabilities by ``expert_gating_func`` (sigmoid in the published checkpoints' scoring_func), the top
  ``expert_used_count`` chosen by probability plus ``exp_probs_b`` (the load-balancing bias: it moves the choice,
  not the weights), from the best ``expert_group_used_count`` of ``expert_group_count`` groups where the file states
  groups (llama.cpp applies them to every architecture; dots.llm1 states one group);
* the chosen weights renormalised where ``expert_weights_norm`` says (norm_topk_prob) and times
  ``expert_weights_scale`` (routed_scaling_factor); beside them ``expert_shared_count`` shared experts as one plain
  SwiGLU FFN every token runs.

llama.cpp sizes K and V by the query heads (dots.llm1 has as many K/V heads as heads): a file with fewer is refused
by llama.cpp's loader, and kvrun follows the file's ``head_count_kv``.  It runs on the CPU and the GPU (the
GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, expert_groups, gating_func, weights_scale

#: llama.cpp's expert_gating_func values (LLAMA_EXPERT_GATING_FUNC_TYPE_*) the graph runs for dots1
GATING = {1: "softmax", 2: "sigmoid"}


class Dots1Model(LlamaModel):
    archs = ("dots1",)
    shared_expert = "plain"  # (every MoE layer has one, neither gated nor scaled)
    head_qk_norms = "dots.llm1"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if g.arch_get("expert_gating_func") is None:  # (llama.cpp passes the file's value to its graph, which has no default)
            raise GGUFError(f"{g.path}: metadata dots1.expert_gating_func is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, cfg.n_expert)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        if i >= self.n_dense_lead:
            w.matrix("ffn_gate_inp", i)  # (a one-line error naming the router where a mixture's is missing)
        L = super().load_layer(w, i)
        if L.moe is not None:
            L.moe.gating, L.moe.weights_scale = self.gating, self.weights_scale
            L.moe.n_group, L.moe.n_group_used = self.groups
        return L
