"""LLaDA-MoE (LLaDA-MoE-7B-A1B): a diffusion language model in an OLMoE-like trunk, as llama.cpp's LLADA_MOE graph.

The block is Qwen3-MoE's layout (Q and K RMS-normalised per head before the neox rope, a softmax router over
``expert_count`` experts, ``expert_used_count`` a token) with the chosen experts' weights as the router gave them
(llama.cpp's graph neither renormalises nor scales them), attending both ways over one batch (models/diffusion_lm.py).
It runs on the GPU too (models/diffusion_lm.py; its experts in moe.cu's kernels).
"""

from __future__ import annotations

from .diffusion_lm import DiffusionMoeModel
from .moe import MoE


class LladaMoeModel(DiffusionMoeModel):
    archs = ("llada-moe",)
    head_qk_norms = "LLaDA-MoE"

    def expert_weights(self, moe: MoE) -> None:
        moe.norm_weights = False  # (llama.cpp's graph: as the router gave them, whatever the file says)
        moe.weights_scale = 1.0
