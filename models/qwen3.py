"""Qwen3 (dense): the Llama block with each head of Q and K RMS-normalised before RoPE (QK-norm),
NeoX-style RoPE, no QKV bias, and heads wider than ``n_embd / n_head`` (``key_length``).

All of it is data: the norm weights are optional tensors the Llama loader reads, the rope layout
comes from the architecture defaults in ``loaders/config.py``, the head width from the file.  The
class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class Qwen3Model(LlamaModel):
    archs = ("qwen3",)
