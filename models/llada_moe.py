"""LLaDA-MoE (LLaDA-MoE-7B-A1B): a diffusion language model in an OLMoE-like trunk, as llama.cpp's LLADA_MOE graph.

The block is Qwen3-MoE's layout (Q and K RMS-normalised per head before the neox rope, a softmax router over
``expert_count`` experts, ``expert_used_count`` a token) with the chosen experts' weights as the router gave them
(llama.cpp's graph neither renormalises nor scales them), attending both ways over one batch (models/diffusion_lm.py).
It runs on the CPU only (the routing is host work, as every mixture of experts here).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .diffusion_lm import DiffusionForward
from .llama import LlamaLayer
from .moe import check_expert_counts, cpu_only
from .qwen3moe import Qwen3MoeModel


class LladaMoeModel(DiffusionForward, Qwen3MoeModel):
    archs = ("llada-moe",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        cpu_only(g, backend)
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        for role in ("q_norm", "k_norm"):  # (llama.cpp requires both: a one-line error naming the missing one)
            w.host_vector(role, i)
        L = super().load_layer(w, i)
        if L.qk_norm_full:  # (llama.cpp's are one head wide)
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; "
                            f"LLaDA-MoE's are one head ({self.cfg.head_dim}) wide")  # fmt: skip
        L.moe.norm_weights = False  # (llama.cpp's graph: as the router gave them, whatever the file says)
        L.moe.weights_scale = 1.0
        return L
