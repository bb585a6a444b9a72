"""LLaDA (LLaDA-8B-Base/Instruct): a diffusion language model in a Llama trunk, as llama.cpp's LLADA graph.

The block is Llama's (no biases, rope over consecutive pairs, SwiGLU) attending both ways over one batch
(models/diffusion_lm.py).  llama.cpp loads an attn_output bias, FFN biases and rope_freqs where a file has them but
its graph uses none of them: neither does kvrun (the LLaDA checkpoints have none).
"""

from __future__ import annotations

from .common import WeightLoader
from .diffusion_lm import DiffusionForward
from .llama import LlamaLayer, LlamaModel


class LladaModel(DiffusionForward, LlamaModel):
    archs = ("llada",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        L.bq = L.bk = L.bv = L.bo = None  # (the graph adds no bias, whatever the file holds)
        return L

    def rope_factors(self, w: WeightLoader, n_ctx: int):  # (llama.cpp's graph passes none to its rope)
        return None
