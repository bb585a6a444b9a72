"""Qwen3-MoE (Qwen3-30B-A3B, ...): Qwen3's block (QK-norm, NeoX rope) with a mixture-of-experts FFN
(``moe.py``: softmax router, the top ``expert_used_count`` experts, their weights renormalised).
The Llama loader makes an MoE FFN wherever a layer has a router, so the class exists so the
registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class Qwen3MoeModel(LlamaModel):
    archs = ("qwen3moe",)
