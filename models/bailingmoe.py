"""Ling v1 (inclusionAI's BailingMoe: Ling-lite 16.8B-A2.75B, Ling-plus 290B-A28.8B, Ling-Coder-lite), as llama.cpp's
BAILINGMOE graph; Ling 2.0 (``bailingmoe2.py``) is its successor.

The Llama block (``llama.py``: RMSNorm, grouped-query attention, rope over consecutive pairs of the whole head (not
neox, as Ling 2.0's), scores scaled by ``1/sqrt(rope.dimension_count)``, the head as wide) with every FFN a mixture of experts (``moe.py``), and what sets it
apart from Ling 2.0: Q, K and V apart (the converter cuts the checkpoint's fused ``query_key_value``), no QK norm, no
dense leading layers (llama.cpp's graph runs every layer's router), a *softmax* router without selection bias or
groups, the chosen experts' weights renormalised only where ``expert_weights_norm`` says (Ling-lite's norm_topk_prob)
and times ``expert_weights_scale`` where stated; beside them ``expert_shared_count`` shared experts as one plain SwiGLU
FFN ``expert_shared_count x expert_feed_forward_length`` wide.  The output head is its own ``output.weight``.

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, weights_scale


class BailingMoeModel(LlamaModel):
    archs = ("bailingmoe",)
    shared_expert = "plain"  # (every layer has one, neither gated nor scaled)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        for key in ("expert_feed_forward_length", "expert_shared_count"):  # (what llama.cpp's loader requires beyond the common keys)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata bailingmoe.{key} is missing; the file is not a complete model")
        self.n_ff_shexp = cfg.n_ff_exp * int(g.arch_get("expert_shared_count"))
        self.weights_scale = weights_scale(g)
        if "output.weight" not in g.tensors:  # (llama.cpp requires the head: never tied to the embeddings)
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        L = super().load_layer(w, i)
        if L.moe.shared.gate.shape[0] != self.n_ff_shexp:
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight has {L.moe.shared.gate.shape[0]} rows, expected {self.n_ff_shexp} "
                            "(expert_shared_count x expert_feed_forward_length); the file is not a supported model")  # fmt: skip
        L.moe.weights_scale = self.weights_scale
        return L
