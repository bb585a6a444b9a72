"""OLMoE (OLMoE-1B-7B): https://arxiv.org/abs/2409.02060

The Llama block with Q and K each RMS-normalised over their whole projection before RoPE
(``attn_q_norm``, ``attn_k_norm`` of ``n_embd`` weights, not per head: as OLMo 2's), NeoX rope, a
separate output head, and a mixture-of-experts FFN (``moe.py``: softmax router, the top
``expert_used_count`` of ``expert_count`` experts) whose chosen experts' weights are *not*
renormalised (the ``expert_weights_norm`` default in ``loaders/config.py``), as llama.cpp's
OLMoE graph.  All of it is data the Llama loader and forward read (the norms' width says which
QK-norm it is), so the class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class OlmoeModel(LlamaModel):
    archs = ("olmoe",)
