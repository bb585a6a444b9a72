"""Qwen2: the Llama block with biases on Q, K and V and NeoX-style RoPE.

Both differences are data: the biases are optional tensors the Llama loader
already reads, and the rope layout comes from the architecture defaults in
``loaders/config.py``.  The class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class Qwen2Model(LlamaModel):
    archs = ("qwen2",)
