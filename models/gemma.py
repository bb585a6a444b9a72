"""Gemma (1): https://arxiv.org/abs/2403.08295

The Llama block, as llama.cpp's Gemma graph, with embeddings scaled by sqrt(n_embd), a GELU-gated
FFN (tanh-approximated GELU, as ``ggml_gelu``), NeoX rope, queries scaled by ``1/sqrt(head_dim)``
with heads wider than ``n_embd / n_head`` in the 7B (``key_length`` 256), multi-query attention in
the 2B, and the output head tied to the embeddings.  Gemma's ``1 + w`` norm weights come from
llama.cpp's converter with the 1 already added, so the norms are plain RMSNorm.  Gemma 2 and 3
(``gemma2.py``, ``gemma3.py``) add post-norms, softcaps, QK-norm and sliding windows.
"""

from __future__ import annotations

import math

from .llama import LlamaModel


class GemmaModel(LlamaModel):
    archs = ("gemma",)
    ffn_act = "gelu"

    def embedding_scale(self) -> float:
        return math.sqrt(self.cfg.n_embd)
